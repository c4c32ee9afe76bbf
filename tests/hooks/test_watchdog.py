"""The loop watchdog names the plugin and hook that held the event loop (real time)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import trio

from trio_mta.hooks import HookRunner, LoopWatchdog, SlowStep, load_plugins, watch_loop

from ._support import new_conn, write_plugin

BLOCKER = """
class Plugin(Base):
    async def hook_data(self, conn):
        time.sleep(0.2)  # returns in the same step it blocked in

    async def hook_helo(self, conn, name):
        await trio.sleep(0)
        time.sleep(0.2)  # blocks in a step that began inside the hook
        await trio.sleep(0)

    async def hook_mail(self, conn, sender, params):
        for _ in range(200):
            await trio.sleep(0)
"""


@pytest.mark.parametrize(("hook", "args"), [("data", ()), ("helo", ("client.example",))])
async def test_a_blocking_hook_is_reported_by_plugin_and_hook(
    plugin_dir: Path, hook: str, args: tuple[object, ...]
) -> None:
    write_plugin(plugin_dir, "quiet", "class Plugin(Base):\n    pass\n")
    write_plugin(plugin_dir, "blocker", BLOCKER)
    runner = HookRunner(load_plugins(["quiet", "blocker"], directories=[plugin_dir]))
    reports: list[SlowStep] = []
    with watch_loop(0.1, reports.append):
        await trio.lowlevel.checkpoint()  # installed mid-step: measuring starts with the next step
        await runner.run(hook, new_conn(), *args)
        await trio.lowlevel.checkpoint()  # end the step while the instrument is still installed
    [report] = reports
    assert (report.plugin, report.hook) == ("blocker", hook)
    assert report.task == trio.lowlevel.current_task().name
    assert 0.2 <= report.duration < 1


async def test_normal_steps_are_not_reported(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "blocker", BLOCKER)
    runner = HookRunner(load_plugins(["blocker"], directories=[plugin_dir]))
    reports: list[SlowStep] = []
    with watch_loop(0.05, reports.append):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(runner.run, "mail", new_conn(), None, None)
    assert reports == []


async def test_a_slow_step_outside_any_hook_has_no_plugin() -> None:
    reports: list[SlowStep] = []
    with watch_loop(0.05, reports.append):
        await trio.lowlevel.checkpoint()
        time.sleep(0.1)  # noqa: ASYNC251  # the thing being detected
        await trio.lowlevel.checkpoint()
    assert [(r.plugin, r.hook) for r in reports] == [(None, None)]


async def test_a_failing_callback_is_logged_and_the_watchdog_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[SlowStep] = []

    def report(step: SlowStep) -> None:
        seen.append(step)
        raise RuntimeError("callback bug")

    with watch_loop(0.01, report) as watchdog:
        for _ in range(2):
            await trio.lowlevel.checkpoint()
            time.sleep(0.02)  # noqa: ASYNC251  # the thing being detected
        await trio.lowlevel.checkpoint()
        assert isinstance(watchdog, LoopWatchdog)
    assert len(seen) == 2
    assert "report callback failed" in caplog.text


def test_the_default_report_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopWatchdog(0.05)
    with caplog.at_level(logging.WARNING, logger="trio_mta.watchdog"):
        watchdog.report(SlowStep(0.25, "conn-1", "blocker", "data"))
    assert "blocked for 250 ms by plugin blocker on hook data (task conn-1)" in caplog.text
