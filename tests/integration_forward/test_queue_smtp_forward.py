"""queue_smtp_forward against aiosmtpd and Postfix's smtp-sink, through the hook runner."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from tests.integration_forward.kit import (
    HOST,
    final_message,
    load,
    make_connection,
    run_queue,
)
from tests.smtpclient.peers import (
    Peer,
    Recorder,
    aiosmtpd_server,
    authenticator,
    fake_server,
    smtp_sink,
    unused_port,
)
from trio_mta import hooks

BOB, CAROL = "bob@example.net", "carol@example.net"


async def test_forwards_byte_exact_to_aiosmtpd() -> None:
    handler = Recorder()
    conn = make_connection([BOB, CAROL])
    async with aiosmtpd_server(handler) as port:
        runner = load("queue_smtp_forward", {"host": HOST, "port": port})
        with trio.fail_after(5):
            outcome = await run_queue(runner, conn)
    assert outcome.action is hooks.Action.OK
    assert outcome.reply.code == 250
    assert outcome.reply.text == ("Message queued as TXN1 (forwarded: Ok: queued as DOWNSTREAM1)",)
    [got] = handler.received
    assert got.content == final_message(conn)
    assert got.content.startswith(b"Received: from client.test")
    # Return-Path and Delivered-To belong to the final delivery agent, not to a relay hop.
    assert b"Return-Path:" not in got.content
    assert b"Delivered-To:" not in got.content
    assert b"X-Added: by" in got.content
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == (BOB, CAROL)
    size = [o for o in got.mail_options if o.startswith("SIZE=")]
    assert "BODY=8BITMIME" in got.mail_options
    assert int(size[0][5:]) >= len(got.content)


async def test_forwards_to_postfix_smtp_sink() -> None:
    conn = make_connection([BOB, CAROL], sender=None)
    async with smtp_sink() as sink:
        runner = load("queue_smtp_forward", {"host": HOST, "port": sink.port, "helo": "fwd.test"})
        with trio.fail_after(5):
            outcome = await run_queue(runner, conn)
        dumps = sink.dumps()
    assert outcome.action is hooks.Action.OK, outcome.reply
    [dump] = dumps
    # smtp-sink dumps lines with LF endings and one empty line after the message.
    assert dump.body == final_message(conn).replace(b"\r\n", b"\n") + b"\n"
    assert dump.proto == "ESMTP"
    assert dump.mail_args.startswith("<> ")
    assert "BODY=8BITMIME" in dump.mail_args
    assert dump.rcpt_args == (f"<{BOB}>", f"<{CAROL}>")


@pytest.mark.parametrize(
    ("recorder", "action", "code", "enhanced", "text"),
    [
        (
            Recorder(rcpt={CAROL: "550 5.1.1 no such user"}),
            hooks.Action.DENY,
            550,
            "5.1.1",
            f"<{CAROL}>: no such user",
        ),
        (
            Recorder(rcpt={CAROL: "450 4.2.1 try later"}),
            hooks.Action.DENYSOFT,
            450,
            "4.2.1",
            f"<{CAROL}>: try later",
        ),
        (  # a 4xx and a 5xx: the permanent one decides, a retry could not succeed
            Recorder(rcpt={BOB: "450 4.2.1 try later", CAROL: "550 5.1.1 no such user"}),
            hooks.Action.DENY,
            550,
            "5.1.1",
            f"<{CAROL}>: no such user",
        ),
        (
            Recorder(data="554 5.6.0 content refused"),
            hooks.Action.DENY,
            554,
            "5.6.0",
            "content refused",
        ),
        (
            Recorder(mail="553 5.7.1 sender refused"),
            hooks.Action.DENY,
            553,
            "5.7.1",
            "sender refused",
        ),
        (
            Recorder(data="421 4.3.2 going down"),
            hooks.Action.DENYSOFT,
            451,
            "4.3.2",
            "going down",
        ),
    ],
    ids=["rcpt-5xx", "rcpt-4xx", "rcpt-4xx-5xx", "data-5xx", "mail-5xx", "data-421"],
)
async def test_downstream_refusals_map_to_our_reply(
    recorder: Recorder, action: hooks.Action, code: int, enhanced: str, text: str
) -> None:
    async with aiosmtpd_server(recorder) as port:
        runner = load("queue_smtp_forward", {"host": HOST, "port": port})
        with trio.fail_after(5):
            outcome = await run_queue(runner, make_connection([BOB, CAROL]))
    assert outcome.action is action
    assert (outcome.reply.code, outcome.reply.enhanced, outcome.reply.text) == (
        code,
        enhanced,
        (text,),
    )
    if recorder.rcpt:  # one refused recipient: the message went to nobody
        assert recorder.received == []
        assert "DATA" not in recorder.commands


@pytest.mark.parametrize(
    ("flags", "action", "code"),
    [
        (("-f", "RCPT"), hooks.Action.DENY, 500),
        (("-r", "."), hooks.Action.DENYSOFT, 450),
        (("-Q", "DATA"), hooks.Action.DENYSOFT, 451),
        (("-q", "."), hooks.Action.DENYSOFT, 451),  # hangs up instead of answering the dot
    ],
    ids=["rcpt-hard", "dot-soft", "data-421", "dot-hangup"],
)
async def test_smtp_sink_refusals(flags: tuple[str, ...], action: hooks.Action, code: int) -> None:
    async with smtp_sink(*flags) as sink:
        runner = load("queue_smtp_forward", {"host": HOST, "port": sink.port})
        with trio.fail_after(5):
            outcome = await run_queue(runner, make_connection([BOB]))
    assert (outcome.action, outcome.reply.code) == (action, code), outcome.reply


async def test_downstream_down_is_a_soft_failure() -> None:
    runner = load("queue_smtp_forward", {"host": HOST, "port": unused_port()})
    outcome = await run_queue(runner, make_connection([BOB]))
    assert outcome.action is hooks.Action.DENYSOFT
    assert (outcome.reply.code, outcome.reply.enhanced) == (451, "4.4.1")


async def test_a_silent_downstream_meets_the_runner_deadline() -> None:
    async def mute(peer: Peer) -> None:
        await trio.sleep_forever()

    async with fake_server(mute) as port:
        runner = load("queue_smtp_forward", {"host": HOST, "port": port, "timeout": 0.3})
        with trio.fail_after(5):
            outcome = await run_queue(runner, make_connection([BOB]))
    assert (outcome.action, outcome.reply.code, outcome.reply.enhanced) == (
        hooks.Action.DENYSOFT,
        451,
        "4.3.0",
    )


async def test_per_domain_routes_and_unrouted_mail() -> None:
    default, other = Recorder(), Recorder()
    async with aiosmtpd_server(default) as port_a, aiosmtpd_server(other) as port_b:
        config = {
            "host": HOST,
            "port": port_a,
            "domains": {"Example.ORG": {"host": HOST, "port": port_b}},
        }
        runner = load("queue_smtp_forward", config)
        outcome = await run_queue(runner, make_connection([BOB, "dave@example.org", CAROL]))
        # Only domain routes: mail for other domains is left to the next queue plugin.
        only_routes = load("queue_smtp_forward", {"domains": config["domains"]})
        unrouted = await run_queue(only_routes, make_connection([BOB]))
        mixed = await run_queue(only_routes, make_connection([BOB, "dave@example.org"]))
    assert outcome.action is hooks.Action.OK
    assert [r.rcpt_tos for r in default.received] == [(BOB, CAROL)]
    assert [r.rcpt_tos for r in other.received] == [("dave@example.org",)]
    assert unrouted.action is hooks.Action.CONT
    assert mixed.action is hooks.Action.DENYSOFT
    assert len(other.received) == 1  # the mixed message went nowhere


@pytest.mark.parametrize("enable", [False, True])
async def test_queue_outbound_only_when_enabled(enable: bool) -> None:
    handler = Recorder()
    async with aiosmtpd_server(handler) as port:
        config = {"host": HOST, "port": port, "enable_outbound": enable}
        outcome = await run_queue(
            load("queue_smtp_forward", config), make_connection([BOB]), "queue_outbound"
        )
    assert outcome.action is (hooks.Action.OK if enable else hooks.Action.CONT)
    assert len(handler.received) == int(enable)


async def test_required_tls_and_auth_with_a_ca_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    handler = Recorder()
    kwargs: dict[str, Any] = {
        "tls_context": server_ctx,
        "require_starttls": True,
        "authenticator": authenticator("relay", "pw"),
        "auth_required": True,
    }
    async with aiosmtpd_server(handler, **kwargs) as port:
        config = {
            "domains": {
                "example.net": {
                    "host": "localhost",
                    "port": port,
                    "tls": "required",
                    "tls_ca_file": str(ca_file),
                    "auth_user": "relay",
                    "auth_password": "pw",
                }
            }
        }
        with trio.fail_after(5):
            outcome = await run_queue(load("queue_smtp_forward", config), make_connection([BOB]))
    assert outcome.action is hooks.Action.OK, outcome.reply
    assert handler.received[0].content.endswith(b"caf\xc3\xa9\r\n")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({}, "host is required"),
        ({"host": HOST, "colour": "blue"}, "unknown keys"),
        ({"host": HOST, "port": 0}, "port"),
        ({"host": HOST, "tls": "maybe"}, "tls must be"),
        ({"host": HOST, "auth_user": "u"}, "go together"),
        ({"host": HOST, "auth_user": "u", "auth_password": "p", "tls": "never"}, "AUTH needs"),
        ({"domains": {"a.test": {"port": 25}}}, "needs a host"),
    ],
)
def test_bad_config_is_refused(config: dict[str, object], match: str) -> None:
    with pytest.raises(hooks.PluginLoadError, match=match):
        load("queue_smtp_forward", config)
