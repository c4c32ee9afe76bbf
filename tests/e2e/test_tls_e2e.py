"""TLS with the daemon as a subprocess: the shipped configuration works out of the box (a
self-signed certificate made on first run, reused after), and SIGHUP swaps certificates."""

from __future__ import annotations

import signal
import smtplib
import ssl
from pathlib import Path

import trio
import trustme

from .confdaemon import CAP, shipped_conf, unverified
from .confdaemon import ConfDaemon as TlsDaemon
from .confdaemon import daemons as daemons  # the fixture
from .confdaemon import start as _start
from .confdaemon import stop as _stop

_unverified = unverified


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
    conf = shipped_conf(tmp_path / "conf")
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
