"""The circuit breaker per (plugin, hook), the health API and the plugin thread limiter."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_mta.admin import Metrics
from trio_mta.events import EventBus, PluginBreaker
from trio_mta.hooks import (
    TIMEOUT_RESULT,
    Action,
    BreakerChange,
    BreakerSettings,
    BreakerState,
    HookRunner,
    PluginHealth,
    Result,
    load_plugins,
)
from trio_mta.protocol import Address
from trio_mta.server import breaker_reporter

from ._support import Calls, new_conn, write_plugin

# Hangs when the sender's local part is "bad", answers at once otherwise.
FLAKY = """
class Plugin(Base):
    timeout = 2

    async def hook_mail(self, conn, sender, params):
        conn.notes["calls"] = conn.notes.get("calls", 0) + 1
        if self.config.get("broken") or (sender is not None and sender.local_part == "bad"):
            await trio.sleep_forever()
        await trio.sleep(0)
        return ok("fine")
"""

BAD = Address("bad", "example.org")
GOOD = Address("good", "example.org")


def runner_for(
    plugin_dir: Path,
    config: dict[str, object] | None = None,
    settings: BreakerSettings | None = None,
) -> tuple[HookRunner, list[BreakerChange]]:
    write_plugin(plugin_dir, "flaky", FLAKY)
    changes: list[BreakerChange] = []
    health = PluginHealth(settings or BreakerSettings(3, 60, 30), on_change=changes.append)
    plugins = load_plugins(["flaky"], directories=[plugin_dir], configs={"flaky": config or {}})
    return HookRunner(plugins, health=health), changes


async def test_failures_in_a_row_trip_it_then_calls_are_answered_at_once(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, changes = runner_for(plugin_dir)
    conn = new_conn()
    for _ in range(3):
        assert await runner.run("mail", conn, BAD, None) == (TIMEOUT_RESULT, "flaky")
    assert [(c.state, c.plugin, c.hook) for c in changes] == [(BreakerState.OPEN, "flaky", "mail")]
    assert "3 calls in a row timed out" in changes[0].reason
    calls = conn.notes["calls"]
    start = trio.current_time()
    # Open: even a good message gets the timeout result, at once, without calling the plugin.
    assert await runner.run("mail", conn, GOOD, None) == (TIMEOUT_RESULT, "flaky")
    assert trio.current_time() == start
    assert conn.notes["calls"] == calls
    (row,) = runner.health.snapshot()
    assert (row["breaker"], row["timeouts"], row["short_circuited"]) == ("open", 3, 1)


async def test_after_the_cooldown_one_probe_closes_it(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, changes = runner_for(plugin_dir)
    conn = new_conn()
    for _ in range(3):
        await runner.run("mail", conn, BAD, None)
    await trio.sleep(30)
    assert await runner.run("mail", conn, GOOD, None) == (Result(Action.OK, "fine"), "flaky")
    assert [c.state for c in changes] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


async def test_a_failed_probe_opens_it_for_another_cooldown_and_probes_run_one_at_a_time(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, changes = runner_for(plugin_dir)
    conn = new_conn()
    for _ in range(3):
        await runner.run("mail", conn, BAD, None)
    await trio.sleep(30)
    answers: list[tuple[float, Result]] = []

    async def call(sender: Address) -> None:
        result, _ = await runner.run("mail", new_conn(), sender, None)
        answers.append((trio.current_time(), result))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, BAD)  # the probe: hangs until its deadline
        await trio.sleep(0.5)
        nursery.start_soon(call, GOOD)  # answered at once: a probe is in flight
    assert answers == [(start + 0.5, TIMEOUT_RESULT), (start + 2, TIMEOUT_RESULT)]
    assert [c.state for c in changes][-2:] == [BreakerState.HALF_OPEN, BreakerState.OPEN]
    assert "probe call timed out" in changes[-1].reason
    await trio.sleep(29)
    assert await runner.run("mail", conn, GOOD, None) == (TIMEOUT_RESULT, "flaky")  # still open
    await trio.sleep(1)
    assert (await runner.run("mail", conn, GOOD, None))[0].action is Action.OK


async def test_a_success_between_failures_keeps_it_closed(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """One poisonous message a second among good ones is not a broken plugin."""
    runner, changes = runner_for(plugin_dir)
    conn = new_conn()
    for _ in range(10):
        await runner.run("mail", conn, BAD, None)
        assert (await runner.run("mail", conn, GOOD, None))[0].action is Action.OK
    assert changes == []
    (row,) = runner.health.snapshot()
    assert (row["calls"], row["failures"], row["breaker"]) == (20, 10, "closed")


async def test_failures_spread_beyond_the_window_do_not_trip_it(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, changes = runner_for(plugin_dir, settings=BreakerSettings(3, 10, 30))
    conn = new_conn()
    for _ in range(6):
        await runner.run("mail", conn, BAD, None)  # 2 s each
        await trio.sleep(4)  # 3 failures span 14 s > 10 s
    assert changes == []


async def test_breaker_false_switches_it_off(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, changes = runner_for(plugin_dir, {"breaker": False})
    conn = new_conn()
    for _ in range(5):
        await runner.run("mail", conn, BAD, None)
    assert changes == []
    assert runner.health.snapshot()[0]["breaker"] == "off"


async def test_errors_trip_it_too_and_the_answer_is_on_error(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "broken",
        """
        class Plugin(Base):
            on_error = deny("broken plugin")

            async def hook_helo(self, conn, name):
                conn.notes["calls"] = conn.notes.get("calls", 0) + 1
                raise RuntimeError("backend down")
        """,
    )
    calls = Calls()
    health = PluginHealth(BreakerSettings(2, 60, 30))
    runner = HookRunner(
        load_plugins(["broken"], directories=[plugin_dir]), health=health, observe=calls
    )
    conn = new_conn()
    for _ in range(4):
        result, plugin = await runner.run("helo", conn, "x")
        assert (result.action, result.message, plugin) == (
            Action.DENY,
            ("broken plugin",),
            "broken",
        )
    assert conn.notes["calls"] == 2
    assert [c.error for c in calls.seen][2:] == ["breaker open", "breaker open"]


async def test_the_health_api_reset_closes_it(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    runner, changes = runner_for(plugin_dir)
    conn = new_conn()
    for _ in range(3):
        await runner.run("mail", conn, BAD, None)
    assert runner.health.reset("flaky") == ["mail"]
    assert changes[-1].state is BreakerState.CLOSED
    assert (await runner.run("mail", conn, GOOD, None))[0].action is Action.OK
    with pytest.raises(KeyError):
        runner.health.reset("nobody")
    row = runner.health.snapshot()[0]
    assert row["p50_ms"] is not None
    assert row["p95_ms"] is not None


SLEEPER = """
class Plugin(Base):
    timeout = 1

    def hook_data(self, conn):
        if conn.notes.get("hang"):
            self.config["release"].wait()
        return OK
