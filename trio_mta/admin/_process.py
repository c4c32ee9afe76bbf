"""Watchers served from a separate process: the daemon's event loop only hands events over.

Theory of operation
-------------------
Encoding events as JSON and writing them to websockets costs CPU for every event and every
watcher, and in the daemon's process that CPU is taken from SMTP. So the daemon accepts the
admin connection, checks it (access, filter, client limit), and then hands the socket itself
(SCM_RIGHTS) with the request head it read to a child process (``_child``), which completes
the websocket handshake and serves the watcher from a mirror of the bus. The daemon feeds the
mirror from one subscription on its bus that wants what the watchers want together (plugin
calls only if one of them does; the union of their types): each event's field values, in
batches, marshalled onto a Unix socket pair, with the daemon's sequence numbers so ``seq`` means
the same in both processes. Measured with ``scripts/bench --watchers`` (c=100, reused
connections): the daemon's extra CPU per message with watchers went from ~30 us to ~14 us.

One socket pair carries everything, in order. From the daemon: event batches, and hand-overs
(sent after every event published before them, so a new watcher's replay includes them). From
the child: the watchers that ended, and how many events its watchers lost (added to the
daemon's ``bus.dropped``). A frame is a 4-byte length, a 1-byte type and a marshal payload.

The daemon never waits for the child: the feed is a subscription like any other and sends
from its own task; if it falls behind, it gets a gap, which the child passes on to every
watcher. The child is started with the first watcher and again, after its death, with the next
one. Its death ends its watchers' connections (clients reconnect); a watcher handed over while
no child could be started (or before one said it was ready) is answered 503.
"""

from __future__ import annotations

import array
import logging
import marshal
import math
import socket
import struct
import subprocess
import sys
from collections.abc import Sequence

import trio

from ..events import EVENT_TYPES, Event, EventBus, Gap, RawItem, Subscription
from ._filter import EventFilter

log = logging.getLogger("trio_mta.admin")

FRAME = struct.Struct("!IB")
EVENTS, WATCHER, STATE = b"E"[0], b"W"[0], b"S"[0]
BATCH_INTERVAL = 0.02  # seconds between the feed's batches while events keep coming
BATCH_LIMIT = 4000  # events per frame
START_DEADLINE = 30.0  # seconds for the child to import and say it is ready
STOP_DEADLINE = 5.0  # seconds for the child to close its watchers and exit
STALL = 10.0  # seconds a send to the child may block before the child is deemed stuck
_BUFFER = 4 << 20  # socket buffers: a second of events at full load fits
_KIND_INDEX = {kind: index for index, kind in enumerate(EVENT_TYPES)}
_MARSHALLABLE = (str, int, float, bool, type(None))

CHILD_MAIN = "import sys; from trio_mta.admin._child import main; main(sys.argv[1:])"


class WatcherProcessError(Exception):
    """The watcher process could not take the watcher."""


class _Handover:
    __slots__ = ("done", "ident", "ok", "payload", "sock")

    def __init__(self, ident: int, sock: trio.socket.SocketType, payload: bytes) -> None:
        self.ident = ident
        self.sock = sock
        self.payload = payload
        self.done = trio.Event()
        self.ok = False


