"""SPF (RFC 7208) checks of the HELO name and the MAIL FROM domain, with pyspf.

pyspf is blocking: each check runs in a worker thread and does its DNS through the server's
resolver (``self.env.resolver``, i.e. ``[resolver] nameservers``) via ``hooks.run_with_dns``;
the plugin's deadline cancels it (``on_timeout``, by default CONT here: a DNS outage must not
refuse mail; the result is then missing, which DMARC treats as no SPF pass).

Results: ``conn.notes["spf_helo"]`` and ``txn.notes["spf"]``, each a dict ``{"result",
"domain", "explanation", "identity" ("helo"/"mailfrom"), "ip"}``, read by ``dmarc`` and
``auth_results``. The MAIL FROM check of the null sender uses ``postmaster@<helo>`` (RFC 7208
§2.4).

Config (``conf/plugins/spf.toml``):

``helo`` (default ``true``) / ``mail`` (default ``true``)
    Which identities to check.
``actions`` (table: result → ``"accept"``/``"reject"``/``"defer"``; default ``{fail = "reject"}``)
    What to do with a MAIL FROM result (``pass``, ``fail``, ``softfail``, ``neutral``,
    ``none``, ``temperror``, ``permerror``). ``reject`` is 550 5.7.23, ``defer`` 451 4.7.24.
    Only for unauthenticated, non-relaying clients on listeners not in ``skip_listeners``.
``helo_actions`` (default ``{}``): the same for the HELO result (decided at MAIL).
``skip_listeners`` (default ``["submission", "smtps"]``): never checked there.
``nameservers`` (default ``[]``): override the server's resolver for this plugin.
"""

from __future__ import annotations

import functools
from typing import Any

import spf as pyspf

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
ACTIONS = ("accept", "reject", "defer")
_KEYS = frozenset(
    {"helo", "mail", "actions", "helo_actions", "skip_listeners", "nameservers", "timeout"}
)


def resolver_from(plugin: hooks.Plugin) -> hooks.Resolver:
    servers = plugin.config.get("nameservers", [])
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise ValueError("nameservers: must be a list of 'IP' or 'IP:PORT' strings")
    if servers:
        return hooks.DNSResolver([hooks.parse_nameserver(s) for s in servers])
    return plugin.env.resolver or hooks.DNSResolver()


def _actions(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"{key}: must be a table of result = action")
    for result, action in value.items():
        if result not in RESULTS:
            raise ValueError(f"{key}: unknown SPF result {result!r} (one of {', '.join(RESULTS)})")
        if action not in ACTIONS:
            raise ValueError(f"{key}.{result}: action must be one of {', '.join(ACTIONS)}")
    return dict(value)


