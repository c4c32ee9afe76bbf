"""Per-call cost of a no-op plugin hook: in-process through ``HookRunner.run``, and sandboxed.

    .venv/bin/python scripts/bench_sandbox.py [--calls 2000] [--workers 1]
    .venv/bin/python scripts/bench_sandbox.py --faults [--seconds 10]

Prints microseconds per call (sequential calls from one task, after a warm-up): wall clock, the
CPU the server process spent, and for sandboxed calls the CPU of the server and its workers
together (what a loaded machine pays; far steadier than wall clock on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import attrs
import trio

from trio_mta.hooks import Connection, HookRunner, load_plugins, open_sandbox

NOOP = """\
from trio_mta.hooks import CONT, Plugin as Base


class Plugin(Base):
    async def hook_data(self, conn):
        return CONT

    def hook_helo(self, conn, name):
        return CONT
"""


def workers_cpu(sandbox: object) -> float:
    """CPU seconds of the sandbox's live workers."""
    total = 0.0
    for pid in getattr(sandbox, "worker_pids", list)():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def per_call(runner: HookRunner, hook: str, calls: int, *args: object) -> str:
    """Wall-clock and CPU microseconds per call, as text."""
    conn = Connection("bench", "mx", "192.0.2.1", 40000, "127.0.0.1", 25, 0.0)
    for _ in range(min(calls // 10, 200)):
        await runner.run(hook, conn, *args)
    wall, cpu, workers = time.perf_counter(), time.process_time(), workers_cpu(runner.sandbox)
    for _ in range(calls):
        await runner.run(hook, conn, *args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    workers = workers_cpu(runner.sandbox) - workers
    text = f"{wall / calls * 1e6:7.1f} µs/call wall, {cpu / calls * 1e6:7.1f} µs CPU in the server"
    if runner.sandbox is not None:
        text += f", {(cpu + workers) / calls * 1e6:7.1f} µs CPU with the worker"
    return text


async def main(calls: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "noop.py").write_text(NOOP)
        (directory / "noop_boxed.py").write_text(
            NOOP.replace("(Base):", "(Base):\n    sandbox = 'process'")
        )
        in_process = HookRunner(load_plugins(["noop"], directories=[directory]))
        print("in-process async no-op:", await per_call(in_process, "data", calls))
        print("in-process sync no-op: ", await per_call(in_process, "helo", calls, "x"), "(thread)")
        boxed_set = load_plugins(["noop_boxed"], directories=[directory])
        async with open_sandbox(workers=workers) as sandbox:
            boxed = HookRunner(boxed_set, sandbox=sandbox)
            print("sandboxed async no-op: ", await per_call(boxed, "data", calls))
            print("sandboxed sync no-op:  ", await per_call(boxed, "helo", calls, "x"))


HEALTHY = """\
import trio
from trio_mta.hooks import Plugin as Base, ok


class Plugin(Base):
    sandbox = "process"
    timeout = 2

    async def hook_helo(self, conn, name):
        await trio.sleep(0.001)  # a scanner's round trip
        return ok("fine")
"""

FAULTS = {
    "hang": "async def hook_data(self, conn):\n        await trio.sleep_forever()",
    "cpu loop": "def hook_data(self, conn):\n        while True:\n            pass",
    "time.sleep(10)": "def hook_data(self, conn):\n        time.sleep(10)",
    "memory": "def hook_data(self, conn):\n        b = []\n        while True:\n"
    "            b.append(bytearray(10**7))",
}


def fault_plugin(body: str) -> str:
    return (
        "import time\nimport trio\nfrom trio_mta.hooks import Plugin as Base\n\n\n"
        f"class Plugin(Base):\n    sandbox = 'process'\n    timeout = 2\n\n    {body}\n"
    )


async def phase(
    healthy: HookRunner, faulty: HookRunner | None, seconds: float
) -> tuple[list[float], list[tuple[str, float]]]:
    """50 healthy calls a second (each its own task) for ``seconds``, and one faulty call a
    second if ``faulty``; the healthy latencies and the faulty results with their times."""
    latencies: list[float] = []
    faults: list[tuple[str, float]] = []
    failed: list[float] = []

    async def one(runner: HookRunner, hook: str, *args: object) -> None:
        conn = Connection("bench", "mx", "192.0.2.1", 40000, "127.0.0.1", 25, 0.0)
        start = time.perf_counter()
        result, _ = await runner.run(hook, conn, *args)
        took = time.perf_counter() - start
        if runner is healthy:
            latencies.append(took)
            if result.message != ("fine",):
                failed.append(took)
        else:
            faults.append((f"{result.code or result.action.name}", took))

    async with trio.open_nursery() as nursery:
        end = trio.current_time() + seconds
        tick = 0
        while trio.current_time() < end:
            nursery.start_soon(one, healthy, "helo", "x")
            if faulty is not None and tick % 50 == 25:
                nursery.start_soon(one, faulty, "data")
            tick += 1
            await trio.sleep(0.02)
    if failed:
        print(f"  {len(failed)} healthy calls failed (timed out or refused)")
    return latencies, faults


def p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)]


async def faults_main(seconds: float, stall: float | None) -> None:
    from trio_mta.config import PluginsConfig
    from trio_mta.hooks import ProcessSandbox

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "healthy.py").write_text(HEALTHY)
        for index, body in enumerate(FAULTS.values()):
            (directory / f"fault{index}.py").write_text(fault_plugin(body))
        config = PluginsConfig()  # the default pool settings
        if stall is not None:
            config = attrs.evolve(config, sandbox_stall_seconds=stall)
        sandbox = ProcessSandbox.from_config(config)
        async with trio.open_nursery() as nursery:
            await nursery.start(sandbox.serve)
            healthy = HookRunner(
                load_plugins(["healthy"], directories=[directory]), sandbox=sandbox
            )
            base, _ = await phase(healthy, None, seconds)
            print(f"no fault: healthy p99 {p99(base) * 1e3:.1f} ms ({len(base)} calls)")
            for index, name in enumerate(FAULTS):
                # No circuit breaker: every faulty call reaches the pool.
                configs = {f"fault{index}": {"breaker": False}}
                plugins = load_plugins([f"fault{index}"], directories=[directory], configs=configs)
                lat, faults = await phase(healthy, HookRunner(plugins, sandbox=sandbox), seconds)
                await trio.sleep(2.5)  # the last faulty call's deadline
                replies = ", ".join(sorted({f"{r} at {t:.2f}s" for r, t in faults}))
                print(
                    f"{name:>15}: healthy p99 {p99(lat) * 1e3:6.1f} ms = "
                    f"{p99(lat) / p99(base):.2f}x ({len(lat)} calls); faulty: {replies}"
                )
            stats = getattr(sandbox, "stats", {})
            print("pool:", {k: round(v, 2) for k, v in stats.items()})
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--faults", action="store_true", help="healthy p99 under steady faults")
    parser.add_argument("--seconds", type=float, default=10.0, help="per --faults phase")
    parser.add_argument("--stall", type=float, help="sandbox_stall_seconds for --faults")
    options = parser.parse_args()
    if options.faults:
        trio.run(faults_main, options.seconds, options.stall)
    else:
        trio.run(main, options.calls, options.workers)
