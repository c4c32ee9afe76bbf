"""Load from Postfix's smtp-source, and the per-run measurements around it.

A run is one smtp-source invocation against one server. Throughput is messages over the wall
time of the smtp-source process; the server's CPU is the change in its utime+stime from just
before the start to a short settle after smtp-source exits (the server is otherwise idle, so
the settle only catches the tail of connection teardown and adds nothing else).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from .servers import LOCAL_DOMAIN, REPO, Server

SMTP_SOURCE = REPO / "scripts" / "smtp-source"
MESSAGE_SIZE = 4096
SETTLE = 0.2


@dataclass(frozen=True)
class Run:
    server: str
    concurrency: int
    reuse: bool
    messages: int
    seconds: float
    cpu_seconds: float
    warnings: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us_per_message(self) -> float:
        return self.cpu_seconds / self.messages * 1e6


def source_argv(address: str, concurrency: int, messages: int, *, reuse: bool) -> list[str]:
    argv = [
        str(SMTP_SOURCE),
        "-s",
        str(concurrency),
        "-l",
        str(MESSAGE_SIZE),
        "-m",
        str(messages),
        "-f",
        f"bench@{LOCAL_DOMAIN}",
        "-t",
        f"sink@{LOCAL_DOMAIN}",
        "-M",
        "smtp-source.bench",
    ]
    if reuse:
        argv.append("-d")
    argv.append(address)
    return argv


def run_once(
    server: Server, concurrency: int, messages: int, *, reuse: bool, timeout: float
) -> Run:
    argv = source_argv(server.address, concurrency, messages, reuse=reuse)
    cpu0 = server.cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    time.sleep(SETTLE)
    cpu1 = server.cpu_seconds()
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    warnings = [line for line in text.splitlines() if line.strip()]
    if proc.returncode != 0:
        warnings.append(f"smtp-source exited {proc.returncode}")
    if not server.alive():
        raise RuntimeError(f"{server.name} died during the run; see {server.log_path}")
    return Run(
        server.name, concurrency, reuse, messages, seconds, cpu1 - cpu0, tuple(warnings[:20])
    )


def size_run(server: Server, concurrency: int, *, reuse: bool, target: float) -> int:
    """Messages for a run of about ``target`` seconds, from growing pilot runs (also warm-up)."""
    messages = max(4 * concurrency, 200)
    while True:
        pilot = run_once(server, concurrency, messages, reuse=reuse, timeout=120)
        if pilot.seconds >= min(1.0, target / 4) or messages >= 2_000_000:
            break
        messages *= 4
    wanted = int(pilot.rate * target)
    # Every session should carry at least two messages, so reuse is really measured.
    return max(wanted, 2 * concurrency, 50)