class _Query(pyspf.query):  # type: ignore[misc]  # pyspf is untyped
    """pyspf's query with its DNS answered by a ``hooks.SyncDNS``."""

    def __init__(self, dns: hooks.SyncDNS, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_dns = dns

    def dns(
        self, name: str, qtype: str, cnames: object = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(p) < 64 for p in name.split(".")):
            return []
        cached: list[Any] | None = self.cache.get((name, qtype))
        if cached:
            return cached
        result: list[Any]
        try:
            if qtype in ("TXT", "SPF"):
                result = [[t.encode()] for t in self._sync_dns.txt(name)] if qtype == "TXT" else []
            elif qtype == "A":
                result = self._sync_dns.a(name)
            elif qtype == "AAAA":
                result = self._sync_dns.aaaa(name)
            elif qtype == "MX":
                result = [(m.preference, m.exchange) for m in self._sync_dns.mx(name)]
            elif qtype == "PTR":
                result = self._sync_dns.ptr(_reverse_to_address(name))
            else:
                result = []
        except hooks.NXDomain:
            result = []
        except hooks.DNSError as exc:
            raise pyspf.TempError(f"DNS {exc}") from None
        if result:
            self.cache[(name, qtype)] = result
        elif not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > pyspf.MAX_VOID_LOOKUPS:
                raise pyspf.PermError(f"Void lookup limit of {pyspf.MAX_VOID_LOOKUPS} exceeded")
        return result


def _reverse_to_address(name: str) -> str:
    """pyspf asks PTR of ``d.c.b.a.in-addr.arpa``; our resolver wants the address."""
    labels = name.split(".")
    if name.endswith(".in-addr.arpa"):
        return ".".join(reversed(labels[:4]))
    nibbles = list(reversed(labels[:32]))
    return ":".join("".join(nibbles[i : i + 4]) for i in range(0, 32, 4))


def check(dns: hooks.SyncDNS, ip: str, sender: str, helo: str) -> tuple[str, str]:
    """pyspf's (result, explanation) for one identity (run in a worker thread)."""
    query = _Query(dns, i=ip, s=sender, h=helo, receiver="trio-mta")
    result, _code, explanation = query.check()
    return str(result), str(explanation)


class Plugin(hooks.Plugin):
    on_timeout = hooks.CONT
    on_error = hooks.CONT

    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        self.check_helo = bool(self.config.get("helo", True))
        self.check_mail = bool(self.config.get("mail", True))
        self.actions = _actions("actions", self.config.get("actions", {"fail": "reject"}))
        self.helo_actions = _actions("helo_actions", self.config.get("helo_actions", {}))
        skip = self.config.get("skip_listeners", ["submission", "smtps"])
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise ValueError("skip_listeners: must be a list of listener names")
        self.skip_listeners = frozenset(skip)
        self.resolver = resolver_from(self)

    def _exempt(self, conn: hooks.Connection) -> bool:
        return conn.listener in self.skip_listeners or conn.relaying or bool(conn.auth_user)

    async def _check(self, conn: hooks.Connection, sender: str, identity: str) -> dict[str, str]:
        helo = conn.helo or ""
        result, explanation = await hooks.run_with_dns(
            functools.partial(_run_check, ip=conn.client_ip, sender=sender, helo=helo),
            self.resolver,
        )
        domain = sender.rpartition("@")[2]
        self.log.info("conn=%s spf %s %s=%s", conn.id, result, identity, domain)
        return {
            "result": result,
            "domain": domain,
            "identity": identity,
            "explanation": explanation,
            "ip": conn.client_ip,
        }

    async def hook_mail(
        self, conn: hooks.Connection, sender: Address | None, params: MailParams
    ) -> hooks.Result:
        txn = conn.transaction
        if txn is None or self._exempt(conn):
            return hooks.CONT
        helo = conn.helo or ""
        helo_note = conn.notes.get("spf_helo")
        if self.check_helo and helo and not isinstance(helo_note, dict):
            helo_note = await self._check(conn, f"postmaster@{helo}", "helo")
            conn.notes["spf_helo"] = helo_note
        if isinstance(helo_note, dict):
            verdict = self._verdict(self.helo_actions, helo_note, "HELO " + helo)
            if verdict is not None:
                return verdict
        if not self.check_mail:
            return hooks.CONT
        address = f"{sender.local_part}@{sender.domain}" if sender else f"postmaster@{helo}"
        note = await self._check(conn, address, "mailfrom")
        txn.notes["spf"] = note
        verdict = self._verdict(self.actions, note, address)
        return verdict or hooks.CONT

    @staticmethod
    def _verdict(
        actions: dict[str, str], note: dict[str, str], identity: str
    ) -> hooks.Result | None:
        action = actions.get(note["result"], "accept")
        if action == "reject":
            return hooks.deny(
                f"SPF {note['result']} for {identity} from {note['ip']}",
                code=550,
                enhanced="5.7.23",
            )
        if action == "defer":
            return hooks.denysoft(
                f"SPF {note['result']} for {identity}, try again later",
                code=451,
                enhanced="4.7.24",
            )
        return None


def _run_check(dns: hooks.SyncDNS, *, ip: str, sender: str, helo: str) -> tuple[str, str]:
    return check(dns, ip, sender, helo)
