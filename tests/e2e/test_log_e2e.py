"""[log] in the daemon: JSON lines to a file that logrotate may rename (SIGUSR1 or SIGHUP then
start a new one), and a syslog socket that is not there stops the start with one line."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import trio

from .confdaemon import CAP, ConfDaemon, start, stop
from .confdaemon import daemons as daemons  # the fixture
from .conftest import daemon_command, write_conf

FILE_LOG = """
[[listener]]
name = "mx"
listen = "127.0.0.1:0"

[log]
level = "info"
format = "json"
destination = "file"
file = "log/trio-mta.log"

[admin]
enabled = false
"""


def _has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


async def _wait_for(path: Path, text: str) -> None:
    with trio.fail_after(CAP):
        while not _has(path, text):  # noqa: ASYNC110  # a file, not an event
            await trio.sleep(0.02)


async def test_json_file_log_is_reopened_on_sigusr1_and_sighup(
    daemons: list[ConfDaemon], tmp_path: Path
) -> None:
    conf = write_conf(tmp_path / "conf", FILE_LOG)
    var = tmp_path / "var"
    daemon = await start(daemons, conf, var, tmp_path / "stderr.log")
    path = var / "log" / "trio-mta.log"
    await _wait_for(path, "listening")
    for number, signum in enumerate((signal.SIGUSR1, signal.SIGHUP), 1):
        path.rename(path.with_suffix(f".log.{number}"))  # logrotate, without copytruncate
        daemon.process.send_signal(signum)
        await _wait_for(path, f"signal {signum.name}: log file reopened")
    await stop(daemon)
    assert daemon.log_text() == ""  # nothing went to stderr
    first = [json.loads(line) for line in path.with_suffix(".log.1").read_text().splitlines()]
    assert {"time", "level", "logger", "message", "pid"} <= set(first[0])
    assert first[0]["time"].endswith("Z")
    assert any(r["message"].startswith("listening name=mx") for r in first)
    last = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    assert last[0] == "signal SIGHUP: log file reopened"
    assert "stopped" in last


async def test_a_missing_syslog_socket_stops_the_start(tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path / "conf",
        f'[log]\ndestination = "syslog"\nsyslog_socket = "{tmp_path / "none.sock"}"\n',
    )
    with trio.fail_after(CAP):
        result = await trio.run_process(
            daemon_command("run", "--config", str(conf), "--var-dir", str(tmp_path / "var")),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        f"trio-mta: [log] syslog_socket '{tmp_path / 'none.sock'}': No such file or directory"
    )
