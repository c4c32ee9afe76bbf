"""Phase deadlines of the driver, at exact virtual times (MockClock, memory streams)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio.testing

from tests.helpers import replies
from tests.helpers.config import make_config
from tests.helpers.driver import PausedClockDelivery, start_driver
from tests.helpers.maildir import all_messages
from trio_mta.protocol import Reply
from trio_mta.server import Session

CAP = 10_000  # virtual seconds: a deadlocked test autojumps here and fails at once


async def test_silent_client_is_cut_at_the_banner_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"banner": 7, "command": 11, "session": 1000})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        assert h.elapsed() == 0
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("banner")
        assert h.elapsed() == 7
        await h.client.expect_eof()
        await h.finished.wait()


async def test_bytes_without_a_command_do_not_extend_the_banner_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"banner": 7, "command": 11, "session": 1000})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await trio.sleep(3)
        await h.client.send(b"EH")  # no line end: not a command yet
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("banner")
        assert h.elapsed() == 7


async def test_silent_after_ehlo_is_cut_at_the_command_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"banner": 7, "command": 11, "session": 1000})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await trio.sleep(3)
        await h.client.command("EHLO client.example", 250)
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("command")
        assert h.elapsed() == 3 + 11
        await h.client.expect_eof()


async def test_each_command_rearms_the_command_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"banner": 7, "command": 11, "session": 1000})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        for _ in range(5):  # 5 x 10 s: always inside the 11 s budget
            await trio.sleep(10)
            await h.client.command("NOOP", 250)
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("command")
        assert h.elapsed() == 50 + 11


async def test_stall_inside_data_is_cut_at_the_data_block_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path,
        timeouts={"banner": 7, "command": 11, "data_block": 13, "data_total": 500, "session": 1000},
    )
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await h.client.command("DATA", 354)
        await trio.sleep(4)
        await h.client.send(b"Subject: stalled\r\n\r\nfirst line\r\n")
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("data")
        assert h.elapsed() == 4 + 13
        await h.client.expect_eof()
    assert all_messages(tmp_path) == []


async def test_trickled_data_is_cut_at_the_data_total_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    block, total = 10, 32
    config = make_config(
        tmp_path,
        timeouts={"command": 11, "data_block": block, "data_total": total, "session": 1000},
    )
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await trio.sleep(2)
        await h.client.command("DATA", 354)
        data_started = trio.current_time()
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            while True:
                await trio.sleep(block / 2)
                await h.client.send(b"x")
                sent += 1

        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            answer = await h.client.reply()
            inner.cancel_scope.cancel()
        assert answer.raw == replies.timeout("data total")
        assert trio.current_time() - data_started == total
        assert sent == total // (block // 2)  # the data kept coming: not a data-block timeout
    assert all_messages(tmp_path) == []


async def test_busy_session_is_cut_at_the_session_cap(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"banner": 30, "command": 30, "session": 100})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        for _ in range(6):  # NOOP at 15, 30, ..., 90: every command well inside its budget
            await trio.sleep(15)
            await h.client.command("NOOP", 250)
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("session")
        assert h.elapsed() == 100
        await h.client.expect_eof()


async def test_session_cap_also_cuts_a_message_in_progress(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path, timeouts={"command": 30, "data_block": 30, "data_total": 300, "session": 40}
    )
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await trio.sleep(20)
        await h.client.command("DATA", 354)
        await trio.sleep(15)
        await h.client.send(b"Subject: late\r\n")
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("session")
        assert h.elapsed() == 40
    assert all_messages(tmp_path) == []


async def test_greeting_delay_sends_the_banner_after_the_delay(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"greeting_delay": 5})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        banner = await h.client.expect(220)
        assert banner.raw == b"220 localhost ESMTP trio-mta\r\n"
        assert h.elapsed() == 5
        await h.client.command("EHLO client.example", 250)


async def test_early_talker_gets_554_and_no_banner(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"greeting_delay": 5})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await trio.sleep(1)
        await h.client.send(b"EHLO impatient.example\r\n")
        everything = await h.client.read_to_eof()
        assert everything == replies.EARLY_TALKER
        assert h.elapsed() == 1
        assert h.driver.close_reason == "early talker"
        await h.finished.wait()


async def test_client_talking_before_the_server_started_is_an_early_talker(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"greeting_delay": 5})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.send(b"EHLO impatient.example\r\nMAIL FROM:<spam@example.org>\r\n")
        assert await h.client.read_to_eof() == replies.EARLY_TALKER
        assert h.elapsed() == 0


class SlowStore(PausedClockDelivery):
    """Delivery that takes 20 virtual seconds: longer than the data deadlines below."""

    async def message(self, session: Session) -> Reply:
        await trio.sleep(20)
        return await super().message(session)


async def test_a_slow_store_after_the_final_dot_is_not_cut_by_the_data_deadlines(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(
        tmp_path,
        timeouts={"banner": 7, "command": 11, "data_block": 13, "data_total": 15, "session": 1000},
    )
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock, handler_class=SlowStore)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await h.client.command("DATA", 354)
        await trio.sleep(4)
        started = h.elapsed()
        await h.client.send(b"Subject: slow store\r\n\r\nbody\r\n.\r\n")
        answer = await h.client.reply()
        assert answer.code == 250  # stored, and told so: not 421 at the data deadlines
        assert h.elapsed() == started + 20
        await h.client.command("QUIT", 221)
    assert len(all_messages(tmp_path)) == 1


# -- the command deadline covers the whole line (issue #16 hazard 2) ----------------------------


async def _trickle(send: Callable[[bytes], Awaitable[None]], data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart (the first after a wait)."""
    for i in range(len(data)):
        await trio.sleep(every)
        await send(data[i : i + 1])


