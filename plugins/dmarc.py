"""DMARC (RFC 7489): policy discovery, identifier alignment, disposition, aggregate data.

At ``data_post`` (priority 5: after ``spf``'s note from MAIL and ``dkim_verify``'s from
``data_post``): the RFC5322.From domain's record is looked up at ``_dmarc.<domain>``, and if
there is none, at ``_dmarc.<organizational domain>`` (the public suffix list, package
``publicsuffixlist``, shipped offline). DMARC passes when SPF passed for a domain aligned with
From, or a DKIM signature passed for an aligned ``d=`` (relaxed: same organizational domain;
strict: equal, per ``aspf``/``adkim``). On failure the policy is ``sp`` for a subdomain of the
record's domain (when given), else ``p``; ``pct`` samples it (unsampled messages get the next
lower policy, §6.6.4). ``reject`` → 550 5.7.1; ``quarantine`` → a header (or, configured,
a refusal); a temporary DNS error gives ``temperror`` and no action.

Mail from relaying or authenticated clients is not checked. Every evaluated message appends a
JSON line to ``<var_dir>/dmarc/aggregate.jsonl`` (aggregate-report data, RFC 7489 §7.2).
The result is ``txn.notes["dmarc"]``.

Config (``conf/plugins/dmarc.toml``): ``reject`` (default true: honour p=reject),
``quarantine`` (``"header"`` (default), ``"reject"``, ``"defer"`` or ``"none"``),
``quarantine_header`` (default ``"X-Quarantine"``), ``report`` (default true),
``nameservers`` (default ``[]``: the server's resolver).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import trio
from publicsuffixlist import PublicSuffixList

from trio_mta import hooks

_KEYS = frozenset({"reject", "quarantine", "quarantine_header", "report", "nameservers"})
_QUARANTINE = ("header", "reject", "defer", "none")


def parse_record(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record, or None if it is not one (``v=DMARC1`` must be first)."""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts or parts[0].replace(" ", "") != "v=DMARC1":
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            tags[key.strip().lower()] = value.strip()
    if tags.get("p", "").lower() not in ("none", "quarantine", "reject"):
        return None  # §6.6.3: no valid p (a rua-only record would be "none"; kept simple)
    return tags


def header_from_domain(txn: hooks.Transaction) -> str | None:
    """The one RFC5322.From domain, or None (no From, several, or several mailboxes)."""
    if txn.message is None:
        return None
    values = txn.message.headers.get_all("From") or []
    if len(values) != 1 or str(values[0]).count("@") != 1:
        return None
    domain = str(values[0]).rpartition("@")[2].strip().rstrip(">").strip().lower().rstrip(".")
    return domain or None


