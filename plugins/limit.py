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


Rates (Postfix's anvil ``smtpd_client_*_rate_limit``), each per ``rate_window`` seconds and off
at 0; a client may burst up to the figure and then keeps that many per window (``_rate``):

``max_connection_rate``
    Connections from one client. One past it gets 421 4.7.0 at ``connect`` and is closed.
``max_message_rate``
    Transactions (MAIL commands) from one client without AUTH. 450 4.7.1 at MAIL.
``max_recipient_rate``
    RCPT commands from one client without AUTH, accepted or not (so a dictionary attack spends
    its allowance on the addresses it guesses). 450 4.7.1 at RCPT.
``max_user_recipient_rate``
    RCPT commands in sessions authenticated as one user, wherever they come from: a stolen
    password sends no more than this. 450 4.7.1 at RCPT.
``rate_window`` (default 60)
    Seconds.
``rate_exempt`` (default loopback: ``["127.0.0.0/8", "::1/128"]``)
    Client networks the per-client rates never apply to (local applications, your own relays).
``rate_ipv6_prefix`` (default 64)
    IPv6 clients are counted per network of this length, not per address.

Authenticated sessions are held to their user's rate instead of their address's, so many users
behind one NAT address do not share one allowance.

Connections are counted in ``connect`` and uncounted in ``disconnect``, and only those this
plugin counted (``conn.notes["limit.counted"]``): a connection refused earlier in the chain was
never counted. The counts and rates belong to one loaded generation of plugins: after a reload,
they start from zero.
"""

from __future__ import annotations

import ipaddress
import math

import trio

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams

from ._rate import RateTable, client_key

_LIMITS = (
    "max_recipients",
    "max_unrecognized_commands",
    "max_message_size",
    "max_connections_per_ip",
)
_RATES = (
    "max_connection_rate",
    "max_message_rate",
    "max_recipient_rate",
    "max_user_recipient_rate",
)
_RATE_OPTIONS = ("rate_window", "rate_exempt", "rate_ipv6_prefix")
_KNOWN = (*_LIMITS, *_RATES, *_RATE_OPTIONS)
DEFAULT_EXEMPT = ("127.0.0.0/8", "::1/128")
COUNTED = "limit.counted"
UNRECOGNIZED = "limit.unrecognized"
RATE_KEY = "limit.rate_key"  # the client's key for the per-client rates; "" when exempt


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - set(_KNOWN)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {list(_KNOWN)}")
        values: dict[str, int] = {}
        for key in (*_LIMITS, *_RATES):
            value = self.config.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}: must be a whole number, 0 for no limit")
            values[key] = value
        self.max_recipients = values["max_recipients"]
        self.max_unrecognized = values["max_unrecognized_commands"]
        self.max_size = values["max_message_size"]
        self.max_per_ip = values["max_connections_per_ip"]
        self.connections: dict[str, int] = {}  # client IP -> connections this plugin counted
        window = self.config.get("rate_window", 60)
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise ValueError("rate_window: must be a positive number of seconds")
        if not math.isfinite(window):
            raise ValueError("rate_window: must be a finite number of seconds")
        prefix = self.config.get("rate_ipv6_prefix", 64)
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 1 <= prefix <= 128:
            raise ValueError("rate_ipv6_prefix: must be a whole number from 1 to 128")
        self.ipv6_prefix = prefix
        self.exempt = _networks(self.config.get("rate_exempt", list(DEFAULT_EXEMPT)))
        self.rates: dict[str, RateTable | None] = {
            key: RateTable(values[key], float(window)) if values[key] else None for key in _RATES
        }

    async def hook_connect(self, conn: hooks.Connection) -> hooks.Result:
        refused = self._over_client_rate(conn, "max_connection_rate")
        if refused is not None:
            return hooks.denysoftdisconnect(
                f"Too many connections from your address, {refused}", code=421, enhanced="4.7.0"
            )
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
        if conn.auth_user is None:
            refused = self._over_client_rate(conn, "max_message_rate")
            if refused is not None:
                return _slow_down(f"Too much mail from your address, {refused}")
        return hooks.CONT

    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        txn = conn.transaction
        if self.max_recipients and txn is not None and len(txn.recipients) >= self.max_recipients:
            return hooks.denysoft("Too many recipients", code=452, enhanced="4.5.3")
        if conn.auth_user is None:
            refused = self._over_client_rate(conn, "max_recipient_rate")
            if refused is not None:
                return _slow_down(f"Too many recipients from your address, {refused}")
        else:
            refused = self._over_rate("max_user_recipient_rate", conn.auth_user)
            if refused is not None:
                return _slow_down(f"Too many recipients for this account, {refused}")
        return hooks.CONT

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        message = txn.message if txn is not None else None
        if self.max_size and message is not None and message.size > self.max_size:
            return self._too_big()
        return hooks.CONT

    def _over_client_rate(self, conn: hooks.Connection, rate: str) -> str | None:
        if self.rates[rate] is None:
            return None
        key = conn.notes.get(RATE_KEY)
        if not isinstance(key, str):
            key = (
                ""
                if _exempt(conn.client_ip, self.exempt)
                else client_key(conn.client_ip, self.ipv6_prefix)
            )
            conn.notes[RATE_KEY] = key
        return self._over_rate(rate, key) if key else None

    def _over_rate(self, rate: str, key: str) -> str | None:
        """None if one more event for ``key`` is within ``rate`` (and counts it), else when to
        come back, for the reply."""
        table = self.rates[rate]
        if table is None:
            return None
        now = trio.current_time()
        if table.hit(key, now):
            return None
        self.log.info("%s reached for %s", rate, key)
        return f"try again in {math.ceil(table.retry_after(key, now))} s"

    def _too_big(self) -> hooks.Result:
        return hooks.deny(
            f"Message too big for this server (limit {self.max_size} octets)",
            code=552,
            enhanced="5.3.4",
        )


def _slow_down(text: str) -> hooks.Result:
    return hooks.denysoft(text, code=450, enhanced="4.7.1")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(value: object) -> tuple[Network, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError('rate_exempt: must be a list of networks, e.g. ["127.0.0.0/8"]')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as error:
            raise ValueError(f"rate_exempt: {item!r} is not a network ({error})") from None
    return tuple(networks)


def _exempt(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
