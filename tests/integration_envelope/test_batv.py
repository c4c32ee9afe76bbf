"""BATV (with SRS beside it, on a domain that is both local and signed) through the daemon over
real sockets: our user's relayed mail reaches an aiosmtpd server with a prvs sender, a foreign
sender's with an SRS one; bounces from an outside MTA to an unsigned address of ours are
refused 550 5.7.1, to the signed address delivered to the plain Maildir mailbox; the queue's
own bounce of a signed message lands in the plain mailbox too."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import trio

from plugins._envelope_tags import day_number
from plugins.srs import Codec, Status
from tests.helpers.maildir import mailbox_new
from tests.integration_plugins.kit import running_app
from tests.smtpclient.peers import Recorder, aiosmtpd_server

from .kit import (
    BATV_KEY,
    CAP,
    OUTSIDE,
    SECRET,
    envelope_config,
    message,
    rcpt_reply,
    send,
    wait_files,
    wait_received,
)

UNSIGNED = "550 5.7.1 Bounce to an unsigned address refused (BATV)"
BOUNCE = b"Subject: Returned mail\r\n\r\nThis is a bounce.\r\n"


def prvs_valid(address: str) -> bool:
    """The draft's check, done here from its definition (key 0, max_age 7)."""
    local, _, domain = address.rpartition("@")
    prefix, tag, plain = local.split("=", 2)
    assert prefix == "prvs"
    assert tag[0] == "0"
    source = f"{tag[:4]}{plain}@{domain}".lower().encode()
    expected = hmac.new(BATV_KEY.encode(), source, hashlib.sha1).digest()[:3].hex()
    days_left = (int(tag[1:4]) - day_number(time.time())) % 1000
    return tag[4:] == expected and 0 <= days_left <= 7


async def test_signed_senders_and_bounce_checks(tmp_path: Path) -> None:
    var = tmp_path / "var"
    dest = Recorder(rcpt={"reject@dest.test": "550 5.1.1 No such user here"})
    origin = Recorder()
    with trio.fail_after(CAP):
        async with aiosmtpd_server(dest) as dest_port, aiosmtpd_server(origin) as origin_port:
            config = envelope_config(
                var,
                ["relay_acl", "srs", "batv", "rcpt_to_host_list", "queue_maildir"],
                {
                    "srs": {"secret": SECRET, "domain": "example.test"},
                    "batv": {"keys": [BATV_KEY]},
                },
                {"dest.test": dest_port, "sender.test": origin_port},
            )
            async with running_app(config) as mta:
                # Our user's mail (relay_acl lets 127.0.0.1 relay): signed.
                answer = await send(mta, "alice@example.test", ["bob@dest.test"], message("m1"))
                assert answer.code == 250, answer
                # A foreign sender's: rewritten by SRS, at the same domain, and not signed.
                answer = await send(mta, "carol@sender.test", ["bob@dest.test"], message("m2"))
                assert answer.code == 250, answer
                first, second = await wait_received(dest, 2)
                [signed] = [g.mail_from for g in (first, second) if g.mail_from[:5] == "prvs="]
                [srs] = [g.mail_from for g in (first, second) if g.mail_from[:5] == "SRS0="]
                assert signed.endswith("=alice@example.test")
                assert prvs_valid(signed)
                assert srs.endswith("=sender.test=carol@example.test")

                # Bounces from outside: unsigned refused, signed delivered to the plain mailbox.
                assert await rcpt_reply(mta, "", "alice@example.test", source=OUTSIDE) == UNSIGNED
                forged = signed.replace("=alice@", "=bob@")
                assert await rcpt_reply(mta, "", forged, source=OUTSIDE) == (
                    "550 5.7.1 Bounce to an address with an invalid BATV signature refused"
                )
                assert await rcpt_reply(mta, "", "postmaster@example.test", source=OUTSIDE) == (
                    "250 2.1.5 Recipient OK"
                )
                answer = await send(mta, "", [signed], BOUNCE, source=OUTSIDE)
                assert answer.code == 250, answer
                [stored] = await wait_files(mailbox_new(var, "example.test", "alice"))
                assert stored.endswith(BOUNCE)
                assert b"for <alice@example.test>" in stored  # the tag came off before DATA

                # Not a bounce (an auto-reply to the envelope sender): the tag just comes off.
                reply = b"Subject: Out of office\r\n\r\nAway.\r\n"
                answer = await send(mta, "robot@far.test", [signed], reply, source=OUTSIDE)
                assert answer.code == 250, answer
                await wait_files(mailbox_new(var, "example.test", "alice"), 2)

                # A bounce to the SRS address goes back to the foreign sender's server.
                answer = await send(mta, "", [srs], BOUNCE, source=OUTSIDE)
                assert answer.code == 250, answer
                [returned] = await wait_received(origin)
                assert returned.rcpt_tos == ("carol@sender.test",)
                assert returned.content.endswith(BOUNCE)

                # Our queue's own bounce of a signed message: to the plain mailbox.
                answer = await send(mta, "alice@example.test", ["reject@dest.test"], message("m3"))
                assert answer.code == 250, answer
                stored_all = await wait_files(mailbox_new(var, "example.test", "alice"), 3)
    dsn = [m for m in stored_all if b"multipart/report" in m]
    assert len(dsn) == 1
    assert b"reject@dest.test" in dsn[0]
    assert not mailbox_new(var, "example.test", "prvs").parent.exists()
    assert Codec((SECRET.encode(),)).reverse(srs.split("@")[0], day_number(time.time())).status is (
        Status.VALID
    )
