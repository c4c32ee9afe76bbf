"""Per-client and per-message limits (Haraka's ``limit``, qpsmtpd's
``count_unrecognized_commands``), tighter than the server's own ``[limits]``.

Every limit is off (0) until set; the server's ``[limits]`` apply regardless. Config
(``conf/plugins/limit.toml``):

``max_recipients`` (default 0)
    Recipients per transaction. The one past the limit gets 452 4.5.3 (RFC 5321 §4.5.3.1.10:
    the client sends the rest in another transaction).
``max_unrecognized_commands`` (default 0)
    Unknown commands per connection. The one past the limit gets 521 5.5.1 and the connection
    closes; the ones before get the server's usual 500.
``max_message_size`` (default 0)
    Octets per message as received. A ``SIZE=`` above it is refused at MAIL, a message that
    turns out larger at the end of DATA; both get 552 5.3.4.
``max_connections_per_ip`` (default 0)
    Concurrent connections from one client address. A connection past it gets 421 4.7.0 at
    ``connect`` and is closed.

Connections are counted in ``connect`` and uncounted in ``disconnect``, and only those this
plugin counted (``conn.notes["limit.counted"]``): a connection refused earlier in the chain was
never counted. The counts belong to one loaded generation of plugins: after a reload, the
connections that started before it are not counted against the new limits.
"""

from __future__ import annotations

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams

_LIMITS = (
    "max_recipients",
    "max_unrecognized_commands",
    "max_message_size",
    "max_connections_per_ip",
)
COUNTED = "limit.counted"
UNRECOGNIZED = "limit.unrecognized"


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - set(_LIMITS)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {list(_LIMITS)}")
        values: dict[str, int] = {}
        for key in _LIMITS:
            value = self.config.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}: must be a whole number, 0 for no limit")
            values[key] = value
        self.max_recipients = values["max_recipients"]
        self.max_unrecognized = values["max_unrecognized_commands"]
        self.max_size = values["max_message_size"]
        self.max_per_ip = values["max_connections_per_ip"]
        self.connections: dict[str, int] = {}  # client IP -> connections this plugin counted

    async def hook_connect(self, conn: hooks.Connection) -> hooks.Result:
        if not self.max_per_ip:
            return hooks.CONT
        ip = conn.client_ip
        current = self.connections.get(ip, 0)
        if current >= self.max_per_ip:
            return hooks.denysoftdisconnect(
                "Too many connections from your address", code=421, enhanced="4.7.0"
            )
        self.connections[ip] = current + 1
        conn.notes[COUNTED] = ip
        return hooks.CONT

    async def hook_disconnect(self, conn: hooks.Connection) -> None:
        ip = conn.notes.pop(COUNTED, None)
        if not isinstance(ip, str) or ip not in self.connections:
            return
        left = self.connections[ip] - 1
        if left > 0:
            self.connections[ip] = left
        else:
            del self.connections[ip]

    async def hook_unrecognized_command(
        self, conn: hooks.Connection, verb: str, line: str
    ) -> hooks.Result:
        if not self.max_unrecognized:
            return hooks.CONT
        seen = conn.notes.get(UNRECOGNIZED, 0)
        count = (seen if isinstance(seen, int) else 0) + 1
        conn.notes[UNRECOGNIZED] = count
        if count > self.max_unrecognized:
            return hooks.denydisconnect(
                f"Too many unrecognized commands ({count}), closing connection",
                code=521,
                enhanced="5.5.1",
            )
        return hooks.CONT

    async def hook_mail(
        self, conn: hooks.Connection, sender: Address | None, params: MailParams
    ) -> hooks.Result:
        if self.max_size and params.size is not None and params.size > self.max_size:
            return self._too_big()
        return hooks.CONT

    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        txn = conn.transaction
        if self.max_recipients and txn is not None and len(txn.recipients) >= self.max_recipients:
            return hooks.denysoft("Too many recipients", code=452, enhanced="4.5.3")
        return hooks.CONT

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        message = txn.message if txn is not None else None
        if self.max_size and message is not None and message.size > self.max_size:
            return self._too_big()
        return hooks.CONT

    def _too_big(self) -> hooks.Result:
        return hooks.deny(
            f"Message too big for this server (limit {self.max_size} octets)",
            code=552,
            enhanced="5.3.4",
        )
