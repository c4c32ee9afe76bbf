"""The watcher process: started with the first watcher, replaced after it dies (SMTP never
notices), stopped with the daemon; what crosses the socket pair between the two."""

from __future__ import annotations

import contextlib
import itertools
import marshal
import os
import signal
from pathlib import Path

import pytest
import trio
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st

from trio_mta.admin import _process
from trio_mta.admin._child import _Child
from trio_mta.admin._process import EVENTS, FRAME, STATE, _pack, take_frames
from trio_mta.events import EVENT_TYPES, EventBus, Gap, MailReceived, TransactionEnded

from .kit import admin_config, eventually, running, watching

CAP = 20


def watcher_process_pids() -> list[int]:
    """Our children that run the watcher process (the daemon runs in this test process)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == os.getpid() and b"trio_mta.admin._child" in cmdline:
            found.append(int(entry.name))
    return found


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def test_the_process_starts_with_the_first_watcher_and_stops_with_the_daemon(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            assert watcher_process_pids() == []  # nobody watches: no process
            async with watching(d.url()) as w:
                [pid] = watcher_process_pids()
                await d.send()
                await w.until("transaction.end")
    # The daemon's shutdown closed the pair: the process exited and was reaped.
    assert not process_exists(pid)


async def test_a_killed_watcher_process_costs_its_watchers_only(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            async with watching(d.url()) as w:
                [pid] = watcher_process_pids()
                os.kill(pid, signal.SIGKILL)
                # The watcher's connection ends; SMTP goes on meanwhile.
                assert (await d.send()).code == 250
                try:
                    while True:
                        await w.ws.get_message()
                except trio_websocket.ConnectionClosed:
                    pass
            await eventually(lambda: not d.bus.active)
            assert (await d.send()).code == 250
            # The next watcher gets a new process, and the events.
            async with watching(d.url()) as again:
                [new_pid] = watcher_process_pids()
                assert new_pid != pid
                await d.send()
                ended = [
                    e
                    for e in await again.until("transaction.end")
                    if e["type"] == "transaction.end"
                ]
                assert ended[-1]["outcome"] == "accepted"


async def test_a_new_watcher_replays_what_the_daemon_kept_before_the_process_existed(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var", replay=10)) as d:
            for _ in range(3):
                await d.send()  # unwatched: only transaction.end is kept, for replay
            assert watcher_process_pids() == []
            async with watching(d.url("replay=10")) as w:
                assert w.hello is not None
                assert w.hello["replay"] == 3
                got = await w.until("transaction.end", 3)
    assert [e["type"] for e in got] == ["transaction.end"] * 3
    seqs = [int(str(e["seq"])) for e in got]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3


def test_the_feed_carries_values_objects_and_gaps_with_the_daemons_numbers() -> None:
    mail = MailReceived(ts=1.0, conn="c1", txn="t1", ip="192.0.2.1", sender="a@b", code=250,
                        reply="2.1.0 Ok")  # fmt: skip
    values = tuple(getattr(mail, name) for name in MailReceived.FIELDS)
    frame = _pack([(7, (MailReceived, values)), (-1, Gap(ts=2.0, dropped=5)), (13, mail)])
    items = marshal.loads(frame)
    kind = EVENT_TYPES.index(MailReceived)
    assert items == [(7, kind, values), (-1, -1, 5), (13, kind, values)]


def test_a_value_marshal_cannot_carry_goes_as_text() -> None:
    class Name(str):
        pass

    values = (1.0, "c1", "t1", "192.0.2.1", Name("a@b"), 250, "ok")
    [(_, _, got)] = marshal.loads(_pack([(1, (MailReceived, values))]))
    assert got == (1.0, "c1", "t1", "192.0.2.1", "a@b", 250, "ok")


async def test_the_mirror_keeps_the_daemons_numbers_and_tells_every_watcher_of_a_loss() -> None:
    child = _Child(None, retain=10, size=64)  # type: ignore[arg-type]  # no socket needed
    ended = TransactionEnded.FIELDS
    end_values = tuple(
        {"ts": 1.0, "ip": "192.0.2.1", "helo": None, "sender": "a@b", "recipients": ("c@d",),
         "size": 10, "outcome": "accepted", "code": 250, "reply": "ok", "queue_id": "t1",
         "duration": 0.5}.get(name) for name in ended
    )  # fmt: skip
    kind = EVENT_TYPES.index(TransactionEnded)
    child.mirror([(100, kind, end_values)])  # the first frame: the daemon was at 100
    only_ends = child.bus.subscribe(replay=10, kinds=frozenset({TransactionEnded}))
    everything = child.bus.subscribe(replay=10)
    # The daemon's feed lost 40 events (101..140), far more than this ring holds: one gap.
    child.mirror([(-1, -1, 40), (141, kind, end_values), (150, kind, end_values)])
    for subscription in (only_ends, everything):
        got = subscription.take()
        assert [seq for seq, _ in got] == [100, -1, 141, 150]
        assert isinstance(got[1][1], Gap)
        assert got[1][1].dropped == 40
    assert child.bus.dropped == 0  # the daemon counted that loss, not the mirror


def test_numbers_the_mirror_skipped_are_not_counted_as_lost() -> None:
    bus = EventBus(retain=16, buffer=16)
    values = (1.0, "c1", "t1", "192.0.2.1", "a@b", 250, "ok")
    bus.mirror(5, MailReceived, values)
    caught_up = bus.subscribe(replay=1)
    assert [seq for seq, _ in caught_up.take()] == [5]
    bus.mirror(1000, MailReceived, values)  # 994 numbers the feed never carried (filtered)
    assert [seq for seq, _ in caught_up.take()] == [1000]
    assert bus.dropped == 0
    slow = bus.subscribe(replay=1)
    for seq in range(1001, 1041):  # 40 more: the ring holds 16
        bus.mirror(seq, MailReceived, values)
    got = slow.take()
    assert got[0][0] == -1
    assert isinstance(got[0][1], Gap)
    assert got[0][1].dropped == 1040 - 1000 - 16 + 1
    assert [seq for seq, _ in got[1:]] == list(range(1025, 1041))


async def test_a_watcher_process_that_cannot_start_gets_the_watcher_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_process, "CHILD_MAIN", "import sys; sys.exit(3)")
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            with pytest.raises(trio_websocket.ConnectionRejected) as caught:
                async with watching(d.url()):
                    pass
            assert caught.value.status_code == 503
            assert b"watcher process is not available" in (caught.value.body or b"")
            assert not d.bus.active
            assert (await d.send()).code == 250


async def test_a_stuck_watcher_process_is_killed_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_process, "STALL", 0.5)
    monkeypatch.setattr(_process, "_BUFFER", 4096)  # the feed blocks after a few messages
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            async with watching(d.url()):
                [pid] = watcher_process_pids()
                os.kill(pid, signal.SIGSTOP)  # alive, reading nothing
                try:
                    while d.bus.active:  # until the feed gave up on it (CAP bounds this)
                        assert (await d.send()).code == 250  # SMTP never waits for it
                finally:
                    with contextlib.suppress(ProcessLookupError):  # killed and reaped
                        os.kill(pid, signal.SIGCONT)
            await eventually(lambda: not process_exists(pid) or zombie(pid))
            async with watching(d.url()) as again:
                assert watcher_process_pids() != [pid]
                await d.send()
                await again.until("transaction.end")


def zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


@given(
    payloads=st.lists(
        st.tuples(st.sampled_from([EVENTS, STATE]), st.lists(st.integers() | st.text())),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_frames_come_out_whole_and_in_order_however_the_bytes_are_cut(
    payloads: list[tuple[int, list[object]]], cuts: list[int]
) -> None:
    stream = b"".join(
        FRAME.pack(len(data), kind) + data
        for kind, data in ((k, marshal.dumps(p)) for k, p in payloads)
    )
    buffer = bytearray()
    got: list[tuple[int, object]] = []
    edges = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for start, end in itertools.pairwise(edges):
        buffer += stream[start:end]
        got += take_frames(buffer)
    assert got == payloads
    assert buffer == b""
