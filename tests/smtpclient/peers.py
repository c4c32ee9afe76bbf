"""Real SMTP/LMTP peers on 127.0.0.1 for the client and the forwarding plugins.

* ``aiosmtpd_server``: aiosmtpd's threaded Controller (SMTP or LMTP) with a ``Recorder``
  handler that keeps every envelope and answers what the test scripted.
* ``fake_server``: a tiny trio server whose behaviour is a test-written coroutine, for what
  aiosmtpd cannot be made to do (refuse EHLO, demand pipelining, break TLS).
* ``smtp_sink``: Postfix's smtp-sink as a subprocess, with its ``-d`` dump files parsed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

REPO = Path(__file__).resolve().parents[2]
SMTP_SINK = REPO / "scripts" / "smtp-sink"
HOST = "127.0.0.1"


# ---------------------------------------------------------------------------------- aiosmtpd
@attrs.frozen
class Received:
    mail_from: str
    mail_options: tuple[str, ...]
    rcpt_tos: tuple[str, ...]
    rcpt_options: tuple[tuple[str, ...], ...]
    content: bytes


@attrs.define
class Recorder:
    """An aiosmtpd handler: records envelopes; ``rcpt``/``lmtp`` map an address to a reply."""

    ehlo_extra: tuple[str, ...] = ("PIPELINING", "ENHANCEDSTATUSCODES")
    rcpt: dict[str, str] = attrs.Factory(dict)
    mail: str | None = None
    data: str | None = None
    lmtp: dict[str, str] = attrs.Factory(dict)
    received: list[Received] = attrs.Factory(list)
    commands: list[str] = attrs.Factory(list)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extra = [f"250-{word}" for word in self.ehlo_extra]
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append("MAIL")
        if self.mail:
            return self.mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.commands.append("RCPT")
        if address in self.rcpt:
            return self.rcpt[address]
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(options)  # type: ignore[arg-type]  # one list per RCPT
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.commands.append("DATA")
        assert isinstance(envelope.original_content, bytes)
        assert envelope.mail_from is not None
        options: list[Any] = list(envelope.rcpt_options)
        if self.data is None:
            self.received.append(
                Received(
                    envelope.mail_from,
                    tuple(envelope.mail_options),
                    tuple(envelope.rcpt_tos),
                    tuple(tuple(o) for o in options),
                    envelope.original_content,
                )
            )
        if isinstance(server, LMTP):
            return "\r\n".join(self.lmtp.get(r, "250 2.0.0 delivered") for r in envelope.rcpt_tos)
        return self.data or "250 2.0.0 Ok: queued as DOWNSTREAM1"


class _Controller(Controller):
    """Binds port 0: learns the kernel's port before aiosmtpd's self-test connects to it."""

    lmtp = False

    def factory(self) -> SMTP:
        return (LMTP if self.lmtp else SMTP)(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]  # aiosmtpd leaves it untyped


@asynccontextmanager
async def aiosmtpd_server(
    handler: Recorder, *, lmtp: bool = False, **kwargs: Any
) -> AsyncIterator[int]:
    """Run aiosmtpd (in its own thread and asyncio loop); yield its port."""
    controller = _Controller(handler, hostname=HOST, port=0, **kwargs)
    controller.lmtp = lmtp
    await trio.to_thread.run_sync(controller.start)
    try:
        yield controller.port
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(controller.stop)


def authenticator(user: str, password: str) -> Callable[..., AuthResult]:
    def check(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data == (user.encode(), password.encode())
        return AuthResult(success=ok, handled=False)

    return check


@attrs.frozen
class TLSPair:
    server: ssl.SSLContext
    client: ssl.SSLContext


def tls_pair() -> TLSPair:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", HOST).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return TLSPair(server, client)


# ---------------------------------------------------------------------------------- fake server
class Peer:
    """The server side of one fake-server connection, line by line."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.lines: list[bytes] = []  # every line read, without CRLF

    async def send(self, *replies: str) -> None:
        await self.stream.send_all("".join(r + "\r\n" for r in replies).encode())

    async def line(self) -> bytes:
        while (nl := self.buf.find(b"\r\n")) < 0:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(bytes(self.buf))
            self.buf += data
        line = bytes(self.buf[:nl])
        del self.buf[: nl + 2]
        self.lines.append(line)
        return line

    def buffered_lines(self) -> int:
        """Whole lines already received but not yet read."""
        return self.buf.count(b"\r\n")

    async def fill(self, lines: int) -> None:
        """Wait until ``lines`` whole lines are buffered (without replying to any)."""
        while self.buffered_lines() < lines:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(bytes(self.buf))
            self.buf += data


Behaviour = Callable[[Peer], Awaitable[None]]


@asynccontextmanager
async def fake_server(behaviour: Behaviour) -> AsyncIterator[int]:
    """Serve ``behaviour`` on 127.0.0.1 for every connection; yield the port. An exception in
    the behaviour (other than the client hanging up) fails the test."""

    async def handle(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        try:
            await behaviour(peer)
        except (EOFError, trio.BrokenResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=HOST))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def unused_port() -> int:
    """A port nothing listens on (bound then closed: connecting to it is refused)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------- smtp-sink
@attrs.frozen
class SinkDump:
    """One ``-d`` dump file: smtp-sink's X- headers, then the message with LF line ends."""

    mail_args: str
    rcpt_args: tuple[str, ...]
    proto: str
    body: bytes  # the message as dumped: CRLF turned into LF, plus one empty line

    @classmethod
    def parse(cls, raw: bytes) -> SinkDump:
        lines = raw.split(b"\n")
        start = next(i for i, line in enumerate(lines) if line.startswith(b"Received: from"))
        head = {}
        rcpts: list[str] = []
        for line in lines[:start]:
            key, _, value = line.decode().partition(": ")
            if key == "X-Rcpt-Args":
                rcpts.append(value)
            head[key] = value
        return cls(
            head["X-Mail-Args"],
            tuple(rcpts),
            head["X-Client-Proto"],
            b"\n".join(lines[start + 3 :]),
        )


@attrs.define
class Sink:
    port: int
    dump_dir: Path

    def dumps(self) -> list[SinkDump]:
        return [SinkDump.parse(p.read_bytes()) for p in sorted(self.dump_dir.iterdir())]


def _world_writable_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="trio-mta-sink-"))
    path.chmod(0o777)
    return path


@asynccontextmanager
async def smtp_sink(*flags: str) -> AsyncIterator[Sink]:
    """Postfix's smtp-sink on a free loopback port, dumping each message (``-d``)."""
    if not (REPO / ".tools" / "postfix" / "usr" / "sbin" / "smtp-sink").exists():
        pytest.skip("smtp-sink not installed (run `make tools`)")
    # As root smtp-sink drops to nobody, which must reach the dump directory: not under the
    # 0700 pytest base directory.
    dump_dir = _world_writable_dir()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    port = unused_port()
    args = [str(SMTP_SINK), *user, "-d", f"{dump_dir}/", *flags, f"{HOST}:{port}", "10"]
    process = await trio.lowlevel.open_process(args)
    try:
        with trio.fail_after(5):
            while True:
                try:
                    stream = await trio.open_tcp_stream(HOST, port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield Sink(port, dump_dir)
    finally:
        process.terminate()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()
        shutil.rmtree(dump_dir, ignore_errors=True)
