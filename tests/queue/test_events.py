"""Delivery events on the bus: attempt, deferred (with the next attempt's time), delivered and
bounced, published by the queue's workers, and nothing built while nobody listens."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.queue.kit import EPOCH, FakeDeliverer, connection, make_service, started, until_empty
from trio_mta.events import (
    Delivered,
    DeliveryAttempted,
    DeliveryBounced,
    DeliveryDeferred,
    Event,
    EventBus,
)
from trio_mta.queue import QueueService


def wired(tmp_path: Path, bus: EventBus, fake: FakeDeliverer) -> QueueService:
    return make_service(tmp_path, fake, publish=bus.publish, wanted=lambda: bus.active)


async def test_one_delivery_seen_by_a_subscriber(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bus = EventBus()
    fake = FakeDeliverer()
    service = await started(nursery, wired(tmp_path, bus, fake))
    with bus.subscribe() as sub:
        t0 = trio.current_time()
        id = await service.submit(
            connection("a@sender.test", ["late@dest.test", "reject@dest.test", "ok@other.test"])
        )
        await until_empty(service)
        seen: list[Event] = [e for _, e in sub.take()]
    events = [e for e in seen if e.txn == id]
    # The bounce (a message of its own) was delivered to the sender, with events of its own.
    [report] = [e for e in seen if e.txn != id and isinstance(e, Delivered)]
    assert report.recipients == ("a@sender.test",)
    kinds = [(type(e).__name__, getattr(e, "domain", ""), getattr(e, "attempt", 0)) for e in events]
    assert sorted(kinds[:2]) == [
        ("DeliveryAttempted", "dest.test", 1),
        ("DeliveryAttempted", "other.test", 1),
    ]
    attempts = [e for e in events if isinstance(e, DeliveryAttempted)]
    assert {a.mx_host for a in attempts} == {"mx.dest.test", "mx.other.test"}
    [deferred] = [e for e in events if isinstance(e, DeliveryDeferred)]
    assert deferred.recipients == ("late@dest.test",)
    assert (deferred.code, deferred.attempt, deferred.mx_host) == (451, 1, "mx.dest.test")
    assert deferred.reply == "4.7.1 Try later"
    assert deferred.until == pytest.approx(EPOCH + t0 + 60.0)  # when the retry is due
    assert (deferred.sender, deferred.delay) == ("a@sender.test", 0.0)
    [bounced] = [e for e in events if isinstance(e, DeliveryBounced)]
    assert (bounced.recipients, bounced.code, bounced.attempt) == (("reject@dest.test",), 550, 1)
    delivered = sorted(
        (e.recipients, e.attempt, e.ts - EPOCH - t0) for e in events if isinstance(e, Delivered)
    )
    assert delivered == [((("late@dest.test",), 2, 60.0)), ((("ok@other.test",), 1, 0.0))]
    # Postfix's delay=: how long since the message arrived, and whose it is.
    late = [e for e in events if isinstance(e, Delivered) and e.attempt == 2]
    assert [e.sender for e in late] == ["a@sender.test"]
    assert late[0].delay == pytest.approx(60.0)
    assert {a.sender for a in attempts} == {"a@sender.test"}
    assert report.sender == ""  # the bounce: the null sender
    # The retry announced itself too: three attempts in all.
    assert len(attempts) == 3
    assert attempts[-1].recipients == ("late@dest.test",)
    assert attempts[-1].attempt == 2


async def test_nothing_is_published_while_nobody_listens(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bus = EventBus()
    service = await started(nursery, wired(tmp_path, bus, FakeDeliverer()))
    await service.submit(connection("a@sender.test", ["reject@dest.test", "late@dest.test"]))
    await until_empty(service)
    assert service.stats.delivered == 2  # "late" and the bounce
    assert bus.published == 0


async def test_a_crashing_attempt_is_published_as_deferred(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bus = EventBus()
    service = await started(nursery, wired(tmp_path, bus, FakeDeliverer(crash_first=1)))
    with bus.subscribe() as sub:
        await service.submit(connection("a@sender.test", ["ok@dest.test"]))
        await until_empty(service)
        events = [e for _, e in sub.take()]
    assert [type(e) for e in events] == [
        DeliveryAttempted,
        DeliveryDeferred,
        DeliveryAttempted,
        Delivered,
    ]
    assert isinstance(events[1], DeliveryDeferred)
    assert events[1].code == 451
