"""``server.stats``: looked at once a second while someone watches, published when a number
changed, a watcher came, or 15 s passed (MockClock), and never while nobody watches."""

from __future__ import annotations

import trio
import trio.testing

from trio_mta.admin import AdminServer, Metrics
from trio_mta.config import AdminConfig
from trio_mta.events import EventBus, StatsSampled


async def test_samples_follow_changes_watchers_and_a_heartbeat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = EventBus(clock=trio.current_time)
    metrics = Metrics(bus)
    depth = [0]
    metrics.queue_size = lambda: depth[0]
    server = AdminServer(AdminConfig(listen="127.0.0.1:0", watcher_process=False), bus, metrics)
    published: list[tuple[float, int | None]] = []

    with bus.subscribe() as sub:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._sample)
            steps = [
                (0.5, 1, None),
                (20.5, None, 4),
                (25.5, 2, None),
                (30.5, 0, 9),
                (50.5, 1, None),
            ]
            start = trio.current_time()
            for at, clients, queue in steps:
                await trio.sleep_until(start + at)
                if clients is not None:
                    server.local_clients = clients  # watchers served in the daemon
                if queue is not None:
                    depth[0] = queue
            await trio.sleep_until(start + 55)
            nursery.cancel_scope.cancel()
        for _, event in sub.take(100):
            assert isinstance(event, StatsSampled)
            published.append((round(event.ts - start), event.queue))
    assert published == [
        (1, 0),  # the first watcher
        (16, 0),  # the heartbeat: nothing changed for 15 s
        (21, 4),  # the queue grew
        (26, 4),  # a second watcher came
        # 30.5: nobody watches (and the queue changed): nothing until someone does
        (51, 9),
    ]
