"""The elastic sandbox pool with real worker processes: nothing starves healthy calls.

An awaiting hook holds no worker, a call that must be killed takes only its own worker, a spare
is ready when it does, the pool grows under load and shrinks back, and a call that leaves a
thread running gets its worker recycled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from trio_mta.hooks import (
    ERROR_RESULT,
    TIMEOUT_RESULT,
    Action,
    HookRunner,
    Result,
    open_sandbox,
)

from ._support import new_conn, write_plugin
from .test_sandbox import alive, eventually, load, pid_of

SLEEPER = """
class Plugin(Base):
    sandbox = "process"
    timeout = 5

    async def hook_helo(self, conn, name):
        await trio.sleep(float(name))
        return ok(str(os.getpid()))

    def hook_ehlo(self, conn, name):
        time.sleep(float(name))
        return ok(str(os.getpid()))
"""

FAULTY = """
class Plugin(Base):
    sandbox = "process"
    timeout = 1

    def hook_data(self, conn):
        while True:
            pass

    async def hook_mail(self, conn, sender, params):
        while True:
            pass

    def hook_rcpt(self, conn, rcpt, params):
        time.sleep(3600)
"""

GATED = """
class Plugin(Base):
    sandbox = "process"

    def hook_ehlo(self, conn, gate):
        while not os.path.exists(gate):
            time.sleep(0.01)
        return ok(str(os.getpid()))
"""

HOG = """
class Plugin(Base):
    sandbox = "process"

    async def hook_data(self, conn):
        b = []
        while True:
            b.append(bytearray(10**7))
