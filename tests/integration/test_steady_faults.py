"""Isolation under steady faults (issue 15's "done when"): each fault kind of the table, in a
plugin, one faulty message a second against healthy load over real sockets (``app.run``).

Every faulty message must get its result at its deadline (or at once, for errors), every
healthy transaction must succeed. Real time (the sandbox is real processes), so the counts are
small and the deadlines short: a plugin timeout of 0.5 s, phases of a few seconds.

The in-process CPU loop and the spinning thread cannot be interrupted in Python: their first
``watchdog_strikes`` (3) faulty messages cost what they cost; after that the plugin is in the
sandbox and its faulty messages get 451 at their deadline. The in-process memory hog is stopped
by the memory guard (``[limits] memory_soft_mb``): while over the limit, new transactions are
refused with 451 4.3.2 (retryable, by design), so there the healthy transactions may get that.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta import app
from trio_mta.config import Config
from trio_mta.server import rss_mb

TIMEOUT = (
    1.0  # the faulty plugin's deadline, seconds (the sandbox notices a stalled worker at 0.5 s)
)
LATE = 0.5  # how late a reply may be (a loaded 2-core machine, a worker to replace)
HEALTHY_CLIENTS = 4
BODY = b"Subject: steady\r\n\r\nhello\r\n"

SPIN = """
def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
"""
HEAD = (
    """\
import threading, time
import trio
from trio_mta.hooks import Plugin as Base

"""
    + SPIN
)


def plugin_source(body: str, *, sync: bool = False, sandbox: bool = False) -> str:
    lines = "\n".join(f"        {line}" for line in body.strip().splitlines())
    return (
        HEAD
        + "\n\nclass Plugin(Base):\n"
        + f"    timeout = {TIMEOUT}\n"
        + ("    sandbox = 'process'\n" if sandbox else "")
        + f"    {'' if sync else 'async '}def hook_data_post(self, conn):\n"
        + "        if conn.transaction.sender.local_part != 'fault':\n"
        + "            return None\n"
        + lines
        + "\n"
    )


HANG = "await trio.sleep_forever()"
RAISE = "raise RuntimeError('the fault')"
SLEEP = "time.sleep(3)"
CPU = "spin(2.0)"
MEMORY = """
hoard = []
while True:
    hoard.append(bytearray(2 * 1024 * 1024))
    await trio.sleep(0.01)
