"""TLS with the daemon as a subprocess: the shipped configuration works out of the box (a
self-signed certificate made on first run, reused after), and SIGHUP swaps certificates."""

from __future__ import annotations

import shutil
import signal
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trustme

from tests.conftest import REPO

from .conftest import daemon_command

CAP = 30  # seconds, real time


@attrs.define
class TlsDaemon:
    process: trio.Process
    addresses: dict[str, int]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace")


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[list[TlsDaemon]]:
    started: list[TlsDaemon] = []
    yield started
    for daemon in started:
        if daemon.process.returncode is None:
            daemon.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await daemon.process.wait()
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.process.wait()


async def _start(daemons: list[TlsDaemon], config_dir: Path, var_dir: Path, log: Path) -> TlsDaemon:
    """The daemon on the listeners its configuration names (no --listen override)."""
    args = ["run", "--config", str(config_dir), "--var-dir", str(var_dir)]
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            daemon_command(*args),
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            cwd=str(log.parent),
        )
    daemon = TlsDaemon(process, {}, log)
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


async def _stop(daemon: TlsDaemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    with trio.fail_after(CAP):
        assert await daemon.process.wait() == 0


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _implicit_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=ctx) as smtp:
        assert smtp.ehlo()[0] == 250
        assert not smtp.has_extn("starttls")
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der


def _starttls_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        smtp.starttls(context=ctx)
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der


def _der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


async def test_shipped_conf_runs_out_of_the_box_with_a_generated_certificate(
    daemons: list[TlsDaemon], tmp_path: Path
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    toml = conf / "trio-mta.toml"
    text = toml.read_text()
    for port in ("2525", "5587", "5465"):
        assert f'listen = "127.0.0.1:{port}"' in text
        text = text.replace(f'listen = "127.0.0.1:{port}"', 'listen = "127.0.0.1:0"')
    toml.write_text(text)
    var = tmp_path / "var"
    daemon = await _start(daemons, conf, var, tmp_path / "first.log")
    assert set(daemon.addresses) == {"mx", "submission", "smtps"}
    pem = var / "tls" / "selfsigned-localhost.pem"
    assert pem.is_file()
    assert f"generated a self-signed certificate for localhost at {pem}" in daemon.log_text()
    with trio.fail_after(CAP):
        implicit = await trio.to_thread.run_sync(
            _implicit_cert, daemon.addresses["smtps"], _unverified()
        )
        for name in ("mx", "submission"):
            der = await trio.to_thread.run_sync(
                _starttls_cert, daemon.addresses[name], _unverified()
            )
            assert der == implicit
    assert implicit == _der(pem)
    await _stop(daemon)
    # The second run reuses the certificate of the first.
    before = pem.read_bytes()
    again = await _start(daemons, conf, var, tmp_path / "second.log")
    with trio.fail_after(CAP):
        der = await trio.to_thread.run_sync(_implicit_cert, again.addresses["smtps"], _unverified())
    assert der == _der(pem)
    assert pem.read_bytes() == before
    assert "generated" not in again.log_text()
    await _stop(again)


SIGHUP_CONF = """
[[listener]]
name = "smtps"
listen = "127.0.0.1:0"
kind = "smtps"

[tls]
cert = "server.pem"
key = "server.key"
generate_self_signed = false
"""


def _issue(ca: trustme.CA, conf: Path) -> bytes:
    leaf = ca.issue_cert("127.0.0.1", "mail.example.test")
    (conf / "server.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(conf / "server.key"))
    return _der(conf / "server.pem")


async def test_sighup_swaps_the_certificate(daemons: list[TlsDaemon], tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "trio-mta.toml").write_text(SIGHUP_CONF)
    ca = trustme.CA()
    first = _issue(ca, conf)
    verified = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    daemon = await _start(daemons, conf, tmp_path / "var", tmp_path / "daemon.log")
    port = daemon.addresses["smtps"]
    with trio.fail_after(CAP):
        assert await trio.to_thread.run_sync(_implicit_cert, port, verified) == first
        second = _issue(ca, conf)
        daemon.process.send_signal(signal.SIGHUP)
        while "tls reload: new certificates" not in daemon.log_text():  # noqa: ASYNC110
            await trio.sleep(0.05)
        assert await trio.to_thread.run_sync(_implicit_cert, port, verified) == second
    assert second != first
    await _stop(daemon)