class WatcherProcess:
    """The child that serves ``/events`` watchers, and the feed of events to it.

    Args:
        bus: the daemon's bus.
        server: the server name watchers see in their hello.
        env: the child's environment (``trio_mta`` importable).
    """

    def __init__(self, bus: EventBus, *, server: str, env: dict[str, str]) -> None:
        self.bus = bus
        self.server = server
        self.env = env
        self.watchers: dict[int, EventFilter] = {}  # handed over, not reported ended
        self.pid: int | None = None
        self._ids = 0
        self._queue: list[_Handover] = []
        self._wake = trio.Event()
        self._subscription: Subscription | None = None
        self._next = 0  # the first sequence number not yet sent to a child

    async def hand_over(
        self,
        stream: trio.SocketStream,
        raw: bytes,
        event_filter: EventFilter,
        query: dict[str, list[str]],
    ) -> None:
        """Give the connection to the child (it answers the handshake). The caller closes its
        own copy of the socket afterwards either way.

        Raises:
            WatcherProcessError: the child could not be started or died first.
        """
        self._ids += 1
        ident = self._ids
        # The watcher's events start now: with the next number the bus gives.
        payload = marshal.dumps((ident, raw, query, self.server, self.bus.published))
        handover = _Handover(ident, stream.socket, payload)
        self.watchers[ident] = event_filter
        self._retune()  # at once: the events from now on are this watcher's
        self._queue.append(handover)
        self._wake.set()
        try:
            await handover.done.wait()
        finally:
            if not handover.ok:
                self.watchers.pop(ident, None)
                self._retune()
        if not handover.ok:
            raise WatcherProcessError("the watcher process is not available")

    def _retune(self) -> None:
        bus, sub = self.bus, self._subscription
        if not self.watchers:
            if sub is not None:
                self._next = sub.cursor
                sub.close()
                self._subscription = None
            return
        filters = self.watchers.values()
        detail = any(f.wants_plugin_calls for f in filters)
        kinds: frozenset[type[Event]] | None = frozenset()
        for f in filters:
            wanted = f.kinds()
            kinds = None if wanted is None or kinds is None else kinds | wanted
        if sub is None:
            replay = max(0, min(bus.retain, bus.published - self._next))
            self._subscription = bus.subscribe(replay, detail=detail, kinds=kinds)
        else:
            sub.retune(detail=detail, kinds=kinds)

    async def run(self) -> None:
        """Start the child when a watcher comes, feed it while it lives; until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if not self._queue:
                continue
            try:
                process, sock = await self._start()
            except Exception as exc:  # no executable, no fds, no memory: watchers get 503
                log.error("admin: cannot start the watcher process: %r", exc)
                self._fail_queued()
                continue
            try:
                await self._serve(process, sock, trio.Event())
            except Exception:  # the isolation boundary: watching never stops the daemon
                log.exception("admin: the watcher process feed failed")
            finally:
                sock.close()
                self._fail_queued()
                with trio.CancelScope(shield=True):
                    await _reap(process)
                self.pid = None
                self.watchers.clear()
                self._retune()
            log.warning("admin: the watcher process exited (status %s)", process.returncode)

    async def _serve(
        self, process: trio.Process, sock: trio.socket.SocketType, ready: trio.Event
    ) -> None:
        """Read the child's frames and feed it, until its end of the socket closes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, sock, ready, nursery.cancel_scope)
            with trio.move_on_after(START_DEADLINE):
                await ready.wait()
            if ready.is_set():
                nursery.start_soon(self._feed, sock, process)
            else:
                log.error("admin: the watcher process did not start in time")
                nursery.cancel_scope.cancel()

    async def _start(self) -> tuple[trio.Process, trio.socket.SocketType]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for s in (ours, theirs):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
            bus = self.bus
            argv = [str(theirs.fileno()), str(bus.retain), str(bus.size)]
            argv.append(logging.getLevelName(logging.getLogger().getEffectiveLevel()))
            process = await trio.lowlevel.open_process(
                [sys.executable, "-c", CHILD_MAIN, *argv],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = process.pid
        log.info("admin: watcher process started pid=%d", process.pid)
        return process, trio.socket.from_stdlib_socket(ours)

    def _fail_queued(self) -> None:
        queued, self._queue = self._queue, []
        for handover in queued:
            handover.done.set()

    async def _feed(self, sock: trio.socket.SocketType, process: trio.Process) -> None:
        while True:
            sub = self._subscription
            while sub is not None:
                items = sub.take_raw(BATCH_LIMIT)
                if items:
                    await self._send(sock, process, EVENTS, _pack(items))
                self._next = sub.cursor
                if not sub.pending or sub is not self._subscription:
                    break
            while self._queue:
                handover = self._queue.pop(0)
                try:
                    fd = handover.sock.fileno()
                    await self._send(sock, process, WATCHER, handover.payload, fd)
                    handover.ok = True
                finally:
                    handover.done.set()
            with trio.move_on_after(BATCH_INTERVAL if self.watchers else math.inf):
                await self._wake.wait()
            self._wake = trio.Event()

    @staticmethod
    async def _send(
        sock: trio.socket.SocketType, process: trio.Process, kind: int, payload: bytes, fd: int = -1
    ) -> None:
        """A frame to the child; a child that takes nothing for ``STALL`` seconds is stuck: it
        is killed (its end of the socket closes, and everything that waits on it ends)."""
        with trio.move_on_after(STALL):
            await _send(sock, kind, payload, fd)
            return
        log.error("admin: the watcher process took nothing for %gs; killing pid %d", STALL,
                  process.pid)  # fmt: skip
        process.kill()
        await trio.sleep_forever()  # until the reader sees the end and cancels the feed

    async def _read(
        self, sock: trio.socket.SocketType, ready: trio.Event, scope: trio.CancelScope
    ) -> None:
        """The child's frames; the first (an empty report) says it is ready. At its end of
        the socket (the child died or exited), the whole feed stops."""
        buffer = bytearray()
        while True:
            try:
                data = await sock.recv(65536)
            except OSError:  # reset: the child died with frames unread
                data = b""
            if not data:
                scope.cancel()
                return
            buffer += data
            for kind, payload in take_frames(buffer):
                ready.set()
                if kind == STATE:
                    ended: list[int]
                    dropped: int
                    ended, dropped = payload  # type: ignore[misc]  # a report
                    self.bus.dropped += dropped
                    for ident in ended:
                        self.watchers.pop(ident, None)
                    self._retune()


def take_frames(buffer: bytearray) -> list[tuple[int, object]]:
    """The whole frames at the start of ``buffer`` as ``(type, payload)``, removed from it
    (an incomplete last frame stays for the next read)."""
    frames: list[tuple[int, object]] = []
    start = 0
    while len(buffer) - start >= FRAME.size:
        length, kind = FRAME.unpack_from(buffer, start)
        end = start + FRAME.size + length
        if len(buffer) < end:
            break
        frames.append((kind, marshal.loads(memoryview(buffer)[start + FRAME.size : end])))
        start = end
    del buffer[:start]
    return frames


def _pack(items: Sequence[tuple[int, RawItem]]) -> bytes:
    out: list[tuple[int, int, object]] = []
    for seq, item in items:
        if type(item) is tuple:
            kind, values = item
        elif type(item) is Gap:
            out.append((-1, -1, item.dropped))
            continue
        else:  # published as an object (rare events)
            kind = type(item)  # type: ignore[assignment]  # an Event: not a tuple
            values = tuple(getattr(item, name) for name in kind.FIELDS)
        out.append((seq, _KIND_INDEX[kind], values))
    try:
        return marshal.dumps(out)
    except ValueError:  # a value marshal does not know (a str subclass, say): plain types
        return marshal.dumps([(seq, k, _plain(v)) for seq, k, v in out])


def _plain(values: object) -> object:
    if not isinstance(values, tuple):
        return values
    return tuple(
        v if type(v) in _MARSHALLABLE else tuple(map(str, v)) if isinstance(v, tuple) else str(v)
        for v in values
    )


async def _send(sock: trio.socket.SocketType, kind: int, payload: bytes, fd: int = -1) -> None:
    data = memoryview(FRAME.pack(len(payload), kind) + payload)
    if fd >= 0:
        fds = array.array("i", [fd])
        sent = await sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        data = data[sent:]
    while data:
        sent = await sock.send(data)
        data = data[sent:]


async def _reap(process: trio.Process) -> None:
    with trio.move_on_after(STOP_DEADLINE):
        await process.wait()
        return
    log.warning("admin: the watcher process did not stop; killing pid %d", process.pid)
    process.kill()
    await process.wait()
