"""The daemon as a subprocess on the listeners its configuration names (no --listen override),
and a copy of the shipped conf/ on free loopback ports."""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from tests.conftest import REPO

from .conftest import daemon_command

CAP = 30  # seconds, real time


@attrs.define
class ConfDaemon:
    process: trio.Process
    addresses: dict[str, int]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace")


@pytest.fixture
async def daemons() -> AsyncIterator[list[ConfDaemon]]:
    """Every daemon started with ``start`` is stopped by its PID at teardown."""
    started: list[ConfDaemon] = []
    yield started
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await daemon.process.wait()
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()


def shipped_conf(directory: Path) -> Path:
    """A copy of the shipped conf/ whose listeners (and admin listener) take free ports."""
    shutil.copytree(REPO / "conf", directory, ignore=shutil.ignore_patterns("auth_users"))
    toml = directory / "trio-mta.toml"
    text = toml.read_text()
    for port in ("2525", "5587", "5465", "8025"):
        assert f'listen = "127.0.0.1:{port}"' in text
        text = text.replace(f'listen = "127.0.0.1:{port}"', 'listen = "127.0.0.1:0"')
    toml.write_text(text)
    return directory


async def start(
    daemons: list[ConfDaemon],
    config_dir: Path,
    var_dir: Path,
    log: Path,
    *,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> ConfDaemon:
    """Start the daemon and wait for its ready line (which names every listener's port)."""
    args = ["run", "--config", str(config_dir), "--var-dir", str(var_dir), *extra]
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            daemon_command(*args),
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            cwd=str(log.parent),
            env=env,
        )
    daemon = ConfDaemon(process, {}, log)
    daemons.append(daemon)
    assert process.stdout is not None
    line = b""
    with trio.fail_after(CAP):
        while b"\n" not in line:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                await process.wait()
                pytest.fail(f"daemon exited ({process.returncode}):\n{daemon.log_text()}")
            line += chunk
    words = line.split(b"\n", 1)[0].decode().split()
    assert words[:2] == ["trio-mta", "ready"], line
    for word in words[2:]:
        name, _, address = word.partition("=")
        daemon.addresses[name] = int(address.rpartition(":")[2])
    return daemon


async def stop(daemon: ConfDaemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    with trio.fail_after(CAP):
        assert await daemon.process.wait() == 0


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
