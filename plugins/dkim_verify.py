"""DKIM (RFC 6376) verification of every signature at ``data_post``, with dkimpy.

dkimpy is blocking: verification runs in a worker thread whose key lookups go through the
server's resolver (``hooks.run_with_dns``); the plugin deadline cancels it (``on_timeout``
CONT: the results are then missing, i.e. no DKIM pass for DMARC).

Results: ``txn.notes["dkim"]``, a list with one dict per DKIM-Signature, in header order:
``{"result": "pass"|"fail"|"neutral"|"temperror"|"permerror", "domain", "selector",
"algorithm", "b" (the first 8 characters of the signature), "reason"}``. Nothing is refused
here; ``dmarc`` decides.

Config (``conf/plugins/dkim_verify.toml``): ``minkey`` (default 1024, RSA bits),
``nameservers`` (default ``[]``: the server's resolver).
"""

from __future__ import annotations

import re

import dkim

from trio_mta import hooks

from ._dkim_dns import dnsfunc

_TAG = re.compile(rb"(?:^|;)\s*([a-z]+)\s*=\s*([^;]*)", re.IGNORECASE)


def tags(value: bytes) -> dict[str, str]:
    return {
        k.decode().lower(): re.sub(rb"\s+", b"", v).decode("ascii", "replace")
        for k, v in _TAG.findall(value)
    }


def verify_all(dns: hooks.SyncDNS, message: bytes, minkey: int) -> list[dict[str, str]]:
    """One result per DKIM-Signature header (run in a worker thread)."""
    checker = dkim.DKIM(message, minkey=minkey)
    signatures = [v for k, v in checker.headers if k.lower() == b"dkim-signature"]
    results = []
    lookup = dnsfunc(dns)
    for index, value in enumerate(signatures):
        fields = tags(value)
        note = {
            "domain": fields.get("d", "").lower(),
            "selector": fields.get("s", ""),
            "algorithm": fields.get("a", ""),
            "b": fields.get("b", "")[:8],
            "reason": "",
        }
        try:
            good = checker.verify(idx=index, dnsfunc=lookup)
            note["result"] = "pass" if good else "fail"
            if not good:
                note["reason"] = "signature did not verify"
        except dkim.DnsTimeoutError as exc:
            note["result"], note["reason"] = "temperror", str(exc)
        except dkim.ValidationError as exc:  # body hash mismatch, expired, bad tags
            note["result"], note["reason"] = "fail", str(exc)
        except dkim.DKIMException as exc:  # no key, unparsable key or signature
            note["result"], note["reason"] = "permerror", str(exc)
        results.append(note)
    return results


class Plugin(hooks.Plugin):
    on_timeout = hooks.CONT
    on_error = hooks.CONT

    def setup(self) -> None:
        unknown = set(self.config) - {"minkey", "nameservers"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        minkey = self.config.get("minkey", 1024)
        if not isinstance(minkey, int) or minkey < 512:
            raise ValueError("minkey: must be an integer >= 512")
        self.minkey = minkey
        servers = self.config.get("nameservers", [])
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ValueError("nameservers: must be a list of 'IP' or 'IP:PORT' strings")
        self.resolver: hooks.Resolver = (
            hooks.DNSResolver([hooks.parse_nameserver(s) for s in servers])
            if servers
            else self.env.resolver or hooks.DNSResolver()
        )

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        if txn is None or txn.message is None:
            return hooks.CONT
        if not any(k.lower() == "dkim-signature" for k in txn.message.headers):
            txn.notes["dkim"] = []
            return hooks.CONT
        message = txn.message.as_bytes()
        results = await hooks.run_with_dns(
            lambda dns: verify_all(dns, message, self.minkey), self.resolver
        )
        txn.notes["dkim"] = results
        for note in results:
            self.log.info(
                "conn=%s dkim %s d=%s s=%s",
                conn.id,
                note["result"],
                note["domain"],
                note["selector"],
            )
        return hooks.CONT
