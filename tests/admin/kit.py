"""The daemon in-process (``app.run``) with its admin listener on a kernel-chosen port, and
clients for it: SMTP (``LineClient``), websocket watchers, plain HTTP GETs."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient, ServerReply
from trio_mta import app
from trio_mta.config import Config
from trio_mta.events import EventBus
from trio_mta.server import BoundListener

Event = dict[str, object]
MESSAGE = b"Subject: watched\r\n\r\nhello\r\n"


# Where watchers are served by default in these tests (a test module may run both ways).
WATCHER_PROCESS = {"on": True}


def admin_config(var_dir: Path, **admin: object) -> Config:
    """``make_config`` with discard delivery and these ``[admin]`` settings (port 0)."""
    base = make_config(var_dir)
    plugins = attrs.evolve(base.plugins, order=("rcpt_to_host_list", "queue_discard"))
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "watcher_process": WATCHER_PROCESS["on"],
        **admin,
    }
    tls = attrs.evolve(base.tls, generate_self_signed=False)  # no certificate to make
    return attrs.evolve(base, plugins=plugins, tls=tls, admin=attrs.evolve(base.admin, **settings))


@attrs.define
class Daemon:
    smtp: BoundListener
    admin: tuple[str, int]
    bus: EventBus

    @property
    def base_url(self) -> str:
        return f"{self.admin[0]}:{self.admin[1]}"

    def url(self, query: str = "") -> str:
        return f"ws://{self.base_url}/events" + (f"?{query}" if query else "")

    async def greeted(self, local_ip: str | None = None) -> LineClient:
        stream = await trio.open_tcp_stream(self.smtp.host, self.smtp.port, local_address=local_ip)
        client = LineClient(stream)
        await client.expect(220)
        await client.command("EHLO client.example", 250)
        return client

    async def send(
        self,
        sender: str = "alice@example.org",
        recipients: tuple[str, ...] = ("bob@example.test",),
        *,
        local_ip: str | None = None,
    ) -> ServerReply:
        """One message on a new connection, then QUIT."""
        client = await self.greeted(local_ip)
        answer = await client.transaction(sender, list(recipients), MESSAGE)
        await client.command("QUIT", 221)
        await client.stream.aclose()
        return answer

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """A plain HTTP GET (its own ``Host`` unless ``headers`` has one); status and body."""
        stream = await trio.open_tcp_stream(*self.admin)
        fields = {"Host": self.base_url, **(headers or {})}
        lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
        await stream.aclose()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    async def post(
        self,
        path: str,
        body: object,
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "POST",
    ) -> tuple[int, bytes]:
        """An HTTP request with a JSON body (``Content-Type`` unless ``headers`` has one)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        fields = {
            "Host": self.base_url,
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            **(headers or {}),
        }
        stream = await trio.open_tcp_stream(*self.admin)
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items() if v)]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        answer = b""
        while chunk := await stream.receive_some():
            answer += chunk
        await stream.aclose()
        head, _, reply = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), reply

    async def upgrade(self, path: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """A websocket handshake with these headers (Host included, unlike trio-websocket's
        client allows); the status and body of a refusal (101 and b"" if accepted)."""
        fields = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            **headers,
        }
        stream = await trio.open_tcp_stream(*self.admin)
        lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data or not data.startswith(b"HTTP/1.1 101 "):
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
        await stream.aclose()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Daemon]:
    """``app.run(config)`` until the body ends; the admin listener is up (port known)."""
    bus = app.make_bus(config)
    address: list[tuple[str, int] | None] = []
    async with trio.open_nursery() as nursery:
        bound: list[BoundListener] = await nursery.start(
            lambda task_status: app.run(
                config, bus=bus, on_admin=address.append, task_status=task_status
            )
        )
        admin = address[0]
        assert admin is not None
        try:
            yield Daemon(bound[0], admin, bus)
        finally:
            nursery.cancel_scope.cancel()


# Sampled once a second while someone watches (the page's charts): not part of any sequence a
# test scripts, so the collecting watcher leaves them out unless asked.
SAMPLED = frozenset({"server.stats"})


class Watcher:
    """A websocket client of /events that collects what it is sent (``server.stats`` samples
    only with ``samples=True``)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, *, samples: bool = False) -> None:
        self.ws = ws
        self.events: list[Event] = []
        self.hello: Event | None = None
        self.skip = frozenset() if samples else SAMPLED
        self.skipped: list[Event] = []

    async def read_hello(self) -> Event:
        hello: Event
        [hello] = json.loads(await self.ws.get_message())
        assert hello["type"] == "hello", hello
        self.hello = hello
        return hello

    async def until(self, kind: str, count: int = 1) -> list[Event]:
        """Read until ``count`` events of type ``kind`` have arrived; all events so far."""
        while sum(1 for e in self.events if e["type"] == kind) < count:
            got = json.loads(await self.ws.get_message())
            self.events.extend(e for e in got if e["type"] not in self.skip)
            self.skipped.extend(e for e in got if e["type"] in self.skip)
        return self.events


@asynccontextmanager
async def watching(url: str, **kwargs: object) -> AsyncIterator[Watcher]:
    async with trio_websocket.open_websocket_url(url, **kwargs) as ws:  # type: ignore[arg-type]  # test-only pass-through
        watcher = Watcher(ws)
        await watcher.read_hello()
        yield watcher


@asynccontextmanager
async def stalled_watcher(
    url_host: str, port: int, resource: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A watcher that takes its hello and then reads nothing until the test does (tiny receive
    buffer, a library queue of one message)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((url_host, port))
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, trio.SocketStream(sock), f"{url_host}:{port}", resource, message_queue_size=1
        )
        await ws.get_message()  # the hello
        try:
            yield ws
        finally:
            nursery.cancel_scope.cancel()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds: what a watcher process reports reaches the daemon a
    moment after the watcher's own client sees it (the caller's deadline bounds the wait)."""
    while not condition():  # noqa: ASYNC110  # state in another process: nothing to wait on
        await trio.sleep(0.01)


def types(events: list[Event]) -> list[str]:
    return [str(e["type"]) for e in events]
