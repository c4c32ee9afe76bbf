"""``hooks.BatchProcess``: group commit in a child process, over a real child.

The processor (``tests.helpers.batchprocs.Scripted``) can hold each batch at a gate the test
opens (a loopback socket): which jobs share a batch is then decided by the test, not by the
scheduler. Real processes are invisible to the MockClock, so these tests run on the real clock,
each under ``trio.fail_after(CAP)``; none sleeps to wait for something.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import outcome
import pytest
import trio
import trio.testing

from tests.helpers.batchprocs import BatchFailed, JobFailed, Scripted, broken
from trio_mta.hooks import BatchProcess, BatchProcessError

CAP = 10  # seconds, real time; each test takes a fraction of one
BIG = 24 << 20  # larger than the socket buffers (4 MiB asked, 8 MiB granted) on both ends

Outcomes = dict[object, outcome.Outcome[Any]]


class Gate:
    """The test's end of ``Scripted``'s gate: each batch announces its size and waits for a
    byte. Batches are held, oldest first, until ``release`` or ``open_all``."""

    def __init__(self) -> None:
        self.port = 0
        self.sizes: list[int] = []  # every batch announced so far, in order
        self.open = False
        self._arrived_send, self._arrived = trio.open_memory_channel[trio.SocketStream](math.inf)
        self._held: list[trio.SocketStream] = []
        self._sending = trio.Lock()  # the handler and open_all may both answer one stream

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as handlers:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=handlers)

    async def _handle(self, stream: trio.SocketStream) -> None:
        # A killed child may reset its end: that ends its batch's conversation, nothing more.
        with suppress(trio.BrokenResourceError):
            await self._converse(stream)

    async def _converse(self, stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            while data := await stream.receive_some():
                buf += data
                while len(buf) >= 4:
                    self.sizes.append(int.from_bytes(buf[:4], "big"))
                    buf = buf[4:]
                    if self.open:
                        async with self._sending:
                            await stream.send_all(b"g")
                    else:
                        self._arrived_send.send_nowait(stream)

    async def next_batch(self) -> int:
        """Wait for the next batch to reach the gate (it stays held); return its size."""
        self._held.append(await self._arrived.receive())
        return self.sizes[-1]

    async def release(self) -> None:
        """Let the oldest held batch through (if its child is still there to hear it)."""
        stream = self._held.pop(0)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with self._sending:
                await stream.send_all(b"g")

    async def open_all(self) -> None:
        """Release every held batch, and let later ones pass at once."""
        self.open = True
        while True:
            try:
                self._held.append(self._arrived.receive_nowait())
            except trio.WouldBlock:
                break
        while self._held:
            await self.release()


@pytest.fixture
async def gate(nursery: trio.Nursery) -> Gate:
    g = Gate()
    await nursery.start(g.serve)
    return g


@asynccontextmanager
async def batch_process(
    factory: Callable[..., Any], *args: object, gate: Gate | None = None
) -> AsyncIterator[BatchProcess[Any, Any]]:
    """A BatchProcess closed (and its child reaped) on the way out, even if the test failed."""
    bp: BatchProcess[Any, Any] = BatchProcess(factory, *args, name="test-batch")
    try:
        yield bp
    finally:
        with trio.CancelScope(shield=True):
            if gate is not None:
                await gate.open_all()
            with trio.move_on_after(5):
                await bp.aclose()
            if bp.pid is not None:  # aclose did not finish: our own child, by its pid
                os.kill(bp.pid, signal.SIGKILL)


def submitter(bp: BatchProcess[Any, Any], results: Outcomes) -> Callable[..., Any]:
    """A task for ``nursery.start``: it is started once its job is sent (``submit`` does not
    wait before sending while the child is up), then waits for the answer in ``results``."""

    async def run(
        key: object,
        job: object,
        payload: Sequence[bytes] = (),
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        try:
            results[key] = outcome.Value(await bp.submit(job, payload))
        except Exception as exc:  # not Cancelled: a cancelled submitter leaves no result
            results[key] = outcome.Error(exc)

    return run


def error_of(result: outcome.Outcome[Any]) -> BaseException:
    assert isinstance(result, outcome.Error), f"expected a failure, got {result!r}"
    return result.error


async def wait_until_gone(pid: int) -> None:
    """Until the process is reaped (not even a zombie): it is ours, so only our wait reaps it."""
    while True:
        try:
            os.kill(pid, 0)  # a zombie still takes signals
        except ProcessLookupError:
            return
        await trio.sleep(0.005)


async def test_results_come_back_per_job_in_batches_under_many_submitters(gate: Gate) -> None:
    with trio.fail_after(CAP):
        async with batch_process(Scripted, gate.port, gate=gate) as bp:
            results: dict[int, Any] = {}

            async def one(i: int) -> None:
                results[i] = await bp.submit(("echo", i), [f"payload {i}".encode()])

            async with trio.open_nursery() as nursery:
                for i in range(50):  # from cold: all but one wait for the child to start
                    nursery.start_soon(one, i)
                await gate.next_batch()  # the first batch is held at the gate...
                await trio.testing.wait_all_tasks_blocked()  # ...while every job is sent
                assert results == {}
                await gate.open_all()

            assert bp.started == 1
    expected = {i: (i, f"payload {i}".encode()) for i in range(50)}
    assert {i: (value, payload) for i, (value, payload, _) in results.items()} == expected
    # Everything sent while the first batch was held went into the second, in one piece.
    assert sum(gate.sizes) == 50
    assert len(gate.sizes) <= 2
    assert max(gate.sizes) > 1
    # Each job saw the size of the batch it was in.
    seen = sorted(size for _, _, size in results.values())
    assert seen == sorted(size for size in gate.sizes for _ in range(size))


async def test_payload_bytes_arrive_byte_exact_big_and_empty() -> None:
    big = [b"Subject: big\r\n\r\n", bytes(range(256)) * (BIG // 256), b"\r\n.\r\n\x00"]
    payloads: dict[str, list[bytes]] = {
        "big": big,
        "none": [],
        "binary": [bytes(range(256)), b"\r\n.\r\n", b"\x00"],
        "empty": [b""],
        # Empty buffers around real ones, and last in the queue behind "big": an empty buffer
        # at the end of that queue once made the writer spin (sendmsg sent 0 bytes forever).
        "empty-around": [b"", b"a", b"", b"\r\n", b""],
    }
    results: Outcomes = {}
    with trio.fail_after(CAP):
        async with batch_process(Scripted) as bp:
            await bp.submit(("echo", "warm-up"))
            run = submitter(bp, results)
            async with trio.open_nursery() as nursery:
                for key, chunks in payloads.items():  # "big" first: the rest queue behind it
                    await nursery.start(run, key, ("echo", key), chunks)
    for key, chunks in payloads.items():
        value, payload, _ = results[key].unwrap()
        assert value == key
        assert len(payload) == sum(map(len, chunks)), key
        assert payload == b"".join(chunks), key


async def test_an_exception_returned_for_one_job_raises_in_that_caller_only(gate: Gate) -> None:
    results: Outcomes = {}
    with trio.fail_after(CAP):
        async with batch_process(Scripted, gate.port, gate=gate) as bp:
            run = submitter(bp, results)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "first", ("echo", "first"))
                await gate.next_batch()  # the child is busy: the next three wait together
                await nursery.start(run, "a", ("echo", "a"), [b"A"])
                await nursery.start(run, "bad", ("fail", "no such mailbox"))
                await nursery.start(run, "b", ("echo", "b"), [b"B"])
                await gate.release()
                assert await gate.next_batch() == 3
                await gate.release()
    assert results["a"].unwrap() == ("a", b"A", 3)
    assert results["b"].unwrap() == ("b", b"B", 3)
    error = error_of(results["bad"])
    assert type(error) is JobFailed
    assert str(error) == "no such mailbox"


async def test_a_processor_that_raises_fails_every_job_of_its_batch(gate: Gate) -> None:
    results: Outcomes = {}
    with trio.fail_after(CAP):
        async with batch_process(Scripted, gate.port, gate=gate) as bp:
            run = submitter(bp, results)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "first", ("echo", "first"))
                await gate.next_batch()
                pid = bp.pid
                for key, job in (("a", ("echo", 1)), ("boom", ("raise", "disk on fire"))):
                    await nursery.start(run, key, job)
                await nursery.start(run, "b", ("echo", 2))
                await gate.release()
                assert await gate.next_batch() == 3
                await gate.open_all()
            # The child carries on: the next batch is answered by the same process.
            assert await bp.submit(("echo", "later")) == ("later", b"", 1)
            assert (bp.pid, bp.started) == (pid, 1)
    assert results["first"].unwrap() == ("first", b"", 1)
    for key in ("a", "boom", "b"):
        error = error_of(results[key])
        assert type(error) is BatchFailed, key
        assert str(error) == "disk on fire"


async def test_a_factory_that_raises_gives_batch_process_error_from_submit() -> None:
    with trio.fail_after(CAP):
        async with batch_process(broken, "no disk") as bp:
            with pytest.raises(BatchProcessError, match="RuntimeError: cannot start: no disk"):
                await bp.submit(("echo", 1))
            assert bp.pid is None
            # Every submit tries again (the fault may have been fixed), and fails the same way.
            with pytest.raises(BatchProcessError, match="cannot start: no disk"):
                await bp.submit(("echo", 2))
            assert bp.started == 2


async def test_sigkill_fails_jobs_in_flight_and_the_next_submit_starts_a_new_child(
    gate: Gate,
) -> None:
    results: Outcomes = {}
    with trio.fail_after(CAP):
        async with batch_process(Scripted, gate.port, gate=gate) as bp:
            run = submitter(bp, results)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, 0, ("echo", 0))
                await gate.next_batch()  # the child holds job 0 (and maybe more)
                for i in (1, 2):
                    await nursery.start(run, i, ("echo", i), [b"x" * 1000])
                old = bp.pid
                assert old is not None
                os.kill(old, signal.SIGKILL)
            for i in (0, 1, 2):
                assert type(error_of(results[i])) is BatchProcessError
            assert bp.pid is None
            await wait_until_gone(old)  # the dead child was reaped

            await gate.open_all()
            assert await bp.submit(("echo", "after"), [b"y"]) == ("after", b"y", 1)
            assert bp.started == 2
            assert bp.pid not in (None, old)


async def test_a_cancelled_submitter_does_not_break_the_others(gate: Gate) -> None:
    results: Outcomes = {}
    with trio.fail_after(CAP):
        async with batch_process(Scripted, gate.port, gate=gate) as bp:
            run = submitter(bp, results)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "first", ("echo", "first"))
                await gate.next_batch()
                async with trio.open_nursery() as doomed:
                    await doomed.start(run, "cancelled", ("echo", "cancelled"))
                    await nursery.start(run, "a", ("echo", "a"))
                    await nursery.start(run, "b", ("echo", "b"))
                    doomed.cancel_scope.cancel()
                assert "cancelled" not in results  # it gave up waiting
                await gate.release()
                # Its job was sent, so it is still done (only its answer is dropped).
                assert await gate.next_batch() == 3
                await gate.open_all()
            assert await bp.submit(("echo", "later")) == ("later", b"", 1)
            assert bp.started == 1
    assert results["a"].unwrap() == ("a", b"", 3)
    assert results["b"].unwrap() == ("b", b"", 3)


async def test_a_submitter_cancelled_mid_send_still_sends_its_whole_frame() -> None:
    """Cancelled while most of its payload still waits to be sent: the rest goes anyway, so the
    next job's frame is not cut into it."""
    with trio.fail_after(CAP):
        async with batch_process(Scripted) as bp:
            await bp.submit(("echo", "warm-up"))
            results: Outcomes = {}
            run = submitter(bp, results)
            async with trio.open_nursery() as doomed:
                await doomed.start(run, "big", ("echo", "big"), [b"z" * BIG])
                doomed.cancel_scope.cancel()
            # Cut into the big frame, the next one would be garbage to the child (which dies
            # or waits for bytes that never come); whole, it is answered by the same child.
            value, payload, _ = await bp.submit(("echo", "next"), [b"n"])
            assert (value, payload) == ("next", b"n")
            assert (bp.started, results) == (1, {})


