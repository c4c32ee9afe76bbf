"""The ``trio-mta`` command as a user runs it."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO
from tests.helpers import replies
from tests.helpers.maildir import all_messages, bodies_in

from .conftest import StartDaemon, daemon_command, write_conf

CAP = 20  # seconds, real time

MESSAGE = b"Subject: e2e\r\n\r\n.dot\r\nbody\r\n"


def _send(host: str, port: int, rcpts: list[str], body: bytes) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=10) as smtp:
        return smtp.sendmail("a@example.org", rcpts, body)


@pytest.mark.parametrize("module", [False, True], ids=["script", "python-m"])
async def test_daemon_starts_delivers_and_stops_on_sigterm(
    start_daemon: StartDaemon, module: bool
) -> None:
    with trio.fail_after(CAP):
        daemon = await start_daemon(module=module)
        assert daemon.host == "127.0.0.1"
        refused = await trio.to_thread.run_sync(
            _send, daemon.host, daemon.port, ["u@example.test", "x@elsewhere.example"], MESSAGE
        )
        assert refused == {"x@elsewhere.example": (550, b"5.7.1 Relaying denied")}
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0
    assert bodies_in(daemon.var_dir, "example.test", "u") == [MESSAGE]
    assert len(all_messages(daemon.var_dir)) == 1
    log = daemon.log_text()
    assert "outcome=accepted" in log
    assert "stopped" in log


async def test_sigint_also_drains_and_exits_zero(start_daemon: StartDaemon) -> None:
    with trio.fail_after(CAP):
        daemon = await start_daemon()
        idle = await daemon.greeted()
        daemon.signal(signal.SIGINT)
        assert await idle.read_to_eof() == replies.SHUTDOWN
        assert await daemon.wait_exit() == 0


async def test_sighup_with_a_broken_config_keeps_running(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    conf = write_conf(tmp_path / "conf", "[limits]\nmax_recipients = 5\n")
    with trio.fail_after(CAP):
        daemon = await start_daemon(conf)
        write_conf(conf, "[limits]\nmax_recipients = -1\n")
        daemon.signal(signal.SIGHUP)
        # Another process's log file: nothing to await but the file itself.
        while "reload refused" not in daemon.log_text():  # noqa: ASYNC110
            await trio.sleep(0.02)
        assert "max_recipients" in daemon.log_text()
        refused = await trio.to_thread.run_sync(
            _send, daemon.host, daemon.port, ["u@example.test"], MESSAGE
        )
        assert refused == {}
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0
    assert bodies_in(daemon.var_dir, "example.test", "u") == [MESSAGE]


async def test_run_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(CAP):
            result = await trio.run_process(
                daemon_command("run", "--config", str(REPO / "conf"), "--listen",
                               f"127.0.0.1:{port}", "--var-dir", str(tmp_path / "var")),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"trio-mta: " in result.stderr
    assert b"in use" in result.stderr
    # One line naming the listener that could not bind, not a traceback (start-up log lines,
    # such as the first-run TLS certificate's, come before it).
    lines = result.stderr.decode().splitlines()
    assert "Traceback (most recent call last):" not in lines
    assert [line for line in lines if not re.match(r"\d{4}-\d\d-\d\dT", line)] == [
        f"trio-mta: [Errno 98] listener 'mx' on 127.0.0.1:{port}: Address already in use"
    ]


async def test_run_with_a_broken_config_exits_1(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "conf", "[timeouts]\ncommand = 0\n")
    with trio.fail_after(CAP):
        result = await trio.run_process(
            daemon_command("run", "--config", str(conf), "--listen", "127.0.0.1:0"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == b""
    assert f"{conf / 'trio-mta.toml'}: timeouts.command: ".encode() in result.stderr


async def test_check_reports_file_and_key_of_every_problem(tmp_path: Path) -> None:
    conf = write_conf(
        tmp_path / "conf",
        '[server]\nhostname = "bad host"\n[limits]\nmax_connections = 0\n',
    )
    with trio.fail_after(CAP):
        result = await trio.run_process(
            daemon_command("check", "--config", str(conf)),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    errors = result.stderr.decode().splitlines()
    file = str(conf / "trio-mta.toml")
    assert [line.split(": ")[:2] for line in errors] == [
        [file, "server.hostname"],
        [file, "limits.max_connections"],
    ]


async def test_check_accepts_the_shipped_conf() -> None:
    with trio.fail_after(CAP):
        result = await trio.run_process(
            daemon_command("check", "--config", str(REPO / "conf")),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith("configuration OK")
    assert result.stderr == b""


async def test_check_of_a_missing_directory_fails(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        result = await trio.run_process(
            daemon_command("check", "--config", str(tmp_path / "nope")),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert str(tmp_path / "nope").encode() in result.stderr


async def test_run_with_a_plugin_that_cannot_start_exits_1_with_one_line(tmp_path: Path) -> None:
    plugins = tmp_path / "myplugins"
    plugins.mkdir()
    (plugins / "broken_start.py").write_text(
        "from trio_mta import hooks\n\n"
        "class Plugin(hooks.Plugin):\n"
        "    async def startup(self) -> None:\n"
        "        raise RuntimeError('no database at /nowhere')\n"
    )
    conf = write_conf(
        tmp_path / "conf",
        f'[plugins]\norder = ["broken_start"]\ndirectories = ["{plugins}"]\n'
        "[admin]\nenabled = false\n",
    )
    with trio.fail_after(CAP):
        result = await trio.run_process(
            daemon_command("run", "--config", str(conf), "--listen", "127.0.0.1:0",
                           "--var-dir", str(tmp_path / "var")),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert "Traceback (most recent call last):" not in lines
    assert [line for line in lines if not re.match(r"\d{4}-\d\d-\d\dT", line)] == [
        "trio-mta: plugin 'broken_start' failed to start: no database at /nowhere"
    ]
