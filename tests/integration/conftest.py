"""A real ``SMTPServer`` on 127.0.0.1 (a kernel-chosen port) inside the test's nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta.app import load_plugin_set
from trio_mta.config import Config
from trio_mta.server import BoundListener, PluginHost, SessionHandler, SMTPServer


@attrs.define
class RunningMTA:
    server: SMTPServer
    config: Config
    host: str
    port: int
    stopped: trio.Event

    @property
    def var_dir(self) -> Path:
        return self.config.server.var_dir

    async def connect(self, *, local_ip: str | None = None) -> LineClient:
        stream = await trio.open_tcp_stream(self.host, self.port, local_address=local_ip)
        return LineClient(stream)

    async def greeted(self, *, local_ip: str | None = None) -> LineClient:
        """A connection that has read the banner and said EHLO."""
        client = await self.connect(local_ip=local_ip)
        await client.expect(220)
        await client.command("EHLO client.example", 250)
        return client


StartMTA = Callable[..., Awaitable[RunningMTA]]


@pytest.fixture
async def start_mta(nursery: trio.Nursery, var_dir: Path) -> AsyncIterator[StartMTA]:
    """``await start_mta(config=None, handler_factory=None)``: a running server.

    Teardown asks every server to shut down and waits (bounded) until it has drained.
    """
    running: list[RunningMTA] = []

    async def start(
        config: Config | None = None,
        handler_factory: Callable[[], SessionHandler] | None = None,
    ) -> RunningMTA:
        config = config or make_config(var_dir)
        factory = handler_factory or PluginHost(load_plugin_set(config)).handler
        server = SMTPServer(config, factory)
        stopped = trio.Event()

        async def serve(*, task_status: trio.TaskStatus[list[BoundListener]]) -> None:
            try:
                await server.serve(task_status=task_status)
            finally:
                stopped.set()

        [bound] = await nursery.start(serve)
        mta = RunningMTA(server, config, bound.host, bound.port, stopped)
        running.append(mta)
        return mta

    yield start
    for mta in running:
        mta.server.request_shutdown()
    with trio.fail_after(10):
        for mta in running:
            await mta.stopped.wait()


@pytest.fixture
async def mta(start_mta: StartMTA) -> RunningMTA:
    return await start_mta()
