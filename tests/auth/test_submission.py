"""Submission policy through the driver: AUTH before MAIL on submission listeners, the sender
constraint, and relaying for authenticated clients only."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from trio_mta.config import ListenerKind

from .kit import USERS, AuthHarness, auth_config, plain, start

CAP = 10_000
ALICE = "alice@example.test"


async def login(h: AuthHarness, user: str) -> None:
    await h.ehlo()
    await h.client.command(f"AUTH PLAIN {plain(user, USERS[user])}", 235, "2.7.0")


@pytest.mark.parametrize("kind", [ListenerKind.SUBMISSION, ListenerKind.SMTPS])
async def test_mail_before_auth_is_530(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    kind: ListenerKind,
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path, kind=kind), tls="TLSv1.3")
        await h.ehlo()
        answer = await h.client.command(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")
        assert answer.lines == ("5.7.0 Authentication required",)
        await h.client.command("RCPT TO:<x@example.test>", 503)  # no transaction began
        await h.client.command(f"AUTH PLAIN {plain(ALICE, USERS[ALICE])}", 235)
        await h.client.command(f"MAIL FROM:<{ALICE}>", 250)


async def test_mx_listener_needs_no_auth(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path))
        await h.ehlo()
        await h.client.command("MAIL FROM:<stranger@other.example>", 250)
        await h.client.command("RCPT TO:<u@example.test>", 250)
        refused = await h.client.command("RCPT TO:<u@other.example>", 550, "5.7.1")
        assert refused.lines == ("5.7.1 Relaying denied",)


@pytest.mark.parametrize(
    ("user", "sender", "code"),
    [
        (ALICE, ALICE, 250),
        (ALICE, "alice@EXAMPLE.TEST", 250),
        (ALICE, "bob@example.test", 553),
        (ALICE, "alice@other.example", 553),
        (ALICE, "", 250),  # the null sender
        ("bob", "bob@example.test", 250),
        ("bob", "bob@localhost", 250),
        ("bob", "bob@other.example", 553),
        ("bob", "alice@example.test", 553),
    ],
)
async def test_sender_must_belong_to_the_user(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    user: str,
    sender: str,
    code: int,
) -> None:
    config = auth_config(tmp_path, kind=ListenerKind.SUBMISSION, plaintext=True)
    with trio.fail_after(CAP):
        h = await start(nursery, config)
        await login(h, user)
        answer = await h.client.command(f"MAIL FROM:<{sender}>", code)
        if code == 553:
            assert answer.lines == ("5.7.1 Sender address not owned by user",)


async def test_constrain_sender_off_allows_any_sender(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = auth_config(
        tmp_path,
        kind=ListenerKind.SUBMISSION,
        plaintext=True,
        auth={"constrain_sender": False},
    )
    with trio.fail_after(CAP):
        h = await start(nursery, config)
        await login(h, "bob")
        await h.client.command("MAIL FROM:<someone@other.example>", 250)


async def test_the_sender_constraint_holds_on_mx_listeners_too(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path), tls="TLSv1.3")
        await login(h, "bob")
        await h.client.command("MAIL FROM:<ceo@other.example>", 553, "5.7.1")


async def test_authenticated_clients_relay(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = auth_config(tmp_path, kind=ListenerKind.SUBMISSION, plaintext=True)
    with trio.fail_after(CAP):
        h = await start(nursery, config)
        await login(h, ALICE)
        final = await h.client.transaction(
            ALICE, ["friend@other.example", "u@example.test"], b"Subject: hi\r\n\r\nhi\r\n"
        )
        assert final.code == 250, final
    [plugin] = [p for p in h.handler.runner.plugins.plugins if p.name == "secrets_auth"]
    [relayed] = vars(plugin)["relayed"]  # set by the test plugin
    # RFC 3848: ESMTPA, the client authenticated (without TLS here)
    assert b"(trio-mta) with ESMTPA id" in relayed
    assert relayed.endswith(b"Subject: hi\r\n\r\nhi\r\n")


async def test_a_login_forgotten_by_the_protocol_is_forgotten_by_the_session(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # After STARTTLS the protocol layer forgets the login (RFC 3207 §4.2); the session, its
    # auth_user and its right to relay must follow.
    config = auth_config(tmp_path, kind=ListenerKind.SUBMISSION)
    with trio.fail_after(CAP):
        h = await start(nursery, config, tls="TLSv1.3")
        await login(h, ALICE)
        assert h.session.relaying
        h.driver.conn.authenticated = False  # what ServerConnection.start_tls() does
        h.session.auth_user = None  # and what the driver's STARTTLS does, but not relaying
        await h.client.command("EHLO again.example", 250)
        session = h.driver.session  # not narrowed by the asserts above
        assert session.auth_user is None
        assert not session.relaying
        await h.client.command(f"MAIL FROM:<{ALICE}>", 530, "5.7.0")
