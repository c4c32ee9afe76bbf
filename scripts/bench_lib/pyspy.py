"""trio-mta under py-spy while smtp-source loads it; own time and inclusive time per function.

py-spy attaches to the daemon's PID (``record --format raw --function``: one collapsed stack per
line, frames ``name (file:first_line)``, then a sample count). Idle samples (the event loop
blocked in epoll) are left out by py-spy, so percentages are of busy samples.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .load import Run, run_once, size_run
from .servers import REPO, VENV_BIN, Server


def ensure_py_spy() -> Path:
    exe = VENV_BIN / "py-spy"
    if not exe.exists():
        print("installing py-spy into .venv ...", flush=True)
        subprocess.run(
            [str(VENV_BIN / "python"), "-m", "pip", "install", "--quiet", "py-spy"], check=True
        )
    if not exe.exists():
        found = shutil.which("py-spy")
        if found is None:
            raise RuntimeError("py-spy is not installed and could not be installed")
        return Path(found)
    return exe


@dataclass(frozen=True)
class Samples:
    total: int
    own: Counter[str]
    inclusive: Counter[str]
    own_by_file: Counter[str]
    categories: Counter[str]


def _category(frames: list[str]) -> str:
    """Where a sample's own time goes: a coarse bucket named by the leaf frame's file."""
    leaf = frames[-1]
    path = leaf.rpartition("(")[2]
    if "trio/_socket.py" in path and "_nonblocking_helper" in leaf:
        # The helper's own time is the send()/recv() system call it makes.
        ours = [f.partition(" (")[0] for f in frames if "trio_mta/" in f]
        return f"socket syscalls under {ours[-1] if ours else '?'}"
    if "trio_mta/protocol/" in path:
        return "trio_mta.protocol (Python)"
    if "trio_mta/server/" in path:
        return "trio_mta.server (Python)"
    if any(p in path for p in ("trio/", "outcome/", "contextlib.py", "trio._core", "outcome.")):
        return "trio runtime (scheduler, cancel scopes, epoll, socket wrappers)"
    if "socket.py" in path:
        return "stdlib socket (accept, close, ...)"
    return "other"


def parse_raw(path: Path) -> Samples:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        leaf_file = frames[-1].rpartition("(")[2].rpartition(":")[0] or frames[-1]
        by_file[leaf_file] += count
        categories[_category(frames)] += count
        for frame in set(frames):
            inclusive[frame] += count
    return Samples(total, own, inclusive, by_file, categories)


@dataclass(frozen=True)
class Profile:
    raw_path: Path
    run: Run
    samples: Samples


def profile_trio(
    server: Server, out_dir: Path, *, concurrency: int, reuse: bool, seconds: float, rate: int
) -> Profile:
    py_spy = ensure_py_spy()
    messages = size_run(server, concurrency, reuse=reuse, target=seconds)
    raw = out_dir / "trio-mta-profile.txt"
    spy = subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(server.pid),
            "--format",
            "raw",
            "--function",
            "--rate",
            str(rate),
            "--output",
            str(raw),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(1.0)  # let py-spy attach before the load starts
        if spy.poll() is not None:
            out = spy.stdout.read().decode(errors="replace") if spy.stdout else ""
            raise RuntimeError(f"py-spy exited early: {out.strip()}")
        run = run_once(server, concurrency, messages, reuse=reuse, timeout=seconds * 20 + 60)
    finally:
        if spy.poll() is None:
            # py-spy writes its output file on SIGINT.
            os.kill(spy.pid, signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(spy.pid, signal.SIGKILL)
                spy.wait()
        if spy.stdout is not None:
            spy.stdout.close()
    if not raw.exists():
        raise RuntimeError("py-spy wrote no profile")
    return Profile(raw, run, parse_raw(raw))


def shorten(path: str) -> str:
    """A source path in package-relative form (``trio/_core/_run.py``)."""
    for marker in ("site-packages/", "/lib/python3.11/", f"{REPO}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def frame_label(frame: str) -> str:
    """``name (path:line)`` with the path shortened."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    return f"{name} ({shorten(where)})" if where else name


def report(profile: Profile, top: int = 25) -> list[str]:
    samples = profile.samples
    total = max(samples.total, 1)
    mode = "reused connections (-d)" if profile.run.reuse else "a connection per message"
    lines = [
        f"## Profile: trio-mta, concurrency {profile.run.concurrency}, {mode}",
        "",
        f"{profile.run.messages} messages in {profile.run.seconds:.2f} s under py-spy "
        f"({profile.run.rate:.0f} msg/s, {profile.run.cpu_us_per_message:.0f} µs CPU/msg "
        f"incl. sampling overhead); {samples.total} busy samples (py-spy drops samples of the "
        f"loop blocked in epoll, so % is of busy time); raw stacks in {profile.raw_path}",
        "",
        "### Where the time goes (own time by bucket)",
        "",
        "| % | bucket |",
        "|--:|---|",
        *[
            f"| {100 * count / total:.1f} | {name} |"
            for name, count in samples.categories.most_common()
        ],
        "",
        f"### Top {top} functions by own time",
        "",
        "| # | own % | incl. % | function |",
        "|--:|--:|--:|---|",
    ]
    for i, (frame, count) in enumerate(samples.own.most_common(top), 1):
        incl = samples.inclusive[frame]
        lines.append(
            f"| {i} | {100 * count / total:.1f} | {100 * incl / total:.1f} "
            f"| `{frame_label(frame)}` |"
        )
    lines += ["", "### Own time by file (top 15)", "", "| own % | file |", "|--:|---|"]
    for path, count in samples.own_by_file.most_common(15):
        lines.append(f"| {100 * count / total:.1f} | `{shorten(path)}` |")
    lines += [
        "",
        "### trio_mta and plugins functions by inclusive time (top 20)",
        "",
        "| incl. % | own % | function |",
        "|--:|--:|---|",
    ]
    ours = [
        (frame, count)
        for frame, count in samples.inclusive.most_common()
        if "trio_mta/" in frame or "plugins/" in frame
    ]
    for frame, count in ours[:20]:
        lines.append(
            f"| {100 * count / total:.1f} | {100 * samples.own[frame] / total:.1f} "
            f"| `{frame_label(frame)}` |"
        )
    return lines