async def test_aclose_lets_the_child_answer_what_it_has_then_reaps_it(gate: Gate) -> None:
    results: Outcomes = {}
    closed = trio.Event()
    with trio.fail_after(CAP):
        async with batch_process(Scripted, gate.port, gate=gate) as bp:
            run = submitter(bp, results)

            async def close() -> None:
                await bp.aclose()
                closed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, 0, ("echo", 0))
                await gate.next_batch()
                await nursery.start(run, 1, ("echo", 1), [b"one"])
                pid = bp.pid
                assert pid is not None
                nursery.start_soon(close)
                await trio.testing.wait_all_tasks_blocked()
                assert not closed.is_set()
                assert results == {}
                await gate.open_all()
            assert closed.is_set()
            with pytest.raises(ProcessLookupError):  # exited and reaped
                os.kill(pid, 0)
            with pytest.raises(BatchProcessError, match="closed"):
                await bp.submit(("echo", 2))
    assert results[0].unwrap() == (0, b"", 1)
    assert results[1].unwrap() == (1, b"one", 1)


PLUGIN_LIKE = """
from __future__ import annotations
import os


class Job:
    def __init__(self, text):
        self.text = text


class Answer:
    def __init__(self, text, pid):
        self.text = text
        self.pid = pid


def make(prefix):
    def process(batch):
        return [Answer(prefix + job.text + payload.decode(), os.getpid()) for job, payload in batch]
    return process
"""


