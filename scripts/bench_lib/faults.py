"""``scripts/bench --faults``: issue 15's table, isolation under a steady trickle of faults.

For each fault kind a fresh trio-mta runs ``rcpt_to_host_list``, a ``faulty`` plugin on
``data_post`` (plugin timeout 2 s, default pool and guard settings) and ``queue_discard``.
Healthy load: 20 connections sending 50 transactions a second in all; first a no-fault phase,
then, on the same daemon, a fault phase adding one faulty message a second (each on its own
connection; the sender ``fault@`` trips the fault). Reported per fault: the faulty replies
(code, count, median seconds), the healthy p99 of each phase and their ratio (the median over
the repeats), healthy transactions that did not get 250, and what the log says (the plugin
the watchdog named, a move to the sandbox, the memory guard) with the daemon's peak RSS.
For faults the watchdog moves (the in-process CPU loop and spinning thread), the p99 of the
second half of the fault phase ("after") is reported too: by then the plugin has moved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import attrs
import trio

from .servers import Server, start_trio, write_trio_config

TIMEOUT = 2.0  # the faulty plugin's deadline, as in the measurements
CONNECTIONS = 20
RATE = 50.0  # healthy transactions a second, all connections together
BODY = b"Subject: bench\r\n\r\n" + (b"x" * 78 + b"\r\n") * 12

HEAD = """\
import threading, time
import trio
from trio_mta.hooks import Plugin as Base


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
"""

HANG = "await trio.sleep_forever()"
RAISE = "raise RuntimeError('the fault')"
SLEEP = "time.sleep(10)"
CPU = "spin(10)"
MEMORY = """
hoard = []
while True:
    hoard.append(bytearray({mb} * 1024 * 1024))
    await trio.sleep(0.01)
"""
THREAD = "threading.Thread(target=spin, args=(10,), name='left-behind').start()"


@attrs.frozen
class FaultKind:
    name: str
    body: str
    sync: bool = False
    sandbox: bool = False
    moves: bool = False  # the watchdog's strikes move it: report the phase's second half too


KINDS = (
    FaultKind("sleep_forever, in-process", HANG),
    FaultKind("raises, in-process", RAISE),
    FaultKind("raises, sandboxed", RAISE, sandbox=True),
    FaultKind("time.sleep(10) sync hook, in-process (thread)", SLEEP, sync=True),
    FaultKind("allocates without bound, sandboxed", MEMORY.format(mb=32), sandbox=True),
    FaultKind("sleep_forever, sandboxed", HANG, sandbox=True),
    FaultKind("CPU loop 10 s, sandboxed", CPU, sandbox=True),
    FaultKind("time.sleep(10), sandboxed", SLEEP, sync=True, sandbox=True),
    FaultKind("CPU loop 10 s, in-process", CPU, moves=True),
    FaultKind("thread spinning 10 s after the call, in-process", THREAD, moves=True),
    FaultKind("allocates without bound, in-process", MEMORY.format(mb=8)),
)


def add_faults_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--faults",
        action="store_true",
        help="only the steady-fault table (issue 15): each fault kind against healthy load; "
        "with --quick 6 s phases and 1 repeat, else 30 s and 3",
    )
    parser.add_argument(
        "--fault-seconds",
        type=float,
        metavar="S",
        help="with --faults: the length of each phase (default 30, --quick 6)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        metavar="TEXT",
        help="with --faults: only the kinds whose name contains TEXT (repeatable)",
    )


def plugin_source(kind: FaultKind) -> str:
    body = "\n".join(f"        {line}" for line in kind.body.strip().splitlines())
    return (
        HEAD
        + "\n\nclass Plugin(Base):\n"
        + f"    timeout = {TIMEOUT}\n"
        + ("    sandbox = 'process'\n" if kind.sandbox else "")
        + f"    {'' if kind.sync else 'async '}def hook_data_post(self, conn):\n"
        + "        if conn.transaction.sender.local_part != 'fault':\n"
        + "            return None\n"
        + body
        + "\n"
    )


def configure(work: Path, kind: FaultKind) -> Path:
    conf = write_trio_config(work, maildir=False, max_connections=2000)
    plugins = work / "fault-plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "faulty.py").write_text(plugin_source(kind))
    text = (conf / "trio-mta.toml").read_text()
    text = text.replace(
        '[plugins]\norder = ["rcpt_to_host_list", "queue_discard"]',
        '[plugins]\norder = ["rcpt_to_host_list", "faulty", "queue_discard"]\n'
        f"directories = [{str(plugins)!r}]\ntimeout = {TIMEOUT}",
    )
    (conf / "trio-mta.toml").write_text(text)
    return conf


@attrs.define
class Phase:
    latencies: list[float] = attrs.field(factory=list)  # healthy, seconds, with their end times
    ends: list[float] = attrs.field(factory=list)
    failed: Counter[str] = attrs.field(factory=Counter)
    faulty: list[tuple[float, str]] = attrs.field(factory=list)  # (seconds, "451 4.3.0")


async def _reply(stream: trio.SocketStream, buf: bytearray) -> str:
    """The next complete reply's last line (``code text``)."""
    while True:
        end = buf.find(b"\r\n")
        while end >= 0:
            line = bytes(buf[:end])
            del buf[: end + 2]
            if len(line) < 4 or line[3:4] == b" ":
                return line.decode("utf-8", "replace")
            end = buf.find(b"\r\n")
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        buf += chunk


