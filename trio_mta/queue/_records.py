"""Queue records: the envelope of a spooled message, and its JSON form on disk.

An envelope is immutable (``attrs.frozen``); each attempt produces a new one with
``attrs.evolve``, which the spool writes over the old file atomically. Recipients carry their
own state, so a restart never delivers again to a recipient already done.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping

import attrs

from ..protocol import Address, AddressError, parse_path, verp_delimiters_ok, verp_encode

# Envelopes without ``verp`` (written before it existed) read back as None; a daemon older
# than ``verp`` ignores the field, and sends such a message with one sender for all.
FORMAT = 1


class CorruptEntry(Exception):
    """An envelope file that cannot be read back: moved to ``corrupt/`` and reported."""


class Kind(enum.Enum):
    MESSAGE = "message"  # relayed or submitted mail
    BOUNCE = "bounce"  # a DSN we generated (sender <>); if it fails: a double bounce
    DOUBLE_BOUNCE = "double-bounce"  # to the postmaster; if it fails: dropped and logged


class Status(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # bounced (or the bounce suppressed)


@attrs.frozen
class Recipient:
    address: str
    notify: tuple[str, ...] = ()  # RFC 3461 NOTIFY, () when not given
    orcpt: str | None = None
    status: Status = Status.PENDING
    # The last diagnosis: "550 5.1.1 No such user" (ours or the remote's), and who said it.
    code: int = 0
    enhanced: str = ""
    text: str = ""
    remote: str = ""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    def wants(self, kind: str) -> bool:
        """Whether a DSN of ``kind`` (SUCCESS, FAILURE, DELAY) was asked for; RFC 3461 §4.1:
        without NOTIFY, failures (and delays) are reported, successes not."""
        if not self.notify:
            return kind in ("FAILURE", "DELAY")
        return kind in self.notify


@attrs.frozen
class Envelope:
    id: str
    sender: str | None  # None: the null reverse path <>
    recipients: tuple[Recipient, ...]
    created: float  # wall-clock seconds (arrival)
    next_attempt: float  # wall-clock seconds
    attempts: int = 0
    kind: Kind = Kind.MESSAGE
    held: bool = False
    ret: str | None = None  # RFC 3461 RET: "FULL" or "HDRS"
    envid: str | None = None
    smtputf8: bool = False
    body: str | None = None  # BODY=8BITMIME / 7BIT as received
    size: int = 0
    client: str = ""  # where it came from, for the DSN (Received-From-MTA) and logs
    # XVERP delimiters ("+="): one transaction per recipient, each with the recipient folded
    # into the envelope sender (``return_path``). None: one sender for all.
    verp: str | None = None
    # A "delayed" report went to the sender (one per message; older envelopes read as False).
    delay_warned: bool = False

    @property
    def pending(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.status is Status.PENDING)

    @property
    def done(self) -> bool:
        return not self.pending

    def return_path(self, address: str) -> str | None:
        """The envelope sender for the recipient ``address``: with VERP, the sender with the
        recipient folded in (or the plain sender, when that makes no address our server would
        take back: a local part over 64 octets); without, the sender."""
        if self.verp is None or self.sender is None:
            return self.sender
        sender, recipient = _mailbox(self.sender), _mailbox(address)
        if sender is None or recipient is None:
            return self.sender
        folded = verp_encode(sender, recipient, self.verp)
        return str(folded) if folded is not None else self.sender


def dumps(envelope: Envelope) -> bytes:
    data = attrs.asdict(envelope, value_serializer=_serialize)
    data["format"] = FORMAT
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _serialize(_inst: object, _field: object, value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value


def loads(data: bytes) -> Envelope:
    """Raises:
    CorruptEntry: not JSON, the wrong format, or missing or mistyped fields."""
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
            raise CorruptEntry("not a queue envelope (format)")
        recipients = tuple(_recipient(r) for r in raw.pop("recipients"))
        if not recipients:
            raise CorruptEntry("no recipients")
        envelope = Envelope(
            recipients=recipients,
            kind=Kind(raw.pop("kind")),
            **{k: raw[k] for k in raw if k in _ENVELOPE_FIELDS},
        )
        _check_types(envelope)
        return envelope
    except CorruptEntry:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptEntry(f"unreadable envelope: {exc!r}") from exc


_ENVELOPE_FIELDS = frozenset(attrs.fields_dict(Envelope)) - {"recipients", "kind"}


def _recipient(raw: Mapping[str, object]) -> Recipient:
    fields = dict(raw)
    fields["status"] = Status(fields["status"])
    notify = fields.get("notify") or []
    if not isinstance(notify, list) or not all(isinstance(n, str) for n in notify):
        raise CorruptEntry("bad notify")
    fields["notify"] = tuple(notify)
    return Recipient(**fields)  # type: ignore[arg-type]  # checked by _check_types


def _check_types(envelope: Envelope) -> None:
    if not isinstance(envelope.id, str) or not envelope.id.isalnum():
        raise CorruptEntry(f"bad id {envelope.id!r}")
    if envelope.sender is not None and not isinstance(envelope.sender, str):
        raise CorruptEntry("bad sender")
    for number in (envelope.created, envelope.next_attempt, envelope.attempts, envelope.size):
        if not isinstance(number, int | float) or isinstance(number, bool):
            raise CorruptEntry("bad number")
    for r in envelope.recipients:
        if not isinstance(r.address, str) or "@" not in r.address:
            raise CorruptEntry(f"bad recipient {r.address!r}")
    verp = envelope.verp
    if verp is not None and not (isinstance(verp, str) and verp_delimiters_ok(verp)):
        raise CorruptEntry(f"bad VERP delimiters {verp!r}")


def _mailbox(text: str) -> Address | None:
    try:
        address, _ = parse_path(f"<{text}>", utf8=True, allow_null=False, allow_postmaster=True)
    except AddressError:
        return None
    return address