async def test_trickled_command_is_cut_at_the_command_deadline(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # One byte every 4 s: each byte came well inside 11 s of the one before, but the line as a
    # whole did not come within 11 s of our reply. Re-armed per byte, this client held the
    # connection until the session cap.
    config = make_config(tmp_path, timeouts={"banner": 7, "command": 11, "session": 1000})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        replied = h.elapsed()
        async with trio.open_nursery() as inner:
            inner.start_soon(_trickle, h.client.send, b"MAIL FROM:<a@example.org>\r\n", 4)
            answer = await h.client.reply()
            inner.cancel_scope.cancel()
        assert answer.raw == replies.timeout("command")
        assert h.elapsed() == replied + 11
        await h.client.expect_eof()
        await h.finished.wait()
    assert h.driver.close_reason == "timeout (command)"


async def test_slow_but_whole_line_inside_the_deadline_is_answered(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"banner": 7, "command": 11, "session": 1000})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await _trickle(h.client.send, b"NOOP\r\n", 1.5)  # done at 9 s of 11
        assert (await h.client.reply()).code == 250
        # The next line gets its own 11 s, counted from that reply.
        await trio.sleep(10)
        await h.client.command("NOOP", 250)


async def test_pipelined_group_is_answered_and_the_partial_tail_timed_from_our_reply(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path, timeouts={"banner": 7, "command": 11, "session": 1000})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await trio.sleep(10)
        # A whole pipelined group and the start of the next line, in one packet.
        await h.client.send(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@exa"
        )
        assert (await h.client.reply()).code == 250
        assert (await h.client.reply()).code == 250
        replied = h.elapsed()
        assert replied == 10
        # The unfinished RCPT line is timed from the replies just sent, not from the EHLO
        # reply (which would end at 11) nor from its last byte.
        await trio.sleep(8)
        await h.client.send(b"mple.test>\r\n")
        assert (await h.client.reply()).code == 250
        answer = await h.client.reply()
        assert answer.raw == replies.timeout("command")
        assert h.elapsed() == replied + 8 + 11
