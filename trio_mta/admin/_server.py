"""The admin listener: ``GET /`` (the live page), ``GET /metrics``, ``/events`` (websocket), and
the admin actions ``POST /api/...`` (``_actions``: token always, forwarded to the control socket).

Theory of operation
-------------------
Each connection is read up to the end of its request head (``_http``), under a deadline. Plain
GETs get one response and the connection is closed. An upgrade on ``/events`` is checked
(``_access``: Origin, token or loopback-open, Host), its query parsed into a filter, and only
then handed to trio-websocket with the head it has already read replayed in front.

Isolation: an exception in one admin connection is logged and ends that connection only. The
admin side never reaches into SMTP: it reads the bus, whose publishers never wait.

Binding: a listener that cannot bind (the port is taken, say by another daemon started from
the same conf/) is logged as an error and the daemon runs without it: watching is never a
reason to refuse mail. A configuration that would expose the stream without a token is a
different matter: ``AdminServer`` refuses to be built (and the loader refuses the file).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.resources
import logging
import math
import re
import socket as stdlib_socket
from pathlib import Path

import trio

from ..config import AdminConfig, admin_problems
from ..events import EventBus, StatsSampled
from ..hooks import worker_env
from ._access import Access
from ._actions import (
    PLUGINS_PATH,
    arguments,
    authorize,
    command_of,
    is_action,
    parse_json,
    perform,
    read_body,
)
from ._filter import EventFilter
from ._http import (
    HttpError,
    RequestHead,
    error_response,
    read_head,
    response,
)
from ._metrics import CONTENT_TYPE as METRICS_TYPE
from ._metrics import Metrics
from ._process import WatcherProcess, WatcherProcessError
from ._stream import EncodedEvents, serve_watcher, subscribe

log = logging.getLogger("trio_mta.admin")

HEAD_DEADLINE = 10.0  # seconds for a client to send its request head
HANDSHAKE_DEADLINE = 10.0
CLOSE_DEADLINE = 2.0
SEND_BUFFER = 64 * 1024  # kernel buffer per admin connection: a stalled watcher holds no more
STATS_INTERVAL = 1.0  # seconds between looks at what server.stats reports, while watched
STATS_HEARTBEAT = 15.0  # seconds after which server.stats is sent even if nothing changed


class AdminSetupError(Exception):
    """The admin configuration is unsafe (never raised for a port that is taken)."""


class Page:
    """The live page, read once from the package, with a Content-Security-Policy that allows
    exactly its own inline script and style (by hash) and websockets to its own host."""

    def __init__(self, html: bytes) -> None:
        self.html = html
        text = html.decode("utf-8")
        self._script = [_sha256(s) for s in re.findall(r"<script>(.*?)</script>", text, re.S)]
        self._style = [_sha256(s) for s in re.findall(r"<style>(.*?)</style>", text, re.S)]

    @classmethod
    def load(cls) -> Page:
        return cls(importlib.resources.files(__package__).joinpath("page.html").read_bytes())

    def csp(self, host: str) -> str:
        scripts = " ".join(f"'sha256-{h}'" for h in self._script)
        styles = " ".join(f"'sha256-{h}'" for h in self._style)
        return (
            f"default-src 'none'; script-src {scripts}; style-src {styles}; "
            f"connect-src 'self' ws://{host} wss://{host}; img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


async def _refuse(stream: trio.SocketStream, error: HttpError) -> None:
    """Send the error response if the client still takes it (it may be gone)."""
    with trio.move_on_after(CLOSE_DEADLINE):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(error_response(error.status, error.message))


class AdminServer:
    def __init__(
        self,
        config: AdminConfig,
        bus: EventBus,
        metrics: Metrics,
        *,
        server_name: str = "trio-mta",
        var_dir: Path | None = None,
    ) -> None:
        problems = admin_problems(config)
        if problems:
            raise AdminSetupError("; ".join(f"admin.{key}: {why}" for key, why in problems))
        self.config = config
        self.bus = bus
        self.metrics = metrics
        metrics.watchers = lambda: self.clients
        self.server_name = server_name
        self.var_dir = var_dir  # where the control socket is: actions go there
        self.access = Access(config)
        self.page = Page.load()
        self.encoded = EncodedEvents(bus.size)
        self.local_clients = 0  # watchers served in this process
        self.process = (
            WatcherProcess(bus, server=server_name, env=worker_env())
            if config.watcher_process
            else None
        )

    @property
    def clients(self) -> int:
        """Watchers connected, wherever they are served."""
        process = self.process
        return self.local_clients + (len(process.watchers) if process is not None else 0)

    async def serve(
        self, *, task_status: trio.TaskStatus[tuple[str, int] | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; reports the bound ``(host, port)``, or None if the address
        could not be bound (logged; the daemon goes on without the admin listener)."""
        config = self.config
        host = "127.0.0.1" if config.host == "localhost" else config.host
        try:
            listeners = await trio.open_tcp_listeners(config.port, host=host)
        except OSError as exc:
            log.error(
                "admin listener %s could not bind (%s); running without it",
                config.listen,
                exc.strerror or exc,
            )
            task_status.started(None)
            return
        bound_host, bound_port = listeners[0].socket.getsockname()[:2]
        log.info("admin listening address=%s:%d open=%s", bound_host, bound_port, config.open)
        async with trio.open_nursery() as handlers:
            if self.process is not None:
                handlers.start_soon(self.process.run)
            handlers.start_soon(self._sample)
            task_status.started((bound_host, bound_port))
            await trio.serve_listeners(self._handle, listeners, handler_nursery=handlers)

    async def _sample(self) -> None:
        """``server.stats`` while someone watches: the page's queue-depth chart. Looked at once
        a second (O(1): counts kept anyway), published when a number changed, a watcher came,
        or ``STATS_HEARTBEAT`` passed: the samples share the ring that is also the replay
        buffer, and an idle daemon's replay should still hold its last transactions.
        Everything else the charts show is computed from the events by the page itself."""
        metrics, bus = self.metrics, self.bus
        last: tuple[int | None, int] | None = None
        last_at, watchers = -math.inf, 0
        while True:
            await trio.sleep(STATS_INTERVAL)
            clients = self.clients
            queue = metrics.queue_size() if metrics.queue_size is not None else None
            state = (queue, bus.counters.open)
            now = trio.current_time()
            due = state != last or clients > watchers or now - last_at >= STATS_HEARTBEAT
            watchers = clients
            if not clients or not due:
                continue
            last, last_at = state, now
            bus.publish(
                StatsSampled(
                    ts=bus.clock(), queue=queue, connections=state[1], uptime=metrics.uptime()
                )
            )

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            stream.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, SEND_BUFFER)
            got = None  # stays None if the deadline passes first (a browser's idle preconnect)
            with trio.move_on_after(HEAD_DEADLINE):
                got = await read_head(stream)
                if got is None:
                    return
            if got is None:  # the deadline passed
                return
            await self._dispatch(stream, *got)
        except HttpError as exc:
            await _refuse(stream, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        except Exception:  # the isolation boundary of one admin connection
            log.exception("admin connection failed")
        finally:
            await stream.aclose()

    async def _dispatch(self, stream: trio.SocketStream, head: RequestHead, raw: bytes) -> None:
        if is_action(head.path):
            await self._action(stream, head, raw)
            return
        if head.method not in ("GET", "HEAD"):
            raise HttpError(405, "admin: only GET is served here")
        if head.path in ("/", "/index.html"):
            host = head.header("host") or "localhost"
            self.access.check_origin(head)
            extra = (("Content-Security-Policy", self.page.csp(host)),)
            body = self.page.html if head.method == "GET" else b""
            await stream.send_all(response(200, body, "text/html; charset=utf-8", extra))
            return
        if head.path == PLUGINS_PATH:
            self.access.check(head)
            if self.var_dir is None:
                raise HttpError(503, "admin: this needs the daemon's control socket")
            client = str(stream.socket.getpeername()[0])
            status, payload = await perform(self.var_dir, "plugins.health", {}, client, audit=False)
            await stream.send_all(response(status, payload, "application/json"))
            return
        if head.path == "/metrics":
            self.access.check(head)
            await stream.send_all(response(200, self.metrics.render(), METRICS_TYPE))
            return
        if head.path == "/events":
            if not head.is_websocket:
                raise HttpError(426, "admin: /events is a websocket (ws://host:port/events)")
            self.access.check(head)
            event_filter = EventFilter.from_query(head.query, self.config.replay)
            if self.clients >= self.config.max_clients:
                raise HttpError(503, "admin: too many watchers (see [admin] max_clients)")
            if self.process is None:
                await self._websocket(stream, raw, event_filter)
                return
            try:
                await self.process.hand_over(stream, raw, event_filter, head.query)
            except WatcherProcessError as exc:
                raise HttpError(503, f"admin: {exc}") from None
            return  # closing our copy of the socket leaves the watcher process's open
        raise HttpError(404, "admin: not found (try /, /events, /metrics, /api/plugins)")

    async def _action(self, stream: trio.SocketStream, head: RequestHead, raw: bytes) -> None:
        command = command_of(head.path)
        authorize(self.access, self.config, head)
        if self.var_dir is None:
            raise HttpError(503, "admin: actions need the daemon's control socket")
        body = None
        with trio.move_on_after(HEAD_DEADLINE):
            body = await read_body(stream, head, raw)
        if body is None:
            raise HttpError(408, "admin: the request body did not arrive in time")
        args = arguments(command, parse_json(body))
        client = str(stream.socket.getpeername()[0])
        status, payload = await perform(self.var_dir, command, args, client)
        await stream.send_all(response(status, payload, "application/json"))

    async def _websocket(
        self, stream: trio.SocketStream, raw: bytes, event_filter: EventFilter
    ) -> None:
        self.local_clients += 1
        try:
            subscription = subscribe(self.bus, event_filter)
            await serve_watcher(
                stream,
                raw,
                subscription,
                event_filter,
                server=self.server_name,
                encoded=self.encoded,
            )
        finally:
            self.local_clients -= 1
