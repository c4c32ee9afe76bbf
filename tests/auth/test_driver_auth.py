"""AUTH through the driver, over memory streams: when it is offered, the exchanges, the
verdicts, and the failure tarpit at exact virtual times."""

from __future__ import annotations

import logging
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_mta.config import Config
from trio_mta.server._auth import AuthFailures

from .kit import USERS, auth_config, b64, cram_response, plain, start

CAP = 10_000  # virtual seconds
ALICE = "alice@example.test"
ALICE_PW = USERS[ALICE]


async def test_not_offered_before_tls_and_refused_with_538(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path))
        keywords = await h.ehlo()
        assert not any(k.startswith("AUTH") for k in keywords)
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 538, "5.7.11")
        await h.client.command("AUTH LOGIN", 538, "5.7.11")
        assert h.session.auth_user is None


async def test_offered_and_accepted_over_tls(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path), tls="TLSv1.3")
        assert "AUTH PLAIN LOGIN CRAM-MD5" in await h.ehlo()
        answer = await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 235, "2.7.0")
        assert answer.lines == ("2.7.0 Authentication successful",)
    assert h.session.auth_user == ALICE
    assert h.session.relaying
    assert h.session.notes["auth_mechanism"] == "PLAIN"


async def test_plaintext_allowed_by_the_listener(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path, plaintext=True))
        assert "AUTH PLAIN LOGIN CRAM-MD5" in await h.ehlo()
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 235, "2.7.0")


@pytest.mark.parametrize(
    ("order", "listener_auth"),
    [(("rcpt_to_host_list", "queue_discard"), True), (("secrets_auth", "queue_discard"), False)],
    ids=["no-auth-plugin", "listener-auth-off"],
)
async def test_not_available_is_502(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    order: tuple[str, ...],
    listener_auth: bool,
) -> None:
    config = auth_config(tmp_path, order=order, listener_auth=listener_auth, plaintext=True)
    with trio.fail_after(CAP):
        h = await start(nursery, config, tls="TLSv1.3")
        assert not any(k.startswith("AUTH") for k in await h.ehlo())
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 502, "5.5.1")


async def test_cram_md5_only_when_every_backend_can(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    order = ("plain_only_auth", "secrets_auth", "rcpt_to_host_list", "queue_discard")
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path, order=order), tls="TLSv1.3")
        keywords = await h.ehlo()
        assert "AUTH PLAIN LOGIN" in keywords
        assert not any("CRAM-MD5" in k for k in keywords)
        await h.client.command("AUTH CRAM-MD5", 504, "5.5.4")
        await h.client.command("AUTH SCRAM-SHA-256", 504, "5.5.4")
        # The plain-only plugin says CONT for everybody, the next one knows alice.
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 235, "2.7.0")


async def test_cram_md5_exchange(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path), tls="TLSv1.3")
        await h.ehlo()
        challenge = (await h.client.command("AUTH CRAM-MD5", 334)).lines[0]
        await h.client.command(cram_response(challenge, "bob", "wrong"), 535, "5.7.8")
        challenge2 = (await h.client.command("AUTH CRAM-MD5", 334)).lines[0]
        assert challenge2 != challenge  # a fresh challenge each time
        await h.client.command(cram_response(challenge2, "bob", USERS["bob"]), 235, "2.7.0")
    assert h.session.auth_user == "bob"


async def test_plain_and_login_with_and_without_initial_responses(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    steps = [
        [f"AUTH PLAIN {plain('bob', USERS['bob'])}"],
        ["AUTH PLAIN", plain("bob", USERS["bob"])],
        ["AUTH LOGIN", b64("bob"), b64(USERS["bob"])],
        [f"AUTH LOGIN {b64('bob')}", b64(USERS["bob"])],
    ]
    for index, lines in enumerate(steps):
        with trio.fail_after(CAP):
            config = auth_config(tmp_path / str(index), plaintext=True)
            h = await start(nursery, config)
            await h.ehlo()
            for line in lines[:-1]:
                await h.client.command(line, 334)
            await h.client.command(lines[-1], 235, "2.7.0")
            await h.client.command("AUTH PLAIN =", 503, "5.5.1")  # already authenticated
            await h.client.command("QUIT", 221)
        assert h.session.auth_user == "bob", lines


async def test_cancel_and_bad_base64_end_the_exchange(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path, plaintext=True))
        await h.ehlo()
        await h.client.command("AUTH LOGIN", 334)
        await h.client.command("*", 501, "5.0.0")
        await h.client.command("NOOP", 250)  # back to commands
        await h.client.command("AUTH PLAIN", 334)
        await h.client.command("not base64!", 501, "5.5.2")
        await h.client.command("AUTH PLAIN %%%", 501, "5.5.2")
        await h.client.command(f"AUTH LOGIN {b64('bob')}", 334)
        await h.client.command("*", 501, "5.0.0")
        await h.client.command("AUTH PLAIN =", 501, "5.5.2")  # empty: malformed PLAIN
        # None of those was a failed password: the first wrong one is answered at once.
        before = trio.current_time()
        await h.client.command(f"AUTH PLAIN {plain('bob', 'nope')}", 535, "5.7.8")
        assert trio.current_time() == before
        await h.client.command(f"AUTH PLAIN {plain('bob', USERS['bob'])}", 235, "2.7.0")


