"""ARC (RFC 8617): verify the chain on arrival, seal when forwarding, with dkimpy.

Verification at ``data_post`` (priority 0, before ``auth_results``): dkimpy's ``ARC.verify``
in a worker thread, its key lookups through the server's resolver (``hooks.run_with_dns``),
under the plugin deadline (``on_timeout`` CONT). The chain validation result (``none``,
``pass``, ``fail``) is ``txn.notes["arc"]["result"]`` and goes into Authentication-Results.

Sealing, when ``[seal]`` is configured, happens on the queue hooks (priority -100, so before
the queue plugins store the message) for messages going on (``seal_on``: ``"relay"``, the
default, seals what goes to ``queue_outbound``; ``"always"`` seals on ``queue`` too, for a
forwarding setup such as ``queue_smtp_forward``). The seal covers the message as it will be
queued, our Authentication-Results included (ARC copies it into ARC-Authentication-Results);
the three ARC headers are added on top. ARC signs with RSA-SHA256 only (RFC 8617 §7.1).

Config (``conf/plugins/arc.toml``): ``authserv_id`` (default: the server's hostname, as
``auth_results``), ``minkey``, ``nameservers``, ``seal_on``, and::

    [seal]
    domain = "example.org"
    selector = "arc2026"
    key = "dkim/example.org/arc2026.key"   # an RSA key, relative to the configuration directory
"""

from __future__ import annotations

import functools
from pathlib import Path

import dkim
import trio

from trio_mta import hooks

from ._dkim_dns import dnsfunc

_KEYS = frozenset({"authserv_id", "minkey", "nameservers", "seal", "seal_on"})


def verify(dns: hooks.SyncDNS, message: bytes, minkey: int) -> tuple[str, str]:
    """(chain validation result, reason) (run in a worker thread)."""
    try:
        cv, _results, reason = dkim.ARC(message, minkey=minkey).verify(dnsfunc=dnsfunc(dns))
    except dkim.DnsTimeoutError as exc:
        return "temperror", str(exc)
    except dkim.DKIMException as exc:
        return "fail", str(exc)
    return cv.decode(), str(reason)


def seal(message: bytes, domain: str, selector: str, key: bytes, srv_id: str) -> list[bytes]:
    return list(dkim.arc_sign(message, selector.encode(), domain.encode(), key, srv_id.encode()))


class Plugin(hooks.Plugin):
    on_timeout = hooks.CONT
    on_error = hooks.CONT

    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        self.authserv_id = str(self.config.get("authserv_id", self.env.hostname))
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
        seal_on = self.config.get("seal_on", "relay")
        if seal_on not in ("relay", "always"):
            raise ValueError('seal_on: must be "relay" or "always"')
        self.seal_always = seal_on == "always"
        self.seal: tuple[str, str, bytes] | None = None
        table = self.config.get("seal")
        if table is not None:
            if not isinstance(table, dict):
                raise ValueError("seal: must be a table with domain, selector and key")
            domain, selector, path = table.get("domain"), table.get("selector"), table.get("key")
            if not all(isinstance(v, str) and v for v in (domain, selector, path)):
                raise ValueError("seal: domain, selector and key must be non-empty strings")
            full = (self.env.config_dir or Path.cwd()) / str(path)
            try:
                key = full.read_bytes()
            except OSError as exc:
                raise ValueError(f"seal.key: cannot read {full}: {exc.strerror}") from None
            if b"RSA PRIVATE KEY" not in key and b"BEGIN PRIVATE KEY" not in key:
                raise ValueError("seal.key: ARC needs an RSA key (trio-mta dkim keygen --type rsa)")
            self.seal = (str(domain), str(selector), key)

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        if txn is None or txn.message is None:
            return hooks.CONT
        if not any(k.lower().startswith("arc-") for k in txn.message.headers):
            txn.notes["arc"] = {"result": "none", "reason": "no ARC sets"}
            return hooks.CONT
        message = txn.message.as_bytes()
        result, reason = await hooks.run_with_dns(
            functools.partial(verify, message=message, minkey=self.minkey), self.resolver
        )
        txn.notes["arc"] = {"result": result, "reason": reason}
        self.log.info("conn=%s arc %s %s", conn.id, result, reason)
        return hooks.CONT

    async def _seal(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        if self.seal is None or txn is None or txn.message is None:
            return hooks.CONT
        domain, selector, key = self.seal
        message = txn.message_bytes()[len(txn.trace_header) :]
        lines = await trio.to_thread.run_sync(
            seal, message, domain, selector, key, self.authserv_id, abandon_on_cancel=True
        )
        if not lines:
            self.log.warning("conn=%s arc: no seal made (no Authentication-Results?)", conn.id)
            return hooks.CONT
        for line in reversed(lines):  # added last = rendered first: dkimpy's order on top
            name, _, value = line.decode("ascii").partition(":")
            txn.add_header(name, value.replace("\r\n", "").strip())
        txn.notes["arc_sealed"] = f"{domain}/{selector}"
        return hooks.CONT

    @hooks.hook(priority=-100)
    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        return await self._seal(conn) if self.seal_always else hooks.CONT

    @hooks.hook(priority=-100)
    async def hook_queue_outbound(self, conn: hooks.Connection) -> hooks.Result:
        return await self._seal(conn)
