"""The retry schedule and the scheduler's heap, in virtual time."""

from __future__ import annotations

import trio
import trio.testing

from trio_mta.queue import Scheduler, retry_delay


def test_retry_delay_doubles_from_the_first_and_stops_at_the_cap() -> None:
    delays = [retry_delay(n, first=60, maximum=1000) for n in range(7)]
    assert delays == [0, 60, 120, 240, 480, 960, 1000]
    assert retry_delay(500, first=60, maximum=14400) == 14400  # no overflow


async def test_ids_come_out_at_their_due_times_and_a_new_earlier_one_wakes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scheduler = Scheduler()
    send, receive = trio.open_memory_channel[str](0)
    out: list[tuple[float, str]] = []
    t0 = trio.current_time()

    async def consume() -> None:
        async for id in receive:
            out.append((trio.current_time() - t0, id))
            scheduler.done(id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run, send)
        nursery.start_soon(consume)
        scheduler.add("late", t0 + 100)
        scheduler.add("later", t0 + 200)
        scheduler.add("moved", t0 + 50)
        scheduler.add("moved", t0 + 300)  # rescheduled: the 50 s item is stale
        await trio.sleep(10)
        scheduler.add("new", t0 + 20)  # earlier than anything: wakes the scheduler
        await trio.sleep(400)
        nursery.cancel_scope.cancel()
    assert out == [(20, "new"), (100, "late"), (200, "later"), (300, "moved")]


async def test_a_full_window_keeps_ids_on_the_heap(autojump_clock: trio.testing.MockClock) -> None:
    scheduler = Scheduler()
    send, _receive = trio.open_memory_channel[str](0)  # nobody receives: the window is full
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run, send)
        for n in range(3):
            scheduler.add(f"m{n}", trio.current_time())
        await trio.sleep(5)
        assert len(scheduler.active) == 1  # the one being handed over
        assert len(scheduler) == 2
        assert not scheduler.add(next(iter(scheduler.active)), 0)  # active: refused
        nursery.cancel_scope.cancel()
