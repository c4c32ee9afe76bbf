"""Delay replies, to slow down clients other plugins find suspicious (Haraka's ``tarpit``).

On ``connect``, ``helo``, ``ehlo``, ``mail``, ``rcpt``, ``data`` and ``data_post`` this plugin
sleeps, then gives no opinion, so the reply the chain decides goes out that much later. The
delay, in seconds, is the first of:

1. the transaction note ``tarpit`` (set by another plugin for this transaction),
2. the connection note ``tarpit`` (for the rest of the connection),
3. ``delay`` from the config.

A note that is not a number of 0 or more is ignored (with a warning). When the client hangs up
or the server shuts down, the sleep is cancelled with the rest of the session: nothing lingers.

Config (``conf/plugins/tarpit.toml``):

``delay`` (default 0)
    Seconds to delay every reply when no note says otherwise; 0 delays only where notes ask.

Where it runs in a hook's chain matters: first (the default, when it is first in ``[plugins]
order``), it delays refusals too, but a note another plugin sets on the same hook counts from
the next command; last (``priority = 100`` in its config), it sees those notes at once, but a
refusal ends the chain before it. A delay never outlasts the call's deadline (the plugin's
``timeout``): it is cut just short of it, with a warning, instead of timing out into a 451.
"""

from __future__ import annotations

import trio

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams

NOTE = "tarpit"
MARGIN = 0.05  # seconds left before the call's deadline when a delay is cut short


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return float(value)


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        unknown = set(self.config) - {"delay"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: ['delay']")
        delay = _seconds(self.config.get("delay", 0))
        if delay is None or delay == float("inf"):
            raise ValueError("delay: must be a number of seconds, 0 or more")
        self.delay = delay

    def delay_for(self, conn: hooks.Connection) -> float:
        txn = conn.transaction
        for notes, where in (
            (txn.notes if txn is not None else {}, "transaction"),
            (conn.notes, "connection"),
        ):
            if NOTE not in notes:
                continue
            seconds = _seconds(notes[NOTE])
            if seconds is not None:
                return seconds
            self.log.warning("conn=%s %s note tarpit=%r ignored", conn.id, where, notes[NOTE])
        return self.delay

    async def _sleep(self, conn: hooks.Connection) -> hooks.Result:
        seconds = self.delay_for(conn)
        if seconds > 0:
            # The runner arms a call's deadline once the call first blocks.
            await trio.lowlevel.checkpoint()
            room = trio.current_effective_deadline() - trio.current_time() - MARGIN
            if room < seconds:
                self.log.warning("conn=%s delay of %gs cut to %.3gs", conn.id, seconds, room)
                seconds = max(room, 0.0)
            await trio.sleep(seconds)
        return hooks.CONT

    async def hook_connect(self, conn: hooks.Connection) -> hooks.Result:
        return await self._sleep(conn)

    async def hook_helo(self, conn: hooks.Connection, name: str) -> hooks.Result:
        return await self._sleep(conn)

    async def hook_ehlo(self, conn: hooks.Connection, name: str) -> hooks.Result:
        return await self._sleep(conn)

    async def hook_mail(
        self, conn: hooks.Connection, sender: Address | None, params: MailParams
    ) -> hooks.Result:
        return await self._sleep(conn)

    async def hook_rcpt(
        self, conn: hooks.Connection, rcpt: Address, params: RcptParams
    ) -> hooks.Result:
        return await self._sleep(conn)

    async def hook_data(self, conn: hooks.Connection) -> hooks.Result:
        return await self._sleep(conn)

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        return await self._sleep(conn)
