"""Sender Rewriting Scheme (SRS) for forwarded mail, and the way back for its bounces.

Config (``conf/plugins/srs.toml``): ``secret`` or ``secret_file`` (required), ``domain`` (the
server's hostname), ``max_age`` (21 days), ``exclude_domains`` ([]), ``separator`` ("="),
``rewrite`` ("remote"), ``reverse`` ("any"). ``exclude_domains`` entries are domains, or
".example.com" for all the subdomains of one.

Theory of operation
-------------------
A server that forwards a message from a sender of another domain fails that domain's SPF at the
next hop: the next hop sees our address with their domain. SRS (the scheme of libsrs2 and
postsrsd) puts in the envelope sender an address at our ``domain`` that carries the original
one, signed, so that bounces come back to us and we can pass them on::

    alice@sender.example  ->  SRS0=HHHH=TT=sender.example=alice@<domain>

HHHH is the first 4 characters of the base64 HMAC-SHA1 (keyed with the secret) of TT, the
domain and the local part, ASCII letters lower-cased; TT is the day number modulo 1024 in
base32. A sender that is already SRS0 at another forwarder becomes SRS1, keeping the first
forwarder and its part, signed again by us (no time stamp: the first forwarder checks its own)::

    SRS0=HHHH=TT=sender.example=alice@fwd.example  ->  SRS1=GGGG=fwd.example==HHHH=TT=...@<domain>

The separator after SRS0/SRS1 is configurable ("=", "+" or "-"); any of them is accepted back.

Forward path (``queue`` and ``queue_outbound``, before the queue plugins, so queue_smtp_forward
and the built-in queue both send the rewritten sender): the sender is rewritten when the message
leaves this server, that is when a recipient is outside the local domains (``rewrite =
"remote"``), or always (``"all"``: every message is handed to another host). Never rewritten:
the null sender, senders in the local domains, in ``exclude_domains`` or at ``domain``, and
senders whose SRS form our own server would refuse in RCPT TO (a local part over 64 octets, a
quoted local part, an address literal): those leave unchanged, with a warning.

Reverse path (``rcpt``, priority -20: before rcpt_to_host_list and batv): an SRS recipient at
``domain`` must carry our signature (with any of the secrets, case-insensitively) and, for SRS0,
be at most ``max_age`` days old. Valid: OK, and the transaction may relay for it
(``txn.relaying``: the message goes to the outbound queue); at DATA the recipient becomes the
original address (the queue hooks do it again if another plugin cut the data chain short).
A forged or mangled one: 550 5.1.1; an expired one: 550 5.7.1. Only an address that verifies is
relayed, and only to the address it carries: the client's other recipients are judged as
before. ``reverse = "bounces"`` keeps the way back for the null sender only; the default,
"any", is postsrsd's (auto-replies and list software answer the envelope sender with a sender
of their own).

Our own bounces: when a message we relayed with an SRS sender fails, the queue's ``bounce``
hook lets us readdress the report to the original sender (past ``max_age`` too: we made the
address), so it never goes through our own domain. An SRS recipient handed to local delivery
(the queue's success notices) cannot be delivered there and is refused.
"""

from __future__ import annotations

import base64
import enum
import time
from collections.abc import Callable

import attrs

from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams, make_address

from ._envelope_tags import (
    SRS_SEPARATORS,
    ascii_lower,
    check_choice,
    check_days,
    check_domain,
    check_domains,
    check_keys,
    check_secret,
    day_number,
    is_remote,
    is_srs_local,
    keyed_digest,
    normal_domain,
    note_map,
    read_secrets,
    rewrite_recipients,
    same_text,
)

HASH_LENGTH = 4
TIME_SLOTS = 1024  # days; TT is the day number modulo this
BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
DEFAULT_MAX_AGE = 21
REVERSED_NOTE = "srs.reversed"  # {SRS recipient: original address}
SENDER_NOTE = "srs.original_sender"  # set when the sender was rewritten
_KEYS = frozenset(
    {"secret", "secret_file", "domain", "max_age", "exclude_domains", "separator"}
    | {"rewrite", "reverse"}
)


