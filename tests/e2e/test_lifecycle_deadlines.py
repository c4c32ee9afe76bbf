"""A plugin's startup()/shutdown() that hangs, the daemon as a subprocess: the start fails
after [plugins] lifecycle_timeout with a line naming the plugin; SIGTERM during a hung start-up
stops the daemon at once; a reload whose startup() hangs leaves SIGTERM and SIGHUP obeyed."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import trio

from .conftest import StartDaemon, daemon_command, write_conf

CAP = 20  # seconds, real time

CONF = """\
[plugins]
order = {order}
directories = ["my-plugins"]
lifecycle_timeout = {lifecycle}
"""
# Its startup() says it began (a file), then never returns unless the file "ok" exists.
HANGS = """\
import trio
from pathlib import Path
from trio_mta import hooks


class Plugin(hooks.Plugin):
    async def startup(self):
        here = Path(self.config["dir"])
        (here / "started").touch()
        while not (here / "ok").exists():
            await trio.sleep(0.05)
"""


def conf(tmp_path: Path, *, lifecycle: float, hang: bool = True) -> Path:
    directory = tmp_path / "conf"
    plugins = directory / "my-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "hangs.py").write_text(HANGS)
    (directory / "plugins").mkdir(exist_ok=True)
    (directory / "plugins" / "hangs.toml").write_text(f'dir = "{tmp_path}"\n')
    if not hang:
        (tmp_path / "ok").touch()
    return write_conf(directory, CONF.format(order='["hangs"]', lifecycle=lifecycle))


async def spawn(tmp_path: Path, config_dir: Path, var_dir: Path) -> tuple[trio.Process, Path]:
    log = tmp_path / "daemon.log"
    args = ["run", "--config", str(config_dir), "--listen", "127.0.0.1:0"]
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            daemon_command(*args, "--var-dir", str(var_dir)),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            cwd=str(tmp_path),
        )
    return process, log


async def wait_for(path: Path) -> None:
    while not await trio.Path(path).exists():  # noqa: ASYNC110  # another process writes it
        await trio.sleep(0.05)


async def test_a_startup_that_never_returns_fails_the_start_after_its_deadline(
    tmp_path: Path, var_dir: Path
) -> None:
    process, log = await spawn(tmp_path, conf(tmp_path, lifecycle=1), var_dir)
    try:
        with trio.fail_after(CAP):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert code != 0
    text = log.read_text()
    assert "plugin 'hangs' failed to start: startup() did not finish within 1s" in text


async def test_sigterm_during_a_hung_startup_stops_the_daemon_at_once(
    tmp_path: Path, var_dir: Path
) -> None:
    process, log = await spawn(tmp_path, conf(tmp_path, lifecycle=600), var_dir)
    try:
        with trio.fail_after(CAP):
            await wait_for(tmp_path / "started")
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert "signal SIGTERM during plugin start-up: stopping" in log.read_text()


async def test_a_reload_whose_startup_hangs_leaves_signals_obeyed(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config_dir = conf(tmp_path, lifecycle=600, hang=False)
    daemon = await start_daemon(config_dir)
    (tmp_path / "ok").unlink()
    (tmp_path / "started").unlink()
    daemon.signal(signal.SIGHUP)  # the new generation's startup() hangs
    with trio.fail_after(CAP):
        await wait_for(tmp_path / "started")
    daemon.signal(signal.SIGHUP)  # obeyed: coalesced into one more reload
    client = await daemon.greeted()  # mail still flows on the running generation
    await client.command("QUIT", 221)
    with trio.fail_after(CAP):
        while "another reload follows it" not in daemon.log_text():  # noqa: ASYNC110
            await trio.sleep(0.05)
    daemon.signal(signal.SIGTERM)
    with trio.fail_after(10):
        code = await daemon.wait_exit()
    assert code == 0


async def test_a_reload_whose_startup_hangs_is_refused_at_its_deadline(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config_dir = conf(tmp_path, lifecycle=1, hang=False)
    daemon = await start_daemon(config_dir)
    (tmp_path / "ok").unlink()
    daemon.signal(signal.SIGHUP)
    with trio.fail_after(CAP):
        while "did not finish within 1s" not in daemon.log_text():  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert "reload refused" in daemon.log_text()
    client = await daemon.greeted()
    await client.command("QUIT", 221)
