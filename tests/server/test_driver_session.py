"""The driver's conversation over memory streams: delivery, relay refusal, the bad-command
budget, and pipelining answered with one write per group (RFC 2920)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.helpers import replies
from tests.helpers.config import make_config
from tests.helpers.driver import PausedClockDelivery, start_driver
from tests.helpers.maildir import all_messages, bodies_in
from trio_mta.protocol import Reply, reply
from trio_mta.server import Session

CAP = 10_000  # virtual seconds

MESSAGE = b"Subject: hello\r\n\r\n..leading dot, stuffed\r\nbody\r\n"
UNSTUFFED = b"Subject: hello\r\n\r\n.leading dot, stuffed\r\nbody\r\n"


async def test_message_is_delivered_byte_exact_after_the_received_header(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        final = await h.client.transaction(
            "a@example.org", ["b@example.test", "c@localhost"], MESSAGE, ehlo="client.example"
        )
        assert final.code == 250
        assert final.enhanced == "2.0.0"
        await h.client.command("QUIT", 221)
        await h.client.expect_eof()
    assert bodies_in(tmp_path, "example.test", "b") == [UNSTUFFED]
    assert bodies_in(tmp_path, "localhost", "c") == [UNSTUFFED]
    assert len(all_messages(tmp_path)) == 2


async def test_bdat_chunks_are_stored_verbatim(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    part1 = b"Subject: chunked\r\n\r\n.not stuffed\r\n"
    part2 = b".\r\nend\r\n"
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await h.client.send(b"BDAT %d\r\n" % len(part1) + part1)
        await h.client.expect(250, "2.0.0")
        await h.client.send(b"BDAT %d LAST\r\n" % len(part2) + part2)
        await h.client.expect(250, "2.0.0")
    assert bodies_in(tmp_path, "example.test", "b") == [part1 + part2]


async def test_relay_to_a_foreign_domain_is_refused(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        refused = await h.client.command("RCPT TO:<victim@elsewhere.example>", 550)
        assert refused.raw == replies.RELAY_DENIED
        await h.client.command("DATA", 503, "5.5.1")  # no recipient was accepted
        await h.client.command("RCPT TO:<Postmaster>", 250)
        await h.client.command("DATA", 354)
        await h.client.send(MESSAGE + b".\r\n")
        await h.client.expect(250, "2.0.0")
    # Only the postmaster got it, in the first local domain's mailbox.
    assert bodies_in(tmp_path, "localhost", "postmaster") == [UNSTUFFED]
    assert len(all_messages(tmp_path)) == 1


async def test_message_size_limit(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    limit = 100
    config = make_config(tmp_path, limits={"max_message_size": limit})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        ehlo = await h.client.command("EHLO client.example", 250)
        assert f"SIZE {limit}" in ehlo.lines
        await h.client.command(f"MAIL FROM:<a@example.org> SIZE={limit + 1}", 552, "5.3.4")
        await h.client.command(f"MAIL FROM:<a@example.org> SIZE={limit}", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await h.client.command("DATA", 354)
        await h.client.send(b"Subject: big\r\n\r\n" + b"x" * limit + b"\r\n.\r\n")
        await h.client.expect(552, "5.3.4")
        exact = b"Subject: fits\r\n\r\n" + b"y" * (limit - 19) + b"\r\n"
        assert len(exact) == limit
        final = await h.client.transaction("a@example.org", ["b@example.test"], exact)
        assert final.code == 250
    assert bodies_in(tmp_path, "example.test", "b") == [exact]


async def test_bad_command_budget_then_421(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    budget = 3
    config = make_config(tmp_path, limits={"max_unrecognized_commands": budget})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        # Unknown verbs and rejected commands (MAIL before HELO) both count.
        assert (await h.client.command("FOO", 500)).raw == replies.UNRECOGNIZED
        await h.client.command("MAIL FROM:<a@example.org>", 503, "5.5.1")
        await h.client.command("XYZZY plugh", 500, "5.5.1")
        # At the budget the session still works.
        await h.client.command("NOOP", 250)
        await h.client.command("EHLO client.example", 250)
        await h.client.send(b"BAR\r\nNOOP\r\n")
        assert (await h.client.read_to_eof()) == replies.UNRECOGNIZED + replies.TOO_MANY_ERRORS
        assert h.driver.close_reason == "too many errors"


async def test_pipelined_bad_commands_stop_at_the_budget(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    budget = 2
    config = make_config(tmp_path, limits={"max_unrecognized_commands": budget})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.send(b"FOO\r\n" * 10)
        expected = replies.UNRECOGNIZED * (budget + 1) + replies.TOO_MANY_ERRORS
        assert await h.client.read_to_eof() == expected


async def test_pipelined_group_is_answered_with_one_write(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        ehlo = await h.client.command("EHLO client.example", 250)
        assert "PIPELINING" in ehlo.lines
        writes_before = len(h.writes)
        await h.client.send(
            b"MAIL FROM:<a@example.org>\r\n"
            b"RCPT TO:<b@example.test>\r\n"
            b"RCPT TO:<nobody@elsewhere.example>\r\n"
            b"RCPT TO:<c@example.test>\r\n"
            b"DATA\r\n"
        )
        answers = [await h.client.reply() for _ in range(5)]
        assert [a.code for a in answers] == [250, 250, 550, 250, 354]
        assert h.writes[writes_before:] == [b"".join(a.raw for a in answers)]

        # The end of data and QUIT pipelined: the 250 and the 221 leave in one write too.
        writes_before = len(h.writes)
        await h.client.send(MESSAGE + b".\r\nQUIT\r\n")
        final, bye = await h.client.reply(), await h.client.reply()
        assert (final.code, bye.code) == (250, 221)
        assert h.writes[writes_before:] == [final.raw + bye.raw]
        await h.client.expect_eof()
    assert bodies_in(tmp_path, "example.test", "b") == [UNSTUFFED]
    assert bodies_in(tmp_path, "example.test", "c") == [UNSTUFFED]


async def test_pipelined_whole_session_in_one_packet(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Two transactions and QUIT in one packet: every reply, in order, and both messages."""
    config = make_config(tmp_path)
    second = b"Subject: two\r\n\r\nsecond\r\n"
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.send(
            b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\n"
            b"DATA\r\n" + MESSAGE + b".\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\n"
            b"DATA\r\n" + second + b".\r\nQUIT\r\n"
        )
        codes = [(await h.client.reply()).code for _ in range(9)]
        assert codes == [250, 250, 250, 354, 250, 250, 250, 354, 250]
        await h.client.expect(221)
        await h.client.expect_eof()
    assert bodies_in(tmp_path, "example.test", "b") == sorted([UNSTUFFED, second])