class Status(enum.Enum):
    NOT_SRS = "not an SRS address"
    MALFORMED = "malformed"
    BAD_HASH = "bad hash"
    EXPIRED = "expired"
    VALID = "valid"


@attrs.frozen
class Decoded:
    """What an SRS local part stands for: ``local@domain`` when ``status`` is VALID."""

    status: Status
    local: str = ""
    domain: str = ""


def encode_timestamp(day: int) -> str:
    slot = day % TIME_SLOTS
    return BASE32[slot >> 5] + BASE32[slot & 31]


def decode_timestamp(text: str) -> int | None:
    """The day slot of a 2-character stamp (case-insensitive), None if it is not one."""
    if len(text) != 2:
        return None
    value = 0
    for ch in text:
        index = BASE32.find(ch.upper()) if ch.isascii() else -1
        if index < 0:
            return None
        value = value << 5 | index
    return value


def _split_srs1(body: str) -> tuple[str, str, str] | None:
    """``HHHH=first-forwarder=<rest of its SRS0, from its separator>`` as its three parts."""
    parts = body.split("=", 2)
    if len(parts) != 3 or not all(parts) or parts[2][0] not in SRS_SEPARATORS:
        return None
    return parts[0], parts[1], parts[2]


@attrs.frozen
class Codec:
    """SRS0/SRS1 local parts, signed with the first secret, verified with any of them."""

    secrets: tuple[bytes, ...]
    separator: str = "="
    max_age: int = DEFAULT_MAX_AGE

    def sign(self, *parts: str, secret: bytes | None = None) -> str:
        digest = keyed_digest(secret or self.secrets[0], *parts)
        return base64.b64encode(digest).decode("ascii")[:HASH_LENGTH]

    def verify(self, given: str, *parts: str) -> bool:
        return len(given) == HASH_LENGTH and any(
            same_text(given, self.sign(*parts, secret=secret)) for secret in self.secrets
        )

    def forward(self, local: str, domain: str, day: int) -> str:
        """The local part (at our domain) that stands for ``local@domain``."""
        if is_srs_local(local):
            if ascii_lower(local[:4]) == "srs0":
                return self._srs1(domain, local[4:])
            parsed = _split_srs1(local[5:])
            if parsed is not None:  # an SRS1 stays one: same first forwarder, our signature
                return self._srs1(parsed[1], parsed[2])
        stamp = encode_timestamp(day)
        signature = self.sign(stamp, domain, local)
        return f"SRS0{self.separator}{signature}={stamp}={domain}={local}"

    def _srs1(self, first: str, rest: str) -> str:
        return f"SRS1{self.separator}{self.sign(first, rest)}={first}={rest}"

    def reverse(self, local: str, day: int, *, check_age: bool = True) -> Decoded:
        """What ``local`` (at our domain) stands for. Never raises: anything that is not a
        valid SRS local part of ours is a Decoded with another status."""
        if not is_srs_local(local):
            return Decoded(Status.NOT_SRS)
        body = local[5:]
        if ascii_lower(local[:4]) == "srs1":
            parsed = _split_srs1(body)
            if parsed is None:
                return Decoded(Status.MALFORMED)
            given, first, rest = parsed
            if not self.verify(given, first, rest):
                return Decoded(Status.BAD_HASH)
            return Decoded(Status.VALID, "SRS0" + rest, first)
        parts = body.split("=", 3)
        if len(parts) != 4 or not all(parts):
            return Decoded(Status.MALFORMED)
        given, stamp, domain, user = parts
        then = decode_timestamp(stamp)
        if then is None:
            return Decoded(Status.MALFORMED)
        if not self.verify(given, stamp, domain, user):
            return Decoded(Status.BAD_HASH)
        if check_age and (day - then) % TIME_SLOTS > self.max_age:
            return Decoded(Status.EXPIRED)
        return Decoded(Status.VALID, user, domain)


