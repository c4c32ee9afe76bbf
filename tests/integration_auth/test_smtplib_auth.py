"""Python's smtplib against real listeners: ``login()`` over a plaintext-allowed listener, over
STARTTLS and over implicit TLS; PLAIN and LOGIN with and without initial responses; wrong
passwords; the submission policy; relaying; and no secret in the logs."""

from __future__ import annotations

import base64
import logging
import smtplib
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio

from tests.helpers.maildir import all_messages

from .conftest import USERS, AuthMTA

CAP = 20  # seconds, real time
ALICE = "alice@example.test"
MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"
T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    with trio.fail_after(CAP):
        return await trio.to_thread.run_sync(fn)


def smtp(mta: AuthMTA, name: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", mta.port(name), local_hostname="client.example", timeout=10)
    client.ehlo()
    return client


async def test_login_over_a_plaintext_allowed_listener(auth_mta: AuthMTA) -> None:
    def session() -> tuple[str, tuple[int, bytes], dict[str, tuple[int, bytes]]]:
        with smtp(auth_mta, "plain") as client:
            offered = client.esmtp_features["auth"]
            answer = client.login(ALICE, USERS[ALICE])  # PLAIN, with an initial response
            refused = client.sendmail(ALICE, ["friend@other.example"], MESSAGE)
            return offered, answer, refused

    offered, answer, refused = await in_thread(session)
    assert offered.split() == ["PLAIN", "LOGIN"]  # no CRAM-MD5 with hashed passwords
    assert answer == (235, b"2.7.0 Authentication successful")
    assert refused == {}  # relayed (to queue_outbound, where queue_discard takes it)


@pytest.mark.parametrize(
    ("mechanism", "initial"),
    [("PLAIN", True), ("PLAIN", False), ("LOGIN", True), ("LOGIN", False)],
)
async def test_mechanisms_with_and_without_initial_response(
    auth_mta: AuthMTA, mechanism: str, initial: bool
) -> None:
    def session() -> tuple[int, bytes]:
        with smtp(auth_mta, "plain") as client:
            client.user, client.password = "bob", USERS["bob"]
            method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            return client.auth(mechanism, method, initial_response_ok=initial)

    assert await in_thread(session) == (235, b"2.7.0 Authentication successful")


async def test_wrong_password_is_535_5_7_8(auth_mta: AuthMTA) -> None:
    def session() -> smtplib.SMTPAuthenticationError:
        with smtp(auth_mta, "plain") as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                client.login(ALICE, "not-the-password")
            return info.value

    error = await in_thread(session)
    assert (error.smtp_code, error.smtp_error) == (535, b"5.7.8 Authentication credentials invalid")


async def test_login_after_starttls_on_submission(auth_mta: AuthMTA) -> None:
    context = auth_mta.certs.client_context()

    def session() -> tuple[bool, tuple[int, bytes], dict[str, tuple[int, bytes]]]:
        with smtp(auth_mta, "submission") as client:
            before = client.has_extn("auth")
            client.starttls(context=context)
            client.ehlo()
            answer = client.login(ALICE, USERS[ALICE])
            refused = client.sendmail(ALICE, ["u@example.test", "x@other.example"], MESSAGE)
            return before, answer, refused

    auth_before_tls, answer, refused = await in_thread(session)
    assert not auth_before_tls
    assert answer[0] == 235
    assert refused == {}


async def test_login_over_implicit_tls(auth_mta: AuthMTA) -> None:
    context = auth_mta.certs.client_context()

    def session() -> tuple[str, tuple[int, bytes]]:
        with smtplib.SMTP_SSL(
            "127.0.0.1",
            auth_mta.port("smtps"),
            local_hostname="client.example",
            timeout=10,
            context=context,
        ) as client:
            client.ehlo()
            offered = client.esmtp_features["auth"]
            answer = client.login("bob", USERS["bob"])
            client.sendmail("bob@localhost", ["someone@other.example"], MESSAGE)
            return offered, answer

    offered, answer = await in_thread(session)
    assert offered.split() == ["PLAIN", "LOGIN"]
    assert answer[0] == 235


async def test_auth_before_tls_is_refused_with_538(auth_mta: AuthMTA) -> None:
    for name in ("submission", "mx"):
        client = await auth_mta.connect(name)
        await client.expect(220)
        ehlo = await client.command("EHLO client.example", 250)
        assert "STARTTLS" in ehlo.lines
        assert not any(line.startswith("AUTH") for line in ehlo.lines)
        await client.command("AUTH PLAIN AGFsaWNlAHB3", 538, "5.7.11")
        await client.command("QUIT", 221)


async def test_mail_before_auth_on_submission_is_530(auth_mta: AuthMTA) -> None:
    context = auth_mta.certs.client_context()

    def session() -> smtplib.SMTPSenderRefused:
        with smtp(auth_mta, "submission") as client:
            client.starttls(context=context)
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                client.sendmail(ALICE, ["u@example.test"], MESSAGE)
            return info.value

    error = await in_thread(session)
    assert (error.smtp_code, error.smtp_error) == (530, b"5.7.0 Authentication required")


async def test_sender_must_be_the_users(auth_mta: AuthMTA) -> None:
    def session() -> smtplib.SMTPSenderRefused:
        with smtp(auth_mta, "plain") as client:
            client.login(ALICE, USERS[ALICE])
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                client.sendmail("boss@example.test", ["u@example.test"], MESSAGE)
            return info.value

    error = await in_thread(session)
    assert (error.smtp_code, error.smtp_error) == (553, b"5.7.1 Sender address not owned by user")


async def test_relay_needs_auth_on_mx(auth_mta: AuthMTA) -> None:
    context = auth_mta.certs.client_context()

    def session(login: bool) -> dict[str, tuple[int, bytes]]:
        with smtp(auth_mta, "mx") as client:
            client.starttls(context=context)
            client.ehlo()
            if login:
                client.login("bob", USERS["bob"])
            try:
                return client.sendmail("bob@example.test", ["x@other.example"], MESSAGE)
            except smtplib.SMTPRecipientsRefused as exc:
                return exc.recipients

    refused = await in_thread(lambda: session(False))
    assert refused == {"x@other.example": (550, b"5.7.1 Relaying denied")}
    assert await in_thread(lambda: session(True)) == {}
    assert all_messages(auth_mta.var_dir) == []  # relayed mail went to queue_outbound


async def test_no_secret_in_logs(auth_mta: AuthMTA, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    context = auth_mta.certs.client_context()

    def session() -> None:
        with smtp(auth_mta, "submission") as client:
            client.starttls(context=context)
            client.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login(ALICE, "Wr0ng-Secret")
            client.user, client.password = ALICE, USERS[ALICE]
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
            client.sendmail(ALICE, ["u@example.test"], MESSAGE)

    await in_thread(session)
    assert "authenticated user='alice@example.test' mechanism=LOGIN" in caplog.text
    for secret in ("Wr0ng-Secret", USERS[ALICE]):
        assert secret not in caplog.text
        assert base64.b64encode(secret.encode()).decode() not in caplog.text
