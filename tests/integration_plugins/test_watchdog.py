"""The daemon installs the loop watchdog: a plugin that blocks the event loop (``time.sleep``
in an async hook) is named, with its hook, in a log line; the connections beside it only
wait."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from tests.helpers.maildir import bodies_in

from .kit import app_config, message, running_app, write_plugin

CAP = 10  # seconds, real time

BLOCKER = """
class Plugin(Base):
    async def hook_ehlo(self, conn, name):
        if name == "slow.example":
            time.sleep(0.2)  # blocks the whole event loop, and returns in the same step
        return CONT
"""


async def test_a_blocking_hook_is_named_by_the_loop_watchdog(
    tmp_path: Path, plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_plugin(plugin_dir, "blocker", BLOCKER)
    var_dir = tmp_path / "var"
    config = app_config(
        var_dir, plugin_dir, ["blocker", "rcpt_to_host_list", "queue_maildir"], watchdog_ms=100
    )
    with trio.fail_after(CAP), caplog.at_level(logging.WARNING, "trio_mta.watchdog"):
        async with running_app(config) as mta:
            other = await mta.greeted()
            await other.command("MAIL FROM:<a@example.org>", 250)
            slow = await mta.greeted("slow.example")
            await other.command("RCPT TO:<u@example.test>", 250)
            await other.command("DATA", 354)
            await other.send(message("beside") + b".\r\n")
            await other.expect(250)
            await slow.command("QUIT", 221)

    named = [r.getMessage() for r in caplog.records if "by plugin" in r.getMessage()]
    assert len(named) == 1, named
    assert "by plugin blocker on hook ehlo" in named[0]
    blocked_ms = int(named[0].split("blocked for ")[1].split(" ms")[0])
    assert 200 <= blocked_ms < 1000
    assert bodies_in(var_dir, "example.test", "u") == [message("beside")]
