"""Bounce Address Tag Validation (BATV, prvs scheme): sign our users' envelope senders, and
refuse bounces to addresses we did not sign (backscatter).

Config (``conf/plugins/batv.toml``): ``keys`` (required), ``sign_key`` (0), ``max_age`` (7
days), ``sign_domains`` (the local domains), ``mode`` ("reject"), ``exempt`` (["postmaster"]).

Theory of operation
-------------------
Spam with a forged sender in our domain makes other servers send us bounces for mail we never
sent. BATV (draft-levine-smtp-batv, "prvs") signs the envelope sender of the mail we do send,
so a genuine bounce comes back to a signed address and a forged one does not::

    alice@example.com  ->  prvs=KDDDSSSSSS=alice@example.com

K is the number of the key (its index in ``keys``, for rotation), DDD the day number (days since
1970, UTC) on which the tag expires, modulo 1000, and SSSSSS the first 3 bytes, in hex, of the
HMAC-SHA1 of ``KDDDalice@example.com`` (ASCII letters lower-cased) keyed with key K.

Signing (``queue_outbound``, priority -60: before srs and the queue plugins): the sender of a
relaying or authenticated client (those are the clients whose mail reaches queue_outbound), in
one of ``sign_domains``, when the message has a recipient outside the local domains. Not
signed: the null sender, a sender already tagged, an SRS sender (a forwarded message's
return path, not a user's), and a sender whose tagged form would pass 64 octets.

Checking (``rcpt``, priority -10: after srs, before rcpt_to_host_list): for a recipient in
``sign_domains`` (other than ``exempt`` ones and postmaster, which RFC 5321 says must accept
mail), a bounce (``MAIL FROM:<>``) from a client that may not relay must be addressed to a tag
that verifies and has not expired; otherwise, with ``mode = "reject"``, 550 5.7.1. (Relaying
and authenticated clients are ours: their null-sender mail, a backend's vacation notice, is
not backscatter.) With ``"tag"`` the message is accepted
and gets an ``X-BATV:`` header (``pass`` or ``fail (<why>)``, replacing any such header it came
with); with ``"log"`` the verdict is only logged and noted. A tagged recipient is delivered to
its plain address (the tag is taken off at DATA, and again at the queue hooks), valid or not:
mail that is not a bounce (auto-replies to the envelope sender) is never refused for its tag.
The checks return CONT: whether the mailbox exists is for the plugins after this one.

Our own bounces: when a signed message fails, the queue's ``bounce`` hook lets us readdress the
report to the plain address (past ``max_age`` too: we made the tag); a tagged recipient met on
the queue's local delivery path (its success notices) is delivered to the plain mailbox.

Notes: ``txn.notes["batv"]`` maps each checked recipient to its verdict ("valid", "unsigned",
"invalid", "expired"; "not a bounce" for tagged recipients of other mail).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import attrs

from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams, make_address

from ._envelope_tags import (
    ascii_lower,
    check_choice,
    check_days,
    check_domains,
    check_keys,
    check_secret,
    day_number,
    is_remote,
    is_srs_local,
    keyed_digest,
    normal_domain,
    note_map,
    rewrite_recipients,
    same_text,
)

DAY_SLOTS = 1000  # DDD is the expiry day modulo this
MAX_KEYS = 10  # K is one digit
DEFAULT_MAX_AGE = 7
STATUS_NOTE = "batv"  # {recipient: verdict}
STRIP_NOTE = "batv.strip"  # {tagged recipient: plain address}
HEADER = "X-BATV"
_KEYS = frozenset({"keys", "sign_key", "max_age", "sign_domains", "mode", "exempt"})
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")


class Status(enum.Enum):
    UNSIGNED = "unsigned"
    INVALID = "invalid"  # a wrong signature, an unknown or retired key, a mangled tag
    EXPIRED = "expired"
    VALID = "valid"


@attrs.frozen
class Decoded:
    """A local part's tag verdict; ``local`` is the plain local part whenever there was a
    well-formed tag (valid or not)."""

    status: Status
    local: str = ""


@attrs.frozen
class Codec:
    """prvs tags: ``keys[K]`` signs (an empty key is retired: its tags no longer verify)."""

    keys: tuple[bytes, ...]
    sign_key: int = 0
    max_age: int = DEFAULT_MAX_AGE

    def _signature(self, key: int, day: str, local: str, domain: str) -> str:
        return keyed_digest(self.keys[key], f"{key}{day}{local}@{domain}")[:3].hex()

    def sign(self, local: str, domain: str, today: int) -> str:
        """The tagged local part for ``local@domain``, valid through ``max_age`` days."""
        expiry = f"{(today + self.max_age) % DAY_SLOTS:03d}"
        signature = self._signature(self.sign_key, expiry, local, domain)
        return f"prvs={self.sign_key}{expiry}{signature}={local}"

    def check(self, local: str, domain: str, today: int, *, check_age: bool = True) -> Decoded:
        """The verdict on a local part at ``domain``. Never raises."""
        if ascii_lower(local[:5]) != "prvs=":
            return Decoded(Status.UNSIGNED)
        tag, sep, plain = local[5:].partition("=")
        if not sep or not plain or not _well_formed(tag):
            return Decoded(Status.INVALID)
        key = int(tag[0])
        if key >= len(self.keys) or not self.keys[key]:
            return Decoded(Status.INVALID, plain)
        if not same_text(tag[4:], self._signature(key, tag[1:4], plain, domain)):
            return Decoded(Status.INVALID, plain)
        if check_age and (int(tag[1:4]) - today) % DAY_SLOTS > self.max_age:
            return Decoded(Status.EXPIRED, plain)
        return Decoded(Status.VALID, plain)


def _well_formed(tag: str) -> bool:
    return len(tag) == 10 and set(tag[:4]) <= _DIGITS and set(tag[4:]) <= _HEX


REFUSALS = {
    Status.UNSIGNED: "Bounce to an unsigned address refused (BATV)",
    Status.INVALID: "Bounce to an address with an invalid BATV signature refused",
    Status.EXPIRED: "Bounce to an expired BATV address refused",
}


class Plugin(hooks.Plugin):
    # Every hook edits the envelope (sender, recipients), and such edits do not
    # cross back from the process sandbox: each hook says sandbox="none", which a top-level
    # `sandbox = "process"` in the plugin's file cannot override.

    def setup(self) -> None:
        config = self.config
        check_keys(config, _KEYS)
        keys = self._keys()
        sign_key = config.get("sign_key", 0)
        if isinstance(sign_key, bool) or not isinstance(sign_key, int):
            raise ValueError("sign_key: must be the index of a key in keys")
        if not 0 <= sign_key < len(keys) or not keys[sign_key]:
            raise ValueError(f"sign_key: keys[{sign_key}] does not exist or is retired ('')")
        self.codec = Codec(keys, sign_key, check_days(config, "max_age", DEFAULT_MAX_AGE))
        self.local_domains = frozenset(normal_domain(d) for d in self.env.local_domains)
        domains = config.get("sign_domains")
        self.sign_domains = (
            self.local_domains if domains is None else check_domains(domains, "sign_domains")
        )
        self.mode = check_choice(config, "mode", ("reject", "tag", "log"))
        self.exempt = self._exempt()
        self.now: Callable[[], float] = time.time  # wall clock, replaceable in tests

    def _keys(self) -> tuple[bytes, ...]:
        keys = self.config.get("keys")
        if keys is None:
            raise ValueError('keys is required: a list of secrets, keys = ["<random string>"]')
        if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS:
            raise ValueError(f"keys: must be a list of 1 to {MAX_KEYS} secrets")
        return tuple(
            b"" if key == "" else check_secret(key, f"keys[{n}]") for n, key in enumerate(keys)
        )

    def _exempt(self) -> frozenset[str]:
        exempt = self.config.get("exempt", ["postmaster"])
        if not isinstance(exempt, list) or not all(isinstance(e, str) and e for e in exempt):
            raise ValueError('exempt: must be a list of local parts or addresses ("abuse")')
        return frozenset(ascii_lower(e) for e in exempt) | {"postmaster"}

    # ------------------------------------------------------------------ checking

    def is_exempt(self, rcpt: Address) -> bool:
        local = ascii_lower(rcpt.unquoted_local_part)
        return local in self.exempt or f"{local}@{normal_domain(rcpt.domain)}" in self.exempt

    def verdict(self, rcpt: Address, *, check_age: bool = True) -> tuple[Status, Address | None]:
        """The recipient's verdict, and its plain address when it had a tag (None otherwise,
        or when the plain local part would not make an address)."""
        decoded = self.codec.check(
            rcpt.unquoted_local_part,
            normal_domain(rcpt.domain),
            day_number(self.now()),
            check_age=check_age,
        )
        plain = make_address(decoded.local, rcpt.domain) if decoded.local else None
        if decoded.local and plain is None:
            return Status.INVALID, None
        return decoded.status, plain

    @hooks.hook(priority=-10, sandbox="none")
    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        if normal_domain(rcpt.domain) not in self.sign_domains:
            return hooks.CONT
        txn = conn.transaction
        assert txn is not None
        status, plain = self.verdict(rcpt)
        if plain is not None:
            note_map(txn.notes, STRIP_NOTE)[str(rcpt)] = str(plain)
        if txn.sender is not None:  # not a bounce: the tag (if any) only has to come off
            if plain is not None:
                note_map(txn.notes, STATUS_NOTE)[str(rcpt)] = "not a bounce"
            return hooks.CONT
        if conn.relaying:  # our own clients' bounces (a backend's vacation notice) are trusted
            return hooks.CONT
        if status is not Status.VALID and self.is_exempt(plain or rcpt):
            return hooks.CONT
        note_map(txn.notes, STATUS_NOTE)[str(rcpt)] = status.value
        if status is Status.VALID:
            return hooks.CONT
        self.log.info(
            "conn=%s txn=%s bounce to <%s>: %s (%s)", conn.id, txn.id, rcpt, status.value, self.mode
        )
        if self.mode == "reject":
            return hooks.deny(REFUSALS[status], code=550, enhanced="5.7.1")
        return hooks.CONT

    @hooks.hook(priority=-1000, sandbox="none")
    async def hook_data(self, conn: hooks.Connection) -> hooks.Result:
        assert conn.transaction is not None
        self._strip_recipients(conn.transaction)
        return hooks.CONT

    @hooks.hook(sandbox="none")
    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        verdicts = note_map(txn.notes, STATUS_NOTE)
        if self.mode != "tag" or txn.sender is not None or not verdicts:
            return hooks.CONT
        failed = sorted({v for v in verdicts.values() if v != Status.VALID.value})
        txn.remove_header(HEADER)
        txn.add_header(HEADER, f"fail ({', '.join(failed)})" if failed else "pass")
        return hooks.CONT

    def _strip_recipients(self, txn: hooks.Transaction) -> None:
        rewrite_recipients(txn, STRIP_NOTE)

    # ------------------------------------------------------------------ signing

    @hooks.hook(priority=-60, sandbox="none")
    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        if conn.listener == "queue":  # the built-in queue, delivering locally: our notices
            self._strip_own_tags(txn)
        self._strip_recipients(txn)
        return hooks.CONT

    @hooks.hook(priority=-60, sandbox="none")
    async def hook_queue_outbound(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        self._strip_recipients(txn)
        self._sign_sender(txn)
        return hooks.CONT

    def _strip_own_tags(self, txn: hooks.Transaction) -> None:
        mapping = note_map(txn.notes, STRIP_NOTE)
        for rcpt, _ in txn.recipients:
            if normal_domain(rcpt.domain) in self.sign_domains:
                status, plain = self.verdict(rcpt, check_age=False)
                if status is Status.VALID and plain is not None:
                    mapping[str(rcpt)] = str(plain)

    def _sign_sender(self, txn: hooks.Transaction) -> None:
        sender = txn.sender
        if sender is None or normal_domain(sender.domain) not in self.sign_domains:
            return
        local = sender.unquoted_local_part
        if sender.is_quoted or ascii_lower(local[:5]) == "prvs=" or is_srs_local(local):
            return
        if not any(is_remote(rcpt, self.local_domains) for rcpt, _ in txn.recipients):
            return
        tagged = make_address(
            self.codec.sign(local, normal_domain(sender.domain), day_number(self.now())),
            sender.domain,
        )
        if tagged is None:
            self.log.warning("txn=%s sender <%s> not signed: over 64 octets tagged", txn.id, sender)
            return
        txn.sender = tagged
        self.log.info("txn=%s sender <%s> signed as <%s>", txn.id, sender, tagged)

    @hooks.hook(sandbox="none")
    async def hook_bounce(
        self, conn: hooks.Connection, report: hooks.DeliveryReport
    ) -> hooks.Result:
        txn = conn.transaction
        sender = txn.sender if txn is not None else None
        if txn is None or sender is None or normal_domain(sender.domain) not in self.sign_domains:
            return hooks.CONT
        status, plain = self.verdict(sender, check_age=False)
        if status is Status.VALID and plain is not None:
            self.log.info("queue=%s bounce to <%s> readdressed to <%s>", txn.id, sender, plain)
            txn.sender = plain
        return hooks.CONT