MALFORMED = hooks.deny("Invalid SRS address: malformed", code=550, enhanced="5.1.1")
BAD_HASH = hooks.deny("Invalid SRS address: bad signature", code=550, enhanced="5.1.1")
EXPIRED = hooks.deny("SRS address expired", code=550, enhanced="5.7.1")
BOUNCES_ONLY = hooks.deny(
    "SRS address accepts bounces only (MAIL FROM:<>)", code=550, enhanced="5.7.1"
)
NOT_LOCAL = hooks.deny("SRS address cannot be delivered locally", code=550, enhanced="5.1.1")
_REFUSALS = {Status.MALFORMED: MALFORMED, Status.BAD_HASH: BAD_HASH, Status.EXPIRED: EXPIRED}


def _exclusions(value: object) -> tuple[frozenset[str], tuple[str, ...]]:
    """``exclude_domains``: exact domains, and ".example.com" for every subdomain of one."""
    if not isinstance(value, list | tuple) or not all(isinstance(d, str) for d in value):
        raise ValueError("exclude_domains: must be a list of domain names")
    parents = [d for d in value if d.startswith(".")]
    exact = check_domains([d for d in value if not d.startswith(".")], "exclude_domains")
    suffixes = check_domains([d[1:] for d in parents], "exclude_domains")
    return exact, tuple("." + d for d in sorted(suffixes))


