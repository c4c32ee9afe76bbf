"""Deliver accepted mail over LMTP (Haraka's queue/lmtp), e.g. to Dovecot or Cyrus.

Config (``conf/plugins/queue_lmtp.toml``): ``host`` (127.0.0.1), ``port`` (24), ``helo`` (the
server's hostname, sent as LHLO), and per-domain routes ``[domains."example.com"]`` with
``host``/``port`` (what is missing comes from the top level). No TLS or AUTH: LMTP is spoken to a
local delivery agent. The deadline is the runner's: the plugin's ``timeout``.

Theory of operation: LMTP (RFC 2033) answers the final dot once per recipient, SMTP answers our
client once per message, so per-recipient outcomes have to be folded into one verdict:

* every recipient delivered → OK;
* every recipient refused with a 5xx → DENY with the first refusal;
* anything else (a 4xx, or some delivered and some refused) → DENYSOFT, with the first 4xx if
  there is one. The client retries the whole message, so recipients that were already
  delivered get it again: a duplicate is the price of not losing mail for the others. A refused
  RCPT, though, stops the transaction before the data (RSET), so only after-the-dot mixes can
  duplicate. No connection, or a broken session → DENYSOFT 451 4.4.1.
"""

from __future__ import annotations

from collections.abc import Mapping

from trio_mta import hooks
from trio_mta.protocol import Address, Capabilities, MailParams, Reply

_KEYS = frozenset({"host", "port", "helo", "domains"})
UNAVAILABLE = hooks.denysoft(
    "Mail delivery agent unavailable, try again later", code=451, enhanced="4.4.1"
)
MIXED = hooks.denysoft("Delivered to some recipients only, try again later", code=451)

Route = tuple[str, int]  # host, port


def _route(table: Mapping[str, object], where: str, host: object, port: object) -> Route:
    unknown = set(table) - {"host", "port"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: host, port")
    host, port = table.get("host", host), table.get("port", port)
    if not isinstance(host, str) or not host:
        raise ValueError(f"{where}: host must be a host name or address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{where}: port must be a port number")
    return host, port


def as_result(reply: Reply, prefix: str = "") -> hooks.Result:
    """A refusal as our verdict: its class, code, enhanced code and text."""
    text = (prefix + reply.text[0], *reply.text[1:]) if reply.text else (prefix,)
    if reply.is_permanent:
        return hooks.Result(hooks.Action.DENY, text, reply.code, reply.enhanced)
    code = 451 if reply.code == 421 else reply.code
    return hooks.Result(hooks.Action.DENYSOFT, text, code, reply.enhanced)


def fold(outcomes: tuple[tuple[Address, Reply | None], ...]) -> hooks.Result | None:
    """Per-recipient outcomes → one verdict (None: all delivered). See the module docstring."""
    if all(r is not None and r.is_positive for _, r in outcomes):
        return None
    if all(r is not None and r.is_permanent for _, r in outcomes):
        address, reply = outcomes[0]
        assert reply is not None
        return as_result(reply, f"<{address}>: ")
    for address, reply in outcomes:
        if reply is not None and reply.is_transient:
            return as_result(reply, f"<{address}>: ")
    return MIXED


def mail_params(params: MailParams, caps: Capabilities) -> str:
    """BODY=8BITMIME and SMTPUTF8 from the original MAIL, when the LMTP server offers them."""
    wanted = [
        ("BODY=8BITMIME", params.body == "8BITMIME" and "8BITMIME" in caps),
        ("SMTPUTF8", params.smtputf8 and "SMTPUTF8" in caps),
    ]
    return " ".join(param for param, ok in wanted if ok)


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        top = {k: v for k, v in self.config.items() if k in ("host", "port")}
        self.default = _route(top, "config", "127.0.0.1", 24)
        domains = self.config.get("domains", {})
        if not isinstance(domains, Mapping) or not all(
            isinstance(t, Mapping) for t in domains.values()
        ):
            raise ValueError('domains: must be tables, [domains."example.com"]')
        self.routes = {
            d.lower().rstrip("."): _route(t, f'domains."{d}"', *self.default)
            for d, t in domains.items()
        }
        helo = self.config.get("helo", self.env.hostname)
        if not isinstance(helo, str) or not helo or not helo.isprintable() or " " in helo:
            raise ValueError("helo must be a host name")
        self.helo = helo

    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        groups: dict[Route, list[Address]] = {}
        for rcpt, _ in txn.recipients:
            route = self.routes.get(rcpt.domain_lower.rstrip("."), self.default)
            groups.setdefault(route, []).append(rcpt)
        delivered: list[str] = []
        for (host, port), rcpts in groups.items():
            try:
                async with hooks.open_smtp_client(
                    host, port, helo=self.helo, lmtp=True, starttls="never"
                ) as client:
                    result = await client.send_message(
                        txn.sender,
                        rcpts,
                        txn.iter_message(),
                        mail_params=mail_params(txn.mail_params, client.capabilities),
                        require_all_recipients=True,
                    )
            except hooks.SMTPClientError as exc:
                self.log.warning("txn=%s LMTP to %s:%s failed: %s", txn.id, host, port, exc)
                return UNAVAILABLE
            verdict = fold(result.outcomes())
            self.log.info("txn=%s LMTP %s:%s: %s", txn.id, host, port, result.outcomes())
            if verdict is not None:
                if delivered:
                    self.log.warning("txn=%s already delivered to %s", txn.id, delivered)
                return verdict
            delivered.append(f"{host}:{port}")
        return hooks.ok(f"Message delivered as {txn.id}")
