"""One ``ConnectionDriver`` over an in-memory stream, with the real local delivery handler.

The client end is a ``LineClient``; every ``send_all`` the driver makes is recorded, so tests can
count writes (pipelining answers a group with one write).
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import trio
import trio.testing

from trio_mta.app import load_plugin_set
from trio_mta.config import Config
from trio_mta.events import EventBus
from trio_mta.hooks import HookRunner
from trio_mta.protocol import Reply, ServerConnection
from trio_mta.server import (
    ConnectionDriver,
    HookHandler,
    IdGenerator,
    Session,
    StreamTransport,
    protocol_limits,
)

from .smtp import LineClient


class RecordingStream(trio.abc.Stream):
    """Delegates to ``inner`` and remembers every ``send_all`` payload."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class PausedClockDelivery(HookHandler):
    """The real Maildir delivery (in a worker thread), with the MockClock's autojump paused
    while the thread works.

    The autojump clock cannot see worker threads: without the pause it would treat the run as
    idle and jump straight to the next deadline while the disk is busy, so a timing test would
    see a timeout that no client caused.
    """

    def __init__(self, config: Config, clock: trio.testing.MockClock) -> None:
        super().__init__(HookRunner(load_plugin_set(config)))
        self.clock = clock

    async def message(self, session: Session) -> Reply:
        saved = self.clock.autojump_threshold
        self.clock.autojump_threshold = math.inf
        try:
            return await super().message(session)
        finally:
            self.clock.autojump_threshold = saved


@attrs.define
class DriverHarness:
    client: LineClient
    driver: ConnectionDriver
    closing: trio.Event
    var_dir: Path
    server_stream: RecordingStream
    finished: trio.Event
    started_at: float

    @property
    def writes(self) -> list[bytes]:
        return self.server_stream.writes

    def elapsed(self) -> float:
        return trio.current_time() - self.started_at

    def shut_down(self) -> None:
        """What ``SMTPServer`` does to each connection on shutdown."""
        self.closing.set()
        self.driver.wake_for_shutdown()


async def start_driver(
    nursery: trio.Nursery,
    config: Config,
    clock: trio.testing.MockClock,
    *,
    handler_class: type[PausedClockDelivery] = PausedClockDelivery,
    bus: EventBus | None = None,
) -> DriverHarness:
    """Start a driver in ``nursery``; its server end is closed when ``run`` returns."""
    server_end, client_end = trio.testing.memory_stream_pair()
    recording = RecordingStream(server_end)
    transport = StreamTransport(recording)
    closing = trio.Event()
    session = Session(
        id="conn1",
        listener="mx",
        client_ip="127.0.0.1",
        client_port=40000,
        local_ip="127.0.0.1",
        local_port=25,
        started=0.0,
    )
    driver = ConnectionDriver(
        transport,
        session,
        config,
        handler_class(config, clock),
        IdGenerator(),
        ServerConnection(protocol_limits(config)),
        is_closing=closing,
        bus=bus,
    )
    finished = trio.Event()

    async def run() -> None:
        try:
            await driver.run()
        finally:
            finished.set()
            await transport.aclose()

    harness = DriverHarness(
        client=LineClient(client_end),
        driver=driver,
        closing=closing,
        var_dir=config.server.var_dir,
        server_stream=recording,
        finished=finished,
        started_at=trio.current_time(),
    )
    nursery.start_soon(run)
    return harness
