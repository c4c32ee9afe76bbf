"""The servers under test, each its own process, and what /proc tells about them.

``trio-mta`` runs from the venv's console script with a config written here; the reference is
``aiosmtpd_sink.py`` beside this file. Both print a ``ready`` line with the bound port on stdout
and inherit a raised ``RLIMIT_NOFILE`` (set again in ``preexec_fn``). ``stop`` signals exactly
the PID that was started.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import select
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
SINK_SCRIPT = Path(__file__).with_name("aiosmtpd_sink.py")
NOFILE_WANTED = 65536
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_READY = re.compile(rb"ready \S*?(\d+\.\d+\.\d+\.\d+):(\d+)")

# The recipient domain the load uses; trio-mta must treat it as local.
LOCAL_DOMAIN = "example.test"


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-file limit as far as allowed; return the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in ((NOFILE_WANTED, max(hard, NOFILE_WANTED)), (min(NOFILE_WANTED, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
        except (ValueError, OSError):
            continue
        return want
    return soft, hard


def _preexec() -> None:
    raise_nofile()


def trio_config(
    *, maildir: bool, max_connections: int, delivery_section: bool = True, admin_port: int = 0
) -> str:
    """The bench's trio-mta.toml: per-transaction logging off, level WARNING, the admin
    listener on as shipped but on ``admin_port`` (0: any free port; servers run side by side).

    Delivery is chosen twice over, so the file suits the engine before and after delivery moved
    into the hook chain: ``[delivery]`` (when the loader still has that section) and the queue
    plugin in ``[plugins] order`` (``queue_maildir`` gets ``fsync = true`` in its own file).
    """
    mode = "maildir" if maildir else "discard"
    queue = "queue_maildir" if maildir else "queue_discard"
    delivery = f"""
[delivery]
mode = "{mode}"
fsync = {"true" if maildir else "false"}
"""
    return f"""\
# Written by scripts/bench.
[server]
hostname = "trio-mta.bench"
local_domains = ["{LOCAL_DOMAIN}"]

[limits]
max_connections = {max_connections}
max_connections_per_ip = {max_connections}
{delivery if delivery_section else ""}
[plugins]
order = ["rcpt_to_host_list", "{queue}"]

[log]
level = "WARNING"
transaction_log = false

[admin]
listen = "127.0.0.1:{admin_port}"
"""


class Server:
    """One running server process."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, cwd: Path = REPO) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            preexec_fn=_preexec,
        )
        self.pid = self.proc.pid
        self.host = "127.0.0.1"
        self.port = 0
        self.var_dir: Path | None = None
        self.ready_line = ""
        try:
            self._wait_ready(30.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, seconds: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + seconds
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.name}: no ready line within {seconds:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait(5)
                    self._log.flush()
                    tail = "\n    ".join(self.log_tail(15))
                    raise RuntimeError(
                        f"{self.name} exited ({self.proc.returncode}) before ready:\n    {tail}"
                    )
                buf += chunk
        self.ready_line = buf.split(b"\n", 1)[0].decode("utf-8", "replace")
        match = _READY.search(buf)
        if match is None:
            raise RuntimeError(f"{self.name}: unexpected first line {buf!r}")
        self.host = match.group(1).decode()
        self.port = int(match.group(2))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads) and of its child processes, live
        (their own /proc/PID/stat) and reaped (cutime + cstime): a Maildir writer process
        works for the server and its CPU counts against it."""
        return sum(_stat_cpu(pid, reaped=pid == self.pid) for pid in _tree(self.pid))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no VmRSS for pid {self.pid}")

    def nofile_limit(self) -> int:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        return -1

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM this PID, then SIGKILL it if it has not exited within 15 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def log_tail(self, lines: int = 5) -> list[str]:
        """Non-empty stderr lines of the server (at level WARNING any line is news)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        found = [line for line in text.splitlines() if line.strip()]
        return found[-lines:] if lines else found


def start_trio(name: str, config_dir: Path, var_dir: Path, log_dir: Path) -> Server:
    argv = [
        str(VENV_BIN / "trio-mta"),
        "run",
        "--config",
        str(config_dir),
        "--listen",
        "127.0.0.1:0",
        "--var-dir",
        str(var_dir),
    ]
    return Server(name, argv, log_dir / f"{name}.log")


def start_aiosmtpd(name: str, log_dir: Path) -> Server:
    argv = [str(VENV_BIN / "python"), str(SINK_SCRIPT), "--listen", "127.0.0.1:0"]
    return Server(name, argv, log_dir / f"{name}.log")


def write_trio_config(
    directory: Path, *, maildir: bool, max_connections: int, admin_port: int = 0
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "plugins").mkdir(exist_ok=True)
    (directory / "plugins" / "queue_maildir.toml").write_text("fsync = true\n")
    for with_delivery in (True, False):
        text = trio_config(
            maildir=maildir,
            max_connections=max_connections,
            delivery_section=with_delivery,
            admin_port=admin_port,
        )
        (directory / "trio-mta.toml").write_text(text)
        if config_ok(directory):
            break
    return directory


def config_ok(directory: Path) -> bool:
    """Whether ``trio-mta check`` accepts the configuration in ``directory``."""
    proc = subprocess.run(
        [str(VENV_BIN / "trio-mta"), "check", "--config", str(directory)],
        cwd=REPO,
        capture_output=True,
        check=False,
        timeout=60,
    )
    return proc.returncode == 0


def filesystem_of(path: Path) -> str:
    """The file-system type /proc/mounts gives for the mount holding ``path``."""
    best, fstype = "", "?"
    target = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def _stat_cpu(pid: int, *, reaped: bool) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0  # exited since it was listed
    fields = text[text.rindex(")") + 2 :].split()
    # Fields 14-17 of stat(5) (utime, stime, cutime, cstime); the remainder starts at field 3.
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _CLK_TCK


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    found = [pid]
    for parent in found:
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                found.extend(int(c) for c in (task / "children").read_text().split())
            except FileNotFoundError:
                continue
    return found
