"""Forward accepted mail to a downstream MTA (Haraka's queue/smtp_forward).

Config (``conf/plugins/queue_smtp_forward.toml``): ``host``, ``port`` (25), ``helo`` (the
server's hostname), ``tls`` ("opportunistic", "required" or "never"), ``tls_ca_file`` (verify
the downstream's certificate against these CAs), ``auth_user``/``auth_password``,
``enable_outbound`` (false: only the ``queue`` hook forwards; true: ``queue_outbound`` too), and
per-domain routes ``[domains."example.com"]`` with the same keys (``auth_*`` are not inherited
from the top level, so one host's credentials never go to another). The deadline is the
runner's: the plugin's ``timeout``.

Theory of operation: at the queue hook the recipients are grouped by route (their domain's
table, else the top-level ``host``) and the message is forwarded to each route in turn, before
our client is answered. We answer once for the whole transaction, so the rule is "never OK
unless every downstream said 250 to the data":

* every recipient accepted and the data taken → OK, "queued as <id> (forwarded: <their text>)";
* a refused recipient refuses the whole message (the data is not sent: RSET instead), with the
  downstream's reply: a 5xx recipient makes it a DENY, otherwise a 4xx DENYSOFT. Refusing is
  safer than losing: the sender learns, a retry does not duplicate;
* a 5xx to MAIL or to the data → DENY with their code, enhanced code and text; a 4xx → DENYSOFT
  (their 421 becomes 451); no connection, a broken session, or a refused greeting, EHLO, TLS or
  AUTH (our configuration, not the message) → DENYSOFT 451 4.4.1.

With several routes the first failure decides and the routes before it already have the
message (logged): a retry after a DENYSOFT duplicates it there.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import attrs

from trio_mta import hooks
from trio_mta.protocol import Address, Capabilities, MailParams, RcptParams, Reply

_ROUTE_KEYS = frozenset({"host", "port", "tls", "tls_ca_file", "auth_user", "auth_password"})
_KEYS = _ROUTE_KEYS | {"helo", "enable_outbound", "domains"}
UNAVAILABLE = hooks.denysoft(
    "Downstream server unavailable, try again later", code=451, enhanced="4.4.1"
)


@attrs.frozen
class Route:
    host: str
    port: int
    tls: hooks.StartTLS = hooks.StartTLS.OPPORTUNISTIC
    ca_file: str | None = None
    auth: tuple[str, str] | None = attrs.field(default=None, repr=False)  # never logged

    def context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_route(table: Mapping[str, object], where: str, default_port: int) -> Route | None:
    """A route from ``table``; None if it names no host."""
    unknown = set(table) - _ROUTE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_ROUTE_KEYS)}")
    host, port = table.get("host"), table.get("port", default_port)
    tls, ca_file = table.get("tls", "opportunistic"), table.get("tls_ca_file")
    user, password = table.get("auth_user"), table.get("auth_password")
    if host is None:
        return None
    if not isinstance(host, str) or not host:
        raise ValueError(f"{where}: host must be a host name or address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{where}: port must be a port number")
    if tls not in {t.value for t in hooks.StartTLS}:
        raise ValueError(f'{where}: tls must be "opportunistic", "required" or "never"')
    if ca_file is not None and not isinstance(ca_file, str):
        raise ValueError(f"{where}: tls_ca_file must be a path")
    if (user is None) != (password is None):
        raise ValueError(f"{where}: auth_user and auth_password go together")
    if user is not None and not (isinstance(user, str) and isinstance(password, str)):
        raise ValueError(f"{where}: auth_user and auth_password must be strings")
    if user is not None and tls == "never":
        raise ValueError(f'{where}: AUTH needs TLS; tls = "never" would send the password')
    auth = (user, password) if isinstance(user, str) and isinstance(password, str) else None
    return Route(host, port, hooks.StartTLS(tls), ca_file, auth)


def parse_routes(
    config: Mapping[str, object], default_port: int
) -> tuple[Route | None, dict[str, Route]]:
    """The default route and the per-domain ones (keyed by lower-cased domain)."""
    top = {k: v for k, v in config.items() if k in _ROUTE_KEYS}
    inherited = {k: v for k, v in top.items() if k in ("port", "tls", "tls_ca_file")}
    domains = config.get("domains", {})
    if not isinstance(domains, Mapping):
        raise ValueError('domains: must be tables, [domains."example.com"]')
    routes: dict[str, Route] = {}
    for domain, table in domains.items():
        where = f'domains."{domain}"'
        if not isinstance(table, Mapping):
            raise ValueError(f"{where}: must be a table")
        route = parse_route({**inherited, **table}, where, default_port)
        if route is None:
            raise ValueError(f"{where}: needs a host")
        routes[domain.lower().rstrip(".")] = route
    return parse_route(top, "config", default_port), routes


def as_result(reply: Reply, prefix: str = "") -> hooks.Result:
    """A downstream refusal as our verdict: its class, code, enhanced code and text."""
    text = (prefix + reply.text[0], *reply.text[1:]) if reply.text else (prefix,)
    if reply.is_permanent:
        return hooks.Result(hooks.Action.DENY, text, reply.code, reply.enhanced)
    code = 451 if reply.code == 421 else reply.code  # our client must not read "closing"
    return hooks.Result(hooks.Action.DENYSOFT, text, code, reply.enhanced)


def refusal(result: hooks.SendResult) -> hooks.Result | None:
    """None when the downstream took the message for every recipient, else our verdict."""
    if result.delivered:
        return None
    if not result.mail.is_positive:
        return as_result(result.mail)
    refused = [(a, r) for a, r in zip(result.recipients, result.rcpt, strict=True) if r.code >= 400]
    if refused:
        address, reply = next((x for x in refused if x[1].is_permanent), refused[0])
        return as_result(reply, f"<{address}>: ")
    if result.data is not None and not result.data.is_positive:
        return as_result(result.data)
    return UNAVAILABLE


def mail_params(params: MailParams, caps: Capabilities) -> str:
    """The original MAIL parameters the downstream understands (SIZE is the client's)."""
    out = []
    if params.body == "8BITMIME" and "8BITMIME" in caps:
        out.append("BODY=8BITMIME")
    if params.smtputf8 and "SMTPUTF8" in caps:
        out.append("SMTPUTF8")
    if "DSN" in caps:
        out += [f"{k}={v}" for k, v in params.raw if k in ("RET", "ENVID") and v]
    return " ".join(out)


def rcpt_params(params: RcptParams, caps: Capabilities) -> str:
    if "DSN" not in caps:
        return ""
    return " ".join(f"{k}={v}" for k, v in params.raw if k in ("NOTIFY", "ORCPT") and v)


def message_size(txn: hooks.Transaction) -> int:
    """What iter_message yields, give or take removed headers (SIZE= may overstate)."""
    added = sum(len(n) + len(v) + 4 for n, v in txn.added_headers)
    return len(txn.trace_header) + added + (txn.message.size if txn.message else 0)


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        self.default, self.routes = parse_routes(self.config, 25)
        if self.default is None and not self.routes:
            raise ValueError('host is required (or [domains."example.com"] routes)')
        helo = self.config.get("helo", self.env.hostname)
        outbound = self.config.get("enable_outbound", False)
        if not isinstance(helo, str) or not helo or not helo.isprintable() or " " in helo:
            raise ValueError("helo must be a host name")
        if not isinstance(outbound, bool):
            raise ValueError("enable_outbound must be true or false")
        self.helo, self.enable_outbound = helo, outbound
        routes = [*self.routes.values(), *([self.default] if self.default else [])]
        self.contexts = {route: route.context() for route in routes}

    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        groups: dict[Route, list[tuple[Address, RcptParams]]] = {}
        unrouted: list[Address] = []
        for rcpt, params in txn.recipients:
            route = self.routes.get(rcpt.domain_lower.rstrip("."), self.default)
            if route is None:
                unrouted.append(rcpt)
            else:
                groups.setdefault(route, []).append((rcpt, params))
        if not groups:
            return hooks.CONT  # none of ours: another queue plugin's
        if unrouted:
            self.log.warning("txn=%s no route for %s", txn.id, ", ".join(map(str, unrouted)))
            return hooks.denysoft("No route for some recipients", code=451, enhanced="4.3.0")
        texts: list[str] = []
        for route, rcpts in groups.items():
            verdict, text = await self.forward(txn, route, rcpts)
            if verdict is not None:
                if texts:
                    self.log.warning("txn=%s already forwarded to %s", txn.id, texts)
                return verdict
            texts.append(text)
        return hooks.ok(f"Message queued as {txn.id} (forwarded: {'; '.join(texts)})")

    async def hook_queue_outbound(self, conn: hooks.Connection) -> hooks.Result:
        return await self.hook_queue(conn) if self.enable_outbound else hooks.CONT

    async def forward(
        self, txn: hooks.Transaction, route: Route, rcpts: list[tuple[Address, RcptParams]]
    ) -> tuple[hooks.Result | None, str]:
        try:
            async with hooks.open_smtp_client(
                route.host,
                route.port,
                helo=self.helo,
                tls=self.contexts[route],
                starttls=route.tls,
                auth=route.auth,
            ) as client:
                caps = client.capabilities
                result = await client.send_message(
                    txn.sender,
                    [a for a, _ in rcpts],
                    txn.iter_message(),
                    mail_params=mail_params(txn.mail_params, caps),
                    rcpt_params=[rcpt_params(p, caps) for _, p in rcpts],
                    size=message_size(txn),
                    require_all_recipients=True,
                )
        except hooks.SMTPClientError as exc:
            self.log.warning("txn=%s forwarding to %s failed: %s", txn.id, route, exc)
            return UNAVAILABLE, ""
        verdict = refusal(result)
        if verdict is not None:
            self.log.info("txn=%s %s refused: %s", txn.id, route, result.outcomes())
            return verdict, ""
        assert result.data is not None  # delivered
        self.log.info("txn=%s forwarded to %s: %s", txn.id, route, result.data)
        return None, result.data.text[0] if result.data.text else ""
