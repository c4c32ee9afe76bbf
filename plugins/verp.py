"""VERP (variable envelope return paths): per-recipient senders for list mail, and the way back.

Config (``conf/plugins/verp.toml``): ``senders`` ([]), ``addresses`` (``senders``),
``delimiters`` ("+="), ``skip_plugins`` (["batv", "srs"]).

Theory of operation
-------------------
Mail sent with VERP leaves with one envelope sender per recipient, the recipient folded in::

    list-bounces@example.test  to  alice@remote.example
        ->  MAIL FROM:<list-bounces+alice=remote.example@example.test>

so that a bounce names, by its address alone, the recipient that failed. The built-in queue
does the sending (one transaction per recipient, ``trio_mta.protocol.verp_encode``) for a
message whose ``mail_params.verp`` holds the two delimiters: set by the client's ``XVERP``
(Postfix's extension, which the server takes from clients that may relay), or by this plugin
for mail from ``senders`` (``queue_outbound``, priority -70), for list software that cannot
ask for it.

The sender rewriters must leave such a message alone: a BATV tag or an SRS address made for the
plain sender does not verify once the recipient is folded into it, and the bounce would be
refused on its way back. So on ``queue_outbound`` (before batv at -60 and srs at -50) a
message with VERP gets ``skip_plugins`` in its transaction's ``skip_plugins``.

The way back (``rcpt``, priority -15: after srs, before batv and rcpt_to_host_list): a recipient
that decodes (``trio_mta.protocol.verp_decode``) against one of ``addresses`` is accepted (OK),
whoever sends it (bounces come from ``<>``, auto-replies from anyone); at DATA it becomes the
base address, so the message is delivered to the base mailbox (relayed to it, when the base is
not in a local domain). The decoded recipient goes in the transaction notes (``verp.recipient``,
the first one; ``verp.recipients``, VERP address to decoded recipient) and in a header,
``X-VERP-Recipient: alice@remote.example``, one per decoded recipient; any such header the
message came with is removed from mail to a base address, so list software can trust it. The
queue's own notices for a VERP message go to the VERP address too (as Postfix's do); when the
base is local, its local delivery (``queue``, listener "queue") decodes them the same way.

A VERP address carries no signature: anyone can make one for any recipient. The decoded
recipient is a claim, to be matched against the list's members, not an authority.
"""

from __future__ import annotations

import attrs

from trio_mta import hooks
from trio_mta.protocol import (
    VERP_DEFAULT_DELIMITERS,
    Address,
    RcptParams,
    VerpAddress,
    make_address,
    verp_decodable,
    verp_decode,
)

from ._envelope_tags import (
    ascii_lower,
    check_domain,
    check_keys,
    normal_domain,
    note_map,
    rewrite_recipients,
)

HEADER = "X-VERP-Recipient"
RECIPIENT_NOTE = "verp.recipient"  # the first decoded recipient (str)
RECIPIENTS_NOTE = "verp.recipients"  # {VERP address: decoded recipient}
BASE_NOTE = "verp.base"  # {VERP address: base address}, for the rewrite at DATA
DEFAULT_SKIP = ("batv", "srs")
_KEYS = frozenset({"senders", "addresses", "delimiters", "skip_plugins"})


def _address(value: object, where: str) -> Address:
    """A configured mailbox, ``local@domain``."""
    local, at, domain = value.rpartition("@") if isinstance(value, str) else ("", "", "")
    address = make_address(local, check_domain(domain, where)) if at and local else None
    if address is None:
        raise ValueError(f"{where}: {value!r} is not an address (local@domain)")
    return address


def _string_list(config: dict[str, object], key: str, default: list[str]) -> list[str]:
    value = config.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: must be a list of strings")
    return value


@attrs.frozen
class Bases:
    """The addresses whose VERP forms are ours: exact ones by domain, and whole domains."""

    exact: dict[str, tuple[str, ...]]  # domain -> base local parts, longest first
    domains: frozenset[str]  # "@domain": any local part there is a base

    def decode(self, rcpt: Address, delimiters: str) -> VerpAddress | None:
        domain = normal_domain(rcpt.domain)
        # Longest base first: with "-=", list-bounces-x=y is list-bounces's, not list's.
        for base in self.exact.get(domain, ()):
            found = verp_decode(rcpt, delimiters, base=base)
            if found is not None:
                return found
        return verp_decode(rcpt, delimiters) if domain in self.domains else None

    def is_base(self, address: Address) -> bool:
        domain = normal_domain(address.domain)
        local = ascii_lower(address.unquoted_local_part)
        return any(ascii_lower(b) == local for b in self.exact.get(domain, ()))


def _bases(entries: list[str]) -> Bases:
    exact: dict[str, set[str]] = {}
    domains: set[str] = set()
    for entry in entries:
        if entry.startswith("@"):
            domains.add(check_domain(entry[1:], "addresses"))
            continue
        base = _address(entry, "addresses")
        exact.setdefault(normal_domain(base.domain), set()).add(base.unquoted_local_part)
    ordered = {
        d: tuple(sorted(locals_, key=lambda b: (-len(b), b))) for d, locals_ in exact.items()
    }
    return Bases(ordered, frozenset(domains))


