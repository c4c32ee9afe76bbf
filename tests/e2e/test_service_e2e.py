"""Running as a service: systemd readiness over $NOTIFY_SOCKET (a Unix datagram socket bound
here), and [server] user: bind as root, then run as that user with var_dir still writable, or
refuse with one clear line."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO
from trio_mta.ops import sd_notify

from .confdaemon import CAP, ConfDaemon, start, stop
from .confdaemon import daemons as daemons  # the fixture
from .conftest import daemon_command, write_conf

CONF = """
[[listener]]
name = "mx"
listen = "127.0.0.1:0"

[plugins]
order = ["rcpt_to_host_list", "queue_discard"]

[admin]
enabled = false
"""


async def _datagram(sock: trio.socket.SocketType) -> str:
    with trio.fail_after(CAP):
        return (await sock.recv(4096)).decode()


async def test_readiness_reload_and_stopping_are_told_to_systemd(
    daemons: list[ConfDaemon], tmp_path: Path
) -> None:
    conf = write_conf(tmp_path / "conf", CONF)
    path = tmp_path / "notify.sock"
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        await sock.bind(str(path))
        env = {**os.environ, "NOTIFY_SOCKET": str(path)}
        daemon = await start(daemons, conf, tmp_path / "var", tmp_path / "d.log", env=env)
        # The ready line on stdout came first: READY=1 is sent once mail can flow.
        assert await _datagram(sock) == "READY=1\nSTATUS=accepting mail"
        daemon.process.send_signal(signal.SIGHUP)
        reloading = await _datagram(sock)
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert int(reloading.rpartition("=")[2]) > 0
        assert await _datagram(sock) == "READY=1\nSTATUS=accepting mail"
        daemon.process.send_signal(signal.SIGTERM)
        assert await _datagram(sock) == "STOPPING=1\nSTATUS=draining"
        with trio.fail_after(CAP):
            assert await daemon.process.wait() == 0


def test_sd_notify_abstract_socket_and_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"trio-mta-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", "@nobody-listens-" + name)
    assert not sd_notify("READY=1")  # advisory: never raises
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sd_notify("READY=1")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can traverse (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="trio-mta-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


# Development tools in the venv the daemon never imports: left out of the copy.
_NOT_RUNTIME = {"pip", "setuptools", "mypy", "mypyc", "pygments", "hypothesis", "_pytest", "grimp"}


def _readable_copy_of_the_code(into: Path) -> str:
    """Copies of trio_mta, plugins and the venv's libraries under ``into``: a PYTHONPATH."""
    src, libs = into / "src", into / "libs"
    for package in ("trio_mta", "plugins"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    site = Path(trio.__file__).parent.parent

    def skip(directory: str, names: list[str]) -> set[str]:
        if Path(directory) != site:
            return {"__pycache__"} & set(names)
        return {n for n in names if n in _NOT_RUNTIME or "mypyc" in n or n.startswith("__")}

    shutil.copytree(site, libs, ignore=skip)
    return f"{src}{os.pathsep}{libs}"


def _uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def _send(port: int) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        return smtp.sendmail("a@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")


async def test_privileges_are_dropped_after_binding(
    daemons: list[ConfDaemon], shared_dir: Path
) -> None:
    # After the switch the daemon still reads code (plugins, lazy imports), as from an installed
    # package anyone may read. The checkout and its venv may be where nobody can read (CI's
    # clone under /root): the daemon runs from copies nobody can read (PYTHONPATH comes first).
    env = {**os.environ, "PYTHONPATH": _readable_copy_of_the_code(shared_dir / "code")}
    conf = write_conf(shared_dir / "conf", '[server]\nuser = "nobody"\n' + CONF)
    var = shared_dir / "var"
    if os.geteuid() != 0:  # what an operator who forgot to start it as root is told
        with trio.fail_after(CAP):
            done = await trio.run_process(
                daemon_command("run", "--config", str(conf), "--var-dir", str(var)),
                capture_stderr=True,
                check=False,
            )
        assert done.returncode == 1
        assert "[server] user = 'nobody' needs the daemon started as root" in done.stderr.decode()
        return
    nobody = pwd.getpwnam("nobody").pw_uid
    daemon = await start(daemons, conf, var, shared_dir / "daemon.log", env=env)
    assert _uids(daemon.process.pid) == [nobody] * 4  # real, effective, saved, filesystem
    with trio.fail_after(CAP):
        assert await trio.to_thread.run_sync(_send, daemon.addresses["mx"]) == {}
    # Everything it made after the drop is the user's: the spool, the control socket...
    for name in ("queue", "tmp", "control.sock", "trio-mta.lock"):
        assert (var / name).stat().st_uid == nobody, name
    assert "running as nobody:" in daemon.log_text()
    await stop(daemon)

    # A state directory left by a root run: refused with one line saying what to do.
    root_owned = shared_dir / "var2"
    (root_owned / "queue").mkdir(parents=True)
    with trio.fail_after(CAP):
        done = await trio.run_process(
            daemon_command("run", "--config", str(conf), "--var-dir", str(root_owned)),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 1
    assert done.stdout == b""
    [line] = [x for x in done.stderr.decode().splitlines() if x.startswith("trio-mta: ")]
    assert line == (
        f"trio-mta: running as nobody:{_group(nobody)}, but {root_owned / 'queue'} is not"
        f" writable by it: chown -R nobody:{_group(nobody)} {root_owned}"
    )


def _group(uid: int) -> str:
    import grp

    return grp.getgrgid(pwd.getpwuid(uid).pw_gid).gr_name
