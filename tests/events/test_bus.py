"""The event bus: order, replay, activity, and what a subscriber that falls behind is told."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trio_mta.events
from trio_mta.events import Event, EventBus, Gap, LoopBlocked


def ev(n: int) -> Event:
    return LoopBlocked(ts=float(n), duration=0.0, task=f"t{n}", plugin=None, hook=None)


def tasks(items: list[tuple[int, Event]]) -> list[str]:
    out = []
    for _, e in items:
        assert isinstance(e, LoopBlocked | Gap)
        out.append(e.task if isinstance(e, LoopBlocked) else f"gap {e.dropped}")
    return out


def test_public_surface_is_curated() -> None:
    public = {name for name in dir(trio_mta.events) if not name.startswith("_")}
    assert public == {
        "EVENT_TYPES",
        "SCHEMA_VERSION",
        "VALUES_ENCODERS",
        "RawItem",
        "as_event",
        "AuthAttempted",
        "ConfigReloaded",
        "ConnectionClosed",
        "ConnectionOpened",
        "Counters",
        "Delivered",
        "DeliveryAttempted",
        "DeliveryBounced",
        "DeliveryDeferred",
        "Event",
        "EventBus",
        "Gap",
        "HeloReceived",
        "LoopBlocked",
        "MailReceived",
        "PluginCalled",
        "PluginBreaker",
        "PluginMoved",
        "MemoryGuarded",
        "RcptReceived",
        "SandboxWorker",
        "StatsSampled",
        "Subscription",
        "Tap",
        "TlsStarted",
        "TransactionEnded",
        "TransactionRefused",
        "event_dict",
        "event_json",
    }


def test_subscribers_see_every_event_in_order_with_sequence_numbers() -> None:
    bus = EventBus(buffer=16)
    with bus.subscribe() as a, bus.subscribe() as b:
        for n in range(5):
            bus.publish(ev(n))
        got = a.take()
        assert [seq for seq, _ in got] == [0, 1, 2, 3, 4]
        assert tasks(got) == ["t0", "t1", "t2", "t3", "t4"]
        assert tasks(b.take(limit=2)) == ["t0", "t1"]
        assert tasks(b.take()) == ["t2", "t3", "t4"]
        assert a.take() == []


def test_a_subscriber_that_falls_behind_gets_a_gap_with_the_exact_count() -> None:
    bus = EventBus(buffer=4)
    with bus.subscribe() as slow, bus.subscribe() as fast:
        for n in range(10):
            bus.publish(ev(n))
            assert tasks(fast.take()) == [f"t{n}"]  # keeping up: never a gap
        # The ring holds the last 4; the 6 before them are lost to the slow one, and said so.
        assert tasks(slow.take()) == ["gap 6", "t6", "t7", "t8", "t9"]
        assert bus.dropped == 6
        bus.publish(ev(10))
        assert tasks(slow.take()) == ["t10"]  # caught up: no second gap


def state(bus: EventBus) -> tuple[bool, bool, int]:
    return bus.active, bus.detail, bus.subscribers


def test_active_while_subscribed_and_detail_only_for_those_who_want_it() -> None:
    bus = EventBus(retain=10)
    told: list[bool] = []
    bus.on_detail(told.append)
    assert state(bus) == (False, False, 0)
    terse = bus.subscribe(detail=False)
    assert state(bus) == (True, False, 1)
    assert told == []
    first = bus.subscribe()
    second = bus.subscribe()
    assert state(bus) == (True, True, 3)
    assert told == [True]
    first.close()
    first.close()  # closing twice counts once
    assert state(bus) == (True, True, 2)
    second.close()
    assert state(bus) == (True, False, 1)
    terse.close()
    assert state(bus) == (False, False, 0)
    assert told == [True, False]


def test_replay_starts_back_at_most_retain_events() -> None:
    bus = EventBus(retain=3, buffer=8)
    for n in range(6):
        bus.publish(ev(n))
    with bus.subscribe(replay=2) as two, bus.subscribe(replay=100) as capped:
        assert tasks(two.take()) == ["t4", "t5"]
        assert tasks(capped.take()) == ["t3", "t4", "t5"]
    with EventBus(retain=0).subscribe(replay=5) as none:
        assert none.take() == []


def test_a_failing_tap_is_logged_and_the_event_still_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()

    def broken(event: Event) -> None:
        raise RuntimeError("metrics bug")

    bus.add_tap(broken, (LoopBlocked,))
    with bus.subscribe() as sub, caplog.at_level(logging.ERROR, "trio_mta.events"):
        bus.publish(ev(1))
        assert tasks(sub.take()) == ["t1"]
    assert "metrics bug" in caplog.text


async def test_receive_waits_for_the_next_publish_and_batches() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        got: list[tuple[int, Event]] = []

        async def reader() -> None:
            got.extend(await sub.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            bus.publish(ev(1))
            bus.publish(ev(2))  # the reader has not run yet: both come in one batch
        assert tasks(got) == ["t1", "t2"]


async def test_receive_is_a_checkpoint_even_with_events_waiting() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        bus.publish(ev(1))
        with trio.CancelScope() as scope:
            scope.cancel()
            await sub.receive()
        assert scope.cancelled_caught
        assert tasks(sub.take()) == ["t1"]  # nothing was consumed


def test_gap_is_an_event_with_the_count() -> None:
    gap = Gap(ts=1.0, dropped=7)
    assert gap.TYPE == "gap"
    assert gap.dropped == 7
    assert gap.conn is None
