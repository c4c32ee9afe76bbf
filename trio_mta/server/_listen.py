"""Listeners, the accept loop, connection limits, and graceful shutdown.

Theory of operation
-------------------
Each listener is a non-blocking stdlib socket. Its accept loop waits until the socket is
readable and then empties the whole accept queue without further checkpoints: under a burst one
wakeup admits many clients (a measured third more throughput than one task hop per accept).
Admission is decided right there, before any task exists: past ``max_connections`` or
``max_connections_per_ip`` the client gets ``421 4.7.0`` and the socket is closed.

Every admitted connection runs in ``serve``'s connection nursery, isolated: an exception in one
driver is logged and answered 421 4.3.0, and never reaches the nursery (trio would otherwise
cancel every sibling). ``BaseException`` (cancellation) always propagates.

Shutdown (``request_shutdown``): listening sockets close, idle connections are told 421 at
once, connections inside a transaction finish it; after ``timeouts.drain`` the connection
nursery is cancelled and the rest are told 421 as they go.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket as stdlib_socket
import time
from collections.abc import Callable

import attrs
import trio

from ..config import BareLineEndings, Config, ListenerConfig, ListenerKind
from ..events import EventBus
from ..protocol import BareLineEndingPolicy, ProtocolLimits, reply
from ._auth import AuthFailures
from ._counted import CountedConnection
from ._driver import ConnectionDriver
from ._exempt import Exemptions
from ._handler import SessionHandler
from ._hangup import HangupSweep
from ._refusals import CONNECT, report
from ._session import IdGenerator, Session
from ._tls import TlsProvider
from ._transport import SocketTransport

log = logging.getLogger("trio_mta.server")

_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
TOO_MANY = reply(421, "4.7.0", "Too many connections, try again later")
_TOO_MANY = TOO_MANY.to_bytes()


@attrs.frozen
class BoundListener:
    name: str
    host: str
    port: int


def protocol_limits(config: Config) -> ProtocolLimits:
    lim = config.limits
    policy = (
        BareLineEndingPolicy.NORMALIZE
        if config.data.bare_line_endings is BareLineEndings.NORMALIZE
        else BareLineEndingPolicy.REJECT
    )
    return ProtocolLimits(
        command_line=lim.command_line,
        text_line=lim.text_line,
        auth_line=lim.auth_line,
        max_message_size=lim.max_message_size,
        max_recipients=lim.max_recipients,
        bare_line_endings=policy,
    )


def bind_listener(listener: ListenerConfig) -> stdlib_socket.socket:
    host = "127.0.0.1" if listener.host == "localhost" else listener.host
    family = stdlib_socket.AF_INET6 if ":" in host else stdlib_socket.AF_INET
    sock = stdlib_socket.socket(family, stdlib_socket.SOCK_STREAM)
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        if family == stdlib_socket.AF_INET6:
            sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
        sock.bind((host, listener.port))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        # The bare errno text would not say which of the listeners failed.
        why = exc.strerror or str(exc)
        raise OSError(exc.errno, f"listener {listener.name!r} on {listener.listen}: {why}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listeners(config: Config) -> list[stdlib_socket.socket]:
    """Every listener of ``config``, bound and listening (all or none).

    Raises:
        OSError: naming the listener that could not bind.
    """
    sockets: list[stdlib_socket.socket] = []
    try:
        for listener in config.listeners:
            sockets.append(bind_listener(listener))  # noqa: PERF401  # close on failure
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SMTPServer:
    """All SMTP listeners of one daemon, and the connections they admitted."""

    def __init__(
        self,
        config: Config,
        handler_factory: Callable[[], SessionHandler],
        *,
        ids: IdGenerator | None = None,
        tls: TlsProvider | None = None,
        bus: EventBus | None = None,
        sockets: list[stdlib_socket.socket] | None = None,
    ) -> None:
        """``sockets``: the listeners, bound already by ``bind_listeners`` (a daemon that drops
        root privileges binds first); None: ``serve`` binds them."""
        self.config = config
        self.bus = bus if bus is not None else EventBus()  # connection and transaction events
        self.tls = tls  # None: no STARTTLS, and no smtps listener may exist
        self.handler_factory = handler_factory
        self.ids = ids or IdGenerator()
        self.closing = trio.Event()
        self.stopped = trio.Event()
        self.limits = protocol_limits(config)
        # Loopback by default: a local application may open as many connections as the
        # global limit allows, and its failed logins are not tarpitted.
        self.exempt = Exemptions(config.limits.exempt_networks)
        # failed AUTH per client, all listeners
        self.auth_failures = AuthFailures(config.auth, exempt=self.exempt)
        self.drivers: set[ConnectionDriver] = set()
        self.hangups = HangupSweep()
        self.per_ip: dict[str, int] = {}
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()
        self._sockets: list[stdlib_socket.socket] = list(sockets or ())

    def statistics(self) -> dict[str, int]:
        return {"connections": self.active, "clients": len(self.per_ip)}

    async def serve(self, *, task_status: trio.TaskStatus[list[BoundListener]]) -> None:
        """Listen until ``request_shutdown``, then drain. Reports the bound addresses."""
        bound: list[BoundListener] = []
        for listener in self.config.listeners:
            if listener.kind is ListenerKind.SMTPS and self.tls is None:
                raise ValueError(f"listener {listener.name!r} is implicit TLS, but TLS is off")
        if not self._sockets:
            self._sockets = bind_listeners(self.config)
        for sock, listener in zip(self._sockets, self.config.listeners, strict=True):
            host, port = sock.getsockname()[:2]
            bound.append(BoundListener(listener.name, host, port))
        try:
            async with trio.open_nursery() as connections:
                connections.start_soon(self.hangups.run)
                async with trio.open_nursery() as accepters:
                    for sock, listener in zip(self._sockets, self.config.listeners, strict=True):
                        accepters.start_soon(self._accept_loop, sock, listener, connections)
                    task_status.started(bound)
                    await self.closing.wait()
                    for sock in self._sockets:
                        trio.lowlevel.notify_closing(sock)
                        sock.close()
                for driver in list(self.drivers):
                    driver.wake_for_shutdown()
                with trio.move_on_after(self.config.timeouts.drain):
                    await self._idle.wait()
                connections.cancel_scope.cancel()
        finally:
            for sock in self._sockets:
                sock.close()
            self.stopped.set()

    def request_shutdown(self) -> None:
        self.closing.set()

    async def _accept_loop(
        self, sock: stdlib_socket.socket, listener: ListenerConfig, nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            while True:
                try:
                    client, addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in _RESOURCE_ERRORS:
                        log.warning("accept failed (%s); pausing 100 ms", exc)
                        await trio.sleep(0.1)
                        break
                    if sock.fileno() < 0:
                        return
                    raise
                self._admit(client, addr, listener, nursery)

    def _admit(
        self,
        client: stdlib_socket.socket,
        addr: tuple[str, int] | tuple[str, int, int, int],
        listener: ListenerConfig,
        nursery: trio.Nursery,
    ) -> None:
        ip = addr[0]
        limits = self.config.limits
        count = self.per_ip.get(ip, 0)
        if self.active >= limits.max_connections or (
            count >= limits.max_connections_per_ip and ip not in self.exempt
        ):
            # The greppable reject line, and the event (the count: the limit that was hit).
            report(self.bus, conn=None, txn=None, ip=ip, helo=None, what=CONNECT,
                   answer=TOO_MANY, plugin=None)  # fmt: skip
            log.debug("ip=%s connection limit: %d active, %d from it", ip, self.active, count)
            with contextlib.suppress(OSError):
                client.send(_TOO_MANY, stdlib_socket.MSG_DONTWAIT)
            client.close()
            return
        client.setblocking(False)
        self.active += 1
        self.per_ip[ip] = count + 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        nursery.start_soon(self._handle, client, addr, listener, nursery)

    def _release(self, ip: str) -> None:
        self.active -= 1
        left = self.per_ip[ip] - 1
        if left:
            self.per_ip[ip] = left
        else:
            del self.per_ip[ip]
        if self.active == 0:
            self._idle.set()

    async def _handle(
        self,
        client: stdlib_socket.socket,
        addr: tuple[str, int] | tuple[str, int, int, int],
        listener: ListenerConfig,
        nursery: trio.Nursery,
    ) -> None:
        transport = SocketTransport(client)
        implicit_tls = listener.kind is ListenerKind.SMTPS
        try:
            local = client.getsockname()
        except OSError:
            local = ("", 0)
        session = Session(
            id=self.ids(),
            listener=listener.name,
            client_ip=addr[0],
            client_port=addr[1],
            local_ip=local[0],
            local_port=local[1],
            started=time.time(),
        )
        driver = ConnectionDriver(
            transport,
            session,
            self.config,
            self.handler_factory(),
            self.ids,
            CountedConnection(self.bus.counters, self.limits, tls=implicit_tls),
            is_closing=self.closing,
            nursery=nursery,
            hangups=self.hangups,
            tls=self.tls,
            implicit_tls=implicit_tls,
            auth_failures=self.auth_failures,
            bus=self.bus,
        )
        self.drivers.add(driver)
        try:
            await driver.run()
        except Exception:
            log.exception("conn=%s ip=%s connection failed", session.id, session.client_ip)
            with trio.move_on_after(1):
                with contextlib.suppress(Exception):
                    await transport.send_all(b"421 4.3.0 Internal error, closing connection\r\n")
        finally:
            self.drivers.discard(driver)
            await transport.aclose()
            self._release(addr[0])
