"""``scripts/bench --watchers``: what watching costs the SMTP side.

One trio-mta (discard delivery, the admin listener on as shipped) is loaded by smtp-source,
alternately with nobody watching and with three watchers on ``/events``, one of which never
reads; the report is the throughput with watchers as a ratio of the throughput without (target:
0.9 or better), the server's CPU per message, and what the watchers got. Two mixes:

- operators: ``trio-mta watch`` (transaction.end only), the live page (everything, plugin calls
  included, replay 100), and a stalled page;
- worst case: three whole streams (two read, one stalled).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .load import Run, run_once, size_run
from .servers import REPO, VENV_BIN, Server, start_trio, write_trio_config

TARGET = 0.9
MIXES = {
    "operators": (("type=transaction.end", "replay=100"), ("",)),
    "worst case": (("", ""), ("",)),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Watchers:
    """The watcher process (``watch_clients``), ready once every client has its hello."""

    def __init__(self, url: str, readers: tuple[str, ...], stalled: tuple[str, ...]) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
        argv = [str(VENV_BIN / "python"), "-m", "bench_lib.watch_clients", url]
        argv += [f"--reader={query}" for query in readers]
        argv += [f"--stalled={query}" for query in stalled]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"watchers did not start: {line!r}")

    def stop(self) -> dict[str, int]:
        os.kill(self.proc.pid, signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        stats: dict[str, int] = json.loads(out.strip().splitlines()[-1])
        return stats


def add_watchers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--watchers",
        action="store_true",
        help="only trio-mta with 3 admin watchers against none (concurrency 100 unless given)",
    )


def watchers_bench(args: argparse.Namespace, work: Path) -> list[str]:
    port = _free_port()
    conf = write_trio_config(
        work / "watchers-conf", maildir=False, max_connections=2000, admin_port=port
    )
    var = Path(tempfile.mkdtemp(prefix="trio-mta-bench-watchers-", dir=work))
    url = f"ws://127.0.0.1:{port}/events"
    server = start_trio("trio-discard", conf, var, work)
    lines = [
        "## Watchers",
        "",
        "trio-mta discard, admin listener on; runs alternate between no watcher and three "
        "watchers on /events (two reading every event, plugin calls included; one never "
        f"reading). Median of {args.repeats} runs each; target ratio {TARGET}.",
        "",
        "| conc | connections | watchers | none msg/s | 3 watchers msg/s | ratio "
        "| server µs CPU/msg (none / 3) | events read | gaps (events lost) |",
        "|--:|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    modes = {"per-message": [False], "reuse": [True], "both": [False, True]}[args.mode]
    try:
        lines += [
            _row(args, server, url, c, reuse, mix)
            for c in args.concurrency
            for reuse in modes
            for mix in MIXES
        ]
    finally:
        server.stop()
    return [*lines, ""]


def _row(
    args: argparse.Namespace, server: Server, url: str, concurrency: int, reuse: bool, mix: str
) -> str:
    messages = size_run(server, concurrency, reuse=reuse, target=args.seconds)
    runs: dict[bool, list[Run]] = {False: [], True: []}
    got = {"events": 0, "gaps": 0, "lost": 0}
    for repeat in range(args.repeats):
        for watched in (False, True) if repeat % 2 == 0 else (True, False):
            watchers = Watchers(url, *MIXES[mix]) if watched else None
            try:
                run = run_once(server, concurrency, messages, reuse=reuse, timeout=120)
            finally:
                if watchers is not None:
                    for key, value in watchers.stop().items():
                        got[key] += value
            runs[watched].append(run)
            print(
                f"watchers c={concurrency} reuse={reuse} {mix} rep {repeat + 1} "
                f"{'3 watchers' if watched else 'none':<10} {run.rate:7.0f} msg/s",
                file=sys.stderr,
                flush=True,
            )
    without = statistics.median(r.rate for r in runs[False])
    with_ = statistics.median(r.rate for r in runs[True])
    cpu = [statistics.median(r.cpu_us_per_message for r in runs[w]) for w in (False, True)]
    mode = "reused (-d)" if reuse else "per message"
    return (
        f"| {concurrency} | {mode} | {mix} | {without:.0f} | {with_:.0f} | {with_ / without:.2f} "
        f"| {cpu[0]:.0f} / {cpu[1]:.0f} | {got['events']} | {got['gaps']} ({got['lost']}) |"
    )
