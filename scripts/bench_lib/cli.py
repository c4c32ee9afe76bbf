"""``scripts/bench``: trio-mta (discard; Maildir with fsync) against an aiosmtpd sink.

Throughput: for each concurrency level and connection mode, each server is loaded in turn by
smtp-source (4 KiB messages), the order rotating every repeat; the median of the repeats is
reported, with the server's CPU per message. Then the idle test (memory per held connection and
a fresh client's latency), each server freshly started for it. ``--profile`` instead runs
trio-mta discard under py-spy. Progress goes to stderr, the markdown report to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path

from .faults import add_faults_argument, faults_bench
from .idle import IdleResult, idle_test
from .load import MESSAGE_SIZE, SMTP_SOURCE, Run, run_once, size_run
from .pyspy import profile_trio
from .pyspy import report as profile_report
from .relay import add_queue_argument, queue_bench
from .servers import (
    REPO,
    Server,
    filesystem_of,
    raise_nofile,
    start_aiosmtpd,
    start_trio,
    write_trio_config,
)
from .tls import add_tls_arguments, tls_main
from .watchers import add_watchers_argument, watchers_bench

DISCARD, MAILDIR, AIOSMTPD = "trio-discard", "trio-maildir", "aiosmtpd"
SERVERS = (DISCARD, MAILDIR, AIOSMTPD)
LABELS = {
    DISCARD: "trio-mta discard",
    MAILDIR: "trio-mta Maildir+fsync",
    AIOSMTPD: "aiosmtpd Sink",
}


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    p.add_argument(
        "--concurrency",
        type=int,
        action="append",
        metavar="N",
        help="smtp-source -s level; repeatable (default: 1, 10, 100, 500)",
    )
    p.add_argument(
        "--mode",
        choices=("per-message", "reuse", "both"),
        default="both",
        help="a connection per message, reused connections (-d), or both (default)",
    )
    p.add_argument("--repeats", type=int, help="runs per server and level (default 3)")
    p.add_argument("--seconds", type=float, help="target length of one run in seconds (default 4)")
    p.add_argument(
        "--idle", type=int, metavar="N", help="idle connections to hold (default 5000; 0 skips)"
    )
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput runs")
    p.add_argument(
        "--quick", action="store_true", help="short runs: 1 s, 1 repeat, 1000 idle connections"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="only profile trio-mta discard under py-spy (concurrency 100 unless given)",
    )
    p.add_argument(
        "--profile-maildir",
        action="store_true",
        help="with --profile: profile the Maildir+fsync server instead of discard",
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    add_watchers_argument(p)
    add_faults_argument(p)
    add_queue_argument(p)
    p.add_argument(
        "--var-root",
        type=Path,
        default=Path("/var/tmp"),
        help="where the Maildir var dir goes; must be a real disk (default /var/tmp)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    add_tls_arguments(p)
    args = p.parse_args(argv)
    args.tls_seconds = args.seconds or 3.0
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 4.0)
    if args.idle is None:
        args.idle = 1000 if args.quick else 5000
    if (args.profile or args.watchers or args.queue) and not args.concurrency:
        args.concurrency = [100]
    args.concurrency = args.concurrency or [1, 10, 100, 500]
    return args


@contextmanager
def servers_started(
    names: Sequence[str], work: Path, var_root: Path, max_connections: int
) -> Iterator[dict[str, Server]]:
    with ExitStack() as stack:
        started: dict[str, Server] = {}
        for name in names:
            if name == AIOSMTPD:
                server = start_aiosmtpd(name, work)
            else:
                maildir = name == MAILDIR
                conf = write_trio_config(
                    work / f"{name}-conf", maildir=maildir, max_connections=max_connections
                )
                var = Path(
                    tempfile.mkdtemp(
                        prefix=f"trio-mta-bench-{name}-", dir=var_root if maildir else work
                    )
                )
                stack.callback(shutil.rmtree, var, ignore_errors=True)
                server = start_trio(name, conf, var, work)
                server.var_dir = var
            stack.callback(server.stop)
            started[name] = server
            progress(f"started {name}: pid {server.pid} at {server.address}")
        yield started


def clear_maildir(server: Server | None) -> int:
    """Set delivered files aside between runs so directories do not grow across the bench;
    return how many there were (a check that Maildir mode really delivered every message).

    Each ``new/`` is renamed away and made afresh, never emptied file by file: on this ext4
    (no journal) the inode allocator skips inodes freed in the last 30 s (``recently_deleted``
    in ``__ext4_new_inode``), and deleting the tens of thousands of files of one run made every
    file create of the next one scan past them, tripling its kernel time. That cost was the
    bench's own cleanup, not the server's work; the files go when the bench ends."""
    if server is None or server.var_dir is None:
        return 0
    count = 0
    for new in server.var_dir.glob("maildir/*/*/new"):
        aside = new.with_name(f"new.{time.monotonic_ns()}")
        new.rename(aside)
        new.mkdir()
        count += sum(1 for _ in os.scandir(aside))
    return count


def throughput(args: argparse.Namespace, servers: dict[str, Server]) -> list[Run]:
    modes = {"per-message": [False], "reuse": [True], "both": [False, True]}[args.mode]
    runs: list[Run] = []
    order = list(servers)
    maildir = servers.get(MAILDIR)
    for concurrency in args.concurrency:
        for reuse in modes:
            mode = "reuse" if reuse else "per-message"
            sizes = {}
            for name in order:
                sizes[name] = size_run(servers[name], concurrency, reuse=reuse, target=args.seconds)
            clear_maildir(maildir)
            for rep in range(args.repeats):
                shift = rep % len(order)
                for name in order[shift:] + order[:shift]:
                    run = run_once(
                        servers[name],
                        concurrency,
                        sizes[name],
                        reuse=reuse,
                        timeout=args.seconds * 20 + 60,
                    )
                    if name == MAILDIR:
                        delivered = clear_maildir(maildir)
                        if delivered != run.messages:
                            note = f"{delivered} Maildir files for {run.messages} messages"
                            run = dataclasses.replace(run, warnings=(note, *run.warnings))
                    runs.append(run)
                    flag = f"  WARN {run.warnings[0]}" if run.warnings else ""
                    progress(
                        f"c={concurrency:<3} {mode:<11} rep {rep + 1} {name:<13} "
                        f"{run.messages:>6} msgs {run.seconds:5.2f} s {run.rate:7.0f}/s "
                        f"{run.cpu_us_per_message:6.0f} µs CPU/msg{flag}"
                    )
    return runs


def _median(runs: list[Run], attr: str) -> float:
    return statistics.median(float(getattr(r, attr)) for r in runs)


def throughput_table(args: argparse.Namespace, runs: list[Run], names: Sequence[str]) -> list[str]:
    head = ["conc", "connections"]
    for name in names:
        head += [f"{LABELS[name]} msg/s", "µs CPU/msg"]
    trio_names = [n for n in names if n != AIOSMTPD]
    if AIOSMTPD in names:
        head += [f"{LABELS[n].removeprefix('trio-mta ')} ÷ aiosmtpd" for n in trio_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "--:|" * len(head)]
    warned: list[str] = []
    keys = sorted({(r.concurrency, r.reuse) for r in runs})
    for concurrency, reuse in keys:
        cells = [str(concurrency), "reused (-d)" if reuse else "per message"]
        rate: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name in names:
            mine = [
                r
                for r in runs
                if r.server == name and r.concurrency == concurrency and r.reuse == reuse
            ]
            if not mine:
                cells += ["-", "-"]
                continue
            rate[name] = _median(mine, "rate")
            cpu[name] = _median(mine, "cpu_us_per_message")
            bad = sum(1 for r in mine if r.warnings)
            mark = "!" if bad else ""
            if bad:
                warned.append(f"c={concurrency} {cells[1]} {name}: {mine[0].warnings[:1] or ''}")
            spread = f" ({min(r.rate for r in mine):.0f}..{max(r.rate for r in mine):.0f})"
            cells += [
                f"{rate[name]:.0f}{spread if len(mine) > 1 else ''}{mark}",
                f"{cpu[name]:.0f}",
            ]
        if AIOSMTPD in names:
            for name in trio_names:
                if name in rate and AIOSMTPD in rate:
                    cells.append(
                        f"{rate[name] / rate[AIOSMTPD]:.2f}x / {cpu[AIOSMTPD] / cpu[name]:.2f}x"
                    )
                else:
                    cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "msg/s: median of the repeats (min..max in brackets). µs CPU/msg: the server process's "
        "utime+stime (all threads, /proc/PID/stat; its child processes included, e.g. the "
        "Maildir writer) over the run ÷ messages, median. "
        "Ratio cells: throughput trio-mta ÷ aiosmtpd / CPU efficiency "
        "(aiosmtpd µs ÷ trio-mta µs); above 1x trio-mta is ahead.",
    ]
    if warned:
        lines += ["", "Runs marked ! had smtp-source warnings:", *[f"- {w}" for w in warned]]
    return lines


def idle_table(results: list[IdleResult]) -> list[str]:
    lines = [
        "| server | nofile | held | failed | set-up s | RSS before KiB | RSS after KiB | KiB/conn "
        "| fresh banner+EHLO+QUIT (median / max) | answered < 1 s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        med, mx = r.fresh_median, r.fresh_max
        fresh = f"{med * 1e3:.1f} / {mx * 1e3:.1f} ms" if med is not None and mx else "failed"
        failed = f"{r.failures}" + (f" ({r.first_error})" if r.failures else "")
        lines.append(
            f"| {LABELS[r.server]} | {r.nofile} | {r.held} | {failed} | {r.connect_seconds:.1f} "
            f"| {r.rss_before_kib} | {r.rss_after_kib} | {r.kib_per_connection:.1f} | {fresh} "
            f"| {'yes' if r.fresh_ok else 'NO'} ({len(r.fresh)} tries) |"
        )
    return lines


def tree_state() -> str:
    """``git describe``-like: the commit, and whether trio_mta/ or plugins/ have local edits."""
    try:
        head = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, check=True
            )
            .stdout.decode()
            .strip()
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "trio_mta", "plugins"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head} + uncommitted edits" if dirty else head


def preamble(args: argparse.Namespace, nofile: tuple[int, int]) -> list[str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    cpus = len(os.sched_getaffinity(0))
    lines = [
        "# trio-mta benchmark" + (" (profile)" if args.profile else ""),
        "",
        f"- Machine: {cpus} CPUs shared by servers and load (nothing pinned); "
        f"Python {platform.python_version()}, trio {version('trio')}, "
        f"aiosmtpd {version('aiosmtpd')}; RLIMIT_NOFILE {nofile[0]}.",
        f"- Load: Postfix smtp-source ({SMTP_SOURCE.relative_to(REPO)}), {MESSAGE_SIZE}-byte "
        "messages, one recipient.",
        f"- trio-mta: tree {tree_state()}. Delivery: discard = `queue_discard` plugin, Maildir = "
        "`queue_maildir` with `fsync = true` (plus `[delivery] mode` where the loader has it); "
        "Maildir file count checked after every run.",
        "- trio-mta: per-transaction logging OFF (`[log] transaction_log = false`, "
        '`level = "WARNING"`), Received: header on (default). Maildir+fsync var dir under '
        f"{args.var_root} ({filesystem_of(args.var_root)}).",
        "- aiosmtpd: `aiosmtpd.smtp.SMTP` + `handlers.Sink` on the default asyncio loop, "
        "fixed hostname (no getfqdn per connection), listen backlog 4096, logging at ERROR.",
        "",
    ]
    if args.profile:
        return [line for line in lines if not line.startswith("- aiosmtpd")]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile()
    if args.tls:
        return tls_main(args, preamble(args, nofile))
    if args.faults:
        work = Path(tempfile.mkdtemp(prefix="trio-mta-faults-"))
        try:
            print("\n".join(preamble(args, nofile) + faults_bench(args, work)), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        return 0
    if not (REPO / ".tools" / "postfix" / "usr" / "sbin" / "smtp-source").exists():
        progress("bench: smtp-source missing; run `make tools` first")
        return 127
    if filesystem_of(args.var_root) in ("tmpfs", "ramfs"):
        progress(f"bench: {args.var_root} is {filesystem_of(args.var_root)}; fsync means nothing")
    work = Path(tempfile.mkdtemp(prefix="trio-mta-bench-"))
    out: list[str] = preamble(args, nofile)
    max_connections = max(args.idle, max(args.concurrency)) + 1000
    try:
        return _run(args, work, nofile, out, max_connections)
    except RuntimeError as exc:
        progress(f"bench: {exc}")
        return 1
    finally:
        if args.keep:
            progress(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    work: Path,
    nofile: tuple[int, int],
    out: list[str],
    max_connections: int,
) -> int:
    if args.watchers:
        print("\n".join(out + watchers_bench(args, work)), flush=True)
        return 0
    if args.queue:
        print("\n".join(out + queue_bench(args, work)), flush=True)
        return 0
    if args.profile:
        name = MAILDIR if args.profile_maildir else DISCARD
        with servers_started([name], work, args.var_root, max_connections) as servers:
            prof = profile_trio(
                servers[name],
                Path(tempfile.mkdtemp(prefix="trio-mta-profile-", dir="/var/tmp")),
                concurrency=args.concurrency[0],
                reuse=args.mode == "reuse",
                seconds=max(args.seconds, 8.0),
                rate=args.profile_rate,
            )
            out += profile_report(prof)
        print("\n".join(out), flush=True)
        return 0
    if not args.no_throughput:
        with servers_started(SERVERS, work, args.var_root, max_connections) as servers:
            runs = throughput(args, servers)
            logs = {n: s.log_tail(3) for n, s in servers.items()}
        out += [
            "## Throughput",
            "",
            f"Runs sized to ~{args.seconds:g} s each from growing pilot runs (which also "
            f"warm up); {args.repeats} repeat(s) per cell, servers interleaved with the "
            "order rotating each repeat.",
            "",
            *throughput_table(args, runs, SERVERS),
            "",
        ]
        for name, tail in logs.items():
            if tail:
                out += [f"{name} stderr (last lines):", *[f"    {t}" for t in tail], ""]
    if args.idle > 0:
        results: list[IdleResult] = []
        for name in (DISCARD, AIOSMTPD):
            with servers_started([name], work, args.var_root, max_connections) as servers:
                server = servers[name]
                progress(f"idle: holding {args.idle} connections to {name} ...")
                result = idle_test(server, args.idle)
                progress(
                    f"idle: {name} {result.held} held, {result.kib_per_connection:.1f} "
                    f"KiB/conn, fresh {result.fresh}"
                )
                results.append(result)
        out += [
            f"## Idle connections ({args.idle}, each after banner + EHLO; "
            f"trio-mta max_connections(_per_ip) = {max_connections}; nofile: the server's "
            "limit from /proc/PID/limits, set in preexec_fn)",
            "",
            *idle_table(results),
            "",
        ]
    print("\n".join(out), flush=True)
    return 0
