"""Relayed mail leaves through the queue: real dnsmasq, real aiosmtpd peers on 127.0.0.x."""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import threading
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from tests.integration_queue.conftest import StartQueueMTA
from tests.integration_queue.kit import Authenticator, Peer, PeerHandler, Received
from trio_mta.config import RouteConfig
from trio_mta.queue import Envelope as QueueEnvelope
from trio_mta.queue import GroupResult, Recipient, Route, SMTPDeliverer

BODY = (
    b"From: alice@sender.test\r\nSubject: queue test\r\nMessage-ID: <q1@sender.test>\r\n"
    b"\r\nHello.\r\n"
)
CAP = 20


def only(peer: Peer) -> Received:
    [got] = peer.received
    return got


def parts_of(message: email.message.Message) -> list[email.message.Message]:
    parts = message.get_payload()
    assert isinstance(parts, list)
    return [p for p in parts if isinstance(p, email.message.Message)]


def delivery_status(bounce: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    """The report's per-message block and per-recipient blocks (RFC 3464 §2)."""
    message = email.message_from_bytes(bounce, policy=email.policy.compat32)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = parts_of(message)
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    blocks = parts_of(parts[1])
    return blocks[0], blocks[1:]


async def test_delivery_by_mx_preference(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        for n in range(3):
            await mta.send("alice@sender.test", [f"bob{n}@pref.test"], BODY)
        await mta.wait_empty()
    assert len(peers["127.0.0.2"].received) == 3  # mx1, preference 10
    assert peers["127.0.0.3"].received == []  # mx2, preference 20
    got = peers["127.0.0.2"].received[0]
    assert got.sender == "alice@sender.test"
    assert b"Subject: queue test" in got.data
    assert got.data.startswith(b"Received: from client.test")  # our trace header went along


async def test_fallback_to_the_next_mx_when_one_is_down(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        await mta.send("alice@sender.test", ["bob@fallback.test"], BODY)
        await mta.wait_empty()
    assert only(peers["127.0.0.5"]).recipients == ("bob@fallback.test",)
    assert mta.queue.stats.delivered == 1


async def test_implicit_mx_uses_the_domains_own_address(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        await mta.send("alice@sender.test", ["bob@implicit.test", "carol@pref.test"], BODY)
        await mta.wait_empty()
    assert only(peers["127.0.0.6"]).recipients == ("bob@implicit.test",)
    assert only(peers["127.0.0.2"]).recipients == ("carol@pref.test",)


async def test_null_mx_bounces_at_once_to_the_sender(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        await mta.send("alice@sender.test", ["bob@nullmx.test"], BODY)
        await mta.wait_empty()
    bounce = only(peers["127.0.0.7"])
    assert bounce.sender == "<>" or not bounce.sender
    assert bounce.recipients == ("alice@sender.test",)
    _, [recipient] = delivery_status(bounce.data)
    assert recipient["Final-Recipient"] == "rfc822; bob@nullmx.test"
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.10"
    assert mta.queue.stats.attempts == 2  # the message, then its bounce: no retry


async def test_a_5xx_gives_one_rfc3464_bounce_to_the_senders_server(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        await mta.send("alice@sender.test", ["reject@pref.test", "bob@pref.test"], BODY)
        await mta.wait_empty()
    assert only(peers["127.0.0.2"]).recipients == ("bob@pref.test",)
    bounce = only(peers["127.0.0.7"])  # exactly one
    assert bounce.recipients == ("alice@sender.test",)
    per_message, [recipient] = delivery_status(bounce.data)
    assert per_message["Reporting-MTA"] == "dns; localhost"
    assert recipient["Final-Recipient"] == "rfc822; reject@pref.test"
    assert recipient["Status"] == "5.1.1"
    assert recipient["Remote-MTA"] == "dns; mx1.pref.test[127.0.0.2]"
    assert "550 5.1.1 No such user here" in recipient["Diagnostic-Code"]
    report = email.message_from_bytes(bounce.data, policy=email.policy.compat32)
    original = parts_of(report)[2]
    assert original.get_content_type() == "message/rfc822"  # small, no RET: the whole message
    assert b"Subject: queue test" in bounce.data
    assert b"Hello." in bounce.data
    assert report["Auto-Submitted"] == "auto-replied"


async def test_dsn_notify_never_and_ret_hdrs_are_honoured(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        await mta.send(
            "alice@sender.test", ["reject1@pref.test"], BODY, rcpt_params=" NOTIFY=NEVER"
        )
        await mta.wait_empty()
        assert peers["127.0.0.7"].received == []
        client_body = BODY.replace(b"q1@", b"q2@")
        await mta.send("alice@sender.test", ["reject2@pref.test"], client_body)
        await mta.wait_empty()
    assert len(peers["127.0.0.7"].received) == 1  # the second one bounced


async def test_ret_hdrs_returns_only_the_header_section(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    from tests.helpers.smtp import LineClient

    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        client = LineClient(await trio.open_tcp_stream(mta.host, mta.port))
        await client.expect(220)
        ehlo = await client.command("EHLO client.test", 250)
        assert "DSN" in ehlo.lines  # advertised now that a queue takes relayed mail
        await client.command("MAIL FROM:<alice@sender.test> RET=HDRS ENVID=env+2B1", 250)
        await client.command("RCPT TO:<reject@pref.test> ORCPT=rfc822;orig@pref.test", 250)
        await client.command("DATA", 354)
        await client.send(BODY + b".\r\n")
        await client.expect(250)
        await client.stream.aclose()
        await mta.wait_empty()
    bounce = only(peers["127.0.0.7"])
    per_message, [recipient] = delivery_status(bounce.data)
    assert per_message["Original-Envelope-Id"] == "env+1"
    assert recipient["Original-Recipient"] == "rfc822; orig@pref.test"
    assert b"text/rfc822-headers" in bounce.data
    assert b"Subject: queue test" in bounce.data
    assert b"Hello." not in bounce.data


@contextlib.contextmanager
def real_time_cap(seconds: float) -> Iterator[None]:
    """Cancel the block after ``seconds`` of real time (a timer thread), then fail."""
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:
        timer = threading.Timer(seconds, lambda: token.run_sync_soon(scope.cancel))
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        pytest.fail(f"not done within {seconds} s of real time")


class _Timed:
    """A deliverer that notes the (virtual) time of every attempt."""

    def __init__(self, inner: SMTPDeliverer) -> None:
        self.inner = inner
        self.times: list[float] = []

    async def deliver(
        self, route: Route, envelope: QueueEnvelope, recipients: object, message: bytes
    ) -> GroupResult:
        self.times.append(trio.current_time())
        assert isinstance(recipients, list)
        rcpts: list[Recipient] = recipients
        return await self.inner.deliver(route, envelope, rcpts, message)


async def test_a_4xx_is_retried_at_the_scheduled_time(
    start_queue_mta: StartQueueMTA,
    peers: dict[str, Peer],
    mock_clock: trio.testing.MockClock,
) -> None:
    with real_time_cap(CAP):  # the clock is virtual: a trio deadline would only see jumps
        mta = await start_queue_mta(retry_first=60.0)
        timed = _Timed(SMTPDeliverer(helo="localhost", connect_timeout=5))
        mta.queue.attempt.deliverer = timed
        t0 = trio.current_time()
        qid = await mta.send("alice@sender.test", ["defer@pref.test"], BODY)
        await mta.queue.wait_until(lambda: mta.queue.stats.attempts == 1)
        assert timed.times == [t0]
        assert peers["127.0.0.2"].received == []
        assert mta.queue.scheduler.due(qid) == t0 + 60  # the retry schedule's first step
        [recipient] = mta.queue.envelopes[qid].recipients
        assert (recipient.code, recipient.enhanced) == (451, "4.7.1")
        mock_clock.jump(59.5)
        await trio.testing.wait_all_tasks_blocked()
        assert timed.times == [t0]  # not yet
        mock_clock.jump(0.5)
        await mta.wait_empty()
    assert timed.times == [t0, t0 + 60]
    assert only(peers["127.0.0.2"]).recipients == ("defer@pref.test",)


async def test_smart_host_with_auth(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer], smtp_port: int
) -> None:
    auth = Authenticator("relay-user", "s3cret")
    smart = Peer.start(
        "127.0.0.9",
        smtp_port,
        PeerHandler("127.0.0.9"),
        authenticator=auth,
        auth_require_tls=False,
        auth_required=False,
    )
    try:
        route = RouteConfig(
            domain="*",
            host="127.0.0.9",
            auth_user="relay-user",
            auth_password="s3cret",
            auth_allow_plaintext=True,
        )
        with trio.fail_after(CAP):
            mta = await start_queue_mta(routes=(route,))
            # nullmx.test would bounce by DNS: the smart host route skips DNS altogether.
            await mta.send("alice@sender.test", ["bob@nullmx.test", "carol@pref.test"], BODY)
            await mta.wait_empty()
        got = only(smart)
        assert sorted(got.recipients) == ["bob@nullmx.test", "carol@pref.test"]
        assert auth.attempts == [b"relay-user"]
        assert all(not p.received for p in peers.values())
    finally:
        smart.stop()


async def test_smart_host_refusing_auth_defers(
    start_queue_mta: StartQueueMTA, smtp_port: int
) -> None:
    auth = Authenticator("relay-user", "s3cret")
    smart = Peer.start(
        "127.0.0.9",
        smtp_port,
        PeerHandler("127.0.0.9"),
        authenticator=auth,
        auth_require_tls=False,
        auth_required=False,
    )
    try:
        route = RouteConfig(
            domain="*",
            host="127.0.0.9",
            auth_user="relay-user",
            auth_password="wrong",
            auth_allow_plaintext=True,
        )
        with trio.fail_after(CAP):
            mta = await start_queue_mta(routes=(route,))
            qid = await mta.send("alice@sender.test", ["bob@pref.test"], BODY)
            await mta.queue.wait_until(lambda: mta.queue.stats.attempts == 1)
        [recipient] = mta.queue.envelopes[qid].recipients
        assert recipient.code == 451
        assert "authentication failed" in recipient.text
        assert smart.received == []
    finally:
        smart.stop()


async def test_a_per_domain_route_overrides_the_mx(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    route = RouteConfig(domain="implicit.test", host="mx.relay.test")
    with trio.fail_after(CAP):
        mta = await start_queue_mta(routes=(route,))
        await mta.send("alice@sender.test", ["bob@implicit.test"], BODY)
        await mta.wait_empty()
    assert only(peers["127.0.0.8"]).recipients == ("bob@implicit.test",)
    assert peers["127.0.0.6"].received == []


@pytest.mark.parametrize("domain", ["noaddr.test", "missing.test"])
async def test_unroutable_domains_bounce(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer], domain: str
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        await mta.send("alice@sender.test", [f"bob@{domain}"], BODY)
        await mta.wait_empty()
    _, [recipient] = delivery_status(only(peers["127.0.0.7"]).data)
    assert recipient["Status"] == {"noaddr.test": "5.4.4", "missing.test": "5.1.2"}[domain]


async def test_one_connection_carries_several_messages_to_a_hop(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer], smtp_port: int
) -> None:
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        for n in range(3):
            await mta.send("alice@sender.test", [f"bob{n}@pref.test"], BODY)
            await mta.wait_empty()
        assert len({r.session for r in peers["127.0.0.2"].received}) == 1
        # The peer restarts: the parked session is dead, the next message connects afresh.
        peers["127.0.0.2"].stop()
        peers["127.0.0.2"] = Peer.start("127.0.0.2", smtp_port, PeerHandler("127.0.0.2"))
        await mta.send("alice@sender.test", ["carol@pref.test"], BODY)
        await mta.wait_empty()
    assert only(peers["127.0.0.2"]).recipients == ("carol@pref.test",)
    assert mta.queue.stats.delivered == 4
    deliverer = mta.queue.attempt.deliverer
    assert isinstance(deliverer, SMTPDeliverer)
    assert deliverer.sessions.reused == 3  # twice in the loop, once the dead one
