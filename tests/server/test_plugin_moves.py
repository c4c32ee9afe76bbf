"""The plugin host acts on the watchdog's strikes: trip at once, start a sandbox, move there."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import trio
import trio.testing

from trio_mta.config import PluginsConfig
from trio_mta.hooks import (
    TIMEOUT_RESULT,
    Action,
    BreakerSettings,
    Connection,
    PluginHealth,
    ProcessSandbox,
    Result,
    load_plugins,
)
from trio_mta.server import PluginHost

HOG = """
import os, time
from trio_mta.hooks import Plugin as Base, OK

class Plugin(Base):
    async def hook_helo(self, conn, name):
        conn.notes["pid"] = os.getpid()
        return OK
"""


async def test_strikes_move_the_plugin_to_a_sandbox_started_for_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "hog.py").write_text(HOG)
    plugins = load_plugins(["hog"], directories=[tmp_path])
    moves: list[tuple[str, tuple[str, ...], str]] = []
    host = PluginHost(
        plugins,
        health=PluginHealth(BreakerSettings(strikes=2)),
        sandbox_factory=functools.partial(
            ProcessSandbox.from_config, PluginsConfig(sandbox_workers=1)
        ),
        on_moved=lambda plugin, hooks, why, to: moves.append((plugin, hooks, to)),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        handler = host.handler()
        runner = handler.runner
        conn = Connection("c1", "mx", "192.0.2.1", 40000, "127.0.0.1", 25, 0.0)
        assert (await runner.run("helo", conn, "x"))[0].action is Action.OK
        assert conn.notes["pid"] == os.getpid()
        host.health.strike("hog", "it blocked 200 ms (hook helo)")
        host.health.strike("hog", "it blocked 200 ms (hook helo)")
        assert moves == [("hog", ("helo",), "sandbox")]
        # Its next call waits for the sandbox being started for it, then runs there.
        del conn.notes["pid"]
        with trio.fail_after(30):
            assert (await runner.run("helo", conn, "x"))[0].action is Action.OK
        assert conn.notes["pid"] != os.getpid()  # ran in a worker process
        assert host.health.snapshot()[0]["moved_to_sandbox"] is True
        # breaker.reset through the control command brings it back in-process.
        assert await host.commands()["breaker.reset"]({"plugin": "hog"}) == {
            "plugin": "hog",
            "hooks": ["helo"],
        }
        assert (await runner.run("helo", conn, "x"))[0].action is Action.OK
        assert conn.notes["pid"] == os.getpid()
        nursery.cancel_scope.cancel()


async def test_without_a_way_to_start_a_sandbox_strikes_trip_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "hog.py").write_text(HOG)
    moves: list[tuple[str, tuple[str, ...], str]] = []
    host = PluginHost(
        load_plugins(["hog"], directories=[tmp_path]),
        health=PluginHealth(BreakerSettings(strikes=1)),
        on_moved=lambda plugin, hooks, why, to: moves.append((plugin, hooks, to)),
    )
    runner = host.handler().runner
    host.health.strike("hog", "it blocked 200 ms (hook helo)")
    assert moves == [("hog", ("helo",), "tripped")]
    conn = Connection("c1", "mx", "192.0.2.1", 40000, "127.0.0.1", 25, 0.0)
    assert await runner.run("helo", conn, "x") == (TIMEOUT_RESULT, "hog")
    assert "pid" not in conn.notes


class SlowSandbox:
    """A sandbox that takes 10 s to start, then answers OK."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(10)
        task_status.started()
        await trio.sleep_forever()

    async def call(self, entry: object, conn: object, args: object) -> Result:
        return Result(Action.OK)


async def test_calls_waiting_for_the_sandbox_to_start_do_not_trip_the_breaker(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    (tmp_path / "hog.py").write_text(HOG)
    plugins = load_plugins(["hog"], directories=[tmp_path], configs={"hog": {"timeout": 1}})
    health = PluginHealth(BreakerSettings(failures=2, strikes=1))
    host = PluginHost(plugins, health=health, sandbox_factory=SlowSandbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.serve)
        runner = host.handler().runner
        conn = Connection("c1", "mx", "192.0.2.1", 40000, "127.0.0.1", 25, 0.0)
        health.strike("hog", "it blocked 200 ms (hook helo)")
        for _ in range(3):  # each waits for the sandbox until its deadline
            assert await runner.run("helo", conn, "x") == (TIMEOUT_RESULT, "hog")
        row = health.snapshot()[0]
        assert (row["breaker"], row["timeouts"]) == ("closed", 3)
        await trio.sleep(10)
        assert (await runner.run("helo", conn, "x"))[0].action is Action.OK
        assert "pid" not in conn.notes  # answered by the (fake) sandbox
        nursery.cancel_scope.cancel()
