"""The byte pipe under one SMTP connection.

Two implementations of one small interface: ``SocketTransport`` talks to ``trio.socket``
directly (the measured hot path: no ``SocketStream`` layer, a plain close instead of
``aclose_forcefully``), ``StreamTransport`` wraps any ``trio.abc.Stream`` (TLS via
``trio.SSLStream``, memory streams in tests).
"""

from __future__ import annotations

import socket as stdlib_socket
from typing import Protocol

import trio

RECV_SIZE = 65536


class Transport(Protocol):
    async def receive(self) -> bytes:
        """Some bytes, or ``b""`` at end of stream (a reset counts as end of stream)."""
        ...

    async def send_all(self, data: bytes) -> None: ...

    def has_pending_input(self) -> bool:
        """Whether the client has already sent something (early-talker check)."""
        ...

    async def wait_input(self) -> None:
        """Return when the client has sent something (or hung up)."""
        ...

    def at_eof(self) -> bool:
        """After ``wait_input``: whether what arrived is the end of the stream."""
        ...

    async def aclose(self) -> None:
        """Close at once, without a graceful goodbye; safe inside a cancelled scope."""
        ...


class SocketTransport:
    def __init__(self, raw: stdlib_socket.socket) -> None:
        self.raw = raw
        self._sock: trio.socket.SocketType | None = None

    @property
    def sock(self) -> trio.socket.SocketType:
        """The trio socket over ``raw``, made on first use (only STARTTLS needs one)."""
        if self._sock is None:
            self._sock = trio.socket.from_stdlib_socket(self.raw)
        return self._sock

    # receive/send_all follow trio.socket's own discipline (a cancellation check, the call
    # tried at once, a wait only if it would block, a schedule point after an immediate
    # success) without its per-call async context manager, which cost more than the syscall.

    async def receive(self) -> bytes:
        raw = self.raw
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = raw.recv(RECV_SIZE)
        except BlockingIOError:
            return await self._receive_waiting()
        except OSError:
            return b""
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def _receive_waiting(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self.raw)
            try:
                return self.raw.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    async def send_all(self, data: bytes) -> None:
        raw = self.raw
        view = memoryview(data)
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sent = raw.send(view)
        except BlockingIOError:
            sent = 0
        if sent == len(view):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        view = view[sent:]
        while view:
            await trio.lowlevel.wait_writable(raw)
            try:
                view = view[raw.send(view) :]
            except BlockingIOError:
                continue

    def has_pending_input(self) -> bool:
        try:
            return bool(self.raw.recv(1, stdlib_socket.MSG_PEEK | stdlib_socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    async def wait_input(self) -> None:
        await trio.lowlevel.wait_readable(self.raw)

    def at_eof(self) -> bool:
        try:
            return not self.raw.recv(1, stdlib_socket.MSG_PEEK | stdlib_socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    async def aclose(self) -> None:
        # Deliberately no checkpoint: a plain close is what the hot path can afford, and it
        # must also work inside an already-cancelled scope.
        if self._sock is not None:
            self._sock.close()
        else:
            trio.lowlevel.notify_closing(self.raw)
            self.raw.close()


class StreamTransport:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._stash = b""
        self._eof = False

    async def receive(self) -> bytes:
        if self._stash:
            data, self._stash = self._stash, b""
            return data
        if self._eof:
            return b""
        try:
            return bytes(await self.stream.receive_some(RECV_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def has_pending_input(self) -> bool:
        return bool(self._stash)

    async def wait_input(self) -> None:
        if not self._stash and not self._eof:
            self._stash = await self.receive()
            self._eof = not self._stash

    def at_eof(self) -> bool:
        return self._eof and not self._stash

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
