"""Who may read the event stream and the metrics.

Rules, in order:

1. A browser's ``Origin`` (sent on every websocket handshake and cross-site request) must be the
   listener's own origin (``http(s)://`` + the ``Host`` header) or one of ``[admin] origins``:
   otherwise any web page the operator visits could open ``ws://127.0.0.1:8025/events``
   (cross-site websocket hijacking). Clients that are not browsers send no Origin.
2. A token, when one is presented (``Authorization: Bearer <token>``, or ``?token=`` for
   browsers, whose websocket API cannot set headers), must be the configured one (compared in
   constant time). With it, nothing else is asked.
3. Without a token, access is open only if the listener is loopback and ``open_on_loopback``;
   then the ``Host`` header must name a loopback address or ``localhost`` too, so a DNS
   rebinding page (evil.example resolving to 127.0.0.1) is refused even with a matching Origin.

The page (``GET /``) holds no data and is served to anyone; its script connects with the token
from the URL fragment (``#token=...``), which browsers never send to the server.
"""

from __future__ import annotations

import hmac
import ipaddress

from ..config import AdminConfig
from ._http import HttpError, RequestHead

TOKEN_REQUIRED = (
    "admin: a bearer token is required (send 'Authorization: Bearer <token>', "
    "or add ?token=<token> to a browser's URL); see [admin] token"
)
BAD_TOKEN = "admin: the bearer token is not valid"


def host_name(host_header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8025`` -> ``::1``, ``a:1`` -> ``a``."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")].lower()
    return host_header.rsplit(":", 1)[0].lower() if ":" in host_header else host_header.lower()


def _is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Access:
    def __init__(self, config: AdminConfig) -> None:
        self.config = config
        self._token = config.token.encode("utf-8")

    def presented_token(self, head: RequestHead) -> str | None:
        auth = head.header("authorization")
        if auth is not None:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        return head.param("token")

    def check_origin(self, head: RequestHead) -> None:
        origin = head.header("origin")
        if origin is None:
            return
        origin = origin.rstrip("/").lower()
        host = (head.header("host") or "").lower()
        if origin in (f"http://{host}", f"https://{host}") or origin in self.config.origins:
            return
        raise HttpError(403, f"admin: origin {origin!r} is not allowed (see [admin] origins)")

    def check(self, head: RequestHead) -> None:
        """Raise ``HttpError`` (401/403) unless ``head`` may read events and metrics."""
        self.check_origin(head)
        token = self.presented_token(head)
        if token is not None and self._token:
            if hmac.compare_digest(token.encode("utf-8"), self._token):
                return
            raise HttpError(401, BAD_TOKEN)
        if not self.config.open:
            raise HttpError(401, TOKEN_REQUIRED)
        if not _is_loopback_name(host_name(head.header("host") or "")):
            raise HttpError(403, "admin: open access needs a loopback Host (127.0.0.1, localhost)")