class Plugin(hooks.Plugin):
    priority = 5
    on_timeout = hooks.CONT
    on_error = hooks.CONT

    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        self.honour_reject = bool(self.config.get("reject", True))
        quarantine = self.config.get("quarantine", "header")
        if quarantine not in _QUARANTINE:
            raise ValueError(f"quarantine: must be one of {', '.join(_QUARANTINE)}")
        self.quarantine = str(quarantine)
        header = self.config.get("quarantine_header", "X-Quarantine")
        if not isinstance(header, str) or (not header.isidentifier() and "-" not in header):
            raise ValueError("quarantine_header: must be a header field name")
        self.quarantine_header = header
        self.report = bool(self.config.get("report", True))
        servers = self.config.get("nameservers", [])
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ValueError("nameservers: must be a list of 'IP' or 'IP:PORT' strings")
        self.resolver: hooks.Resolver = (
            hooks.DNSResolver([hooks.parse_nameserver(s) for s in servers])
            if servers
            else self.env.resolver or hooks.DNSResolver()
        )
        self.psl = PublicSuffixList()
        self.random = random.Random()
        self.report_path = self.env.var_dir / "dmarc" / "aggregate.jsonl"

    def org_domain(self, domain: str) -> str:
        return self.psl.privatesuffix(domain) or domain

    def aligned(self, a: str, b: str, mode: str) -> bool:
        a, b = a.lower().rstrip("."), b.lower().rstrip(".")
        return a == b if mode == "s" else self.org_domain(a) == self.org_domain(b)

    async def discover(self, domain: str) -> tuple[str, dict[str, str]] | None:
        """(the record's domain, its tags), or None; DNSError for a temporary failure."""
        candidates = [domain]
        org = self.org_domain(domain)
        if org != domain:
            candidates.append(org)
        for name in candidates:
            try:
                records = await self.resolver.txt(f"_dmarc.{name}")
            except hooks.NXDomain:
                continue
            found = [r for r in map(parse_record, records) if r is not None]
            if len(found) == 1:
                return name, found[0]
        return None

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        if txn is None or conn.relaying or conn.auth_user:
            return hooks.CONT
        domain = header_from_domain(txn)
        if domain is None:
            return hooks.CONT
        note: dict[str, object] = {"header_from": domain}
        txn.notes["dmarc"] = note
        try:
            found = await self.discover(domain)
        except hooks.DNSError as exc:
            note["result"] = "temperror"
            self.log.info("conn=%s dmarc temperror %s: %s", conn.id, domain, exc)
            return hooks.CONT
        if found is None:
            note["result"] = "none"
            return hooks.CONT
        record_domain, tags = found
        spf_ok, dkim_ok = self.alignment(txn, domain, tags)
        passed = spf_ok or dkim_ok
        policy = tags["p"].lower()
        if domain != record_domain and tags.get("sp", "").lower() in (
            "none",
            "quarantine",
            "reject",
        ):
            policy = tags["sp"].lower()
        try:
            pct = max(0, min(100, int(tags.get("pct", "100"))))
        except ValueError:
            pct = 100
        disposition = "none"
        if not passed and policy != "none":
            disposition = policy
            if self.random.uniform(0, 100) >= pct:  # not sampled: the next lower policy
                disposition = "quarantine" if policy == "reject" else "none"
        note.update(
            result="pass" if passed else "fail",
            policy=policy,
            disposition=disposition,
            domain=record_domain,
            spf_aligned=spf_ok,
            dkim_aligned=dkim_ok,
        )
        self.log.info(
            "conn=%s dmarc %s from=%s p=%s disposition=%s",
            conn.id,
            note["result"],
            domain,
            policy,
            disposition,
        )
        if self.report:
            await self.record(conn, txn, note, tags)
        if disposition == "reject" and self.honour_reject:
            return hooks.deny(
                f"DMARC policy of {record_domain} rejects this message",
                code=550,
                enhanced="5.7.1",
            )
        if disposition == "quarantine" or (disposition == "reject" and not self.honour_reject):
            if self.quarantine == "reject":
                return hooks.deny(
                    f"DMARC policy of {record_domain}: quarantine", code=550, enhanced="5.7.1"
                )
            if self.quarantine == "defer":
                return hooks.denysoft("DMARC quarantine", code=451, enhanced="4.7.1")
            if self.quarantine == "header":
                txn.add_header(self.quarantine_header, f"DMARC {record_domain} {disposition}")
            txn.notes["quarantine"] = True
        return hooks.CONT

    def alignment(
        self, txn: hooks.Transaction, domain: str, tags: dict[str, str]
    ) -> tuple[bool, bool]:
        aspf = tags.get("aspf", "r").lower()
        adkim = tags.get("adkim", "r").lower()
        spf = txn.notes.get("spf")
        spf_ok = (
            isinstance(spf, dict)
            and spf.get("result") == "pass"
            and self.aligned(str(spf.get("domain", "")), domain, aspf)
        )
        dkim_notes = txn.notes.get("dkim")
        dkim_ok = isinstance(dkim_notes, list) and any(
            isinstance(n, dict)
            and n.get("result") == "pass"
            and self.aligned(str(n.get("domain", "")), domain, adkim)
            for n in dkim_notes
        )
        return bool(spf_ok), dkim_ok

    async def record(
        self,
        conn: hooks.Connection,
        txn: hooks.Transaction,
        note: dict[str, object],
        tags: dict[str, str],
    ) -> None:
        spf = txn.notes.get("spf")
        row = {
            "time": int(time.time()),
            "source_ip": conn.client_ip,
            "header_from": note["header_from"],
            "policy_domain": note["domain"],
            "p": tags.get("p"),
            "sp": tags.get("sp"),
            "pct": tags.get("pct", "100"),
            "adkim": tags.get("adkim", "r"),
            "aspf": tags.get("aspf", "r"),
            "rua": tags.get("rua"),
            "disposition": note["disposition"],
            "dmarc": note["result"],
            "dkim": [
                {
                    "domain": n.get("domain"),
                    "selector": n.get("selector"),
                    "result": n.get("result"),
                }
                for n in txn.notes.get("dkim") or []  # type: ignore[attr-defined]
                if isinstance(n, dict)
            ],
            "spf": {"domain": spf.get("domain"), "result": spf.get("result")}
            if isinstance(spf, dict)
            else None,
        }
        line = json.dumps(row, sort_keys=True) + "\n"
        await trio.to_thread.run_sync(_append, self.report_path, line)


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
