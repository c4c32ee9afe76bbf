"""One watcher on ``/events``: its subscription, its filter, and the websocket it reads.

Wire format: every websocket text message is a JSON array of one or more objects, in order.
The first message is ``[{"type": "hello", ...}]`` (the filters in force, the replay given);
then events as ``docs/events.md`` describes them. Batching matters: a watcher costs one
websocket message per ``BATCH_INTERVAL`` at most, however busy the server, so its price in
CPU stays flat while the SMTP side speeds up. An empty filter is not even consulted.

Each event is encoded once, whoever asks first (``EncodedEvents``, a ring beside the bus's
ring), so more watchers of the same events cost little more than one.

A watcher that does not read is never waited for: its send blocks in this task only, the
subscription falls behind, and when it reads again it gets a ``gap`` with the count lost.
Messages from the client are read and ignored (that also notices its close promptly).
"""

from __future__ import annotations

import json

import trio
import trio_websocket

from ..events import SCHEMA_VERSION, Event, EventBus, Subscription, event_json
from ._filter import EventFilter

BATCH_INTERVAL = 0.1  # seconds between two messages to one watcher, at most 10 a second
BATCH_LIMIT = 2000  # events per message


class EncodedEvents:
    """The JSON text of recent events by sequence number, shared by all watchers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._seqs = [-1] * size
        self._texts = [""] * size

    def get(self, seq: int, event: Event) -> str:
        if seq < 0:  # a gap: this subscriber's own
            return event_json(event)
        slot = seq % self.size
        if self._seqs[slot] != seq:
            self._texts[slot] = event_json(event, seq)
            self._seqs[slot] = seq
        return self._texts[slot]


async def stream_events(
    ws: trio_websocket.WebSocketConnection,
    bus: EventBus,
    event_filter: EventFilter,
    *,
    server: str,
    encoded: EncodedEvents,
) -> None:
    """Send events until the client goes away.

    Error handling: a closed connection ends the stream quietly.
    """
    detail = event_filter.wants_plugin_calls
    with bus.subscribe(
        event_filter.replay, detail=detail, kinds=event_filter.kinds()
    ) as subscription:
        hello = {
            "v": SCHEMA_VERSION,
            "type": "hello",
            "server": server,
            "ts": bus.clock(),
            "replay": subscription.pending,
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
    match = None if event_filter.empty else event_filter.match
    get = encoded.get
    while True:
        items = await subscription.receive(BATCH_LIMIT)
        if match is None:
            batch = [get(seq, event) for seq, event in items]
        else:
            batch = [get(seq, event) for seq, event in items if match(event)]
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
