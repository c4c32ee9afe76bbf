"""Per-call cost of a no-op plugin hook: in-process through ``HookRunner.run``, and sandboxed.

    .venv/bin/python scripts/bench_sandbox.py [--calls 2000] [--workers 1]

Prints microseconds per call (sequential calls from one task, after a warm-up): wall clock, and
the CPU the server process spent (the worker's CPU is not included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

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


async def per_call(runner: HookRunner, hook: str, calls: int, *args: object) -> str:
    """Wall-clock and parent-CPU microseconds per call, as text."""
    conn = Connection("bench", "mx", "192.0.2.1", 40000, "127.0.0.1", 25, 0.0)
    for _ in range(min(calls // 10, 200)):
        await runner.run(hook, conn, *args)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await runner.run(hook, conn, *args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return f"{wall / calls * 1e6:7.1f} µs/call wall, {cpu / calls * 1e6:7.1f} µs CPU in the server"


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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    options = parser.parse_args()
    trio.run(main, options.calls, options.workers)
