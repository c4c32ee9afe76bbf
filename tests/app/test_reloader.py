"""SIGHUP's reload, in process: the slow part runs off the event loop, every changed setting is
named (applied, or needing a restart) in the log and a config.reload event."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from trio_mta import app
from trio_mta.config import Config, load_config
from trio_mta.events import ConfigReloaded, EventBus
from trio_mta.reloader import Reloader
from trio_mta.server import PluginHost

CAP = 15  # seconds, real time
PAUSE = 0.3  # seconds the probe plugin's setup() blocks its thread

PROBE = """
import threading
import time
from pathlib import Path

from trio_mta import hooks


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        with Path(self.config["record"]).open("a") as f:
            f.write(threading.current_thread().name + "\\n")
        time.sleep(float(self.config["pause"]))
"""

CONF = """
[[listener]]
name = "mx"
listen = "127.0.0.1:0"

[limits]
max_connections = {max_connections}

[plugins]
order = [{order}]
directories = ["mine"]
"""


def write(
    conf: Path, *, max_connections: int = 1000, order: str = '"probe", "queue_maildir"'
) -> None:
    (conf / "trio-mta.toml").write_text(CONF.format(max_connections=max_connections, order=order))


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    (conf / "mine").mkdir(parents=True)
    (conf / "plugins").mkdir()
    (conf / "mine" / "probe.py").write_text(PROBE)
    (conf / "plugins" / "probe.toml").write_text(
        f'record = "{tmp_path / "threads"}"\npause = {PAUSE}\n'
    )
    write(conf)
    return conf


@pytest.fixture
def root_level() -> Iterator[None]:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def started(conf: Path, var_dir: Path, bus: EventBus) -> Reloader:
    config = load_config(conf)
    config = attrs.evolve(config, server=attrs.evolve(config.server, var_dir=var_dir))
    host = PluginHost(app.load_plugin_set(config))
    return Reloader(config, host, app.load_plugin_set, bus=bus, pinned={"server.var_dir"})


async def test_reload_does_not_hold_the_event_loop(conf: Path, var_dir: Path) -> None:
    reloader = started(conf, var_dir, EventBus())
    gaps: list[float] = []

    async def tick(done: trio.Event) -> None:
        last = time.perf_counter()
        while not done.is_set():
            await trio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    done = trio.Event()
    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick, done)
            await trio.sleep(0.02)
            began = time.perf_counter()
            event = await reloader.reload()
            took = time.perf_counter() - began
            done.set()
    assert event.ok
    threads = (conf.parent / "threads").read_text().splitlines()
    assert threads[0] == "MainThread"  # the first load, at start-up
    assert threads[1] != "MainThread"  # the reload's: a worker thread
    assert took >= PAUSE
    # Before, the loop was held for the whole of setup() (and every import and parse).
    assert max(gaps) < PAUSE / 2, (max(gaps), took)


async def test_every_changed_setting_is_named(
    conf: Path, var_dir: Path, caplog: pytest.LogCaptureFixture, root_level: None
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mta")
    bus = EventBus(retain=10)
    reloader = started(conf, var_dir, bus)
    (conf / "plugins" / "probe.toml").write_text(
        f'record = "{conf.parent / "threads"}"\npause = 0\n'
    )
    write(conf, max_connections=5, order='"probe", "rcpt_to_host_list", "queue_maildir"')
    with (conf / "trio-mta.toml").open("a") as f:
        f.write('\n[log]\nlevel = "debug"\n')
    with trio.fail_after(CAP):
        event = await reloader.reload()
    assert event.ok
    assert event.generation == reloader.host.current.generation
    assert event.applied == ("[log] level", "[plugins] order", "plugins/probe.toml")
    assert event.restart_needed == ("[limits] max_connections",)
    assert reloader.restart_needed == ("[limits] max_connections",)
    assert logging.getLogger().level == logging.DEBUG  # the level is applied
    with bus.subscribe(replay=10) as watcher:
        assert [e for _, e in watcher.take() if isinstance(e, ConfigReloaded)] == [event]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "reload: changed settings that need a restart and are NOT in force:"
        " [limits] max_connections" in warnings
    )
    info = [r.getMessage() for r in caplog.records if "changed and applied" in r.getMessage()]
    assert info[0].endswith("[log] level, [plugins] order, plugins/probe.toml")

    # Nothing changed since: nothing applied, the restart still pending.
    with trio.fail_after(CAP):
        again = await reloader.reload()
    assert (again.applied, again.restart_needed) == ((), ("[limits] max_connections",))

    # A broken file: refused, the running set stays, and the event says why.
    (conf / "trio-mta.toml").write_text("[limits]\nmax_connections = -1\n")
    generation = reloader.host.current.generation
    with trio.fail_after(CAP):
        refused = await reloader.reload()
    assert not refused.ok
    assert refused.generation is None
    assert refused.error is not None
    assert "limits.max_connections" in refused.error
    assert reloader.host.current.generation == generation


async def test_pending_compares_without_reloading(conf: Path, var_dir: Path) -> None:
    reloader = started(conf, var_dir, EventBus())
    generation = reloader.host.current.generation
    write(conf, max_connections=7, order='"queue_maildir"')
    changes = await reloader.pending()
    assert changes.applied == ("[plugins] order",)
    assert changes.restart == ("[limits] max_connections",)
    assert reloader.host.current.generation == generation
    assert isinstance(reloader.started, Config)
