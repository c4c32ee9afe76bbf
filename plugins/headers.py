"""Header sanity at the end of DATA (qpsmtpd's ``headers`` and ``loop``).

Checks, in this order, on the header section of the message as received (our own Received:
line is not part of it):

1. Hops: more than ``max_received`` Received: headers means a mail loop (RFC 5321 §6.3):
   refused with 554 5.4.6, whatever ``action`` says.
2. Singular headers: a header of ``singular`` present more than once (RFC 5322 §3.6 allows each
   of these at most once).
3. Required headers: each of ``required`` must be present with a non-empty value.

Config (``conf/plugins/headers.toml``):

``required`` (default ``["From", "Date"]``)
    Header names that must be present (RFC 5322 §3.6 requires From and Date).
``singular`` (default the RFC 5322 §3.6 list: Date, From, Sender, Reply-To, To, Cc, Bcc,
    Message-ID, In-Reply-To, References, Subject)
    Header names that may appear at most once. ``[]`` turns the check off.
``max_received`` (default 100)
    Received: headers allowed; 0 turns the loop check off.
``action`` (default ``"reject"``)
    For checks 2 and 3: ``"reject"`` refuses the message with 550 5.6.0 naming the first
    problem; ``"note"`` accepts it and lists every problem in the transaction note
    ``headers.problems`` (for a later plugin: a spam score, a quarantine).
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
from collections.abc import Sequence

from trio_mta import hooks

_KEYS = frozenset({"required", "singular", "max_received", "action"})
SINGULAR = (
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
)
NOTE = "headers.problems"


def _names(key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: must be a list of header names")
    for name in value:
        # RFC 5322 §2.2: printable ASCII except the colon.
        if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
            raise ValueError(f"{key}: {name!r} is not a header name")
    return tuple(value)


def header_section(message: hooks.Message) -> email.message.Message:
    """The parsed header section; a message that ended inside it is all header."""
    if message.headers_complete:
        return message.headers
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    return parser.parsebytes(message.as_bytes())


def problems(
    headers: email.message.Message, required: Sequence[str], singular: Sequence[str]
) -> list[str]:
    found: list[str] = []
    for name in singular:
        count = len(headers.get_all(name) or [])
        if count > 1:
            found.append(f"Duplicate header {name} ({count} times)")
    for name in required:
        values = headers.get_all(name) or []
        if not any(str(v).strip() for v in values):
            found.append(f"Missing required header {name}")
    return found


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        self.required = _names("required", self.config.get("required", ["From", "Date"]))
        self.singular = _names("singular", self.config.get("singular", list(SINGULAR)))
        max_received = self.config.get("max_received", 100)
        if isinstance(max_received, bool) or not isinstance(max_received, int) or max_received < 0:
            raise ValueError("max_received: must be a whole number, 0 for no limit")
        self.max_received = max_received
        action = self.config.get("action", "reject")
        if action not in ("reject", "note"):
            raise ValueError('action: must be "reject" or "note"')
        self.reject = action == "reject"

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        if txn is None or txn.message is None:
            return hooks.CONT
        headers = header_section(txn.message)
        hops = len(headers.get_all("Received") or [])
        if self.max_received and hops > self.max_received:
            return hooks.deny(
                f"Too many hops ({hops} Received headers): mail loop?",
                code=554,
                enhanced="5.4.6",
            )
        found = problems(headers, self.required, self.singular)
        if not found:
            return hooks.CONT
        if self.reject:
            return hooks.deny(found[0], code=550, enhanced="5.6.0")
        txn.notes[NOTE] = found
        return hooks.CONT
