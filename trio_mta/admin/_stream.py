"""One watcher on ``/events``: its subscription, its filter, and the websocket it reads.

Wire format: every websocket text message is a JSON array of one or more objects, in order.
The first message is ``[{"type": "hello", ...}]`` (the filters in force, the replay given);
then events as ``docs/events.md`` describes them. Batching: a watcher that has caught up
waits ``BATCH_INTERVAL`` for the next batch to gather; while events keep coming it takes the
next batch as soon as the last one is sent. Measured under load, encoding events soon after
they were published (while their data is still in the CPU caches) cost less than letting
them gather for 0.1 s. The type filter is the subscription's ``kinds`` (the bus never even
builds what the watcher would drop); ``match`` runs only for the address and domain filters.

Each event is encoded once, whoever asks first (``EncodedEvents``, a ring beside the bus's
ring), so more watchers of the same events cost little more than one; a deferred event is
encoded from its values, without ever being built as an object.

A watcher that does not read is never waited for: its send blocks in this task only, the
subscription falls behind, and when it reads again it gets a ``gap`` with the count lost.
Messages from the client are read and ignored (that also notices its close promptly).
"""

from __future__ import annotations

import json

import trio
import trio_websocket

from ..events import (
    SCHEMA_VERSION,
    VALUES_ENCODERS,
    EventBus,
    RawItem,
    Subscription,
    as_event,
    event_json,
)
from ._filter import EventFilter
from ._http import PrefixedStream

HANDSHAKE_DEADLINE = 10.0
CLOSE_DEADLINE = 2.0
BATCH_INTERVAL = 0.02  # seconds a caught-up watcher waits for the next batch to gather
BATCH_LIMIT = 2000  # events per message


class EncodedEvents:
    """The JSON text of recent events by sequence number, shared by all watchers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seqs = [-1] * size
        self._texts = [""] * size

    def get(self, seq: int, item: RawItem) -> str:
        if seq < 0:  # a gap: this subscriber's own
            return event_json(as_event(item))
        slot = seq % self.size
        if self._seqs[slot] != seq:
            if type(item) is tuple:  # a deferred event's values: never built as an object
                kind, values = item
                self._texts[slot] = VALUES_ENCODERS[kind](values, seq)
            else:
                self._texts[slot] = event_json(item, seq)  # type: ignore[arg-type]
            self._seqs[slot] = seq
        return self._texts[slot]


def subscribe(bus: EventBus, event_filter: EventFilter, at: int | None = None) -> Subscription:
    """The subscription a watcher with this filter reads: its events start now (or at event
    number ``at``)."""
    return bus.subscribe(
        event_filter.replay,
        detail=event_filter.wants_plugin_calls,
        kinds=event_filter.kinds(),
        at=at,
    )


async def serve_watcher(
    stream: trio.abc.Stream,
    raw: bytes,
    subscription: Subscription,
    event_filter: EventFilter,
    *,
    server: str,
    encoded: EncodedEvents,
) -> None:
    """Complete the websocket handshake whose request head ``raw`` was already read from
    ``stream``, then send the events of ``subscription`` (made when the request came: the
    watcher's events start there, not once the handshake is done) until the client goes
    away. Closes the subscription.

    Raises:
        trio.TooSlowError: the client did not finish the handshake in time.
    """
    with subscription:
        replayed = subscription.replayed
        async with trio.open_nursery() as nursery:
            with trio.fail_after(HANDSHAKE_DEADLINE):
                request = await trio_websocket.wrap_server_stream(
                    nursery, PrefixedStream(stream, raw)
                )
                ws = await request.accept()
            try:
                await stream_events(
                    ws,
                    subscription,
                    event_filter,
                    server=server,
                    encoded=encoded,
                    replayed=replayed,
                )
            finally:
                with trio.move_on_after(CLOSE_DEADLINE, shield=True):
                    await ws.aclose()
                nursery.cancel_scope.cancel()


async def stream_events(
    ws: trio_websocket.WebSocketConnection,
    subscription: Subscription,
    event_filter: EventFilter,
    *,
    server: str,
    encoded: EncodedEvents,
    replayed: int,
) -> None:
    """Send the hello, then events until the client goes away.

    Error handling: a closed connection ends the stream quietly.
    """
    hello = {
        "v": SCHEMA_VERSION,
        "type": "hello",
        "server": server,
        "ts": subscription.bus.clock(),
        "replay": replayed,
        "filter": event_filter.describe(),
    }
    try:
        await ws.send_message(json.dumps([hello]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain_client, ws, nursery.cancel_scope)
            await _pump(ws, subscription, event_filter, encoded)
    except trio_websocket.ConnectionClosed:
        return


async def _pump(
    ws: trio_websocket.WebSocketConnection,
    subscription: Subscription,
    event_filter: EventFilter,
    encoded: EncodedEvents,
) -> None:
    # Types are the subscription's kinds (events of other types never reach us); the other
    # filters need the event object.
    match = event_filter.match if event_filter.needs_match else None
    get = encoded.get
    while True:
        items = await subscription.receive_raw(BATCH_LIMIT)
        if match is None:
            batch = [get(seq, item) for seq, item in items]
        else:
            batch = [get(seq, item) for seq, item in items if match(as_event(item))]
        if batch:
            await ws.send_message("[" + ",".join(batch) + "]")
        if not subscription.pending:  # caught up: let the next batch gather
            await trio.sleep(BATCH_INTERVAL)


async def _drain_client(ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope) -> None:
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        scope.cancel()
