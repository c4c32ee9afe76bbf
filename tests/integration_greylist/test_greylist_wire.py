"""Greylisting as a client sees it: real loopback sockets to ``app.run`` in-process, time moved
by ``mock_clock.jump``; across a restart (a second ``app.run`` on the same state directory) and
a SIGHUP reload."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import smtplib
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_mta.config import load_config

from .conftest import daemon_config, real_time_cap, running, write_conf_dir

MESSAGE = b"Subject: greylist test\r\n\r\nhello\r\n"
GREYLISTED_300 = "4.7.1 Greylisted: please try again in 300 seconds"


def smtplib_attempt(
    host: str, port: int, sender: str, rcpt: str
) -> tuple[tuple[int, bytes], tuple[int, bytes] | None]:
    """(Worker thread.) One message: RCPT's reply, and the data's if RCPT was accepted."""
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail(sender)
        rcpt_reply = smtp.rcpt(rcpt)
        data_reply = smtp.data(MESSAGE) if rcpt_reply[0] == 250 else None
    return rcpt_reply, data_reply


async def test_smtplib_is_greylisted_then_accepted_after_the_delay(
    var_dir: Path, mock_clock: trio.testing.MockClock
) -> None:
    with real_time_cap():
        async with running(daemon_config(var_dir)) as mta:
            args = (mta.host, mta.port, "alice@example.org", "bob@example.test")
            rcpt, data = await trio.to_thread.run_sync(smtplib_attempt, *args)
            assert rcpt == (451, GREYLISTED_300.encode())
            assert data is None
            mock_clock.jump(299)
            rcpt, data = await trio.to_thread.run_sync(smtplib_attempt, *args)
            assert rcpt == (451, b"4.7.1 Greylisted: please try again in 1 seconds")
            mock_clock.jump(1)
            rcpt, data = await trio.to_thread.run_sync(smtplib_attempt, *args)
            assert rcpt[0] == 250
            assert data is not None
            assert data[0] == 250


async def test_only_accepted_recipients_are_greylisted_in_a_transaction(
    var_dir: Path, mock_clock: trio.testing.MockClock
) -> None:
    with real_time_cap():
        async with running(daemon_config(var_dir)) as mta:
            client = await mta.greeted()
            await client.command("MAIL FROM:<alice@example.org>", 250)
            reply = await client.command("RCPT TO:<bob@example.test>", 451, "4.7.1")
            assert reply.text == GREYLISTED_300
            # Refused before greylist is asked (not a local domain): no state for it.
            await client.command("RCPT TO:<someone@elsewhere.example>", 550, "5.7.1")
            await client.command("RCPT TO:<postmaster@example.test>", 250)  # never greylisted
            await client.command("DATA", 354)
            await client.send(MESSAGE + b".\r\n")
            await client.expect(250)
            await client.command("QUIT", 221)

            mock_clock.jump(300)
            client = await mta.greeted()
            reply = await client.transaction("alice@example.org", ["bob@example.test"], MESSAGE)
            assert reply.code == 250, reply
            await client.command("QUIT", 221)
    with contextlib.closing(sqlite3.connect(var_dir / "greylist.sqlite3")) as db:
        rows = list(db.execute("SELECT network, sender, recipient, passes FROM triplet"))
    assert rows == [("127.0.0.0/24", "alice@example.org", "bob@example.test", 1)]


async def test_a_restarted_daemon_keeps_passes_and_first_seen_times(
    var_dir: Path, mock_clock: trio.testing.MockClock
) -> None:
    config = daemon_config(var_dir)
    with real_time_cap():
        async with running(config) as mta:
            client = await mta.greeted()
            await client.command("MAIL FROM:<alice@example.org>", 250)
            await client.command("RCPT TO:<bob@example.test>", 451, "4.7.1")
            await client.command("QUIT", 221)
            mock_clock.jump(150)
            client = await mta.greeted()
            await client.command("MAIL FROM:<alice@example.org>", 250)
            await client.command("RCPT TO:<carol@example.test>", 451, "4.7.1")
            await client.command("QUIT", 221)
            mock_clock.jump(150)
            client = await mta.greeted()
            reply = await client.transaction("alice@example.org", ["bob@example.test"], MESSAGE)
            assert reply.code == 250, reply
            await client.command("QUIT", 221)

        async with running(config) as mta:  # a new daemon on the same state directory
            client = await mta.greeted()
            await client.command("MAIL FROM:<alice@example.org>", 250)
            await client.command("RCPT TO:<bob@example.test>", 250)  # passed before: passes
            reply = await client.command("RCPT TO:<carol@example.test>", 451, "4.7.1")
            assert reply.text == "4.7.1 Greylisted: please try again in 150 seconds"
            reply = await client.command("RCPT TO:<dave@example.test>", 451, "4.7.1")
            assert reply.text == GREYLISTED_300  # unknown: the daemon does not pass everyone
            await client.command("QUIT", 221)
            mock_clock.jump(150)
            client = await mta.greeted()
            await client.command("MAIL FROM:<alice@example.org>", 250)
            await client.command("RCPT TO:<carol@example.test>", 250)
            await client.command("QUIT", 221)


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> None:
    """Until ``count`` log records contain ``text`` (the test's real-time cap bounds it)."""
    while sum(text in r.getMessage() for r in caplog.records) < count:
        await trio.testing.wait_all_tasks_blocked()


async def test_a_reload_keeps_the_state_and_sees_the_old_generations_decisions(
    tmp_path: Path,
    var_dir: Path,
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    conf_dir = tmp_path / "conf"
    write_conf_dir(conf_dir, var_dir)
    with real_time_cap():
        async with running(load_config(conf_dir)) as mta:
            old = await mta.greeted()
            await old.command("MAIL FROM:<alice@example.org>", 250)
            await old.command("RCPT TO:<bob@example.test>", 451, "4.7.1")

            (conf_dir / "plugins" / "greylist.toml").write_text("delay = 600\n")
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for_log(caplog, "reload: plugin generation")
            # The connection from before the reload keeps the old generation (delay 300); its
            # decision is written after the new generation loaded the file.
            reply = await old.command("RCPT TO:<dave@example.test>", 451, "4.7.1")
            assert reply.text == GREYLISTED_300
            new = await mta.greeted()
            await new.command("MAIL FROM:<alice@example.org>", 250)
            reply = await new.command("RCPT TO:<carol@example.test>", 451, "4.7.1")
            assert reply.text == "4.7.1 Greylisted: please try again in 600 seconds"
            await new.command("QUIT", 221)
            await old.command("QUIT", 221)
            await wait_for_log(caplog, "shut down")  # the old generation, once its last client left

            mock_clock.jump(600)
            client = await mta.greeted()
            rcpts = ["bob@example.test", "dave@example.test", "carol@example.test"]
            reply = await client.transaction("alice@example.org", rcpts, MESSAGE)
            assert reply.code == 250, reply
            await client.command("QUIT", 221)
