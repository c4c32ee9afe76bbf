"""The outbound session cache: fresh sessions are reused, expired ones closed on time."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
import trio.testing

from trio_mta.hooks import SMTPClient
from trio_mta.queue._sessions import Session, SessionCache


def session(closed: list[float]) -> Session:
    client_end, _ = trio.testing.memory_stream_pair()
    stack = AsyncExitStack()

    async def note() -> None:
        await trio.lowlevel.checkpoint()
        closed.append(trio.current_time())

    stack.push_async_callback(note)
    return Session(SMTPClient(client_end, lmtp=False), stack)


async def test_reuse_then_expiry_at_the_idle_time(autojump_clock: trio.testing.MockClock) -> None:
    cache = SessionCache(idle=2.0, max_uses=3)
    closed: list[float] = []
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.reap)
        first = session(closed)
        cache.park("hop", first)
        await trio.sleep(1.5)
        assert cache.take("hop") is first  # still fresh: reused
        assert cache.take("hop") is None  # taken: not shared
        cache.park("hop", first)
        await trio.sleep(10)
        assert closed == [t0 + 1.5 + 2.0]  # closed when it expired, not before, not polled
        worn = session(closed)
        worn.uses = 2
        cache.park("hop", worn)  # its third use: closed instead of parked
        await trio.sleep(0.1)
        assert len(closed) == 2
        assert cache.take("hop") is None
        nursery.cancel_scope.cancel()
    assert cache.reused == 1
