"""SASL exchanges (RFC 4422) for SMTP AUTH (RFC 4954): PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195).

Theory of operation
-------------------
One ``SaslExchange`` per AUTH command. ``start`` takes the initial response (raw base64,
``"="`` for an empty one, None for none), ``respond`` each later client line; each returns
the next step:

* ``Challenge``: answer ``334`` with its (base64) text and wait for the next line;
* ``Credentials``: the exchange is complete, the caller verifies them (the ``auth`` hook);
* ``Reply``: the exchange ended without credentials: ``*`` (501 5.0.0), bad base64 (501 5.5.2),
  a malformed response (501 5.5.2).

Pure: no I/O, no clock, no randomness (the CRAM-MD5 challenge is given by the caller), and
nothing here logs. Secrets exist only inside the returned ``Credentials``, whose repr hides
them. Responses are decoded strictly (RFC 4648 alphabet, padding, canonical form) and must be
UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import enum

import attrs

from ..hooks import Credentials
from ..protocol import Reply, reply
from ..protocol import replies as R

MALFORMED = reply(501, "5.5.2", "Malformed authentication response")
BAD_UTF8 = reply(501, "5.5.2", "Authentication data is not valid UTF-8")
NO_INITIAL = reply(501, "5.5.4", "CRAM-MD5 takes no initial response")
AUTHZ_REFUSED = reply(535, "5.7.8", "Authentication credentials invalid")

_USERNAME = base64.b64encode(b"Username:").decode("ascii")
_PASSWORD = base64.b64encode(b"Password:").decode("ascii")


class Mechanism(enum.StrEnum):
    PLAIN = "PLAIN"
    LOGIN = "LOGIN"
    CRAM_MD5 = "CRAM-MD5"


MECHANISMS = tuple(Mechanism)  # in the order they are advertised


@attrs.frozen
class Challenge:
    """Answer ``334 <text>``; ``text`` is already base64 (empty for an empty challenge)."""

    text: str

    def reply(self) -> Reply:
        return Reply(334, None, (self.text,))


Step = Challenge | Credentials | Reply


def decode(text: str) -> bytes | None:
    """A client's base64 line, or None if it is not strict base64. ``"="`` is empty."""
    if text in ("", "="):
        return b""
    try:
        raw = text.encode("ascii")
        data = binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    # Canonical form only: no excess padding, no stray bits in the last character.
    return data if base64.b64encode(data) == raw else None


class SaslExchange:
    def __init__(self, mechanism: Mechanism, *, challenge: str = "") -> None:
        self.mechanism = mechanism
        self._challenge = challenge
        self._username: str | None = None
        self.done = False

    def start(self, initial: str | None) -> Step:
        if self.mechanism is Mechanism.CRAM_MD5:
            if initial is not None:
                return self._end(NO_INITIAL)
            return Challenge(base64.b64encode(self._challenge.encode("utf-8")).decode("ascii"))
        if initial is None:
            return Challenge("" if self.mechanism is Mechanism.PLAIN else _USERNAME)
        return self._take(initial)

    def respond(self, line: str) -> Step:
        if self.done:
            raise RuntimeError("the exchange is over")
        if line == "*":
            return self._end(R.AUTH_CANCELLED)
        return self._take(line)

    def _end(self, step: Reply | Credentials) -> Reply | Credentials:
        self.done = True
        return step

    def _take(self, line: str) -> Step:
        data = decode(line)
        if data is None:
            return self._end(R.BAD_BASE64)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self._end(BAD_UTF8)
        if self.mechanism is Mechanism.PLAIN:
            return self._end(self._plain(text))
        if self.mechanism is Mechanism.LOGIN:
            if self._username is None:
                if not text:
                    return self._end(MALFORMED)
                self._username = text
                return Challenge(_PASSWORD)
            return self._end(Credentials("LOGIN", self._username, password=text))
        return self._end(self._cram(text))

    @staticmethod
    def _plain(text: str) -> Reply | Credentials:
        # authzid NUL authcid NUL passwd (RFC 4616 §2)
        parts = text.split("\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return MALFORMED
        authzid, authcid, passwd = parts
        if authzid and authzid != authcid:
            return AUTHZ_REFUSED  # acting for another identity is not supported
        return Credentials("PLAIN", authcid, password=passwd)

    def _cram(self, text: str) -> Reply | Credentials:
        # username SP 32 lower-case hex digits (RFC 2195 §2)
        user, _, digest = text.rpartition(" ")
        if not user or len(digest) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            return MALFORMED
        return Credentials("CRAM-MD5", user, challenge=self._challenge, digest=digest.lower())