async def _session(address: tuple[str, int]) -> tuple[trio.SocketStream, bytearray]:
    stream = await trio.open_tcp_stream(*address)
    buf = bytearray()
    await _reply(stream, buf)
    await stream.send_all(b"EHLO bench.example\r\n")
    await _reply(stream, buf)
    return stream, buf


async def _transaction(stream: trio.SocketStream, buf: bytearray, sender: str) -> str:
    """One transaction, the commands pipelined up to DATA; returns the final reply."""
    await stream.send_all(f"MAIL FROM:<{sender}>\r\n".encode())
    mail = await _reply(stream, buf)
    if not mail.startswith("250"):
        return mail
    await stream.send_all(b"RCPT TO:<u@example.test>\r\nDATA\r\n")
    rcpt = await _reply(stream, buf)
    data = await _reply(stream, buf)
    if not data.startswith("354"):
        return rcpt if not rcpt.startswith("250") else data
    await stream.send_all(BODY + b".\r\n")
    return await _reply(stream, buf)


async def _healthy(address: tuple[str, int], until: float, phase: Phase, offset: float) -> None:
    stream, buf = await _session(address)
    interval = CONNECTIONS / RATE
    next_at = trio.current_time() + offset
    while next_at < until:
        await trio.sleep_until(next_at)
        next_at += interval
        started = time.monotonic()
        try:
            answer = await _transaction(stream, buf, "ok@example.org")
        except (EOFError, OSError, trio.BrokenResourceError):
            phase.failed["connection lost"] += 1
            stream, buf = await _session(address)
            continue
        if answer.startswith("250"):
            phase.latencies.append(time.monotonic() - started)
            phase.ends.append(time.monotonic())
        else:
            phase.failed[answer[:9]] += 1
            await stream.send_all(b"RSET\r\n")
            await _reply(stream, buf)
    await stream.send_all(b"QUIT\r\n")
    await stream.aclose()


async def _one_faulty(address: tuple[str, int], phase: Phase) -> None:
    try:
        stream, buf = await _session(address)
        started = time.monotonic()
        answer = await _transaction(stream, buf, "fault@example.org")
        phase.faulty.append((time.monotonic() - started, answer[:9]))
        await stream.aclose()
    except (EOFError, OSError, trio.BrokenResourceError) as exc:
        phase.faulty.append((0.0, f"error: {exc}"))


async def _load(address: tuple[str, int], seconds: float, *, faults: bool) -> Phase:
    phase = Phase()
    until = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for i in range(CONNECTIONS):
            nursery.start_soon(_healthy, address, until, phase, i / RATE)
        if faults:
            at = trio.current_time() + 0.5
            while at < until:
                await trio.sleep_until(at)
                nursery.start_soon(_one_faulty, address, phase)
                at += 1.0
    return phase


async def _peak_rss(server: Server, peak: list[float]) -> None:
    while True:
        try:
            peak[0] = max(peak[0], server.rss_kib() / 1024)
        except (OSError, RuntimeError):
            return
        await trio.sleep(0.1)


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@attrs.frozen
class Result:
    base: Phase
    fault: Phase
    peak_rss: float
    alive: bool
    log: str


