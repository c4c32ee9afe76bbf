"""A client that hangs up while a plugin call blocks: the chain is cancelled within the sweep's
grace (not at the plugin's deadline, an hour away), the cleanup hooks of the other plugins still
run, and the connections alongside carry on. Virtual time over real sockets (``autojump_clock``):
had the hang-up gone unnoticed, the clock would have jumped to the deadline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_mta.server._hangup import GRACE

from .kit import JOURNAL_QUEUE, Journal, app_config, message, running_app, write_plugin

CAP = 10  # seconds, real time

SLEEPER = """
class Plugin(Base):
    async def hook_mail(self, conn, sender, params):
        if sender is None or sender.local_part != "sleepy":
            return CONT
        note(self, "start", conn=conn.id)
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            note(self, "cancelled", conn=conn.id)
            raise
        finally:
            note(self, "finally", conn=conn.id)
"""

WITNESS = """
class Plugin(Base):
    async def hook_reset_transaction(self, conn):
        note(self, "reset", conn=conn.id)

    async def hook_disconnect(self, conn):
        note(self, "disconnect", conn=conn.id)
"""


async def test_hanging_up_during_a_blocked_hook_cancels_it_and_cleanup_hooks_run(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    plugin_dir: Path,
    journal: Journal,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_plugin(plugin_dir, "sleeper", SLEEPER)
    write_plugin(plugin_dir, "witness", WITNESS)
    write_plugin(plugin_dir, "record_queue", JOURNAL_QUEUE)
    record = {"journal": str(journal.path)}
    config = app_config(
        tmp_path / "var",
        plugin_dir,
        ["sleeper", "witness", "rcpt_to_host_list", "record_queue"],
        {"sleeper": {**record, "timeout": 7200}, "witness": record, "record_queue": record},
    )
    with trio.fail_after(CAP), caplog.at_level(logging.INFO, "trio_mta.smtp"):
        async with running_app(config) as mta:
            # A transaction in progress on another connection, before and after the hang-up.
            other = await mta.greeted()
            await other.command("MAIL FROM:<b@example.org>", 250)
            await other.command("RCPT TO:<u@example.test>", 250)

            leaving = await mta.greeted()
            await leaving.send("MAIL FROM:<sleepy@example.org>\r\n")
            await trio.testing.wait_all_tasks_blocked()
            [start] = journal.entries("start")
            hung_up_at = trio.current_time()
            await leaving.stream.aclose()
            await trio.sleep(GRACE)
            await trio.testing.wait_all_tasks_blocked()
            [cancelled] = journal.entries("cancelled")

            await other.command("DATA", 354)
            await other.send(message("other") + b".\r\n")
            await other.expect(250)
            await other.command("QUIT", 221)
            await trio.testing.wait_all_tasks_blocked()

    conn = start["conn"]
    [final] = journal.entries("finally")
    assert cancelled["conn"] == final["conn"] == conn
    # Noticed once the call had blocked for the grace: long before its hour-long deadline.
    assert hung_up_at <= final["t"] <= start["t"] + GRACE
    # The aborted transaction was reset, then the connection's disconnect hook ran.
    mine = [e["event"] for e in journal.entries(plugin="witness") if e["conn"] == conn]
    assert mine == ["reset", "disconnect"]
    others = [e for e in journal.entries("disconnect") if e["conn"] != conn]
    assert len(others) == 1
    [queued] = journal.entries("queued")
    assert queued["rcpts"] == ["u@example.test"]
    assert any(
        f"conn={conn} " in r.getMessage() and "hung up during a plugin call" in r.getMessage()
        for r in caplog.records
    )