"""
# In a worker, allocate fast: the worker's address-space limit (256 MiB here) ends it at once.
MEMORY_FAST = MEMORY.replace("2 * 1024 * 1024", "32 * 1024 * 1024")
THREAD = "threading.Thread(target=spin, args=(1.5,), name='left-behind').start()"


@attrs.frozen
class Fault:
    source: str
    expect: str  # "deadline": 451 at the deadline; "at_once": 451 before it; "strikes"
    phase: float = 3.2  # seconds of load
    timeout: float = TIMEOUT


FAULTS = {
    "hang-inprocess": Fault(plugin_source(HANG), "deadline"),
    "raise-inprocess": Fault(plugin_source(RAISE), "at_once"),
    "raise-sandboxed": Fault(plugin_source(RAISE, sandbox=True), "at_once"),
    "sync-sleep-thread": Fault(plugin_source(SLEEP, sync=True), "deadline"),
    "memory-sandboxed": Fault(plugin_source(MEMORY_FAST, sandbox=True), "at_once"),
    "hang-sandboxed": Fault(plugin_source(HANG, sandbox=True), "deadline"),
    # The pool may end a worker held by these before the deadline (451 sooner): both count.
    "cpu-sandboxed": Fault(plugin_source(CPU, sandbox=True), "by_deadline"),
    "sleep-sandboxed": Fault(plugin_source(SLEEP, sync=True, sandbox=True), "by_deadline"),
    "cpu-inprocess": Fault(plugin_source(CPU), "strikes", phase=6.2),
    "thread-inprocess": Fault(plugin_source(THREAD), "strikes", phase=6.2),
    "memory-inprocess": Fault(
        plugin_source(MEMORY).replace(f"timeout = {TIMEOUT}", "timeout = 5"),
        "memory",
        timeout=5,
    ),
}


@attrs.define
class Outcome:
    faulty: list[tuple[float, int, str]] = attrs.field(factory=list)  # (seconds, code, enhanced)
    healthy: list[tuple[int, str]] = attrs.field(factory=list)  # final replies of healthy ones
    peak_rss: float = 0.0


def fault_config(var_dir: Path, plugin_dir: Path, memory_soft_mb: int) -> Config:
    base = make_config(var_dir)
    return attrs.evolve(
        base,
        limits=attrs.evolve(base.limits, memory_soft_mb=memory_soft_mb),
        plugins=attrs.evolve(
            base.plugins,
            order=("rcpt_to_host_list", "faulty", "queue_discard"),
            directories=(plugin_dir,),
            sandbox_memory_mb=256,
            watchdog_strikes=3,
        ),
    )


@asynccontextmanager
async def daemon(config: Config) -> AsyncIterator[tuple[str, int]]:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(lambda task_status: app.run(config, task_status=task_status))
        try:
            yield bound[0].host, bound[0].port
        finally:
            nursery.cancel_scope.cancel()


async def healthy_client(address: tuple[str, int], until: float, outcome: Outcome) -> None:
    client = LineClient(await trio.open_tcp_stream(*address))
    await client.expect(220)
    await client.command("EHLO healthy.example", 250)
    while trio.current_time() < until:
        await client.send("MAIL FROM:<ok@example.org>\r\n")
        mail = await client.reply()
        if mail.code != 250:
            outcome.healthy.append((mail.code, mail.enhanced or ""))
            continue
        await client.command("RCPT TO:<u@example.test>", 250)
        await client.command("DATA", 354)
        await client.send(BODY + b".\r\n")
        answer = await client.reply()
        outcome.healthy.append((answer.code, answer.enhanced or ""))
    await client.command("QUIT", 221)


async def faulty_client(address: tuple[str, int], until: float, outcome: Outcome) -> None:
    client = LineClient(await trio.open_tcp_stream(*address))
    await client.expect(220)
    await client.command("EHLO faulty.example", 250)
    next_at = trio.current_time()
    while next_at < until:
        await trio.sleep_until(next_at)
        next_at += 1.0
        await client.send("MAIL FROM:<fault@example.org>\r\n")
        mail = await client.reply()
        if mail.code != 250:  # the memory guard refusing new transactions
            outcome.faulty.append((0.0, mail.code, mail.enhanced or ""))
            continue
        await client.command("RCPT TO:<u@example.test>", 250)
        await client.command("DATA", 354)
        await client.send(BODY)
        started = time.monotonic()
        await client.send(".\r\n")
        answer = await client.reply()
        outcome.faulty.append((time.monotonic() - started, answer.code, answer.enhanced or ""))
    await client.command("QUIT", 221)


async def watch_rss(outcome: Outcome) -> None:
    while True:
        outcome.peak_rss = max(outcome.peak_rss, rss_mb())
        await trio.sleep(0.05)


KINDS = list(FAULTS)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_steady_fault_costs_its_own_message_only(
    kind: str, tmp_path: Path, var_dir: Path
) -> None:
    fault = FAULTS[kind]
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "faulty.py").write_text(fault.source)
    base_rss = rss_mb()
    limit = int(base_rss + 150) if kind == "memory-inprocess" else 4096
    outcome = Outcome()
    async with daemon(fault_config(var_dir, plugin_dir, limit)) as address:
        until = trio.current_time() + fault.phase
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_rss, outcome)
            async with trio.open_nursery() as load:
                for _ in range(HEALTHY_CLIENTS):
                    load.start_soon(healthy_client, address, until, outcome)
                load.start_soon(faulty_client, address, until, outcome)
            nursery.cancel_scope.cancel()
    check(kind, fault, outcome, base_rss, limit)


def check(kind: str, fault: Fault, outcome: Outcome, base_rss: float, limit: int) -> None:
    faulty = outcome.faulty
    assert len(faulty) == math.ceil(fault.phase), faulty
    healthy = outcome.healthy
    assert len(healthy) >= 10, f"too little healthy load got through: {healthy}"
    if fault.expect == "memory":
        assert all(code == 250 or (code, enhanced) == (451, "4.3.2") for code, enhanced in healthy)
        assert all(code == 451 and seconds < fault.timeout for seconds, code, _ in faulty)
        assert any(enhanced == "4.3.0" for _, _, enhanced in faulty), faulty  # one was stopped
        assert outcome.peak_rss < limit + 400, (outcome.peak_rss, limit)
        return
    assert all(code == 250 for code, _ in healthy), [r for r in healthy if r[0] != 250]
    if fault.expect == "at_once":
        assert all((code, enhanced) == (451, "4.3.0") for _, code, enhanced in faulty), faulty
        assert all(seconds < fault.timeout for seconds, _, _ in faulty), faulty
    elif fault.expect == "by_deadline":
        for seconds, code, enhanced in faulty:
            assert (code, enhanced) == (451, "4.3.0"), faulty
            assert seconds <= fault.timeout + LATE, faulty
    elif fault.expect == "deadline":
        for seconds, code, enhanced in faulty:
            assert (code, enhanced) == (451, "4.3.0"), faulty
            assert fault.timeout - 0.05 <= seconds <= fault.timeout + LATE, faulty
    else:  # "strikes": the first three cost what they cost, then the sandbox's deadline
        assert all(code == 250 for _, code, _ in faulty[:3]), faulty
        later = faulty[4:]  # the fourth may come while the sandbox starts (tripped: at once)
        if kind == "cpu-inprocess":
            assert later, faulty
            for seconds, code, enhanced in later:
                assert (code, enhanced) == (451, "4.3.0"), faulty
                assert fault.timeout - 0.05 <= seconds <= fault.timeout + LATE, faulty
        else:  # the thread now spins in a sandbox worker; the call itself returns at once
            assert all(code == 250 and seconds < fault.timeout for seconds, code, _ in later)
