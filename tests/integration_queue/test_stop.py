"""Stopping the queue (the daemon's SIGTERM): a delivery in progress finishes, as long as the
drain allows, instead of being cut after the final dot; nothing new starts."""

from __future__ import annotations

import trio

from tests.integration_queue.conftest import StartQueueMTA
from tests.integration_queue.kit import Peer, PeerHandler

BODY = b"From: alice@sender.test\r\nSubject: stop test\r\n\r\nHello.\r\n"
CAP = 20


async def test_a_delivery_in_progress_finishes_and_nothing_new_starts(
    start_queue_mta: StartQueueMTA, peers: dict[str, Peer], smtp_port: int
) -> None:
    peers["127.0.0.2"].stop()  # pref.test's MX, made slow: each DATA answered after 1 s
    peers["127.0.0.2"] = slow = Peer.start(
        "127.0.0.2", smtp_port, PeerHandler("127.0.0.2", delay=1.0)
    )
    with trio.fail_after(CAP):
        mta = await start_queue_mta()
        await mta.send("alice@sender.test", ["bob@pref.test"], BODY)
        while not mta.queue.active:  # noqa: ASYNC110  # the attempt starts in its own task
            await trio.sleep(0.01)
        mta.queue.stop_delivering()
        later = await mta.send("alice@sender.test", ["carol@pref.test"], BODY)
        await mta.queue.wait_idle()
    # bob's delivery was let finish; carol's waits in the spool for the next start.
    assert [r.recipients for r in slow.received] == [("bob@pref.test",)]
    assert list(mta.queue.envelopes) == [later]
