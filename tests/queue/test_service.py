"""The queue service under ``autojump_clock``: retry times, give-up, bounces, limits, crashes."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
import trio

from tests.queue.kit import (
    FakeDeliverer,
    connection,
    default_reply,
    make_service,
    started,
    until_empty,
)
from trio_mta.protocol import Reply
from trio_mta.queue import QueueService, Status


async def attempted(service: QueueService, id: str, times: int = 1) -> None:
    """Until ``id`` has had ``times`` attempts, recorded on disk (the spool's thread is
    invisible to autojump_clock: waiting on an event, not on virtual time, is what is safe)."""
    await service.wait_until(
        lambda: id not in service.envelopes or service.envelopes[id].attempts >= times
    )


async def test_submit_is_durable_before_it_returns(nursery: trio.Nursery, tmp_path: Path) -> None:
    service = await started(nursery, make_service(tmp_path, FakeDeliverer(), fsync=True))
    conn = connection("a@sender.test", ["defer@dest.test"])
    id = await service.submit(conn)
    assert (service.spool.queue / f"{id}.env").is_file()
    assert (service.spool.queue / f"{id}.msg").read_bytes() == b"".join(
        conn.transaction.iter_message()  # type: ignore[union-attr]  # set by connection()
    )
    assert list(service.spool.tmp.iterdir()) == []


async def test_retry_schedule_and_give_up(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(
        nursery,
        make_service(tmp_path, fake, retry_first=60.0, retry_max=600.0, give_up=1800.0),
    )
    t0 = trio.current_time()
    id = await service.submit(connection("a@sender.test", ["defer@dest.test"]))
    await until_empty(service)
    tries = [c.time - t0 for c in fake.calls if c.recipients == ("defer@dest.test",)]
    # Doubling from 60 s, capped at 600 s; the attempt at or after 1800 s is the last.
    assert tries == [0, 60, 180, 420, 900, 1500, 2100]
    [bounce] = [c for c in fake.calls if c.recipients == ("a@sender.test",)]
    assert bounce.sender is None
    assert bounce.time - t0 == 2100
    assert service.stats.failed == 1
    assert service.stats.bounces == 1
    assert id not in service.envelopes


async def test_a_5xx_bounces_once_and_notify_never_suppresses(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(nursery, make_service(tmp_path, fake))
    await service.submit(connection("a@sender.test", ["reject@dest.test", "ok@dest.test"]))
    await service.submit(connection("b@sender.test", ["reject@dest.test"], notify=("NEVER",)))
    await service.submit(
        connection("c@sender.test", ["reject@dest.test"], notify=("SUCCESS", "DELAY"))
    )
    await until_empty(service)
    bounces = [c for c in fake.calls if c.sender is None]
    assert [b.recipients for b in bounces] == [("a@sender.test",)]
    assert service.stats.bounces == 1


async def test_notify_success_gets_a_relayed_report(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(nursery, make_service(tmp_path, fake))
    await service.submit(connection("a@sender.test", ["ok@dest.test"], notify=("SUCCESS",)))
    await service.submit(connection("b@sender.test", ["ok@dest.test"]))  # no NOTIFY: no report
    await until_empty(service)
    [report] = [c for c in fake.calls if c.sender is None]
    assert report.recipients == ("a@sender.test",)
    message = email.message_from_bytes(report.message, policy=email.policy.compat32)
    assert message["Subject"] == "Successful Mail Delivery Report"
    assert b"Action: relayed" in report.message


async def test_null_sender_failure_goes_to_the_postmaster_and_a_failing_double_bounce_is_dropped(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    def reply(address: str, attempt: int) -> Reply:  # the postmaster's server refuses too
        return default_reply("reject" if "postmaster" in address else address, attempt)

    fake = FakeDeliverer(reply)
    service = await started(nursery, make_service(tmp_path, fake))
    await service.submit(connection(None, ["reject@dest.test"]))
    await until_empty(service)
    # The <> message's failure went to the postmaster (never to <>), and when that failed too
    # it was dropped: no third message.
    assert [(c.sender, c.recipients) for c in fake.calls] == [
        (None, ("reject@dest.test",)),
        (None, ("postmaster@mx.example.test",)),
    ]


async def test_a_crashing_attempt_is_retried_and_the_queue_lives_on(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer(crash_first=1)
    service = await started(nursery, make_service(tmp_path, fake, retry_first=30.0))
    t0 = trio.current_time()
    await service.submit(connection("a@sender.test", ["ok@dest.test"]))
    await until_empty(service)
    assert [c.time - t0 for c in fake.calls] == [0, 30]
    assert service.stats.crashes == 1
    assert service.stats.delivered == 1


async def test_per_destination_and_global_limits(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer(seconds=1.0)
    service = await started(nursery, make_service(tmp_path, fake, per_destination=2, concurrency=3))
    for n in range(8):
        await service.submit(connection("a@sender.test", [f"u{n}@dest.test"]))
        await service.submit(connection("a@sender.test", [f"u{n}@other.test"]))
    t0 = trio.current_time()
    await until_empty(service)
    assert fake.peak == {"dest.test": 2, "other.test": 2}
    assert fake.peak_total == 3
    assert trio.current_time() - t0 == pytest.approx(16 / 3, abs=1.01)


async def test_the_active_window_bounds_the_workers(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer(seconds=1.0)
    service = await started(nursery, make_service(tmp_path, fake, active_window=2))
    for n in range(6):
        await service.submit(connection("a@sender.test", [f"u{n}@dest.test"]))
    await trio.sleep(0.5)
    assert sum(fake.active.values()) == 2
    await until_empty(service)
    assert fake.peak_total == 2


async def test_a_dead_destination_is_not_tried_again_at_once(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer(unreachable=["dest.test"])
    service = await started(nursery, make_service(tmp_path, fake, dead_destination=120.0))
    one = await service.submit(connection("a@sender.test", ["one@dest.test"]))
    await attempted(service, one)
    two = await service.submit(connection("a@sender.test", ["two@dest.test"]))
    await attempted(service, two)
    assert [c.recipients for c in fake.calls] == [("one@dest.test",)]
    assert "not reachable lately" in service.envelopes[two].recipients[0].text


async def test_hold_release_delete_and_flush(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(nursery, make_service(tmp_path, fake, retry_first=3600.0))
    cmd = service.commands()
    late = await service.submit(connection("a@sender.test", ["late@dest.test"]))
    await attempted(service, late)  # first attempt deferred; the next is an hour away
    held = await cmd["queue.hold"]({"ids": [late, "gone"]})
    assert held == {"action": "held", "ids": [late], "missing": ["gone"]}
    assert service.spool.read(late).held
    assert late not in service.scheduler  # no retry while held
    flushed = await cmd["queue.flush"]({})
    assert flushed == {"action": "flushed", "ids": []}  # held: not flushed
    released = await cmd["queue.release"]({"id": late})
    assert released == {"action": "released", "ids": [late]}
    await until_empty(service, cap=10)  # released: due now, not in an hour
    doomed = await service.submit(connection("a@sender.test", ["defer@dest.test"]))
    await attempted(service, doomed)
    deleted = await cmd["queue.delete"]({"ids": [doomed]})
    assert deleted == {"action": "deleted", "ids": [doomed]}
    assert doomed not in service.envelopes
    assert not service.spool.envelope_path(doomed).exists()
    again = await service.submit(connection("a@sender.test", ["late@other.test"]))
    await attempted(service, again)
    assert await cmd["queue.flush"]({"domain": "other.test"}) == {
        "action": "flushed",
        "ids": [again],
    }
    await until_empty(service, cap=10)
    assert again not in service.envelopes
    with pytest.raises(LookupError):
        await cmd["queue.hold"]({"id": "nosuchid"})
    with pytest.raises(ValueError, match="select messages"):
        await cmd["queue.hold"]({})


async def test_bulk_selection_in_the_daemon(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    service = await started(nursery, make_service(tmp_path, FakeDeliverer(), retry_first=3600.0))
    cmd = service.commands()
    one = await service.submit(connection("a@sender.test", ["defer1@dest.test"]))
    two = await service.submit(connection("b@other.test", ["defer@dest.test"]))
    three = await service.submit(connection("b@other.test", ["defer2@other.test"]))
    for id in (one, two, three):
        await attempted(service, id)
    held = await cmd["queue.hold"]({"sender": "@other.test"})
    assert sorted(held["ids"]) == sorted([two, three])
    listed = await cmd["queue.list"]({"domain": "other.test"})
    assert [e["id"] for e in listed] == [three]
    assert listed[0]["state"] == "held"
    assert (await cmd["queue.release"]({"recipient": "defer@DEST.test"}))["ids"] == [two]
    shown = await cmd["queue.show"]({"id": three, "body": True})
    assert shown["state"] == "held"
    assert shown["message"].startswith(shown["headers"])
    with pytest.raises(ValueError, match="queue id"):
        await cmd["queue.show"]({})
    assert (await cmd["queue.delete"]({"ids": ["ALL"], "older_than": 86400}))["ids"] == []
    deleted = await cmd["queue.delete"]({"all": True})
    assert sorted(deleted["ids"]) == sorted([one, two, three])
    # One may be in an attempt (released: due at once); it goes when the attempt ends.
    await service.wait_until(lambda: not {one, two, three} & set(service.envelopes))


async def test_recovery_reschedules_everything_and_sets_corrupt_entries_aside(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as first_run:
        service = await started(
            first_run, make_service(tmp_path, FakeDeliverer(), retry_first=600.0)
        )
        ids = [
            await service.submit(connection("a@sender.test", [f"late{n}@dest.test"]))
            for n in range(3)
        ]
        for id in ids:
            await attempted(service, id)  # each deferred once
        first_run.cancel_scope.cancel()  # "the daemon stops"
    (service.spool.queue / "bogus.env").write_bytes(b"{not json")
    (service.spool.queue / "bogus.msg").write_bytes(BODY_BYTES)
    (service.spool.queue / "orphan.msg").write_bytes(BODY_BYTES)  # never acknowledged
    fake = FakeDeliverer(accept_all)
    async with trio.open_nursery() as second_run:
        service = await started(second_run, make_service(tmp_path, fake, retry_first=600.0))
        assert service.corrupt == [("bogus", service.corrupt[0][1])]
        assert sorted(service.envelopes) == sorted(ids)
        assert all(e.attempts == 1 for e in service.envelopes.values())
        t0 = trio.current_time()
        await until_empty(service)
        # Recovered entries keep their retry time: 600 s after the first attempt.
        assert all(c.time - t0 == pytest.approx(599, abs=1) for c in fake.calls)
        second_run.cancel_scope.cancel()
    assert (service.spool.corrupt / "bogus.env").exists()
    assert not (service.spool.queue / "orphan.msg").exists()
    assert sorted(c.recipients[0] for c in fake.calls) == [f"late{n}@dest.test" for n in range(3)]


BODY_BYTES = b"Subject: x\r\n\r\ny\r\n"


def accept_all(address: str, attempt: int) -> Reply:
    return Reply(250, "2.0.0", "OK")


async def test_recipient_state_survives_so_nobody_gets_it_twice(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as first_run:
        service = await started(first_run, make_service(tmp_path, FakeDeliverer()))
        id = await service.submit(connection("a@sender.test", ["ok@dest.test", "late@other.test"]))
        await attempted(service, id)
        first_run.cancel_scope.cancel()
    assert [r.status for r in service.spool.read(id).recipients] == [
        Status.DELIVERED,
        Status.PENDING,
    ]
    fake = FakeDeliverer(accept_all)
    async with trio.open_nursery() as second_run:
        service = await started(second_run, make_service(tmp_path, fake))
        await until_empty(service)
        second_run.cancel_scope.cancel()
    assert [c.recipients for c in fake.calls] == [("late@other.test",)]
