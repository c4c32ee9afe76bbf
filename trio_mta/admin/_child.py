"""The watcher process (see ``_process``): a mirror of the daemon's bus, and the watchers the
daemon handed over, each served by ``serve_watcher`` as it would be in the daemon.

Run as ``main([fd, retain, size, log_level])``: ``fd`` is this end of the socket pair. The
process ends when the daemon closes its end (or dies): its watchers are told the stream is
closing, as they would be by a daemon shutting down.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import marshal
import socket
import sys
from collections.abc import Sequence

import trio

from ..events import EVENT_TYPES, EventBus, Subscription
from ._filter import EventFilter
from ._http import HttpError
from ._process import EVENTS, STATE, WATCHER, _send, take_frames
from ._stream import EncodedEvents, serve_watcher, subscribe

log = logging.getLogger("trio_mta.admin.watchers")

REPORT_INTERVAL = 0.25  # seconds between reports of events lost, while some are


class _Child:
    def __init__(self, sock: trio.socket.SocketType, retain: int, size: int) -> None:
        self.sock = sock
        self.bus = EventBus(retain=retain, buffer=size)
        self.encoded = EncodedEvents(self.bus.size)
        self.ended: list[int] = []
        self.reported_dropped = 0
        self.changed = trio.Event()

    async def read(self, nursery: trio.Nursery) -> None:
        """Frames from the daemon until it closes its end."""
        buffer = bytearray()
        fds: collections.deque[int] = collections.deque()
        space = socket.CMSG_SPACE(64 * 4)
        try:
            while True:
                try:
                    data, ancdata, _, _ = await self.sock.recvmsg(1 << 20, space)
                except OSError:  # the daemon is gone
                    return
                for level, kind, fd_bytes in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        usable = len(fd_bytes) - len(fd_bytes) % 4
                        fds.extend(memoryview(fd_bytes)[:usable].cast("i"))
                if not data:
                    return
                buffer += data
                for kind, payload in take_frames(buffer):
                    if kind == EVENTS:
                        self.mirror(payload)  # type: ignore[arg-type]  # a batch
                    elif kind == WATCHER:
                        self.start_watcher(nursery, fds.popleft(), *payload)  # type: ignore[misc]
        finally:
            for fd in fds:
                socket.close(fd)

    def mirror(self, items: Sequence[tuple[int, int, object]]) -> None:
        bus, kinds = self.bus, EVENT_TYPES
        for seq, kind, values in items:
            if kind < 0:
                bus.mirror_gap(values)  # type: ignore[arg-type]  # a gap's count
            else:
                bus.mirror(seq, kinds[kind], values)  # type: ignore[arg-type]  # a tuple

    def start_watcher(
        self,
        nursery: trio.Nursery,
        fd: int,
        ident: int,
        raw: bytes,
        query: dict[str, list[str]],
        server: str,
        start: int,
    ) -> None:
        """Subscribe at once, from event number ``start`` (when the daemon took the watcher;
        the events since are already here), then serve it in its own task."""
        sock = socket.socket(fileno=fd)
        try:
            event_filter = EventFilter.from_query(query, self.bus.retain)
        except HttpError as exc:  # the daemon checked the query: not expected
            log.error("watcher %d refused: %s", ident, exc.message)
            sock.close()
            self.ended.append(ident)
            self.changed.set()
            return
        subscription = subscribe(self.bus, event_filter, at=start)
        nursery.start_soon(self.watch, sock, ident, raw, subscription, event_filter, server)

    async def watch(
        self,
        sock: socket.socket,
        ident: int,
        raw: bytes,
        subscription: Subscription,
        event_filter: EventFilter,
        server: str,
    ) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        try:
            await serve_watcher(
                stream, raw, subscription, event_filter, server=server, encoded=self.encoded
            )
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # the isolation boundary of one watcher
            log.exception("watcher %d failed", ident)
        finally:
            subscription.close()
            await stream.aclose()
            self.ended.append(ident)
            self.changed.set()

    async def report(self) -> None:
        """Tell the daemon which watchers ended and how many events they lost."""
        while True:
            with trio.move_on_after(REPORT_INTERVAL):
                await self.changed.wait()
            self.changed = trio.Event()
            dropped = self.bus.dropped - self.reported_dropped
            if not self.ended and not dropped:
                continue
            ended, self.ended = self.ended, []
            self.reported_dropped += dropped
            await _send(self.sock, STATE, marshal.dumps((ended, dropped)))


async def _main(fd: int, retain: int, size: int) -> None:
    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
    child = _Child(sock, retain, size)
    await _send(sock, STATE, marshal.dumps(([], 0)))  # ready
    async with trio.open_nursery() as nursery:
        nursery.start_soon(child.report)
        await child.read(nursery)
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str]) -> None:
    fd, retain, size, level = argv
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_main, int(fd), int(retain), int(size))
