"""Graceful shutdown of one connection: what ``SMTPServer`` does on SIGTERM (set ``closing``,
call ``wake_for_shutdown``) and when the drain deadline runs out (cancellation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from tests.helpers import replies
from tests.helpers.config import make_config
from tests.helpers.driver import DriverHarness, start_driver
from tests.helpers.maildir import all_messages, bodies_in

CAP = 10_000  # virtual seconds

HEAD = b"Subject: drain\r\n\r\nfirst half\r\n"
TAIL = b"second half\r\n"


async def _greeted(h: DriverHarness) -> None:
    await h.client.expect(220)
    await h.client.command("EHLO client.example", 250)


async def _assert_silent_for(h: DriverHarness, seconds: float) -> None:
    with trio.move_on_after(seconds) as scope:
        unexpected = await h.client.reply()
        pytest.fail(f"server spoke during a transaction it should finish: {unexpected}")
    assert scope.cancelled_caught


async def test_idle_connection_gets_421_at_once(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await _greeted(h)
        await trio.sleep(5)
        h.shut_down()
        assert await h.client.read_to_eof() == replies.SHUTDOWN
        assert h.elapsed() == 5
        await h.finished.wait()
        assert h.driver.close_reason == "shutdown"


async def test_connection_before_its_first_command_gets_421(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await trio.sleep(1)
        h.shut_down()
        assert await h.client.read_to_eof() == replies.SHUTDOWN
        assert h.elapsed() == 1


async def test_connection_mid_data_finishes_its_message_then_gets_421(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await _greeted(h)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await h.client.command("DATA", 354)
        await h.client.send(HEAD)
        await trio.sleep(1)
        h.shut_down()
        await _assert_silent_for(h, 20)
        await h.client.send(TAIL + b".\r\n")
        await h.client.expect(250, "2.0.0")
        assert await h.client.read_to_eof() == replies.SHUTDOWN
        assert h.elapsed() == 21
    assert bodies_in(tmp_path, "example.test", "b") == [HEAD + TAIL]


async def test_connection_between_mail_and_data_finishes_its_transaction(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await _greeted(h)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        h.shut_down()
        await _assert_silent_for(h, 3)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await h.client.command("DATA", 354)
        await h.client.send(HEAD + TAIL + b".\r\n")
        await h.client.expect(250, "2.0.0")
        assert await h.client.read_to_eof() == replies.SHUTDOWN
    assert bodies_in(tmp_path, "example.test", "b") == [HEAD + TAIL]


async def test_rset_during_shutdown_ends_the_session(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await _greeted(h)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        h.shut_down()
        await h.client.command("RSET", 250)
        assert await h.client.read_to_eof() == replies.SHUTDOWN
    assert all_messages(tmp_path) == []


async def test_drain_deadline_cancels_and_still_says_421(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """When the drain deadline passes the server cancels the connection nursery: a client
    still inside DATA loses its message and is told 421 4.3.2 on the way out."""
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        async with trio.open_nursery() as connections:
            h = await start_driver(connections, config, autojump_clock)
            await _greeted(h)
            await h.client.command("MAIL FROM:<a@example.org>", 250)
            await h.client.command("RCPT TO:<b@example.test>", 250)
            await h.client.command("DATA", 354)
            await h.client.send(HEAD)
            h.shut_down()
            await trio.sleep(30)  # the drain time, spent by a client that never finishes
            connections.cancel_scope.cancel()
        assert h.finished.is_set()
        assert await h.client.read_to_eof() == replies.SHUTDOWN
        assert h.driver.close_reason == "shutdown"
    assert all_messages(tmp_path) == []
