"""Deferred events: computed once, in the reader's batch, only for a reader that wants the
kind, and encoded from their values without an object for a reader that only forwards JSON."""

from __future__ import annotations

from trio_mta.events import (
    VALUES_ENCODERS,
    Event,
    EventBus,
    Gap,
    LoopBlocked,
    MailReceived,
    as_event,
    event_json,
)


class Builder:
    """Computes a MailReceived's field values, counting how often it is asked to."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, n: int) -> tuple[object, ...]:
        self.calls += 1
        return (float(n), "c", f"t{n}", "127.0.0.1", "", 250, "2.1.0 ok")


def txns(items: list[tuple[int, Event]]) -> list[str | None]:
    return [e.txn if not isinstance(e, Gap) else "gap" for _, e in items]


def test_a_deferred_event_is_built_when_first_read_and_only_once() -> None:
    bus = EventBus(buffer=16)
    build = Builder()
    with bus.subscribe() as a, bus.subscribe() as b:
        for n in range(3):
            bus.defer(MailReceived, build, (n,))
        assert build.calls == 0  # nothing built on the publishing side
        first = a.take()
        assert build.calls == 3
        second = b.take()
        assert build.calls == 3  # the second reader gets the same objects
        assert txns(first) == txns(second) == ["t0", "t1", "t2"]
        assert all(x is y for (_, x), (_, y) in zip(first, second, strict=True))
        assert [seq for seq, _ in first] == [0, 1, 2]


def test_a_deferred_event_no_reader_wants_is_never_built() -> None:
    bus = EventBus(buffer=16)
    build = Builder()
    with bus.subscribe(kinds=frozenset({LoopBlocked})) as sub:
        bus.defer(MailReceived, build, (1,))
        bus.publish(LoopBlocked(ts=2.0, duration=0.5, task="t", plugin=None, hook=None))
        bus.defer(MailReceived, build, (3,))
        items = sub.take()
        assert [type(e) for _, e in items] == [LoopBlocked]
        assert [seq for seq, _ in items] == [1]  # sequence numbers stay those of the bus
        assert sub.pending == 0  # the filtered ones count as read
    assert build.calls == 0


def test_an_event_never_read_before_the_ring_moves_on_is_never_built_and_counts_as_lost() -> None:
    bus = EventBus(buffer=4)
    build = Builder()
    with bus.subscribe() as sub:
        for n in range(10):
            bus.defer(MailReceived, build, (n,))
        items = sub.take()
    assert txns(items) == ["gap", "t6", "t7", "t8", "t9"]
    assert isinstance(items[0][1], Gap)
    assert items[0][1].dropped == 6
    assert build.calls == 4


def test_a_kind_with_a_tap_is_built_at_once_for_the_tap() -> None:
    bus = EventBus(buffer=16)
    build = Builder()
    tapped: list[Event] = []
    bus.add_tap(tapped.append, (MailReceived,))
    with bus.subscribe() as sub:
        bus.defer(MailReceived, build, (7,))
        assert build.calls == 1
        assert [e.txn for e in tapped] == ["t7"]
        [(_, event)] = sub.take()
        assert event is tapped[0]
    assert build.calls == 1


def test_replay_builds_deferred_events_a_late_subscriber_asks_for() -> None:
    bus = EventBus(retain=8, buffer=8)
    build = Builder()
    for n in range(3):
        bus.defer(MailReceived, build, (n,))
    with bus.subscribe(replay=2) as sub:
        assert txns(sub.take()) == ["t1", "t2"]
    assert build.calls == 2


def test_a_raw_reader_gets_the_values_and_they_encode_as_the_built_event_would() -> None:
    bus = EventBus(buffer=16)
    build = Builder()
    with bus.subscribe() as raw, bus.subscribe() as built:
        bus.defer(MailReceived, build, (4,))
        [(seq, item)] = raw.take_raw()
        assert item == (MailReceived, (4.0, "c", "t4", "127.0.0.1", "", 250, "2.1.0 ok"))
        expected = MailReceived(ts=4.0, conn="c", txn="t4", ip="127.0.0.1", sender="",
                                code=250, reply="2.1.0 ok")  # fmt: skip
        assert as_event(item) == expected
        assert VALUES_ENCODERS[MailReceived](item[1], seq) == event_json(expected, seq)
        [(_, event)] = built.take()  # an object reader: built from the computed values
        assert event == expected
        assert raw.take_raw() == []
    assert build.calls == 1


def test_values_published_now_are_read_as_values_or_as_the_event() -> None:
    bus = EventBus(buffer=8)
    values = (1.0, "c", "t1", "127.0.0.1", "a@b", 250, "2.1.0 ok")
    with bus.subscribe() as raw, bus.subscribe() as built:
        bus.publish_values(MailReceived, values)
        assert raw.take_raw() == [(0, (MailReceived, values))]
        [(_, event)] = built.take()
        assert event == MailReceived(ts=1.0, conn="c", txn="t1", ip="127.0.0.1", sender="a@b",
                                     code=250, reply="2.1.0 ok")  # fmt: skip
