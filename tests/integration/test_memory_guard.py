"""[limits] memory_soft_mb on the wire: 421 4.3.2 at connect, 451 4.3.2 at MAIL, hysteresis,
and the plugin whose allocations grew is named and its call cancelled."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import attrs
import trio

from tests.helpers.config import make_config
from trio_mta.app import load_plugin_set
from trio_mta.events import EventBus, MemoryGuarded
from trio_mta.hooks import PluginHealth
from trio_mta.server import MemoryGuard, PluginHost

from .conftest import StartMTA


def over(guard: MemoryGuard) -> bool:  # a call: mypy would narrow the attribute for good
    return guard.over


class FakeRSS:
    def __init__(self) -> None:
        self.mb = 100.0

    def __call__(self) -> float:
        return self.mb


async def test_over_the_limit_refuses_connections_and_mail_until_back_under_90_percent(
    start_mta: StartMTA, var_dir: Path
) -> None:
    config = make_config(var_dir)
    host = PluginHost(load_plugin_set(config))
    rss = FakeRSS()
    bus = EventBus()
    events = bus.subscribe()
    guard = MemoryGuard(1000, health=host.health, running=host.running, bus=bus, read=rss)
    host.memory_guard = guard
    mta = await start_mta(config, host.handler)
    before = await mta.greeted()  # a session already in progress
    guard.check()
    assert not over(guard)
    rss.mb = 1200
    guard.check()
    assert over(guard)
    fresh = await mta.connect()
    reply = await fresh.expect(421, "4.3.2")
    assert "memory" in " ".join(reply.lines)
    await fresh.expect_eof()
    await before.command("MAIL FROM:<a@example.org>", 451, "4.3.2")
    await before.command("NOOP", 250)  # the session stays usable
    rss.mb = 950  # under the limit, not under 90 % of it: still over
    guard.check()
    assert over(guard)
    rss.mb = 850
    guard.check()
    assert not over(guard)
    await before.command("MAIL FROM:<a@example.org>", 250)
    again = await mta.greeted()
    await again.command("QUIT", 221)
    states = [e.state for _, e in events.take() if isinstance(e, MemoryGuarded)]
    assert states == ["over", "under"]
    assert not tracemalloc.is_tracing()


HOG = """
import trio
from trio_mta.hooks import Plugin as Base

class Plugin(Base):
    timeout = 30

    async def hook_mail(self, conn, sender, params):
        hoard = []
        while True:
            hoard.append(bytearray(1024 * 1024))
            await trio.sleep(0.01)
"""


async def test_the_plugin_that_allocates_is_named_and_its_call_cancelled(
    start_mta: StartMTA, var_dir: Path, tmp_path: Path
) -> None:
    plugins = tmp_path / "p"
    plugins.mkdir()
    (plugins / "hog.py").write_text(HOG)
    base = make_config(var_dir)
    config = attrs.evolve(
        base, plugins=attrs.evolve(base.plugins, order=("hog",), directories=(plugins,))
    )
    health = PluginHealth()
    host = PluginHost(load_plugin_set(config), health=health)
    rss = FakeRSS()
    bus = EventBus()
    events = bus.subscribe()
    guard = MemoryGuard(1000, health=health, running=host.running, bus=bus, read=rss)
    host.memory_guard = guard
    mta = await start_mta(config, host.handler)
    client = await mta.greeted()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.command, "MAIL FROM:<a@example.org>", 451, "4.3.0")
        await trio.sleep(0.1)
        rss.mb = 1200
        guard.check()  # fires: names the call running, starts tracing
        await trio.sleep(0.2)  # the hog allocates ~20 MiB, traced
        guard.check()  # finds it and cancels its call: 451 4.3.0 (its on_timeout)
    seen = [e for _, e in events.take() if isinstance(e, MemoryGuarded)]
    assert seen[0].plugins == ("hog/mail",)
    assert seen[1].cause == "hog"
    rss.mb = 100
    guard.check()
    assert not tracemalloc.is_tracing()
