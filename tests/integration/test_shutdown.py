"""``SMTPServer.request_shutdown`` over real sockets: stop accepting, tell idle clients 421,
let transactions finish, cut the rest at the drain deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.helpers import replies
from tests.helpers.config import make_config
from tests.helpers.maildir import all_messages, bodies_in

from .conftest import StartMTA

CAP = 10  # seconds, real time
HEAD = b"Subject: drain\r\n\r\nfirst\r\n"
TAIL = b"second\r\n"


async def test_shutdown_drains_transactions_and_closes_idle_connections(
    start_mta: StartMTA, var_dir: Path
) -> None:
    mta = await start_mta(make_config(var_dir, timeouts={"drain": 30}))
    with trio.fail_after(CAP):
        idle = [await mta.greeted() for _ in range(3)]
        busy = await mta.greeted()
        await busy.command("MAIL FROM:<a@example.org>", 250)
        await busy.command("RCPT TO:<b@example.test>", 250)
        await busy.command("DATA", 354)
        await busy.send(HEAD)
        mta.server.request_shutdown()
        for client in idle:
            assert await client.read_to_eof() == replies.SHUTDOWN
        # Listening has stopped.
        with pytest.raises(OSError):
            await trio.open_tcp_stream(mta.host, mta.port)
        assert not mta.stopped.is_set()
        await busy.send(TAIL + b".\r\n")
        await busy.expect(250, "2.0.0")
        assert await busy.read_to_eof() == replies.SHUTDOWN
        await mta.stopped.wait()
    assert bodies_in(mta.var_dir, "example.test", "b") == [HEAD + TAIL]


async def test_drain_deadline_cuts_an_unfinished_transaction(
    start_mta: StartMTA, var_dir: Path
) -> None:
    drain = 0.5
    mta = await start_mta(make_config(var_dir, timeouts={"drain": drain}))
    with trio.fail_after(CAP):
        busy = await mta.greeted()
        await busy.command("MAIL FROM:<a@example.org>", 250)
        await busy.command("RCPT TO:<b@example.test>", 250)
        await busy.command("DATA", 354)
        await busy.send(HEAD)
        started = trio.current_time()
        mta.server.request_shutdown()
        assert await busy.read_to_eof() == replies.SHUTDOWN
        waited = trio.current_time() - started
        await mta.stopped.wait()
    assert drain <= waited < drain + 2
    assert all_messages(mta.var_dir) == []
