"""Pause before the greeting and, if asked, before other replies (Haraka's ``early_talker``).

Spam software often talks without waiting for the server's replies. This plugin only pauses:
it cannot see the socket, so it cannot tell who talked. The server can, and does: its own
early-talker check runs after the ``connect`` hooks and refuses a client that spoke before the
greeting with 554 5.5.0. A pause here widens that window (``[timeouts] greeting_delay`` in the
main config is the same pause without a plugin). Pauses at later commands only slow the client
down; the server's pipelining rules decide what sending early there means.

Config (``conf/plugins/early_talker.toml``), pauses in seconds:

``pause`` (default 1.0)
    Before the greeting, in ``connect``.
``pause_helo``, ``pause_mail``, ``pause_rcpt``, ``pause_data`` (default 0: no pause)
    Before the reply to HELO/EHLO, MAIL, RCPT and DATA.
``whitelist`` (default ``[]``)
    Networks (CIDR or single addresses) never paused, e.g. your own machines. Clients allowed
    to relay (``conn.relaying``, e.g. set by ``relay_acl`` or AUTH) are not paused either.

A pause never outlasts the deadline the call runs under (the plugin's ``timeout``): it stops
just short of it, logs a warning, and the reply goes out, rather than timing out into a 451.
"""

from __future__ import annotations

import ipaddress

import trio

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_PAUSES = {"pause": 1.0, "pause_helo": 0.0, "pause_mail": 0.0, "pause_rcpt": 0.0, "pause_data": 0.0}
MARGIN = 0.05  # seconds left before the call's deadline when a pause is cut short


def _network(text: object) -> IPNetwork:
    if not isinstance(text, str):
        raise ValueError(f"whitelist: {text!r} is not a string")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"whitelist: {text!r} is not an IP network ({exc})") from None


async def pause(seconds: float, log_name: str, plugin: hooks.Plugin) -> None:
    """Sleep ``seconds``, or until just before the enclosing deadline, whichever is sooner."""
    if seconds <= 0:
        return
    # The runner arms a call's deadline once the call first blocks.
    await trio.lowlevel.checkpoint()
    room = trio.current_effective_deadline() - trio.current_time() - MARGIN
    if room < seconds:
        plugin.log.warning("%s: pause of %gs cut to %.3gs by the deadline", log_name, seconds, room)
        seconds = max(room, 0.0)
    await trio.sleep(seconds)


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - set(_PAUSES) - {"whitelist"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {[*_PAUSES, 'whitelist']}")
        self.pauses: dict[str, float] = {}
        for key, default in _PAUSES.items():
            value = self.config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{key}: must be a number of seconds, 0 or more")
            self.pauses[key] = float(value)
        timeout = self.timeout
        longest = max(self.pauses.values())
        if timeout is not None and longest >= timeout:
            raise ValueError(f"pauses must be shorter than timeout ({timeout}s), not {longest}s")
        whitelist = self.config.get("whitelist", [])
        if not isinstance(whitelist, list):
            raise ValueError("whitelist: must be a list of networks")
        self.whitelist = tuple(_network(item) for item in whitelist)

    def _exempt(self, conn: hooks.Connection) -> bool:
        try:
            ip = ipaddress.ip_address(conn.client_ip)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.whitelist)

    async def _pause(self, conn: hooks.Connection, key: str) -> None:
        if self.pauses[key] > 0 and not conn.relaying and not self._exempt(conn):
            await pause(self.pauses[key], f"conn={conn.id} {key}", self)

    async def hook_connect(self, conn: hooks.Connection) -> None:
        await self._pause(conn, "pause")

    async def hook_helo(self, conn: hooks.Connection, name: str) -> None:
        await self._pause(conn, "pause_helo")

    async def hook_ehlo(self, conn: hooks.Connection, name: str) -> None:
        await self._pause(conn, "pause_helo")

    async def hook_mail(
        self, conn: hooks.Connection, sender: Address | None, params: MailParams
    ) -> None:
        await self._pause(conn, "pause_mail")

    async def hook_rcpt(self, conn: hooks.Connection, rcpt: Address, params: RcptParams) -> None:
        await self._pause(conn, "pause_rcpt")

    async def hook_data(self, conn: hooks.Connection) -> None:
        await self._pause(conn, "pause_data")
