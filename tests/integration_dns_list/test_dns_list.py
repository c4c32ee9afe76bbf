"""Over real sockets: the daemon (``app.run``) with ``dns_list``, clients connecting from chosen
loopback addresses, and dnsmasq serving the lists (see conftest for the zones)."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.helpers.smtp import LineClient
from tests.mailauth.conftest import SilentDNS

from .conftest import BL_TXT, BOTH, LISTED, UNLISTED, DNSLists, mta_config, running

CAP = 15  # seconds, real time, for a whole test
MESSAGE = b"Subject: dns_list\r\n\r\nhello\r\n"
LISTED_TEXT = f"5.7.1 Client host [{LISTED}] blocked using bl.test; {BL_TXT}"


async def deliver(client: LineClient) -> None:
    """EHLO, a whole transaction accepted (250), QUIT."""
    await client.command("EHLO client.example", 250)
    reply = await client.transaction("alice@example.org", ["bob@example.test"], MESSAGE)
    assert reply.code == 250, reply
    await client.command("QUIT", 221)


async def test_a_listed_client_is_refused_at_every_rcpt_with_the_zone_named(
    dns_lists: DNSLists, var_dir: Path
) -> None:
    with trio.fail_after(CAP):
        async with running(mta_config(var_dir, dns_lists.nameserver)) as mta:
            client = await mta.connect(LISTED)
            await client.expect(220)  # reject_at = "rcpt": greeted as anyone
            await client.command("EHLO client.example", 250)
            await client.command("MAIL FROM:<alice@example.org>", 250)
            for rcpt in ("bob@example.test", "carol@example.test"):
                reply = await client.command(f"RCPT TO:<{rcpt}>", 550, "5.7.1")
                assert reply.lines == (LISTED_TEXT,)
            await client.command("DATA", 503)  # no recipient was accepted
            await client.command("QUIT", 221)


async def test_smtplib_from_the_listed_address_sees_the_refusal(
    dns_lists: DNSLists, var_dir: Path
) -> None:
    def send(port: int) -> smtplib.SMTPRecipientsRefused:
        with smtplib.SMTP("127.0.0.1", port, source_address=(LISTED, 0), timeout=CAP) as smtp:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.sendmail("alice@example.org", ["bob@example.test"], MESSAGE)
            return refused.value

    with trio.fail_after(CAP):
        async with running(mta_config(var_dir, dns_lists.nameserver)) as mta:
            refused = await trio.to_thread.run_sync(send, mta.port)
    assert refused.recipients == {"bob@example.test": (550, LISTED_TEXT.encode())}


@pytest.mark.parametrize("source", [UNLISTED, "127.0.0.1"])
async def test_an_unlisted_client_delivers(dns_lists: DNSLists, var_dir: Path, source: str) -> None:
    with trio.fail_after(CAP):
        async with running(mta_config(var_dir, dns_lists.nameserver)) as mta:
            client = await mta.connect(source)
            await client.expect(220)
            await deliver(client)


async def test_reject_at_connect_answers_the_greeting_with_554(
    dns_lists: DNSLists, var_dir: Path
) -> None:
    # The lists' server comes from [resolver] nameservers here, as most operators set it.
    config = mta_config(var_dir, dns_lists.nameserver, via_resolver=True, reject_at="connect")
    with trio.fail_after(CAP):
        async with running(config) as mta:
            client = await mta.connect(LISTED)
            greeting = await client.expect(554, "5.7.1")
            assert greeting.lines == (LISTED_TEXT,)
            await client.read_to_eof()  # and the server closes the connection
            assert client.eof
            other = await mta.connect(UNLISTED)
            await other.expect(220)
            await deliver(other)


async def test_an_allow_listed_client_delivers_though_block_listed(
    dns_lists: DNSLists, var_dir: Path
) -> None:
    for reject_at in ("rcpt", "connect"):
        config = mta_config(var_dir, dns_lists.nameserver, reject_at=reject_at)
        with trio.fail_after(CAP):
            async with running(config) as mta:
                client = await mta.connect(BOTH)
                await client.expect(220)
                await deliver(client)
    # Without the allow list, the same client is refused: bl.test does list it.
    config = mta_config(var_dir, dns_lists.nameserver, zones=[{"zone": "bl.test"}])
    with trio.fail_after(CAP):
        async with running(config) as mta:
            client = await mta.connect(BOTH)
            await client.expect(220)
            await client.command("EHLO client.example", 250)
            await client.command("MAIL FROM:<alice@example.org>", 250)
            reply = await client.command("RCPT TO:<bob@example.test>", 550, "5.7.1")
            assert reply.lines == (f"5.7.1 Client host [{BOTH}] blocked using bl.test",)


async def test_a_silent_dns_server_costs_the_deadline_and_mail_flows(
    autojump_clock: trio.testing.MockClock, silent_dns: SilentDNS, var_dir: Path
) -> None:
    # Virtual time over real loopback sockets: the clock moves only when every task waits, so
    # the plugin's own deadline is what ends the wait for the silent server.
    nameserver = f"127.0.0.1:{silent_dns.port}"
    with trio.fail_after(CAP):
        async with running(mta_config(var_dir, nameserver, timeout=3.0)) as mta:
            start = trio.current_time()
            client = await mta.connect(LISTED)
            await client.expect(220)
            assert trio.current_time() - start == pytest.approx(3.0 - 0.05)
            # The client's lookups and the zones' test entries, at least one each.
            assert silent_dns.queries >= 4
            await deliver(client)


async def test_a_silent_dns_server_with_soft_on_error_defers(
    autojump_clock: trio.testing.MockClock, silent_dns: SilentDNS, var_dir: Path
) -> None:
    nameserver = f"127.0.0.1:{silent_dns.port}"
    config = mta_config(var_dir, nameserver, timeout=3.0, soft_on_error=True)
    with trio.fail_after(CAP):
        async with running(config) as mta:
            client = await mta.connect(UNLISTED)
            await client.expect(220)
            await client.command("EHLO client.example", 250)
            await client.command("MAIL FROM:<alice@example.org>", 250)
            reply = await client.command("RCPT TO:<bob@example.test>", 451, "4.7.1")
            assert reply.lines == (
                f"4.7.1 Cannot check [{UNLISTED}] against bl.test now; try again later",
            )
            await client.command("QUIT", 221)
