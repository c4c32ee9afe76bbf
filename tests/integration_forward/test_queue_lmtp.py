"""queue_lmtp against smtp-sink -L and aiosmtpd's LMTP server, through the hook runner."""

from __future__ import annotations

import pytest
import trio

from tests.integration_forward.kit import HOST, final_message, load, make_connection, run_queue
from tests.smtpclient.peers import Recorder, aiosmtpd_server, smtp_sink, unused_port
from trio_mta import hooks

BOB, CAROL = "bob@example.net", "carol@example.net"


async def test_delivers_to_smtp_sink_lmtp() -> None:
    conn = make_connection([BOB, CAROL])
    async with smtp_sink("-L") as sink:
        runner = load("queue_lmtp", {"host": HOST, "port": sink.port, "helo": "mx.test"})
        with trio.fail_after(5):
            outcome = await run_queue(runner, conn)
        dumps = sink.dumps()
    assert outcome.action is hooks.Action.OK, outcome.reply
    assert outcome.reply.text == ("Message delivered as TXN1",)
    [dump] = dumps
    assert dump.proto == "LMTP"
    assert dump.rcpt_args == (f"<{BOB}>", f"<{CAROL}>")
    assert dump.body == final_message(conn).replace(b"\r\n", b"\n") + b"\n"
    # The LMTP server is the final delivery agent: it writes Return-Path, we must not.
    assert b"Return-Path:" not in dump.body
    assert b"Delivered-To:" not in dump.body


@pytest.mark.parametrize(
    ("flags", "action", "code"),
    [(("-f", "."), hooks.Action.DENY, 500), (("-r", "."), hooks.Action.DENYSOFT, 450)],
    ids=["dot-hard", "dot-soft"],
)
async def test_smtp_sink_lmtp_refusals(
    flags: tuple[str, ...], action: hooks.Action, code: int
) -> None:
    async with smtp_sink("-L", *flags) as sink:
        runner = load("queue_lmtp", {"host": HOST, "port": sink.port})
        with trio.fail_after(5):
            outcome = await run_queue(runner, make_connection([BOB, CAROL]))
    assert (outcome.action, outcome.reply.code) == (action, code), outcome.reply
    assert outcome.reply.text[0].startswith(f"<{BOB}>: ")  # the first recipient's reply


@pytest.mark.parametrize(
    ("replies", "action", "code", "enhanced"),
    [
        ({}, hooks.Action.OK, 250, "2.0.0"),
        ({BOB: "550 5.1.1 gone", CAROL: "552 5.2.2 over quota"}, hooks.Action.DENY, 550, "5.1.1"),
        ({CAROL: "452 4.2.2 mailbox full"}, hooks.Action.DENYSOFT, 452, "4.2.2"),
        ({CAROL: "550 5.1.1 gone"}, hooks.Action.DENYSOFT, 451, "4.0.0"),  # mixed
    ],
    ids=["all-ok", "all-5xx", "one-4xx", "mixed"],
)
async def test_per_recipient_replies_fold_into_one(
    replies: dict[str, str], action: hooks.Action, code: int, enhanced: str
) -> None:
    handler = Recorder(lmtp=replies)
    conn = make_connection([BOB, CAROL])
    async with aiosmtpd_server(handler, lmtp=True) as port:
        runner = load("queue_lmtp", {"host": HOST, "port": port})
        with trio.fail_after(5):
            outcome = await run_queue(runner, conn)
    assert (outcome.action, outcome.reply.code, outcome.reply.enhanced) == (action, code, enhanced)
    [got] = handler.received  # the data went out once, whatever the replies
    assert got.content == final_message(conn)
    assert got.rcpt_tos == (BOB, CAROL)


async def test_a_refused_rcpt_stops_before_the_data() -> None:
    handler = Recorder(rcpt={CAROL: "550 5.1.1 no such user"})
    async with aiosmtpd_server(handler, lmtp=True) as port:
        runner = load("queue_lmtp", {"host": HOST, "port": port})
        mixed = await run_queue(runner, make_connection([BOB, CAROL]))
        refused = await run_queue(runner, make_connection([CAROL]))
    assert (mixed.action, mixed.reply.code) == (hooks.Action.DENYSOFT, 451)
    assert (refused.action, refused.reply.code, refused.reply.text) == (
        hooks.Action.DENY,
        550,
        (f"<{CAROL}>: no such user",),
    )
    assert handler.received == []


async def test_routes_and_an_absent_server() -> None:
    handler = Recorder()
    async with aiosmtpd_server(handler, lmtp=True) as port:
        config = {"host": HOST, "port": port, "domains": {"example.org": {"port": unused_port()}}}
        runner = load("queue_lmtp", config)
        ok = await run_queue(runner, make_connection([BOB]))
        down = await run_queue(runner, make_connection(["dave@example.org"]))
    assert ok.action is hooks.Action.OK
    assert len(handler.received) == 1
    assert (down.action, down.reply.code, down.reply.enhanced) == (
        hooks.Action.DENYSOFT,
        451,
        "4.4.1",
    )


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"tls": "required"}, "unknown keys"),
        ({"port": "24"}, "port"),
        ({"domains": {"a.test": {"host": ""}}}, "host must be"),
        ({"domains": {"a.test": "10.0.0.1"}}, "must be tables"),
    ],
)
def test_bad_config_is_refused(config: dict[str, object], match: str) -> None:
    with pytest.raises(hooks.PluginLoadError, match=match):
        load("queue_lmtp", config)