async def test_recipients_over_the_limit_do_not_count_as_bad_commands(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A list server pipelining more recipients than we take gets 452 for the excess and
    sends the rest later (RFC 5321 §4.5.3.1.10); that is not abuse, and the message it is
    sending must not be lost to the bad-command budget (Postfix: recipient overshoot)."""
    config = make_config(tmp_path, limits={"max_recipients": 3, "max_unrecognized_commands": 2})
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock)
        await h.client.expect(220)
        await h.client.command("EHLO lists.example", 250)
        await h.client.command("MAIL FROM:<list@example.org>", 250)
        await h.client.send(b"".join(b"RCPT TO:<r%d@example.test>\r\n" % i for i in range(8)))
        codes = [(await h.client.reply()).code for _ in range(8)]
        assert codes == [250] * 3 + [452] * 5
        await h.client.command("DATA", 354)
        await h.client.send(MESSAGE + b".\r\n")
        await h.client.expect(250, "2.0.0")
    assert len(all_messages(tmp_path)) == 3


class RefuseData(PausedClockDelivery):
    """A policy that refuses every message at the DATA step (as a plugin may)."""

    async def data(self, session: Session) -> Reply:
        return REFUSED_DATA


REFUSED_DATA = reply(554, "5.7.1", "No message accepted from you")


async def test_bdat_after_a_refused_data_is_refused_too(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The DATA step's refusal must hold for BDAT as well: switching verbs is no way round
    the policy."""
    config = make_config(tmp_path)
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock, handler_class=RefuseData)
        await h.client.expect(220)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        assert (await h.client.command("DATA", 554)).raw == REFUSED_DATA.to_bytes()
        await h.client.send(b"BDAT 5 LAST\r\nhello")
        assert (await h.client.reply()).raw == REFUSED_DATA.to_bytes()
        # A BDAT transaction from scratch is refused at its first chunk.
        await h.client.command("MAIL FROM:<a@example.org>", 250)
        await h.client.command("RCPT TO:<b@example.test>", 250)
        await h.client.send(b"BDAT 5 LAST\r\nhello")
        assert (await h.client.reply()).raw == REFUSED_DATA.to_bytes()
    assert all_messages(tmp_path) == []
