"""``scripts/bench --queue``: the durable queue's cost, and relay throughput end to end.

Two trio-mta daemons relay for 127.0.0.1 into their queue, which delivers everything (a ``*``
route) to Postfix's smtp-sink on a loopback port: one with ``[queue] fsync = true`` (group
commit), one with ``fsync = false``, both spooling under ``--var-root`` (a real disk). For each,
in turn and interleaved, smtp-source sends N messages at the given concurrency: "accepted" is
N over smtp-source's wall time (every message got its 250, so it was on disk), "end to end" is
N over the time until the spool is empty again (every message delivered to the sink).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .load import SETTLE, source_argv
from .servers import REPO, Server, filesystem_of, start_trio

SMTP_SINK = REPO / "scripts" / "smtp-sink"
DURABLE, VOLATILE = "queue-fsync", "queue-nofsync"


def add_queue_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue",
        action="store_true",
        help="only the queue: accepted msg/s with the durable spool vs fsync off, and relay "
        "throughput end to end into a loopback smtp-sink (concurrency 100 unless given)",
    )


@dataclass(frozen=True)
class RelayRun:
    server: str
    concurrency: int
    messages: int
    accept_seconds: float
    drain_seconds: float
    cpu_seconds: float
    warnings: tuple[str, ...]

    @property
    def accepted_rate(self) -> float:
        return self.messages / self.accept_seconds

    @property
    def relay_rate(self) -> float:
        return self.messages / self.drain_seconds


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def smtp_sink(work: Path) -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port (``-u nobody``: it refuses to run as root)."""
    port = _free_port()
    log = (work / "smtp-sink.log").open("wb")
    argv = [str(SMTP_SINK), "-u", "nobody", "-c", f"127.0.0.1:{port}", "1000"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"smtp-sink did not start; see {work / 'smtp-sink.log'}")
            time.sleep(0.02)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()


def write_queue_config(directory: Path, sink_port: int, *, fsync: bool, conns: int) -> Path:
    (directory / "plugins").mkdir(parents=True, exist_ok=True)
    (directory / "plugins" / "relay_acl.toml").write_text('allow = ["127.0.0.1/32"]\n')
    (directory / "trio-mta.toml").write_text(
        f"""\
# Written by scripts/bench --queue.
[server]
hostname = "trio-mta.bench"
local_domains = ["bench.invalid"]   # the load's example.test is relayed, not local

[limits]
max_connections = {conns}
max_connections_per_ip = {conns}

[plugins]
order = ["relay_acl"]

[queue]
fsync = {"true" if fsync else "false"}
starttls = "never"
concurrency = 20
per_destination = 20

[[route]]
domain = "*"
host = "127.0.0.1"
port = {sink_port}

[log]
level = "WARNING"
transaction_log = false
"""
    )
    return directory


def _spool_empty(server: Server) -> bool:
    assert server.var_dir is not None
    spool = server.var_dir / "queue" / "queue"
    return not any(spool.iterdir()) if spool.is_dir() else True


def relay_once(server: Server, concurrency: int, messages: int, timeout: float) -> RelayRun:
    argv = source_argv(server.address, concurrency, messages, reuse=False)
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    accepted = time.perf_counter() - t0
    while not _spool_empty(server):
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{server.name}: the spool did not drain within {timeout:.0f} s")
        time.sleep(0.01)
    drained = time.perf_counter() - t0
    time.sleep(SETTLE)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    warnings = [line for line in text.splitlines() if line.strip()]
    if proc.returncode != 0:
        warnings.append(f"smtp-source exited {proc.returncode}")
    cpu = server.cpu_seconds() - cpu0
    return RelayRun(server.name, concurrency, messages, accepted, drained, cpu, tuple(warnings[:5]))


def queue_bench(args: argparse.Namespace, work: Path) -> list[str]:
    fs = filesystem_of(args.var_root)
    out = [
        "## Queue: durable spool vs fsync off, and relay end to end",
        "",
        f"trio-mta relays for 127.0.0.1 into its queue, which delivers to Postfix smtp-sink on "
        f"loopback (`[queue] concurrency = 20`); spools under {args.var_root} ({fs}). "
        "Accepted = messages ÷ smtp-source wall time (each 250 came after the group-commit "
        "sync); end to end = messages ÷ time until the spool is empty (all delivered); CPU is "
        "the trio-mta process over the whole run, receiving and delivering. Median of "
        f"{args.repeats} repeat(s), servers interleaved.",
        "",
    ]
    runs: list[RelayRun] = []
    with contextlib.ExitStack() as stack:
        sink_port = stack.enter_context(smtp_sink(work))
        servers: dict[str, Server] = {}
        conns = max(args.concurrency) + 1000
        for name, fsync in ((DURABLE, True), (VOLATILE, False)):
            conf = write_queue_config(work / f"{name}-conf", sink_port, fsync=fsync, conns=conns)
            var = Path(tempfile.mkdtemp(prefix=f"trio-mta-bench-{name}-", dir=args.var_root))
            stack.callback(shutil.rmtree, var, ignore_errors=True)
            server = start_trio(name, conf, var, work)
            server.var_dir = var
            stack.callback(server.stop)
            servers[name] = server
        for concurrency in args.concurrency:
            messages = max(int(args.seconds * 1000), 2 * concurrency)
            for name in servers:  # warm-up, also checks that relaying works at all
                relay_once(servers[name], concurrency, max(concurrency, 200), 120)
            for rep in range(args.repeats):
                order = list(servers) if rep % 2 == 0 else list(reversed(servers))
                for name in order:
                    run = relay_once(servers[name], concurrency, messages, args.seconds * 30 + 60)
                    runs.append(run)
                    print(
                        f"c={concurrency} rep {rep + 1} {name}: accepted {run.accepted_rate:.0f}/s"
                        f", end to end {run.relay_rate:.0f}/s"
                        + (f"  WARN {run.warnings[0]}" if run.warnings else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    out += [
        "| conc | spool | accepted msg/s | end to end msg/s | µs CPU/msg |",
        "|--:|---|--:|--:|--:|",
    ]
    for concurrency in args.concurrency:
        medians: dict[str, float] = {}
        for name in (DURABLE, VOLATILE):
            mine = [r for r in runs if r.server == name and r.concurrency == concurrency]
            accepted = statistics.median(r.accepted_rate for r in mine)
            relay = statistics.median(r.relay_rate for r in mine)
            cpu = statistics.median(r.cpu_seconds / r.messages * 1e6 for r in mine)
            medians[name] = accepted
            label = "fsync (group commit)" if name == DURABLE else "fsync off"
            out.append(f"| {concurrency} | {label} | {accepted:.0f} | {relay:.0f} | {cpu:.0f} |")
        ratio = medians[DURABLE] / medians[VOLATILE]
        out.append(f"| {concurrency} | **durable ÷ fsync off** | **{ratio:.2f}** | | |")
    warned = [r for r in runs if r.warnings]
    if warned:
        out += ["", "smtp-source warnings:", *[f"- {r.server}: {r.warnings[0]}" for r in warned]]
    return [*out, ""]
