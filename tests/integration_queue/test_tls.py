"""Outbound STARTTLS against real peers: opportunistic TLS to an MX that insists on it, and a
``starttls = "required"`` route to a peer without STARTTLS, which defers instead of sending in
clear."""

from __future__ import annotations

import ssl

import trio
import trustme

from tests.integration_queue.conftest import StartQueueMTA
from tests.integration_queue.kit import Peer, PeerHandler
from trio_mta.config import RouteConfig

BODY = b"From: alice@sender.test\r\nSubject: tls test\r\n\r\nSecret.\r\n"
CAP = 20


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("mx.tls.test", "127.0.0.10").configure_cert(context)
    return context


async def test_opportunistic_starttls_to_an_mx_that_requires_it(
    start_queue_mta: StartQueueMTA, smtp_port: int
) -> None:
    peer = Peer.start(
        "127.0.0.10",
        smtp_port,
        PeerHandler("127.0.0.10"),
        tls_context=server_context(),
        require_starttls=True,
    )
    try:
        with trio.fail_after(CAP):
            # The default policy (the fixture sets "never" for the plain peers).
            mta = await start_queue_mta(starttls="opportunistic")
            await mta.send("alice@sender.test", ["bob@tls.test"], BODY)
            await mta.wait_empty()
        [got] = peer.received
        assert got.tls
        assert got.recipients == ("bob@tls.test",)
        assert b"Secret." in got.data
        assert mta.queue.stats.delivered == 1
    finally:
        peer.stop()


async def test_required_tls_to_a_peer_without_starttls_defers(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer]
) -> None:
    route = RouteConfig(domain="pref.test", starttls="required")
    with trio.fail_after(CAP):
        mta = await start_queue_mta(routes=(route,), retry_first=0.2, retry_max=0.2)
        qid = await mta.send("alice@sender.test", ["bob@pref.test"], BODY)
        await mta.queue.wait_until(lambda: mta.queue.envelopes[qid].attempts >= 2)
    env = mta.queue.envelopes[qid]
    [recipient] = env.recipients
    assert recipient.status.value == "pending"  # deferred, and retried: never bounced
    assert recipient.code == 451
    assert "TLS is required" in recipient.text
    assert all(p.received == [] for p in peers.values())  # nothing went in clear
    assert mta.queue.stats.failed == 0
    assert mta.queue.stats.bounces == 0
