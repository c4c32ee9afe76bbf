"""The runner blames the plugin that timed out, and counts a call's deadline from its start."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from trio_mta.hooks import TIMEOUT_RESULT, Action, HookRunner, Result, load_plugins

from ._support import Calls, new_conn, write_plugin

SWALLOWER = """
class Plugin(Base):
    timeout = 1
    on_timeout = denysoft("swallower gave up")

    async def hook_mail(self, conn, sender, params):
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            pass  # the fault: its deadline's Cancelled swallowed
        conn.notes["swallower returned at"] = trio.current_time()
"""

INNOCENT = """
class Plugin(Base):
    timeout = 5

    async def hook_mail(self, conn, sender, params):
        await trio.sleep(0.1)
        conn.notes["innocent ran"] = True
        return ok("innocent says yes")
"""


async def test_a_plugin_that_swallows_cancelled_is_blamed_not_the_next_one(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    write_plugin(plugin_dir, "swallower", SWALLOWER)
    write_plugin(plugin_dir, "innocent", INNOCENT)
    calls = Calls()
    runner = HookRunner(
        load_plugins(["swallower", "innocent"], directories=[plugin_dir]), observe=calls
    )
    conn = new_conn()
    start = trio.current_time()
    result, plugin = await runner.run("mail", conn, None, None)
    assert plugin == "swallower"
    assert (result.action, result.message) == (Action.DENYSOFT, ("swallower gave up",))
    assert trio.current_time() - start == 1
    assert "innocent ran" not in conn.notes
    assert [(c.plugin, c.timed_out) for c in calls.seen] == [("swallower", True)]
    assert "plugin swallower timed out on mail after 1s" in caplog.text
    assert "innocent timed out" not in caplog.text


async def test_a_swallower_with_cont_timeout_result_lets_the_chain_go_on(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_plugin(
        plugin_dir, "swallower", SWALLOWER.replace('denysoft("swallower gave up")', "CONT")
    )
    write_plugin(plugin_dir, "innocent", INNOCENT)
    runner = HookRunner(load_plugins(["swallower", "innocent"], directories=[plugin_dir]))
    conn = new_conn()
    start = trio.current_time()
    result, plugin = await runner.run("mail", conn, None, None)
    assert (result.action, plugin) == (Action.OK, "innocent")
    assert trio.current_time() - start == pytest.approx(1.1)


COMPUTES_FIRST = """
class Plugin(Base):
    timeout = 2

    async def hook_mail(self, conn, sender, params):
        # 1.5 s of work before the first await (the mock clock stands for the CPU time).
        trio.lowlevel.current_clock().jump(1.5)
        try:
            await trio.sleep_forever()
        finally:
            conn.notes["ended at"] = trio.current_time()
"""


async def test_the_deadline_counts_from_the_call_start_not_its_first_await(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_plugin(plugin_dir, "slowstart", COMPUTES_FIRST)
    runner = HookRunner(load_plugins(["slowstart"], directories=[plugin_dir]))
    conn = new_conn()
    start = trio.current_time()
    assert await runner.run("mail", conn, None, None) == (TIMEOUT_RESULT, "slowstart")
    assert conn.notes["ended at"] == pytest.approx(start + 2)


async def test_a_deadline_already_passed_at_the_first_await_cancels_it_at_once(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_plugin(plugin_dir, "slowstart", COMPUTES_FIRST.replace("jump(1.5)", "jump(3)"))
    runner = HookRunner(load_plugins(["slowstart"], directories=[plugin_dir]))
    conn = new_conn()
    start = trio.current_time()
    assert await runner.run("mail", conn, None, None) == (TIMEOUT_RESULT, "slowstart")
    assert conn.notes["ended at"] == pytest.approx(start + 3)


async def test_a_result_after_a_swallowed_deadline_is_still_a_timeout(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_plugin(plugin_dir, "late", SWALLOWER.replace("pass  #", "return OK  #"))
    result, plugin = await HookRunner(load_plugins(["late"], directories=[plugin_dir])).run(
        "mail", new_conn(), None, None
    )
    assert (result, plugin) == (Result(Action.DENYSOFT, message=("swallower gave up",)), "late")
