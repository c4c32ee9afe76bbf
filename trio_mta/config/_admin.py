"""The ``[admin]`` section: the listener for the live event stream, the page and /metrics.

Same conventions as ``_schema``: each validator checks its own field and never names it; the
rule that spans fields (a token is needed unless the listener is loopback and open) is
``admin_problems``, used by the loader (and by the admin server for trees built in code).
"""

import ipaddress
import re
from collections.abc import Callable, Iterable

import attrs

_IntCheck = Callable[[object, object, int], None]
_TOKEN = re.compile(r"[\x21-\x7e]+", re.ASCII)  # printable ASCII, no spaces
_MIN_TOKEN = 16
_ORIGIN = re.compile(r"https?://[^/\s]+", re.ASCII | re.IGNORECASE)


def _between(low: int, high: int) -> _IntCheck:
    def check(_inst: object, _attr: object, value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high} (got {value})")

    return check


def _normalize_listen(value: str) -> str:
    # Imported here: _schema imports this module for the Config field.
    from ._schema import format_listen, parse_listen

    return format_listen(*parse_listen(value))


def _check_token(_inst: object, _attr: object, value: str) -> None:
    # The messages never quote the value: it is a secret.
    if value and not _TOKEN.fullmatch(value):
        raise ValueError("must be printable ASCII without spaces")
    if value and len(value) < _MIN_TOKEN:
        raise ValueError(f"must be at least {_MIN_TOKEN} characters (got {len(value)})")


def _origins(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("origins must be a sequence of strings, not a string")
    return tuple(origin.rstrip("/").lower() for origin in value)


def _check_origins(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    bad = [origin for origin in value if not _ORIGIN.fullmatch(origin)]
    if bad:
        raise ValueError(f"not origins (scheme://host[:port]): {', '.join(map(repr, bad))}")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class AdminConfig:
    """The admin listener: ``/events`` (websocket), ``/`` (the live page), ``/metrics``."""

    enabled: bool = True
    listen: str = attrs.field(default="127.0.0.1:8025", converter=_normalize_listen)
    # Bearer token for /events and /metrics (the page itself holds no data). Empty: none.
    token: str = attrs.field(default="", repr=False, validator=_check_token)
    # Without a token, anyone on this machine may watch when the listener is loopback.
    open_on_loopback: bool = True
    # Recent events kept for a new watcher's replay (0: no replay, nothing kept).
    replay: int = attrs.field(default=100, validator=_between(0, 100_000))
    # How far a watcher may fall behind before it loses events (and gets a gap event).
    buffer: int = attrs.field(default=4096, validator=_between(16, 1_000_000))
    max_clients: int = attrs.field(default=32, validator=_between(1, 10_000))
    # Browser origins allowed besides the listener's own (http://host:port).
    origins: tuple[str, ...] = attrs.field(default=(), converter=_origins, validator=_check_origins)
    # Time every plugin call for the /metrics histograms even when nobody watches (costs a
    # little on every hook; without it, plugin metrics stay empty).
    plugin_metrics: bool = False
    # Serve watchers from a separate process fed by the daemon (their JSON encoding and
    # websocket writes then cost the SMTP event loop nothing); false: in the daemon itself.
    watcher_process: bool = True

    @property
    def host(self) -> str:
        from ._schema import parse_listen

        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        from ._schema import parse_listen

        return parse_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def open(self) -> bool:
        """Whether clients may watch without the token."""
        return self.open_on_loopback and self.loopback


def admin_problems(admin: AdminConfig) -> list[tuple[str, str]]:
    """Every cross-field problem as ``(key, why)``."""
    if not admin.enabled or admin.token:
        return []
    if not admin.loopback:
        return [
            (
                "token",
                f"required when listen ({admin.listen}) is not a loopback address:"
                " the event stream shows every client, sender and recipient",
            )
        ]
    if not admin.open_on_loopback:
        return [("token", "required when open_on_loopback is false (nobody could connect)")]
    return []
