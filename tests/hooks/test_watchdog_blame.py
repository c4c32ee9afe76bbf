"""The watchdog names the plugin that blocked, in a chain and in threads; strikes move it.

Real time (the watchdog measures the real clock), with short blocks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from trio_mta.hooks import (
    TIMEOUT_RESULT,
    BreakerSettings,
    HookRunner,
    PluginHealth,
    SlowStep,
    load_plugins,
    watch_loop,
)

from ._support import new_conn, write_plugin

SPIN = """
def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
"""

# A CPU loop in an async hook with no await: it finishes within the step, and the chain goes
# on to the next plugin in that same step.
CPU_HOG = (
    SPIN
    + """
class Plugin(Base):
    async def hook_rcpt(self, conn, rcpt, params):
        spin(0.25)
"""
)

# After an await, then a CPU loop, then it returns; the next plugin awaits.
CPU_HOG_AFTER_AWAIT = (
    SPIN
    + """
class Plugin(Base):
    async def hook_rcpt(self, conn, rcpt, params):
        await trio.sleep(0)
        spin(0.25)
"""
)

QUICK = """
class Plugin(Base):
    async def hook_rcpt(self, conn, rcpt, params):
        conn.notes["quick"] = True
"""

AWAITER = """
class Plugin(Base):
    async def hook_rcpt(self, conn, rcpt, params):
        await trio.sleep(0.01)
"""

THREAD_SPINNER = (
    SPIN
    + """
class Plugin(Base):
    async def hook_rcpt(self, conn, rcpt, params):
        seconds = self.config.get("seconds", 0.6)
        threading.Thread(target=spin, args=(seconds,), name="spinner").start()
"""
)


def named(reports: list[SlowStep]) -> list[SlowStep]:
    """The reports that name a plugin (a loaded machine may add slow steps of its own)."""
    return [r for r in reports if r.plugin is not None]


async def run_and_watch(
    plugin_dir: Path, names: list[str], health: PluginHealth | None = None
) -> list[SlowStep]:
    runner = HookRunner(load_plugins(names, directories=[plugin_dir]), health=health)
    reports: list[SlowStep] = []
    with watch_loop(0.05, reports.append, health):
        await trio.lowlevel.checkpoint()
        await runner.run("rcpt", new_conn(), None, None)
        await trio.lowlevel.checkpoint()
    return reports


@pytest.mark.parametrize("sampler", [False, True])
async def test_the_blocking_plugin_is_named_when_the_next_one_runs_in_the_same_step(
    plugin_dir: Path, sampler: bool
) -> None:
    write_plugin(plugin_dir, "hog", CPU_HOG)
    write_plugin(plugin_dir, "innocent", QUICK)
    health = PluginHealth() if sampler else None
    reports = await run_and_watch(plugin_dir, ["hog", "innocent"], health)
    assert [(r.plugin, r.hook) for r in named(reports)] == [("hog", "rcpt")]


async def test_the_blocking_plugin_is_named_when_the_next_one_is_suspended(
    plugin_dir: Path,
) -> None:
    write_plugin(plugin_dir, "hog", CPU_HOG_AFTER_AWAIT)
    write_plugin(plugin_dir, "innocent", AWAITER)
    reports = await run_and_watch(plugin_dir, ["hog", "innocent"])
    assert [(r.plugin, r.hook) for r in named(reports)] == [("hog", "rcpt")]


async def test_the_sampler_names_the_plugin_code_running_in_a_slow_step(
    plugin_dir: Path,
) -> None:
    write_plugin(plugin_dir, "hog", CPU_HOG)
    health = PluginHealth()
    load_plugins(["hog"], directories=[plugin_dir])  # only so the file is a plugin's
    runner = HookRunner(load_plugins(["hog"], directories=[plugin_dir]), health=health)
    reports: list[SlowStep] = []
    with watch_loop(0.05, reports.append, health) as watchdog:
        await trio.lowlevel.checkpoint()
        await runner.run("rcpt", new_conn(), None, None)
        sampled = watchdog.sampled
        await trio.lowlevel.checkpoint()
    assert sampled is not None
    assert sampled[1:] == ("hog", "rcpt")
    assert [(r.plugin, r.hook) for r in named(reports)] == [("hog", "rcpt")]


async def test_a_thread_left_spinning_is_named_and_its_plugin_blamed(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_plugin(plugin_dir, "spinner", THREAD_SPINNER)
    write_plugin(plugin_dir, "innocent", QUICK)
    health = PluginHealth(BreakerSettings(strikes=0))
    runner = HookRunner(
        load_plugins(["spinner", "innocent"], directories=[plugin_dir]), health=health
    )
    reports: list[SlowStep] = []
    with watch_loop(0.05, reports.append, health):
        await runner.run("rcpt", new_conn(), None, None)
        with trio.fail_after(5):
            while not named(reports):  # noqa: ASYNC110  # the sampler thread reports through the token
                await trio.sleep(0.02)
    assert "plugin spinner left a thread running after its rcpt call: spinner" in caplog.text
    report = named(reports)[0]
    assert report.plugin == "spinner"
    assert report.task == "thread spinner"
    rows = {r["plugin"]: r for r in health.snapshot()}
    assert rows["spinner"]["left_running"] == 1
    assert rows["innocent"]["left_running"] == 0
    for thread in threading.enumerate():
        if thread.name == "spinner":
            thread.join(5)


async def test_strikes_move_the_plugin_or_trip_it(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "hog", CPU_HOG)
    write_plugin(plugin_dir, "innocent", QUICK)
    plugins = load_plugins(["hog", "innocent"], directories=[plugin_dir])
    health = PluginHealth(BreakerSettings(strikes=3))
    struck: list[str] = []
    health.on_strikes = lambda plugin, why: struck.append(plugin)
    runner = HookRunner(plugins, health=health)
    reports: list[SlowStep] = []
    with watch_loop(0.05, reports.append, health):
        for _ in range(3):
            await trio.lowlevel.checkpoint()
            await runner.run("rcpt", new_conn(), None, None)
            await trio.lowlevel.checkpoint()
    assert [r.plugin for r in named(reports)] == ["hog"] * 3
    assert struck == ["hog"]
    # No sandbox runs: the hog's hooks are tripped; its calls now cost nothing.
    assert health.move(plugins, "hog", sandbox=False) == ([], ["rcpt"])
    conn = new_conn()
    started = time.perf_counter()
    assert await runner.run("rcpt", conn, None, None) == (TIMEOUT_RESULT, "hog")
    assert time.perf_counter() - started < 0.05
    # A reset (breaker.reset) gives it a fresh start.
    health.reset("hog")
    assert "hog" not in health.moved_plugins


async def test_a_quick_plugin_in_a_step_the_server_made_slow_is_not_named(
    plugin_dir: Path,
) -> None:
    write_plugin(plugin_dir, "quick", QUICK)
    health = PluginHealth(BreakerSettings(strikes=1))
    struck: list[str] = []
    health.on_strikes = lambda plugin, why: struck.append(plugin)
    runner = HookRunner(load_plugins(["quick"], directories=[plugin_dir]), health=health)
    reports: list[SlowStep] = []
    with watch_loop(0.05, reports.append, health):
        await trio.lowlevel.checkpoint()
        await runner.run("rcpt", new_conn(), None, None)  # finishes without a checkpoint
        time.sleep(0.2)  # noqa: ASYNC251  # then the server's own code holds the same step
        await trio.lowlevel.checkpoint()
    assert reports  # the step was slow
    assert named(reports) == []  # but not by the plugin that ran in it
    assert struck == []