def run_kind(kind: FaultKind, work: Path, seconds: float) -> Result:
    conf = configure(work, kind)
    var = work / "var"
    var.mkdir(exist_ok=True)
    server = start_trio("faults", conf, var, work)
    peak = [0.0]

    async def both() -> tuple[Phase, Phase]:
        address = (server.host, server.port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_peak_rss, server, peak)
            await _load(address, 1.0, faults=False)  # warm-up
            base = await _load(address, seconds, faults=False)
            fault = await _load(address, seconds, faults=True)
            await trio.sleep(TIMEOUT + 0.5)  # the last faulty replies
            nursery.cancel_scope.cancel()
        return base, fault

    try:
        base, fault = trio.run(both)
        alive = server.alive()
    finally:
        server.stop()
    return Result(base, fault, peak[0], alive, server.log_path.read_text(errors="replace"))


def _faulty_summary(phase: Phase) -> str:
    by_reply: dict[str, list[float]] = {}
    for seconds, reply in phase.faulty:
        by_reply.setdefault(reply, []).append(seconds)
    return "; ".join(
        f"{reply.strip()} x{len(times)} @{statistics.median(times):.2f}s"
        for reply, times in sorted(by_reply.items())
    )


def _notes(kind: FaultKind, result: Result) -> str:
    notes = []
    for line in result.log.splitlines():
        if "event loop blocked" in line and "by plugin" in line:
            notes.append("watchdog named " + line.split("by plugin ", 1)[1].split(" ")[0])
            break
    if "moved to the sandbox" in result.log:
        notes.append("moved to the sandbox")
    if "tripped on" in result.log:
        notes.append("tripped")
    if "circuit breaker open" in result.log:
        notes.append("breaker opened")
    if "memory_soft_mb" in result.log:
        notes.append("memory guard fired")
    notes.append(f"peak RSS {result.peak_rss:.0f} MiB")
    if not result.alive:
        notes.append("DAEMON DIED")
    return ", ".join(notes)


def _after(phase: Phase) -> list[float]:
    """Healthy latencies of the second half of the phase."""
    if not phase.ends:
        return []
    middle = phase.ends[0] + (phase.ends[-1] - phase.ends[0]) / 2
    return [lat for lat, end in zip(phase.latencies, phase.ends, strict=True) if end >= middle]


def faults_bench(args: argparse.Namespace, work: Path) -> list[str]:
    seconds = args.fault_seconds or (6.0 if args.quick else 30.0)
    repeats = args.repeats
    kinds = [k for k in KINDS if not args.fault or any(t in k.name for t in args.fault)]
    out = [
        "",
        f"## Steady faults: {CONNECTIONS} connections, {RATE:.0f} healthy tx/s, one faulty "
        f"message a second, plugin timeout {TIMEOUT:.0f} s, {seconds:.0f} s phases, "
        f"median of {repeats}",
        "",
        "| fault | faulty replies | healthy p99 no fault / fault | ratio | "
        "healthy not 250 | notes |",
        "|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        ratios, after_ratios, rows = [], [], []
        for repeat in range(repeats):
            print(f"faults: {kind.name} (run {repeat + 1}/{repeats})", flush=True, file=sys.stderr)
            kind_work = work / f"fault-{KINDS.index(kind)}-{repeat}"
            kind_work.mkdir(parents=True)
            result = run_kind(kind, kind_work, seconds)
            base, fault = p99(result.base.latencies), p99(result.fault.latencies)
            ratios.append(fault / base)
            after_ratios.append(p99(_after(result.fault)) / base)
            rows.append((result, base, fault))
        result, base, fault = rows[len(rows) // 2]
        ratio = statistics.median(ratios)
        ratio_text = f"{ratio:.2f}x"
        if kind.moves:
            ratio_text += f" (second half: {statistics.median(after_ratios):.2f}x)"
        failed = sum(result.fault.failed.values())
        failed_text = (
            f"{failed} ({', '.join(f'{k} x{v}' for k, v in result.fault.failed.items())})"
            if failed
            else "0"
        )
        out.append(
            f"| {kind.name} | {_faulty_summary(result.fault)} | {base * 1000:.1f} / "
            f"{fault * 1000:.1f} ms | {ratio_text} | {failed_text} | {_notes(kind, result)} |"
        )
    return out