async def test_wrong_passwords_are_tarpitted_with_growing_delays_then_421(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    limits = {"max_failures": 6, "failure_delay": 1.0, "max_failure_delay": 4.0}
    config = auth_config(tmp_path, plaintext=True, auth=limits)
    delays = []
    with trio.fail_after(CAP):
        h = await start(nursery, config)
        await h.ehlo()
        for _ in range(5):
            before = trio.current_time()
            await h.client.command(f"AUTH PLAIN {plain(ALICE, 'guess')}", 535, "5.7.8")
            delays.append(trio.current_time() - before)
        before = trio.current_time()
        last = await h.client.command(f"AUTH PLAIN {plain(ALICE, 'guess')}", 421, "4.7.0")
        delays.append(trio.current_time() - before)
        await h.client.expect_eof()
    assert delays == [0.0, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert "Too many failed authentication attempts" in last.text
    assert h.driver.close_reason.startswith("closed by 421")


async def test_failures_are_remembered_across_connections_for_the_window(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    limits = {"max_failures": 3, "failure_window": 600.0, "failure_delay": 2.0}
    config = auth_config(tmp_path, plaintext=True, auth=limits)
    failures = AuthFailures(config.auth)
    with trio.fail_after(CAP):
        first = await start(nursery, config, failures=failures)
        await first.ehlo()
        await first.client.command(f"AUTH PLAIN {plain('bob', 'x')}", 535)
        await first.client.command("QUIT", 221)
        second = await start(nursery, config, failures=failures)
        await second.ehlo()
        before = trio.current_time()
        await second.client.command(f"AUTH PLAIN {plain('bob', 'y')}", 535)
        assert trio.current_time() - before == 2.0  # the second failure of this address
        await second.client.command(f"AUTH PLAIN {plain('bob', 'z')}", 421, "4.7.0")
        await second.client.expect_eof()
        blocked_at = trio.current_time()
        # Blocked: even the right password is not tried, and nothing is waited for.
        third = await start(nursery, config, failures=failures)
        await third.ehlo()
        await third.client.command(f"AUTH PLAIN {plain('bob', USERS['bob'])}", 421, "4.7.0")
        assert trio.current_time() == blocked_at
        assert third.session.auth_user is None
        # Another address is not affected.
        other = await start(nursery, config, failures=failures, ip="198.51.100.7")
        await other.ehlo()
        await other.client.command(f"AUTH PLAIN {plain('bob', USERS['bob'])}", 235)
        # Once the window has passed since the last failure, the address may try again.
        await trio.sleep(600.0)
        fourth = await start(nursery, config, failures=failures)
        await fourth.ehlo()
        await fourth.client.command(f"AUTH PLAIN {plain('bob', 'w')}", 535)
        assert trio.current_time() == blocked_at + 600.0  # a first failure again: no delay
        await fourth.client.command(f"AUTH PLAIN {plain('bob', USERS['bob'])}", 235)


@pytest.mark.parametrize(
    ("mode", "code", "enhanced"),
    [("soft", 454, "4.7.0"), ("raise", 454, "4.7.0"), ("cont", 535, "5.7.8")],
)
async def test_backend_verdicts(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    mode: str,
    code: int,
    enhanced: str,
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path, plaintext=True, mode=mode))
        await h.ehlo()
        for _ in range(2):
            before = trio.current_time()
            await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", code, enhanced)
            elapsed = trio.current_time() - before
        # A temporary failure is not a wrong password: not counted, never delayed.
        assert elapsed == (0.0 if code == 454 else 1.0)
    assert h.session.auth_user is None
    assert not h.session.relaying


async def test_auth_sequence_rules(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path, plaintext=True))
        await h.client.expect(220)
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 503, "5.5.1")  # no EHLO
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<x@example.org>", 250)
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 503, "5.5.1")
        await h.client.command("RSET", 250)
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 235)
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 503, "5.5.1")


