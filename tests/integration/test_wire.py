"""Raw bytes over a real socket: BDAT, over-long lines, SMTP smuggling, relay refusal,
and the per-connection isolation boundary."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.helpers import replies
from tests.helpers.config import make_config
from tests.helpers.maildir import all_messages, bodies_in, messages_in
from trio_mta.app import load_plugin_set
from trio_mta.config import BareLineEndings
from trio_mta.hooks import HookRunner
from trio_mta.protocol import RcptTo, Reply
from trio_mta.server import HookHandler, Session

from .conftest import RunningMTA, StartMTA

CAP = 10  # seconds, real time


async def test_bdat_message_is_stored_verbatim(mta: RunningMTA) -> None:
    chunks = [b"Subject: bdat\r\n\r\n", b".no unstuffing\r\n.\r\n", b"\x00\xffbinary\r\n"]
    with trio.fail_after(CAP):
        client = await mta.greeted()
        await client.command("MAIL FROM:<a@example.org> BODY=BINARYMIME", 555)
        await client.command("MAIL FROM:<a@example.org>", 250)
        await client.command("RCPT TO:<b@example.test>", 250)
        # First chunk alone, then the rest pipelined with a zero-length LAST chunk.
        await client.send(b"BDAT %d\r\n%s" % (len(chunks[0]), chunks[0]))
        await client.expect(250, "2.0.0")
        await client.send(
            b"BDAT %d\r\n%sBDAT %d\r\n%sBDAT 0 LAST\r\n"
            % (len(chunks[1]), chunks[1], len(chunks[2]), chunks[2])
        )
        await client.expect(250, "2.0.0")
        await client.expect(250, "2.0.0")
        final = await client.expect(250, "2.0.0")
        assert final.text.startswith("2.0.0 Message queued as ")
        await client.command("QUIT", 221)
        await client.expect_eof()
    assert bodies_in(mta.var_dir, "example.test", "b") == [b"".join(chunks)]


async def test_bdat_and_data_transactions_on_one_connection(mta: RunningMTA) -> None:
    first = b"Subject: by bdat\r\n\r\nbody\r\n"
    second = b"Subject: by data\r\n\r\nbody\r\n"
    with trio.fail_after(CAP):
        client = await mta.greeted()
        await client.command("MAIL FROM:<a@example.org>", 250)
        await client.command("RCPT TO:<b@example.test>", 250)
        await client.send(b"BDAT %d LAST\r\n%s" % (len(first), first))
        await client.expect(250, "2.0.0")
        assert (await client.transaction("a@example.org", ["b@example.test"], second)).code == 250
    assert bodies_in(mta.var_dir, "example.test", "b") == sorted([first, second])


async def test_over_long_command_line_is_refused_and_session_recovers(mta: RunningMTA) -> None:
    with trio.fail_after(CAP):
        client = await mta.greeted()
        # Just over the 512-octet limit, then a 200 kB line sent in pieces.
        answer = await client.command("NOOP " + "x" * 600, 500)
        assert answer.raw == replies.LINE_TOO_LONG
        for _ in range(4):
            await client.send(b"MAIL FROM:<" + b"y" * 50_000)
        await client.send(b">\r\n")
        assert (await client.reply()).raw == replies.LINE_TOO_LONG
        await client.command("NOOP", 250)
        body = b"Subject: after\r\n\r\nrecovered\r\n"
        assert (await client.transaction("a@example.org", ["b@example.test"], body)).code == 250
    assert bodies_in(mta.var_dir, "example.test", "b") == [body]


SMUGGLED_TAIL = (
    b"MAIL FROM:<forged@example.org>\r\n"
    b"RCPT TO:<victim@example.test>\r\n"
    b"DATA\r\n"
    b"Subject: smuggled\r\n\r\nforged\r\n"
)


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r"],
    ids=["LF.LF", "CRLF.LF", "LF.CRLF", "CR.CR", "CRLF.CR"],
)
async def test_smuggling_is_refused_and_nothing_is_delivered(
    mta: RunningMTA, fake_end: bytes
) -> None:
    with trio.fail_after(CAP):
        client = await mta.greeted()
        await client.command("MAIL FROM:<a@example.org>", 250)
        await client.command("RCPT TO:<b@example.test>", 250)
        await client.command("DATA", 354)
        await client.send(b"Subject: carrier\r\n\r\nhello" + fake_end + SMUGGLED_TAIL + b".\r\n")
        refused = await client.expect(554, "5.6.0")
        assert "bare CR or LF" in refused.text
        # Exactly one reply: the forged commands were message text, never commands.
        await client.command("NOOP", 250)
        # The session is in sync and can deliver a clean message.
        clean = b"Subject: clean\r\n\r\nok\r\n"
        assert (await client.transaction("a@example.org", ["b@example.test"], clean)).code == 250
    assert messages_in(mta.var_dir, "example.test", "victim") == []
    assert bodies_in(mta.var_dir, "example.test", "b") == [clean]
    assert len(all_messages(mta.var_dir)) == 1


@pytest.mark.parametrize(
    "fake_end", [b"\n.\n", b"\r\n.\n", b"\r.\r"], ids=["LF.LF", "CRLF.LF", "CR.CR"]
)
async def test_bdat_with_bare_line_endings_is_refused(mta: RunningMTA, fake_end: bytes) -> None:
    """BDAT is framed by length, so here the fake end cannot split the session; but stored, it
    would reach the next hop inside DATA, where a lax server may read it as the end."""
    payload = b"Subject: carrier\r\n\r\nhello" + fake_end + SMUGGLED_TAIL
    with trio.fail_after(CAP):
        client = await mta.greeted()
        await client.command("MAIL FROM:<a@example.org>", 250)
        await client.command("RCPT TO:<b@example.test>", 250)
        await client.send(b"BDAT %d LAST\r\n%s" % (len(payload), payload))
        assert "bare CR or LF" in (await client.expect(554, "5.6.0")).text
        await client.command("NOOP", 250)
    assert all_messages(mta.var_dir) == []


async def test_smuggling_with_normalize_stores_one_message(
    start_mta: StartMTA, var_dir: Path
) -> None:
    """With bare line endings normalised, the fake end is just text: one message, to the real
    recipient only, with CRLF line ends."""
    mta = await start_mta(make_config(var_dir, bare_line_endings=BareLineEndings.NORMALIZE))
    with trio.fail_after(CAP):
        client = await mta.greeted()
        await client.command("MAIL FROM:<a@example.org>", 250)
        await client.command("RCPT TO:<b@example.test>", 250)
        await client.command("DATA", 354)
        await client.send(b"Subject: carrier\r\n\r\nhello\n.\n" + SMUGGLED_TAIL + b".\r\n")
        await client.expect(250, "2.0.0")
        await client.command("NOOP", 250)
    assert messages_in(mta.var_dir, "example.test", "victim") == []
    [stored] = bodies_in(mta.var_dir, "example.test", "b")
    assert stored == b"Subject: carrier\r\n\r\nhello\r\n.\r\n" + SMUGGLED_TAIL


class ExplodingHandler(HookHandler):
    """Local delivery, except that RCPT to ``boom@`` and messages to ``crash@`` raise."""

    async def rcpt(self, session: Session, event: RcptTo) -> Reply:
        if event.recipient.unquoted_local_part == "boom":
            raise RuntimeError("handler bug")
        return await super().rcpt(session, event)

    async def message(self, session: Session) -> Reply:
        txn = session.transaction
        assert txn is not None
        if any(a.unquoted_local_part == "crash" for a, _ in txn.recipients):
            raise RuntimeError("disk on fire")
        return await super().message(session)


async def test_a_failing_connection_does_not_disturb_the_others(
    start_mta: StartMTA, var_dir: Path
) -> None:
    config = make_config(var_dir)
    plugins = load_plugin_set(config)
    mta = await start_mta(config, lambda: ExplodingHandler(HookRunner(plugins)))
    body = b"Subject: survivor\r\n\r\nstill here\r\n"
    with trio.fail_after(CAP):
        bystander = await mta.greeted()
        await bystander.command("MAIL FROM:<a@example.org>", 250)
        victim = await mta.greeted()
        await victim.command("MAIL FROM:<a@example.org>", 250)
        await victim.send(b"RCPT TO:<boom@example.test>\r\n")
        assert await victim.read_to_eof() == b"421 4.3.0 Internal error, closing connection\r\n"
        # A delivery failure is a temporary refusal of that message, not of the session.
        crash = await mta.greeted()
        final = await crash.transaction("a@example.org", ["crash@example.test"], body)
        assert (final.code, final.enhanced) == (451, "4.3.0")
        await crash.command("NOOP", 250)
        await bystander.command("RCPT TO:<b@example.test>", 250)
        await bystander.command("DATA", 354)
        await bystander.send(body + b".\r\n")
        await bystander.expect(250, "2.0.0")
    assert bodies_in(mta.var_dir, "example.test", "b") == [body]
    assert len(all_messages(mta.var_dir)) == 1