"""

LEAKY = """
class Plugin(Base):
    sandbox = "process"

    def hook_helo(self, conn, name):
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        return ok(str(os.getpid()))
"""


async def test_an_awaiting_hook_holds_no_worker(plugin_dir: Path) -> None:
    # One worker, no growth: 20 calls each awaiting 1 s finish together, on that worker (on
    # a pool of one-call-at-a-time workers they took 20 s and all but five timed out).
    write_plugin(plugin_dir, "sleeper", SLEEPER)
    async with open_sandbox(workers=1, max_workers=1, spares=0) as sandbox:
        [pid] = sandbox.worker_pids()
        runner = HookRunner(load(plugin_dir, "sleeper"), sandbox=sandbox)
        served: list[int] = []
        start = trio.current_time()

        async def call() -> None:
            served.append(pid_of(await runner.run("helo", new_conn(), "1")))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(call)
        assert trio.current_time() - start < 3
        assert served == [pid] * 20
        assert sandbox.stats["waits"] == 0


async def test_a_hung_call_kills_only_its_worker(plugin_dir: Path) -> None:
    # A CPU loop in a sync hook (inline, its own worker), one in an async hook (sharing a
    # worker with healthy calls awaiting there) and a time.sleep: each ends at its deadline
    # with the timeout result; healthy calls keep finishing meanwhile, including the ones that
    # were on the async loop's worker (moved to another when it stalled); only the faulty
    # calls' workers die. Three faults at once are more than one spare covers
    # while replacements start: four workers.
    write_plugin(plugin_dir, "faulty", FAULTY)
    write_plugin(plugin_dir, "sleeper", SLEEPER)
    async with open_sandbox(workers=4, spares=1, stall_seconds=0.2, grace=0.2) as sandbox:
        runner = HookRunner(load(plugin_dir, "faulty", "sleeper"), sandbox=sandbox)
        before = set(sandbox.worker_pids())
        healthy: list[float] = []
        faulty: dict[str, tuple[tuple[Result, str | None], float]] = {}

        async def fault(hook: str, *args: object) -> None:
            start = trio.current_time()
            result = await runner.run(hook, new_conn(with_txn=True), *args)
            faulty[hook] = result, trio.current_time() - start

        async def healthy_call(delay: str) -> None:
            start = trio.current_time()
            result, _ = await runner.run("helo", new_conn(), delay)
            assert result.action is Action.OK
            healthy.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            for _ in range(3):  # awaiting when the async CPU loop starts beside them
                nursery.start_soon(healthy_call, "0.5")
            await trio.sleep(0.1)
            nursery.start_soon(fault, "mail", None, None)
            nursery.start_soon(fault, "data")
            nursery.start_soon(fault, "rcpt", None, None)
            for _ in range(20):
                nursery.start_soon(healthy_call, "0")
                await trio.sleep(0.1)
        for hook in ("mail", "data", "rcpt"):
            assert faulty[hook][0] == (TIMEOUT_RESULT, "faulty"), hook
            assert 1.0 <= faulty[hook][1] < 2.0, hook
        assert len(healthy) == 23
        # The moved ones: 0.5 s awaiting, plus the stall (left behind the CPU loop, they would
        # have ended after its deadline and grace period and another 0.5 s: 1.7 s).
        assert max(healthy) < 1.4
        assert sandbox.stats["killed"] >= 3
        assert sandbox.stats["crashed"] == 0
        await eventually(lambda: sum(alive(pid) for pid in before) < len(before))
        await eventually(lambda: len(sandbox.worker_pids()) == 4, seconds=20)  # replaced
        pid_of(await runner.run("helo", new_conn(), "0"))


async def test_a_spare_is_ready_when_a_worker_is_killed(plugin_dir: Path) -> None:
    # One worker and one spare: a call that hangs takes the worker, so a spare is started
    # ahead; when the hung call's worker is killed at its deadline, the next call is served at
    # once, by the spare, with no wait for a process to start.
    write_plugin(plugin_dir, "hang", FAULTY.replace("timeout = 1", "timeout = 3"))
    write_plugin(plugin_dir, "sleeper", SLEEPER)
    events: list[tuple[int, str, str, float]] = []
    async with open_sandbox(
        workers=1, spares=1, grace=0.1, report=lambda *e: events.append(e)
    ) as sandbox:
        [first] = sandbox.worker_pids()
        runner = HookRunner(load(plugin_dir, "hang", "sleeper"), sandbox=sandbox)
        async with trio.open_nursery() as nursery:

            async def hang() -> None:
                result = await runner.run("rcpt", new_conn(with_txn=True), None, None)
                assert result == (TIMEOUT_RESULT, "hang")

            nursery.start_soon(hang)
            await eventually(lambda: len(sandbox.worker_pids()) == 2)  # started ahead
            [spare] = set(sandbox.worker_pids()) - {first}
        await trio.sleep(0.15)  # the grace period: the sleeping worker is killed
        assert sandbox.worker_pids()[0] == spare
        start = trio.current_time()
        assert pid_of(await runner.run("ehlo", new_conn(), "0")) == spare
        assert trio.current_time() - start < 0.5  # no wait for a new process
        assert sandbox.stats["waits"] == 0
        assert [e[1] for e in events].count("kill") == 1
        await eventually(lambda: not alive(first))
        await eventually(lambda: len(sandbox.worker_pids()) == 2)  # a new spare behind it


async def until(predicate: Callable[[], bool]) -> None:
    """Poll other processes under a MockClock (whose sleeps never end by themselves)."""
    for _ in range(2000):
        await trio.testing.wait_all_tasks_blocked()
        if predicate():
            return
        time.sleep(0.01)  # noqa: ASYNC251  # real time for the workers; trio's clock is virtual
    raise AssertionError("never happened")


async def test_the_pool_grows_to_its_maximum_under_load_and_shrinks_back(
    plugin_dir: Path, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # Sync calls each need a worker of their own: six at once grow the pool from one worker
    # to its maximum of three (never more); idle for sandbox_idle_seconds, it shrinks back.
    write_plugin(plugin_dir, "gated", GATED)
    gate = tmp_path / "open"
    events: list[tuple[int, str, str, float]] = []
    async with open_sandbox(
        workers=1, max_workers=3, spares=1, idle_seconds=60, report=lambda *e: events.append(e)
    ) as sandbox:
        runner = HookRunner(load(plugin_dir, "gated"), sandbox=sandbox)
        served: set[int] = set()

        async def call() -> None:
            served.add(pid_of(await runner.run("ehlo", new_conn(), str(gate))))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(call)
            await until(lambda: len(sandbox.worker_pids()) == 3)
            await until(lambda: sandbox.pool.waiting == 3)  # the other three wait: visible
            gate.touch()
        assert len(served) == 3
        assert len(sandbox.worker_pids()) == 3
        assert [e[1] for e in events].count("spawn") == 3
        assert sandbox.stats["waits"] == 5  # all but the first
        assert len([e for e in events if e[1] == "wait"]) == 5
        mock_clock.jump(59)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sandbox.worker_pids()) == 3
        mock_clock.jump(2)
        await trio.testing.wait_all_tasks_blocked()
        assert len(sandbox.worker_pids()) == 1  # the minimum, which is also the spare
        assert [e[1] for e in events].count("retire") == 2


async def test_a_call_that_leaves_a_thread_running_recycles_its_worker(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "leaky", LEAKY)
    events: list[tuple[int, str, str, float]] = []
    async with open_sandbox(workers=1, spares=0, report=lambda *e: events.append(e)) as sandbox:
        runner = HookRunner(load(plugin_dir, "leaky"), sandbox=sandbox)
        first = pid_of(await runner.run("helo", new_conn(), "x"))  # the call itself succeeds
        await eventually(lambda: not alive(first))
        assert ("recycle", "the call left 1 thread(s) running") in {
            (e[1], e[2].split(":")[0]) for e in events
        }
        second = pid_of(await runner.run("helo", new_conn(), "x"))
        assert second != first
        assert sandbox.stats["crashed"] == 0


def test_workers_is_the_minimum_and_the_maximum_defaults_above_it() -> None:
    from trio_mta.config import PluginsConfig
    from trio_mta.hooks import ProcessSandbox

    sandbox = ProcessSandbox.from_config(PluginsConfig())
    assert (sandbox.size, sandbox.max_workers, sandbox.spares) == (2, 8, 1)
    config = PluginsConfig(sandbox_workers=3, sandbox_workers_max=2, sandbox_spares=0)
    sandbox = ProcessSandbox.from_config(config)
    assert (sandbox.size, sandbox.max_workers, sandbox.spares) == (3, 3, 0)
    assert os.cpu_count()  # defaults are sized for a small machine; this one has CPUs


async def test_workers_come_from_the_fork_server_and_without_it_the_slow_way(
    plugin_dir: Path,
) -> None:
    write_plugin(plugin_dir, "leaky", LEAKY)
    async with open_sandbox(workers=1, spares=0) as sandbox:
        zygote = sandbox._zygote
        assert zygote is not None
        [first] = sandbox.worker_pids()
        assert _parent_of(first) == zygote.process.pid  # forked, not a fresh interpreter
        zygote.process.kill()
        await eventually(lambda: not zygote.alive)
        runner = HookRunner(load(plugin_dir, "leaky"), sandbox=sandbox)
        assert pid_of(await runner.run("helo", new_conn(), "x")) == first  # still serving
        await eventually(lambda: sandbox.worker_pids() not in ([], [first]), seconds=30)
        [second] = sandbox.worker_pids()  # the recycled worker's replacement: started directly
        assert _parent_of(second) == os.getpid()
        assert pid_of(await runner.run("helo", new_conn(), "x")) == second


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


async def test_a_call_out_of_memory_fails_alone_and_recycles_its_worker(plugin_dir: Path) -> None:
    # The hog shares its worker with calls awaiting there; it gets its MemoryError (the
    # worker's address-space limit), they finish normally, and the worker is replaced.
    write_plugin(plugin_dir, "hog", HOG)
    write_plugin(plugin_dir, "sleeper", SLEEPER)
    async with open_sandbox(workers=1, spares=0, memory_mb=300) as sandbox:
        [first] = sandbox.worker_pids()
        runner = HookRunner(load(plugin_dir, "hog", "sleeper"), sandbox=sandbox)
        served: list[int] = []

        async def healthy() -> None:
            served.append(pid_of(await runner.run("helo", new_conn(), "1")))

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(healthy)
            await trio.sleep(0.2)
            assert await runner.run("data", new_conn()) == (ERROR_RESULT, "hog")
        assert served == [first] * 3
        await eventually(lambda: not alive(first))
        assert pid_of(await runner.run("helo", new_conn(), "0")) != first
        assert sandbox.stats["recycled"] == 1
        assert sandbox.stats["crashed"] == 0
