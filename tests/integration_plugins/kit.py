"""The daemon's composition root (``app.run``) in-process, with test plugins from a temporary
directory that report what happened to them in a journal file.

A plugin written with ``write_plugin`` gets ``note(self, event, **fields)``: one JSON line in
the file named by its ``journal`` setting, with the plugin name, the process id, the monotonic
clock (system-wide on Linux, so comparable across the sandbox's worker processes) and, inside
a Trio run, ``trio.current_time()`` (the MockClock's virtual time under ``autojump_clock``).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta import app
from trio_mta.config import Config
from trio_mta.server import BoundListener

PREAMBLE = """\
from __future__ import annotations
import json, os, time
import trio
from trio_mta import hooks
from trio_mta.hooks import CONT, OK, Plugin as Base


def note(plugin, event, **fields):
    try:
        now = trio.current_time()
    except RuntimeError:
        now = None
    line = {"plugin": plugin.name, "event": event, "pid": os.getpid(),
            "mono": time.monotonic(), "t": now, **fields}
    with open(plugin.config["journal"], "a") as f:
        f.write(json.dumps(line) + "\\n")
"""

# A queue plugin that keeps each message in the journal instead of on disk: no worker
# thread, so it is safe under the autojump clock (which cannot see threads).
JOURNAL_QUEUE = """
class Plugin(Base):
    async def hook_queue(self, conn):
        txn = conn.transaction
        note(self, "queued", txn=txn.id, rcpts=[str(a) for a, _ in txn.recipients],
             message=txn.message_bytes().decode("utf-8"))
        return hooks.ok(f"Message queued as {txn.id}")
"""

Entry = dict[str, Any]


def write_plugin(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(PREAMBLE + textwrap.dedent(body))
    return path


@attrs.frozen
class Journal:
    path: Path

    def entries(self, event: str | None = None, plugin: str | None = None) -> list[Entry]:
        if not self.path.exists():
            return []
        found = [json.loads(line) for line in self.path.read_text().splitlines()]
        return [
            e
            for e in found
            if (event is None or e["event"] == event) and (plugin is None or e["plugin"] == plugin)
        ]

    async def wait_for(self, event: str, count: int = 1, *, cap: float = 5.0) -> list[Entry]:
        """Poll (real clock only) until ``count`` entries of ``event`` are in."""
        with trio.fail_after(cap):
            while len(found := self.entries(event)) < count:  # noqa: ASYNC110  # another process may write it
                await trio.sleep(0.01)
        return found


def app_config(
    var_dir: Path,
    plugin_dir: Path,
    order: Sequence[str],
    plugin_configs: Mapping[str, Mapping[str, object]] | None = None,
    **plugins: Any,
) -> Config:
    """``make_config`` (loopback port 0, Maildir under ``var_dir`` without fsync) with this
    plugin order, ``plugin_dir`` searched first, and the plugins' own settings."""
    base = make_config(var_dir)
    configs = {name: dict(table) for name, table in base.plugin_configs.items()}
    for name, table in (plugin_configs or {}).items():
        configs[name] = {**configs.get(name, {}), **table}
    return attrs.evolve(
        base,
        plugins=attrs.evolve(
            base.plugins, order=tuple(order), directories=(plugin_dir,), **plugins
        ),
        plugin_configs=configs,
    )


@attrs.frozen
class Running:
    host: str
    port: int

    async def connect(self) -> LineClient:
        return LineClient(await trio.open_tcp_stream(self.host, self.port))

    async def greeted(self, helo: str = "client.example") -> LineClient:
        client = await self.connect()
        await client.expect(220)
        await client.command(f"EHLO {helo}", 250)
        return client


@asynccontextmanager
async def running_app(config: Config) -> AsyncIterator[Running]:
    """``app.run(config)`` in a nursery of its own, ready (listening) for the body; cancelled
    on the way out."""
    async with trio.open_nursery() as nursery:
        bound: list[BoundListener] = await nursery.start(app.run, config)
        try:
            yield Running(bound[0].host, bound[0].port)
        finally:
            nursery.cancel_scope.cancel()


def message(tag: str) -> bytes:
    """A small message that needs no dot-stuffing (``LineClient`` sends bytes as they are)."""
    return f"Subject: {tag}\r\nX-Tag: {tag}\r\n\r\nbody of {tag}\r\n".encode()