class Plugin(hooks.Plugin):
    # Every hook edits the envelope (sender, recipients, txn.relaying), and such edits do not
    # cross back from the process sandbox: each hook says sandbox="none", which a top-level
    # `sandbox = "process"` in the plugin's file cannot override.

    def setup(self) -> None:
        config = self.config
        check_keys(config, _KEYS)
        separator = config.get("separator", "=")
        if not isinstance(separator, str) or len(separator) != 1 or separator not in "=+-":
            raise ValueError('separator: must be "=", "+" or "-"')
        max_age = check_days(config, "max_age", DEFAULT_MAX_AGE)
        self.codec = Codec(self._secrets(), separator, max_age)
        self.domain = check_domain(config.get("domain", self.env.hostname), "domain")
        self.local_domains = frozenset(normal_domain(d) for d in self.env.local_domains)
        self.exclude, self.exclude_parents = _exclusions(config.get("exclude_domains", []))
        self.rewrite = check_choice(config, "rewrite", ("remote", "all"))
        self.reverse = check_choice(config, "reverse", ("any", "bounces"))
        self.now: Callable[[], float] = time.time  # wall clock, replaceable in tests

    def _secrets(self) -> tuple[bytes, ...]:
        secret, secret_file = self.config.get("secret"), self.config.get("secret_file")
        if secret is not None and secret_file is not None:
            raise ValueError("secret and secret_file: set one of them, not both")
        if secret is not None:
            return (check_secret(secret, "secret"),)
        if secret_file is not None:
            return read_secrets(secret_file, self.env.config_dir, "secret_file")
        raise ValueError("secret is required (or secret_file): the key that signs SRS addresses")

    # ------------------------------------------------------------------ the way back

    def original(self, rcpt: Address, *, check_age: bool = True) -> tuple[Status, Address | None]:
        """What an address at our domain stands for (an Address only when VALID)."""
        decoded = self.codec.reverse(
            rcpt.unquoted_local_part, day_number(self.now()), check_age=check_age
        )
        if decoded.status is not Status.VALID:
            return decoded.status, None
        address = make_address(decoded.local, decoded.domain)
        return (Status.VALID, address) if address is not None else (Status.MALFORMED, None)

    @hooks.hook(priority=-20, sandbox="none")
    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        if normal_domain(rcpt.domain) != self.domain:
            return hooks.CONT
        txn = conn.transaction
        assert txn is not None
        status, original = self.original(rcpt)
        if status is Status.NOT_SRS:
            return hooks.CONT
        if original is None:
            self.log.info("conn=%s txn=%s <%s> refused: %s", conn.id, txn.id, rcpt, status.value)
            return _REFUSALS[status]
        if self.reverse == "bounces" and txn.sender is not None:
            self.log.info("conn=%s txn=%s <%s> refused: not a bounce", conn.id, txn.id, rcpt)
            return BOUNCES_ONLY
        note_map(txn.notes, REVERSED_NOTE)[str(rcpt)] = str(original)
        if is_remote(original, self.local_domains):
            txn.relaying = True
        self.log.info("conn=%s txn=%s <%s> reversed to <%s>", conn.id, txn.id, rcpt, original)
        return hooks.OK

    @hooks.hook(priority=-1000, sandbox="none")
    async def hook_data(self, conn: hooks.Connection) -> hooks.Result:
        assert conn.transaction is not None
        self._reverse_recipients(conn.transaction)
        return hooks.CONT

    def _reverse_recipients(self, txn: hooks.Transaction) -> None:
        rewrite_recipients(txn, REVERSED_NOTE)

    # ------------------------------------------------------------------ the way out

    @hooks.hook(priority=-50, sandbox="none")
    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        if conn.listener == "queue":  # the built-in queue, delivering locally
            return self._local_delivery(txn)
        self._reverse_recipients(txn)
        self._rewrite_sender(txn)
        return hooks.CONT

    @hooks.hook(priority=-50, sandbox="none")
    async def hook_queue_outbound(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        self._reverse_recipients(txn)
        self._rewrite_sender(txn)
        return hooks.CONT

    def _local_delivery(self, txn: hooks.Transaction) -> hooks.Result:
        for rcpt, _ in txn.recipients:
            if normal_domain(rcpt.domain) == self.domain and is_srs_local(rcpt.unquoted_local_part):
                self.log.warning(
                    "queue=%s <%s> is an SRS address: not delivered locally (route %s to this "
                    "server's SMTP listener to have it reversed)",
                    txn.id,
                    rcpt,
                    self.domain,
                )
                return NOT_LOCAL
        return hooks.CONT

    def _excluded(self, domain: str) -> bool:
        return domain in self.exclude or domain.endswith(self.exclude_parents)

    def _leaves(self, txn: hooks.Transaction) -> bool:
        return self.rewrite == "all" or any(
            is_remote(rcpt, self.local_domains) for rcpt, _ in txn.recipients
        )

    def _rewrite_sender(self, txn: hooks.Transaction) -> None:
        sender = txn.sender
        if sender is None or not sender.domain or not self._leaves(txn):
            return
        domain = normal_domain(sender.domain)
        if domain in self.local_domains or domain == self.domain or self._excluded(domain):
            return
        rewritten = None
        if not (sender.is_quoted or sender.is_address_literal):
            local = self.codec.forward(sender.local_part, sender.domain, day_number(self.now()))
            rewritten = make_address(local, self.domain)
        if rewritten is None:
            self.log.warning(
                "txn=%s sender <%s> not rewritten: it has no SRS form our server would accept "
                "(quoted local part, address literal, or over 64 octets)",
                txn.id,
                sender,
            )
            return
        txn.notes[SENDER_NOTE] = str(sender)
        txn.sender = rewritten
        self.log.info("txn=%s sender <%s> rewritten to <%s>", txn.id, sender, rewritten)

    @hooks.hook(sandbox="none")
    async def hook_bounce(
        self, conn: hooks.Connection, report: hooks.DeliveryReport
    ) -> hooks.Result:
        txn = conn.transaction
        sender = txn.sender if txn is not None else None
        if txn is None or sender is None or normal_domain(sender.domain) != self.domain:
            return hooks.CONT
        _, original = self.original(sender, check_age=False)
        if original is not None:
            self.log.info("queue=%s bounce to <%s> readdressed to <%s>", txn.id, sender, original)
            txn.sender = original
        return hooks.CONT
