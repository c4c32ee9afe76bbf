"""SNI: the certificate follows the name the client asks for (exact, then a one-level wildcard,
else the default), checked with real clients: openssl s_client, swaks and Python's ssl."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess

import pytest
import trio

from tests.helpers.smtp import LineClient

from .conftest import DEFAULT_NAME, ONE, WILDCARD, Certs, TlsMTA, common_name

CAP = 20  # seconds, real time
OPENSSL = shutil.which("openssl")
SWAKS = shutil.which("swaks")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")
_SUBJECT_CN = re.compile(r"^subject=.*\bCN ?= ?([^,\s]+)", re.MULTILINE)


async def _s_client_cn(port: int, certs: Certs, server_name: str | None) -> str:
    assert OPENSSL is not None
    argv = [OPENSSL, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{port}"]
    argv += ["-crlf", "-ign_eof", "-CAfile", str(certs.ca_file), "-verify_return_error"]
    argv += ["-servername", server_name] if server_name else ["-noservername"]
    with trio.fail_after(CAP):
        done = await trio.run_process(argv, stdin=b"QUIT\n", capture_stdout=True, check=False)
    out = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, out
    assert "221 2.0.0" in out, out  # the session went on over TLS to QUIT
    match = _SUBJECT_CN.search(out)
    assert match is not None, out
    return match.group(1)


@needs_openssl
@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        (ONE, ONE),
        ("ONE.Example.TEST", ONE),  # names are case-insensitive
        ("a.two.example.test", WILDCARD),
        ("x.y.two.example.test", DEFAULT_NAME),  # a wildcard covers one label only
        ("two.example.test", DEFAULT_NAME),  # ...and not the bare parent
        ("unknown.example.test", DEFAULT_NAME),
        (None, DEFAULT_NAME),
    ],
)
async def test_openssl_starttls_gets_the_sni_certificate(
    tls_mta: TlsMTA, certs: Certs, server_name: str | None, expected: str
) -> None:
    assert await _s_client_cn(tls_mta.port("mx"), certs, server_name) == expected


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [(ONE, ONE), ("b.two.example.test", WILDCARD), (DEFAULT_NAME, DEFAULT_NAME)],
)
async def test_implicit_tls_verifies_the_sni_certificate(
    tls_mta: TlsMTA, certs: Certs, server_name: str, expected: str
) -> None:
    """Full verification (chain and host name) of the certificate chosen for the name."""
    with trio.fail_after(CAP):
        raw: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", tls_mta.port("smtps"))
        tls = trio.SSLStream(raw, certs.client_context(), server_hostname=server_name)
        await tls.do_handshake()
        assert common_name(tls) == expected
        client = LineClient(tls)
        await client.expect(220)
        await client.command("QUIT", 221)


async def test_unknown_name_fails_verification_against_the_default(
    tls_mta: TlsMTA, certs: Certs
) -> None:
    """The fallback is really the default certificate, not a best effort that verifies."""
    with trio.fail_after(CAP):
        raw: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", tls_mta.port("smtps"))
        tls = trio.SSLStream(raw, certs.client_context(), server_hostname="nope.example.test")
        with pytest.raises(trio.BrokenResourceError) as caught:
            await tls.do_handshake()
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


def _swaks(*args: str) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    return subprocess.run(
        [SWAKS, "--helo", "client.example", "--timeout", "10", *args],
        capture_output=True,
        text=True,
        timeout=CAP,
        check=False,
    )


@needs_swaks
async def test_swaks_starttls_delivers(tls_mta: TlsMTA, certs: Certs) -> None:
    args = ["--server", f"127.0.0.1:{tls_mta.port('mx')}", "--tls"]
    args += ["--tls-verify", "--tls-ca-path", str(certs.ca_file), "--tls-sni", ONE]
    args += ["--from", "a@example.org", "--to", "swaks@example.test"]
    done = await trio.to_thread.run_sync(_swaks, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TLS started with cipher" in done.stdout, done.stdout
    assert re.search(r"<~  250 2\.0\.0 .*queued", done.stdout), done.stdout
    stored = list((tls_mta.var_dir / "maildir" / "example.test" / "swaks" / "new").iterdir())
    assert len(stored) == 1
    assert b" with ESMTPS id " in stored[0].read_bytes()


@needs_swaks
async def test_swaks_implicit_tls(tls_mta: TlsMTA, certs: Certs) -> None:
    args = ["--server", f"127.0.0.1:{tls_mta.port('smtps')}", "--tlsc"]
    args += ["--tls-verify", "--tls-ca-path", str(certs.ca_file), "--tls-sni", DEFAULT_NAME]
    args += ["--quit-after", "HELO"]
    done = await trio.to_thread.run_sync(_swaks, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TLS started with cipher" in done.stdout, done.stdout
    assert "<~  220 " in done.stdout  # the banner arrived over TLS
    assert "STARTTLS" not in done.stdout.split("EHLO", 1)[1]
