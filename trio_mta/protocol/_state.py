"""The server's SMTP state and the limits the protocol layer enforces.

Rule (after h11's ``_state.py``): every state transition of the server side lives in
``_server.py``'s ``_after_reply``, keyed by the event that was answered and the reply's class;
the parser only *reads* the state to decide which command is in sequence.
"""

from __future__ import annotations

import enum

import attrs


class State(enum.Enum):
    CONNECTED = "connected"  # no HELO/EHLO yet
    READY = "ready"  # greeted, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message after 354
    BDAT = "bdat"  # between the chunks of a BDAT transaction
    AUTH = "auth"  # inside a SASL exchange (lines are responses, not commands)
    TLS_PENDING = "tls-pending"  # 220 sent to STARTTLS, waiting for start_tls()
    CLOSED = "closed"


# A tuple, not a set: membership by identity avoids Enum's Python-level __hash__ (hot path).
IN_TRANSACTION = (State.MAIL, State.RCPT, State.DATA, State.BDAT)


class BareLineEndingPolicy(enum.Enum):
    REJECT = "reject"
    NORMALIZE = "normalize"


@attrs.frozen
class ProtocolLimits:
    """Sizes in octets, including the CRLF (RFC 5321 §4.5.3.1)."""

    command_line: int = 512
    text_line: int = 1000
    auth_line: int = 12288  # RFC 4954 §4
    max_message_size: int = 35 * 1024 * 1024
    max_recipients: int = 100
    bare_line_endings: BareLineEndingPolicy = BareLineEndingPolicy.REJECT