async def test_a_factory_from_a_module_loaded_by_file_path_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As plugin modules are: loaded from a file under a name nothing can import. Its classes
    travel both ways by reference."""
    path = tmp_path / "odd_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN_LIKE))
    name = "trio_mta_test_loaded_plugin_x7"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    with trio.fail_after(CAP):
        async with batch_process(module.make, "p:") as bp:
            answer = await bp.submit(module.Job("a"), [b"b"])
            assert isinstance(answer, module.Answer)
            assert answer.text == "p:ab"
            assert answer.pid == bp.pid != os.getpid()


async def test_an_answer_that_cannot_be_unpickled_fails_its_jobs_not_the_run() -> None:
    with trio.fail_after(CAP):
        async with batch_process(Scripted) as bp:
            with pytest.raises(BatchProcessError, match="unreadable answer"):
                await bp.submit(("odd", "strange"))
            assert await bp.submit(("echo", "after")) == ("after", b"", 1)
            assert bp.started == 2


async def test_a_child_silent_for_the_stall_time_is_replaced_when_a_caller_gives_up(
    mock_clock: trio.testing.MockClock, gate: Gate
) -> None:
    # Virtual time for the stall (a MockClock that only moves when told), a real child held at
    # the gate: it answers nothing, as a child wedged in its batch would.
    results: Outcomes = {}
    bp: BatchProcess[Any, Any] = BatchProcess(Scripted, gate.port, name="test-batch", stall=60)
    try:
        run = submitter(bp, results)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "held", ("echo", "held"))
            await gate.next_batch()
            first = bp.pid

            async def impatient(key: str, patience: float) -> None:
                with trio.move_on_after(patience):
                    await bp.submit(("echo", key))
                results[key] = outcome.Value("gave up")

            nursery.start_soon(impatient, "early", 30)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(30)  # silent for 30 s < 60: giving up replaces nothing
            await trio.testing.wait_all_tasks_blocked()
            assert results.pop("early") == outcome.Value("gave up")
            assert bp.pid == first
            assert "held" not in results

            nursery.start_soon(impatient, "late", 31)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(31)  # silent for 61 s: the caller giving up kills the child
        assert results["late"] == outcome.Value("gave up")
        error = error_of(results["held"])
        assert type(error) is BatchProcessError
        assert "no answer" in str(error)
        assert bp.pid is None
        await gate.open_all()
        assert await bp.submit(("echo", "after")) == ("after", b"", 1)
        assert bp.started == 2
        assert bp.pid != first
    finally:
        with trio.CancelScope(shield=True):
            await gate.open_all()
            await bp.aclose()


async def test_start_runs_the_child_before_the_first_job(gate: Gate) -> None:
    with trio.fail_after(CAP):
        async with batch_process(Scripted, gate.port, gate=gate) as bp:
            assert bp.started == 0
            await bp.start()
            pid = bp.pid
            assert pid is not None
            await bp.start()  # already running: the same child
            assert bp.pid == pid
            await gate.open_all()
            assert await bp.submit(("echo", 1)) == (1, b"", 1)
            assert (bp.pid, bp.started) == (pid, 1)
        with pytest.raises(BatchProcessError, match="cannot start: no disk"):
            async with batch_process(broken, "no disk") as failing:
                await failing.start()