async def test_secrets_never_reach_the_log(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-pa55word"
    with trio.fail_after(CAP):
        h = await start(nursery, auth_config(tmp_path, plaintext=True))
        await h.ehlo()
        await h.client.command(f"AUTH PLAIN {plain(ALICE, wrong)}", 535)
        await h.client.command("AUTH LOGIN", 334)
        await h.client.command(b64(ALICE), 334)
        await h.client.command(b64(ALICE_PW), 235)
        await h.client.command("QUIT", 221)
    text = caplog.text
    assert "AUTH failed user='alice@example.test' mechanism=PLAIN" in text
    assert "authenticated user='alice@example.test' mechanism=LOGIN" in text
    for secret in (wrong, ALICE_PW, plain(ALICE, wrong), b64(ALICE_PW)):
        assert secret not in text
        for record in caplog.records:
            assert secret not in repr(record.args)


def _timeouts(config: Config, command: float) -> Config:
    return attrs.evolve(config, timeouts=attrs.evolve(config.timeouts, command=command))


async def test_each_continuation_line_has_the_command_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = _timeouts(auth_config(tmp_path, plaintext=True), 11)
    with trio.fail_after(CAP):
        h = await start(nursery, config)
        await h.ehlo()
        await h.client.command("AUTH LOGIN", 334)
        await trio.sleep(10)
        await h.client.command(b64("bob"), 334)
        await trio.sleep(10)
        await h.client.command(b64(USERS["bob"]), 235, "2.7.0")
    assert h.session.auth_user == "bob"


async def test_trickled_continuation_line_is_cut_at_the_command_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = _timeouts(auth_config(tmp_path, plaintext=True), 11)
    with trio.fail_after(CAP):
        h = await start(nursery, config)
        await h.ehlo()
        await h.client.command("AUTH LOGIN", 334)
        asked = trio.current_time()
        line = (b64("bob") + "\r\n").encode()

        async def trickle() -> None:
            for i in range(len(line)):
                await trio.sleep(3)
                await h.client.send(line[i : i + 1])

        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            answer = await h.client.reply()
            inner.cancel_scope.cancel()
        assert answer.code == 421
        assert answer.raw.endswith(b"Timeout (command), closing\r\n")
        assert trio.current_time() == asked + 11
        await h.client.expect_eof()
    assert h.session.auth_user is None


@pytest.mark.parametrize(
    ("ip", "exempt", "tarpitted"),
    [
        ("127.0.0.1", None, False),  # the default exemptions: loopback
        ("::1", None, False),
        ("192.0.2.10", None, True),
        ("127.0.0.2", ("127.0.0.1/32",), True),  # exemptions narrowed: loopback is no pass
    ],
)
async def test_failure_tarpit_spares_exempt_networks(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    ip: str,
    exempt: tuple[str, ...] | None,
    tarpitted: bool,
) -> None:
    config = auth_config(tmp_path, plaintext=True, auth={"max_failures": 3})
    if exempt is not None:
        limits = attrs.evolve(config.limits, exempt_networks=exempt)
        config = attrs.evolve(config, limits=limits)
    with trio.fail_after(CAP):
        h = await start(nursery, config, ip=ip)
        await h.ehlo()
        started = trio.current_time()
        if tarpitted:
            await h.client.command(f"AUTH PLAIN {plain(ALICE, 'nope')}", 535)
            await h.client.command(f"AUTH PLAIN {plain(ALICE, 'nope')}", 535)
            await h.client.command(f"AUTH PLAIN {plain(ALICE, 'nope')}", 421, "4.7.0")
            assert trio.current_time() > started
            return
        for _ in range(10):  # a local test harness getting a password wrong, repeatedly
            await h.client.command(f"AUTH PLAIN {plain(ALICE, 'nope')}", 535, "5.7.8")
        assert trio.current_time() == started  # never delayed
        await h.client.command(f"AUTH PLAIN {plain(ALICE, ALICE_PW)}", 235)
