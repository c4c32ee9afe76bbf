"""Allow and deny lists for the client, its names and the envelope (Haraka's ``access``).

Each check has its own table; every table and key is optional:

``[client]`` at ``connect``: ``allow``, ``deny`` -- networks in CIDR form or single addresses.
``[rdns]`` at ``connect``: the client's reverse-DNS name, read from ``conn.notes["rdns"]``; set
    it from an earlier plugin (``connect_init``, or a lower ``priority``), else it is not checked.
``[helo]`` at ``helo``/``ehlo``: the name the client gave.
``[mail]`` at ``mail``: the sender. ``[rcpt]`` at ``rcpt``: each recipient.

All but ``[client]`` take ``allow``, ``deny`` (exact, case-insensitive) and ``allow_regex``,
``deny_regex`` (Python regular expressions that must match the whole text, case-insensitive).
Names lose a trailing dot. In ``[mail]`` and ``[rcpt]`` an entry ``"user@example.com"`` is one
address, ``"example.com"`` or ``"@example.com"`` every address at that domain, ``"<>"`` the
null sender and ``"<postmaster>"`` the bare postmaster recipient; regexes see ``user@domain``
(the null sender as ``""``).

An allow wins over a deny and lasts: an allow of the client, its rDNS or HELO covers the
connection, of the sender the transaction, of a recipient that recipient; nothing more is
checked here in that scope. It records what was allowed in the note ``whitelisted`` (on the
connection or transaction; one set by another plugin counts the same) and adds the plugin names
in ``whitelist_skip`` to ``transaction.skip_plugins`` (kept in the connection note
``skip_plugins`` until MAIL when allowed at ``connect``/``helo``), so the runner skips them.
Allows accept nothing by themselves: a recipient still needs a plugin's OK or relaying.

A deny refuses: 554 5.7.1 at ``connect`` (the connection closes), 550 5.7.1 elsewhere, with
``message`` (default ``"Access denied"``) as the text.

Run it early (first in ``[plugins] order``): plugins before it on a hook are not skipped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Verdict = str | None  # "allow", "deny" or no opinion

_KEYS = frozenset({"message", "whitelist_skip", "client", "rdns", "helo", "mail", "rcpt"})
_LIST_KEYS = ("allow", "deny", "allow_regex", "deny_regex")


def _strings(where: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings")
    return value


def _name(text: str) -> str:
    return text.strip().lower().rstrip(".")


def _address_entry(text: str) -> str:
    text = text.strip().lower()
    if text in ("<>", "<postmaster>") or ("@" in text and not text.startswith("@")):
        return text
    return "@" + text.lstrip("@").rstrip(".")


def address_keys(address: Address | None) -> tuple[tuple[str, ...], str]:
    """The list entries that match ``address``, and the text its regexes see."""
    if address is None:
        return ("<>",), ""
    if address.is_postmaster:
        return ("<postmaster>",), address.local_part.lower()
    full = f"{address.unquoted_local_part}@{address.domain}".lower()
    return (full, "@" + address.domain_lower.rstrip(".")), full


class Rules:
    """One table: exact allow/deny entries and full-match regexes, or networks (``[client]``)."""

    def __init__(self, section: str, table: object, normalize: Callable[[str], str] | None) -> None:
        if not isinstance(table, Mapping):
            raise ValueError(f"[{section}]: must be a table")
        keys = _LIST_KEYS if normalize else _LIST_KEYS[:2]
        unknown = set(table) - set(keys)
        if unknown:
            raise ValueError(f"[{section}]: unknown keys {sorted(unknown)}; known: {list(keys)}")
        lists = {k: _strings(f"[{section}] {k}", table.get(k, [])) for k in keys}
        self.networks: dict[str, tuple[IPNetwork, ...]] = {}
        self.exact: dict[str, frozenset[str]] = {}
        self.regex: dict[str, tuple[re.Pattern[str], ...]] = {}
        for verdict in ("allow", "deny"):
            try:
                if normalize is None:
                    where, items = f"{verdict}", lists[verdict]
                    nets = (ipaddress.ip_network(v.strip(), strict=False) for v in items)
                    self.networks[verdict] = tuple(nets)
                    continue
                self.exact[verdict] = frozenset(normalize(v) for v in lists[verdict])
                where = f"{verdict}_regex"
                patterns = (re.compile(v, re.IGNORECASE) for v in lists[where])
                self.regex[verdict] = tuple(patterns)
            except (ValueError, re.error) as exc:
                raise ValueError(f"[{section}] {where}: {exc}") from None

    def check(self, keys: tuple[str, ...], text: str) -> Verdict:
        for verdict in ("allow", "deny"):
            if any(k in self.exact[verdict] for k in keys):
                return verdict
            if any(p.fullmatch(text) for p in self.regex[verdict]):
                return verdict
        return None

    def check_ip(self, text: str) -> Verdict:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for verdict in ("allow", "deny"):
            if any(ip.version == n.version and ip in n for n in self.networks[verdict]):
                return verdict
        return None


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        config = self.config
        unknown = set(config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        message = config.get("message", "Access denied")
        if not isinstance(message, str) or not message.strip() or not message.isprintable():
            raise ValueError("message: must be one non-empty line of printable text")
        self.message = message
        skip = _strings("whitelist_skip", config.get("whitelist_skip", []))
        if not all(name.isidentifier() for name in skip):
            raise ValueError("whitelist_skip: must be a list of plugin names")
        self.skip = frozenset(skip)
        self.client = Rules("client", config.get("client", {}), None)
        self.rdns = Rules("rdns", config.get("rdns", {}), _name)
        self.helo = Rules("helo", config.get("helo", {}), _name)
        self.mail = Rules("mail", config.get("mail", {}), _address_entry)
        self.rcpt = Rules("rcpt", config.get("rcpt", {}), _address_entry)

    async def hook_connect(self, conn: hooks.Connection) -> hooks.Result:
        verdict, what = self.client.check_ip(conn.client_ip), "client"
        rdns = conn.notes.get("rdns")
        if verdict != "allow" and isinstance(rdns, str) and rdns:
            by_name = self.rdns.check((_name(rdns),), _name(rdns))
            if by_name == "allow" or verdict is None:
                verdict, what = by_name, "rdns"
        return self._apply(conn, what, verdict, code=554)

    async def hook_helo(self, conn: hooks.Connection, name: str) -> hooks.Result:
        if conn.notes.get("whitelisted"):
            return hooks.CONT
        return self._apply(conn, "helo", self.helo.check((_name(name),), _name(name)))

    async def hook_ehlo(self, conn: hooks.Connection, name: str) -> hooks.Result:
        return await self.hook_helo(conn, name)

    async def hook_mail(
        self, conn: hooks.Connection, sender: Address | None, params: MailParams
    ) -> hooks.Result:
        skipped = conn.notes.get("skip_plugins")
        if conn.transaction is not None and isinstance(skipped, set):
            conn.transaction.skip_plugins.update(skipped)
        if conn.notes.get("whitelisted"):
            return hooks.CONT
        return self._apply(conn, "mail", self.mail.check(*address_keys(sender)))

    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        txn = conn.transaction
        if conn.notes.get("whitelisted") or (txn is not None and txn.notes.get("whitelisted")):
            return hooks.CONT
        return self._apply(conn, "rcpt", self.rcpt.check(*address_keys(rcpt)))

    def _apply(
        self, conn: hooks.Connection, what: str, verdict: Verdict, *, code: int = 550
    ) -> hooks.Result:
        if verdict == "deny":
            return hooks.deny(self.message, code=code, enhanced="5.7.1")
        if verdict != "allow":
            return hooks.CONT
        txn = conn.transaction
        scope: dict[str, object] = {}  # a recipient's allow lasts for that recipient only
        if what in ("client", "rdns", "helo"):
            scope = conn.notes
            skipped = conn.notes.setdefault("skip_plugins", set())
            if isinstance(skipped, set):
                skipped.update(self.skip)
        elif what == "mail" and txn is not None:
            scope = txn.notes
        scope.setdefault("whitelisted", f"access: {what}")
        if txn is not None:
            txn.skip_plugins.update(self.skip)
        return hooks.CONT
