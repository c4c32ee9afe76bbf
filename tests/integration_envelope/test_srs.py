"""SRS through the daemon over real sockets: a message forwarded by queue_smtp_forward and one
relayed through the built-in queue reach aiosmtpd servers with an SRS0 sender; a bounce to
that address from an outside MTA is accepted and relayed to the original sender's server;
forged and expired addresses get their exact refusals; the queue's own bounce of a forwarded
message goes straight to the original sender."""

from __future__ import annotations

import email
import email.policy
import time
from pathlib import Path

import trio

from plugins._envelope_tags import day_number
from plugins.srs import Codec, Decoded, Status
from tests.integration_plugins.kit import running_app
from tests.smtpclient.peers import HOST, Received, Recorder, aiosmtpd_server

from .kit import CAP, OUTSIDE, SECRET, envelope_config, message, rcpt_reply, send, wait_received

SRS_DOMAIN = "srs.example.test"
CODEC = Codec((SECRET.encode(),))


def original_of(srs_sender: str) -> Decoded:
    local, _, domain = srs_sender.rpartition("@")
    assert domain == SRS_DOMAIN
    return CODEC.reverse(local, day_number(time.time()))


def null_sender(got: Received) -> bool:
    return got.mail_from in ("", "<>")


async def test_forward_rewrite_and_the_way_back(tmp_path: Path) -> None:
    final = Recorder()  # where queue_smtp_forward hands forward.test mail
    origin = Recorder()  # the original sender's server (sender.test)
    dest = Recorder(rcpt={"reject@dest.test": "550 5.1.1 No such user here"})
    with trio.fail_after(CAP):
        async with (
            aiosmtpd_server(final) as final_port,
            aiosmtpd_server(origin) as origin_port,
            aiosmtpd_server(dest) as dest_port,
        ):
            config = envelope_config(
                tmp_path / "var",
                ["relay_acl", "srs", "rcpt_to_host_list", "queue_smtp_forward", "queue_maildir"],
                {
                    "srs": {"secret": SECRET, "domain": SRS_DOMAIN},
                    "rcpt_to_host_list": {"host_list": ["example.test", "forward.test"]},
                    "queue_smtp_forward": {
                        "domains": {"forward.test": {"host": HOST, "port": final_port}},
                        "timeout": 10.0,
                    },
                },
                {"sender.test": origin_port, "dest.test": dest_port},
            )
            async with running_app(config) as mta:
                # 1. An outside MTA's message for a forwarded domain: queue_smtp_forward sends
                #    it on, with our SRS address as the sender.
                body = message("forwarded")
                answer = await send(
                    mta, "alice@sender.test", ["bob@forward.test"], body, source=OUTSIDE
                )
                assert answer.code == 250, answer
                [forwarded] = final.received
                assert forwarded.mail_from.endswith("@" + SRS_DOMAIN)
                assert forwarded.mail_from.startswith("SRS0=")
                assert original_of(forwarded.mail_from) == Decoded(
                    Status.VALID, "alice", "sender.test"
                )
                assert forwarded.content.endswith(body)
                srs_address = forwarded.mail_from

                # 2. The final server bounces it: an outside MTA sends the bounce to the SRS
                #    address. Accepted, and relayed (through the queue) to the original sender.
                client_says = await rcpt_reply(mta, "", "nobody@elsewhere.test", source=OUTSIDE)
                assert client_says == "550 5.7.1 Relaying denied"
                bounce = b"Subject: Undelivered Mail\r\n\r\nYour message bounced.\r\n"
                answer = await send(mta, "", [srs_address], bounce, source=OUTSIDE)
                assert answer.code == 250, answer
                [returned] = await wait_received(origin)
                assert returned.rcpt_tos == ("alice@sender.test",)
                assert null_sender(returned)
                assert returned.content.endswith(bounce)

                # 3. Forged and expired addresses.
                forged = srs_address.replace("=alice@", "=mallory@")
                assert await rcpt_reply(mta, "", forged, source=OUTSIDE) == (
                    "550 5.1.1 Invalid SRS address: bad signature"
                )
                old = CODEC.forward("alice", "sender.test", day_number(time.time()) - 30)
                assert await rcpt_reply(mta, "", f"{old}@{SRS_DOMAIN}", source=OUTSIDE) == (
                    "550 5.7.1 SRS address expired"
                )
                malformed = f"SRS0=abcd@{SRS_DOMAIN}"
                assert await rcpt_reply(mta, "", malformed, source=OUTSIDE) == (
                    "550 5.1.1 Invalid SRS address: malformed"
                )

                # 4. A relaying client's mail with a foreign sender, through the built-in
                #    queue: the next hop sees the SRS sender; the recipient it refuses makes a
                #    bounce that goes straight to the original sender, not to our SRS address.
                answer = await send(
                    mta, "carol@sender.test", ["dave@dest.test", "reject@dest.test"], message("q")
                )
                assert answer.code == 250, answer
                [relayed] = await wait_received(dest)
                assert relayed.rcpt_tos == ("dave@dest.test",)
                assert original_of(relayed.mail_from) == Decoded(
                    Status.VALID, "carol", "sender.test"
                )
                _, dsn = await wait_received(origin, 2)
    assert dsn.rcpt_tos == ("carol@sender.test",)
    assert null_sender(dsn)
    report = email.message_from_bytes(dsn.content, policy=email.policy.compat32)
    assert report.get_content_type() == "multipart/report"
    assert b"reject@dest.test" in dsn.content
