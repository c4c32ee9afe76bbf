"""swaks with --tls (STARTTLS) and --tlsc (implicit TLS) and AUTH against real listeners."""

from __future__ import annotations

import shutil

import pytest
import trio

from .conftest import USERS, AuthMTA

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")
ALICE = "alice@example.test"


async def swaks(mta: AuthMTA, listener: str, tls: str, mechanism: str, password: str) -> str:
    assert SWAKS is not None
    argv = [
        SWAKS,
        "--server", "127.0.0.1",
        "--port", str(mta.port(listener)),
        tls,
        "--auth", mechanism,
        "--auth-user", ALICE,
        "--auth-password", password,
        "--from", ALICE,
        "--to", "friend@other.example",
        "--helo", "client.example",
        "--timeout", "10",
    ]  # fmt: skip
    with trio.fail_after(20):
        done = await trio.run_process(argv, capture_stdout=True, check=False)
    return done.stdout.decode()


@pytest.mark.parametrize(
    ("listener", "tls", "mechanism"),
    [
        ("submission", "--tls", "PLAIN"),
        ("submission", "--tls", "LOGIN"),
        ("smtps", "--tlsc", "PLAIN"),
    ],
)
async def test_swaks_authenticates_and_relays(
    auth_mta: AuthMTA, listener: str, tls: str, mechanism: str
) -> None:
    out = await swaks(auth_mta, listener, tls, mechanism, USERS[ALICE])
    assert "<~  235 2.7.0 Authentication successful" in out
    assert "<~  250 2.0.0" in out  # the relayed message was taken


async def test_swaks_wrong_password(auth_mta: AuthMTA) -> None:
    out = await swaks(auth_mta, "submission", "--tls", "PLAIN", "nope")
    assert "<~* 535 5.7.8 Authentication credentials invalid" in out