class Plugin(hooks.Plugin):
    # Every hook edits the envelope (recipients, mail_params, skip_plugins, relaying), and
    # such edits do not cross back from the process sandbox: each hook says sandbox="none".

    def setup(self) -> None:
        config = dict(self.config)
        check_keys(config, _KEYS)
        senders = [_address(s, "senders") for s in _string_list(config, "senders", [])]
        self.senders = frozenset(_key(s) for s in senders)
        self.bases = _bases(_string_list(config, "addresses", [str(s) for s in senders]))
        delimiters = config.get("delimiters", VERP_DEFAULT_DELIMITERS)
        if not isinstance(delimiters, str) or not verp_decodable(delimiters):
            raise ValueError(
                'delimiters: must be two characters from "-=+", the second not "-" (a domain '
                "may hold a -, so the addresses could not be taken apart)"
            )
        self.delimiters = delimiters
        skip = _string_list(config, "skip_plugins", list(DEFAULT_SKIP))
        if not all(name.isidentifier() for name in skip):
            raise ValueError("skip_plugins: must be a list of plugin names")
        self.skip = frozenset(skip)
        self.local_domains = frozenset(normal_domain(d) for d in self.env.local_domains)

    # ------------------------------------------------------------------ the way out

    @hooks.hook(priority=-70, sandbox="none")
    async def hook_queue_outbound(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        rewrite_recipients(txn, BASE_NOTE)
        sender = txn.sender
        if txn.mail_params.verp is None and sender is not None and _key(sender) in self.senders:
            txn.mail_params = attrs.evolve(txn.mail_params, verp=self.delimiters)
            self.log.info("txn=%s sender <%s>: VERP (senders)", txn.id, sender)
        if txn.mail_params.verp is not None and self.skip:
            # Their rewriting of the sender would not survive the recipient folded into it.
            txn.skip_plugins |= self.skip
        return hooks.CONT

    # ------------------------------------------------------------------ the way back

    def _accept(self, txn: hooks.Transaction, rcpt: Address, found: VerpAddress) -> None:
        """Note a VERP recipient: what it decodes to, and the base it is delivered to."""
        decoded = str(found.recipient)
        note_map(txn.notes, RECIPIENTS_NOTE)[str(rcpt)] = decoded
        note_map(txn.notes, BASE_NOTE)[str(rcpt)] = str(found.base)
        txn.notes.setdefault(RECIPIENT_NOTE, decoded)

    @hooks.hook(priority=-15, sandbox="none")
    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        found = self.bases.decode(rcpt, self.delimiters)
        if found is None:
            return hooks.CONT
        txn = conn.transaction
        assert txn is not None
        self._accept(txn, rcpt, found)
        if normal_domain(found.base.domain) not in self.local_domains:
            txn.relaying = True  # a base we are the MX for: relay it there
        self.log.info(
            "conn=%s txn=%s <%s>: VERP for <%s>, delivered to <%s>",
            conn.id,
            txn.id,
            rcpt,
            found.recipient,
            found.base,
        )
        return hooks.OK

    @hooks.hook(priority=-1000, sandbox="none")
    async def hook_data(self, conn: hooks.Connection) -> hooks.Result:
        assert conn.transaction is not None
        rewrite_recipients(conn.transaction, BASE_NOTE)
        return hooks.CONT

    @hooks.hook(sandbox="none")
    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        assert conn.transaction is not None
        self._headers(conn.transaction)
        return hooks.CONT

    @hooks.hook(priority=-45, sandbox="none")
    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        if conn.listener == "queue":
            # The queue delivering locally (our own notices to a VERP address): no rcpt or
            # data_post hook ran for these recipients.
            for rcpt, _ in txn.recipients:
                found = self.bases.decode(rcpt, self.delimiters)
                if found is not None:
                    self._accept(txn, rcpt, found)
            rewrite_recipients(txn, BASE_NOTE)
            self._headers(txn)
            return hooks.CONT
        rewrite_recipients(txn, BASE_NOTE)
        return hooks.CONT

    def _headers(self, txn: hooks.Transaction) -> None:
        """``X-VERP-Recipient`` per decoded recipient; the message's own such headers go from
        mail to a base address (where list software reads them)."""
        decoded = txn.notes.get(RECIPIENTS_NOTE)
        recipients = list(decoded.values()) if isinstance(decoded, dict) else []
        if not recipients and not any(self.bases.is_base(rcpt) for rcpt, _ in txn.recipients):
            return
        txn.remove_header(HEADER)
        for recipient in dict.fromkeys(recipients):
            txn.add_header(HEADER, str(recipient))


def _key(address: Address) -> str:
    """How a sender is matched against ``senders``: case-insensitively."""
    return f"{ascii_lower(address.unquoted_local_part)}@{normal_domain(address.domain)}"
