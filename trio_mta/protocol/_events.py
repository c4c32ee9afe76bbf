"""Events the server side of the protocol produces from the client's bytes.

Every command event is answered by exactly one reply (``ServerConnection.send``) before the next
event is asked for; data events (``DataChunk``) need no reply. Don't subclass these.
"""

from __future__ import annotations

import enum
from typing import Literal

import attrs

from ._address import Address, MailParams, RcptParams
from ._replies import Reply


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA = _Sentinel.NEED_DATA
"""``next_event()`` has nothing to give until more bytes arrive."""
NeedData = Literal[_Sentinel.NEED_DATA]


@attrs.frozen
class Helo:
    name: str
    extended: bool  # EHLO rather than HELO


@attrs.frozen
class MailFrom:
    sender: Address | None  # None is the null reverse-path <>
    params: MailParams


@attrs.frozen
class RcptTo:
    recipient: Address
    params: RcptParams


@attrs.frozen
class DataCommand:
    """``DATA``: reply 354 to receive the message, anything else to refuse it."""


@attrs.frozen
class BdatCommand:
    """A ``BDAT`` header line (RFC 3030); its chunk follows as ``DataChunk`` events, then
    ``EndOfChunk``. No reply is owed for this event: the reply answers ``EndOfChunk``."""

    size: int
    last: bool


@attrs.frozen
class DataChunk:
    """Part of the message body, already dot-unstuffed. Needs no reply."""

    data: bytes


@attrs.frozen
class EndOfData:
    """The message is complete (``CRLF.CRLF`` after DATA, or the ``BDAT ... LAST`` chunk).

    ``problem`` is set when the protocol layer itself refuses the message (too big, bare line
    endings, over-long lines): then the driver must send that reply and not deliver.
    """

    size: int
    problem: Reply | None = None


@attrs.frozen
class EndOfChunk:
    """A non-final BDAT chunk has been read; reply 250 to continue. ``problem`` as for EndOfData
    (for a chunk of a refused transaction the reply is decided by the protocol layer)."""

    size: int
    problem: Reply | None = None


@attrs.frozen
class Rset:
    pass


@attrs.frozen
class Noop:
    pass


@attrs.frozen
class Quit:
    pass


@attrs.frozen
class Vrfy:
    argument: str


@attrs.frozen
class Expn:
    argument: str


@attrs.frozen
class Help:
    argument: str


@attrs.frozen
class StartTLS:
    """Reply 220 and then call ``start_tls()``, or refuse with any other reply."""


@attrs.frozen
class Auth:
    """``AUTH mechanism [initial-response]`` (RFC 4954). ``initial`` is the raw base64 text
    (``"="`` means an empty initial response). Reply 334 to continue the exchange."""

    mechanism: str
    initial: str | None


@attrs.frozen
class AuthResponse:
    """One client line during an AUTH exchange (raw base64, or ``"*"`` to cancel)."""

    line: str


@attrs.frozen
class Unrecognized:
    """A command verb we don't implement. The default reply is 500 5.5.1."""

    verb: str
    line: str


@attrs.frozen
class Rejected:
    """A command refused by the protocol layer itself (syntax, sequence, limits). Reply with
    ``reply`` (the driver may log or count it first). ``command`` is the verb, if known."""

    command: str
    reply: Reply


@attrs.frozen
class ConnectionClosed:
    """The client closed its side. Nothing more will come."""


Event = (
    Helo
    | MailFrom
    | RcptTo
    | DataCommand
    | BdatCommand
    | DataChunk
    | EndOfData
    | EndOfChunk
    | Rset
    | Noop
    | Quit
    | Vrfy
    | Expn
    | Help
    | StartTLS
    | Auth
    | AuthResponse
    | Unrecognized
    | Rejected
    | ConnectionClosed
)