"""


async def test_abandoned_threads_are_counted_until_they_end_and_use_the_plugins_own_limiter(
    plugin_dir: Path,
) -> None:
    release = threading.Event()
    write_plugin(plugin_dir, "sleeper", SLEEPER)
    health = PluginHealth(BreakerSettings(100, 60, 30, threads=2))
    runner = HookRunner(
        load_plugins(
            ["sleeper"], directories=[plugin_dir], configs={"sleeper": {"release": release}}
        ),
        health=health,
    )
    default = trio.to_thread.current_default_thread_limiter()
    hung = new_conn()
    hung.notes["hang"] = True
    try:
        for _ in range(2):
            with trio.fail_after(5):
                assert await runner.run("data", hung) == (TIMEOUT_RESULT, "sleeper")
        assert default.borrowed_tokens == 0  # Trio's shared limiter (DNS helper) untouched
        assert health.limiter("sleeper").borrowed_tokens == 2
        row = health.snapshot()[0]
        assert (row["abandoned_threads"], row["abandoned_threads_total"]) == (2, 2)
        # The limiter is full: a healthy call waits for a slot, and times out (its own budget).
        with trio.fail_after(5):
            assert await runner.run("data", new_conn()) == (TIMEOUT_RESULT, "sleeper")
    finally:
        release.set()
    with trio.fail_after(5):
        while health.snapshot()[0]["abandoned_threads"]:  # noqa: ASYNC110  # a thread's end
            await trio.sleep(0.01)
        assert (await runner.run("data", new_conn()))[0].action is Action.OK


async def test_a_breaker_move_is_a_plugin_breaker_event_and_a_metric(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bus = EventBus()
    metrics = Metrics(bus)
    sub = bus.subscribe()
    write_plugin(plugin_dir, "flaky", FLAKY)
    health = PluginHealth(BreakerSettings(1, 60, 30), on_change=breaker_reporter(bus))
    runner = HookRunner(load_plugins(["flaky"], directories=[plugin_dir]), health=health)
    await runner.run("mail", new_conn(), BAD, None)
    events = [e for _, e in sub.take() if isinstance(e, PluginBreaker)]
    assert [(e.plugin, e.hook, e.state) for e in events] == [("flaky", "mail", "open")]
    assert (
        'trio_mta_plugin_breaker_transitions_total{hook="mail",plugin="flaky",state="open"} 1.0'
        in metrics.render().decode()
    )
