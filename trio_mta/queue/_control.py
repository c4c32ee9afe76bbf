"""``trio-mta queue`` commands, to a running daemon or on a stopped spool.

Theory of operation: reading (list, show, stats) only reads envelope files, which are always
replaced by rename, so it is safe at any time. Changing (flush, hold, release, delete) goes
through the daemon when one runs, so that the spool has one writer: the command is written
to ``control/<random>.cmd`` (via a temporary name and a rename, so the daemon never reads half
of it), the daemon is sent SIGUSR1, runs every command file, writes its answer to
``<random>.done`` and deletes the command; the CLI waits for the answer. The daemon is "running"
if ``daemon.pid`` names a live process whose command line mentions trio-mta/trio_mta (a stale
file after a SIGKILL must not make us signal an unrelated process). Without a daemon the
command is applied to the files directly.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import attrs

from ._records import CorruptEntry, Envelope, dumps
from ._spool import Spool

VERBS = frozenset({"flush", "hold", "release", "delete"})


@attrs.frozen
class Command:
    verb: str
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.verb} {self.target}" if self.target else self.verb


def parse_command(text: str) -> Command:
    words = text.split()
    if not words or words[0] not in VERBS or len(words) > 2:
        raise ValueError(f"bad command {text!r}")
    target = words[1] if len(words) == 2 else None
    if target is None and words[0] != "flush":
        raise ValueError(f"{words[0]} needs a queue id")
    return Command(words[0], target)


def read_commands(control: Path) -> list[tuple[Path, Command]]:
    """Blocking. The pending command files, oldest first; unreadable ones are answered here."""
    found: list[tuple[float, Path]] = []
    try:
        for path in control.glob("*.cmd"):
            try:
                found.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        return []
    commands: list[tuple[Path, Command]] = []
    for _, path in sorted(found):
        try:
            commands.append((path, parse_command(path.read_text("utf-8"))))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            write_answer(path, f"error: {exc}")
    return commands


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_answer(command: Path, answer: str) -> None:
    _replace(command.with_suffix(".done"), answer.encode("utf-8"))
    command.unlink(missing_ok=True)


def daemon_pid(root: Path) -> int | None:
    try:
        pid = int((root / "daemon.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc: trust the live pid
    return pid if b"trio-mta" in cmdline or b"trio_mta" in cmdline else None


def send_command(root: Path, command: Command, *, wait: float = 10.0) -> str:
    """Run ``command`` through the running daemon, or on the stopped spool."""
    spool = Spool(root, fsync=True)
    pid = daemon_pid(root)
    if pid is None:
        return apply_offline(spool, command)
    spool.control.mkdir(parents=True, exist_ok=True)
    path = spool.control / f"{uuid.uuid4().hex}.cmd"
    _replace(path, str(command).encode("utf-8"))
    os.kill(pid, signal.SIGUSR1)
    done = path.with_suffix(".done")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if done.exists():
            answer = done.read_text("utf-8")
            done.unlink(missing_ok=True)
            return answer
        time.sleep(0.02)
    path.unlink(missing_ok=True)
    return f"error: the daemon (pid {pid}) did not answer within {wait:g} s"


def apply_offline(spool: Spool, command: Command) -> str:
    """Blocking. ``command`` on the files of a spool no daemon is running on."""
    if command.verb == "flush":
        count = 0
        for env in entries(spool):
            domain = (command.target or "").lower()
            if (
                command.target is None
                or env.id == command.target
                or any(r.domain == domain for r in env.pending)
            ):
                _replace(spool.envelope_path(env.id), dumps(attrs.evolve(env, next_attempt=0.0)))
                count += 1
        return f"flushed {count} (due when the daemon starts)"
    target = command.target or ""
    try:
        env = spool.read(target)
    except (FileNotFoundError, CorruptEntry, OSError):
        return f"error: no message {target}"
    if command.verb == "delete":
        spool.envelope_path(target).unlink(missing_ok=True)
        spool.message_path(target).unlink(missing_ok=True)
        return f"deleted {target}"
    held = command.verb == "hold"
    _replace(spool.envelope_path(target), dumps(attrs.evolve(env, held=held, next_attempt=0.0)))
    return f"{'held' if held else 'released'} {target}"


def entries(spool: Spool) -> list[Envelope]:
    """Blocking. Every readable entry (an entry removed meanwhile is skipped)."""
    found = []
    for id in spool.ids():
        try:
            found.append(spool.read(id))
        except (FileNotFoundError, CorruptEntry):
            continue
    return found
