"""The daemon as a subprocess: start it, read its ready line, stop it by its PID."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio

from tests.conftest import REPO
from tests.helpers.smtp import LineClient

TRIO_MTA = REPO / ".venv" / "bin" / "trio-mta"
START_CAP = 15  # seconds for the daemon to say ready


@attrs.define
class Daemon:
    process: trio.Process
    host: str
    port: int
    var_dir: Path
    log: Path
    stdout_rest: bytes = b""

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace")

    async def connect(self) -> LineClient:
        return LineClient(await trio.open_tcp_stream(self.host, self.port))

    async def greeted(self) -> LineClient:
        client = await self.connect()
        await client.expect(220)
        await client.command("EHLO client.example", 250)
        return client

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_exit(self) -> int:
        return await self.process.wait()


def write_conf(directory: Path, toml: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trio-mta.toml").write_text(toml)
    return directory


StartDaemon = Callable[..., Awaitable[Daemon]]


def daemon_command(*args: str, module: bool = False) -> list[str]:
    if module:
        return [sys.executable, "-m", "trio_mta", *args]
    return [str(TRIO_MTA), *args]


@pytest.fixture
async def start_daemon(tmp_path: Path, var_dir: Path) -> AsyncIterator[StartDaemon]:
    """``await start_daemon(config_dir=REPO/"conf", module=False)``: a running daemon.

    Teardown stops every daemon still running: SIGTERM, then SIGKILL if it does not exit.
    """
    started: list[Daemon] = []

    async def start(config_dir: Path | None = None, *, module: bool = False) -> Daemon:
        config_dir = config_dir or REPO / "conf"
        log = tmp_path / f"daemon{len(started)}.log"
        args = ["run", "--config", str(config_dir), "--listen", "127.0.0.1:0"]
        args += ["--var-dir", str(var_dir)]
        with log.open("wb") as log_file:
            process = await trio.lowlevel.open_process(
                daemon_command(*args, module=module),
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                cwd=str(tmp_path),
            )
        assert process.stdout is not None
        daemon = Daemon(process, "", 0, var_dir, log)
        started.append(daemon)
        line = b""
        with trio.fail_after(START_CAP):
            while b"\n" not in line:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    await process.wait()
                    pytest.fail(f"daemon exited ({process.returncode}):\n{daemon.log_text()}")
                line += chunk
        ready, _, daemon.stdout_rest = line.partition(b"\n")
        words = ready.decode().split()
        assert words[:2] == ["trio-mta", "ready"], ready
        [address] = [w for w in words if w.startswith("mx=")]
        host, _, port = address[3:].rpartition(":")
        daemon.host, daemon.port = host, int(port)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await daemon.process.wait()
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()
