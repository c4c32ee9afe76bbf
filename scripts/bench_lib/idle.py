"""Idle connections: memory per held connection, and whether a fresh client is still served.

``hold`` opens N non-blocking sockets from this one process (selectors/epoll), reads each
banner, sends EHLO and reads its reply, then leaves the connection open and idle. At most
``batch`` handshakes are in flight at once, so the listen backlog never overflows.
"""

from __future__ import annotations

import errno
import selectors
import socket
import statistics
import time
from dataclasses import dataclass, field

from .servers import Server

_CONNECTING, _BANNER, _EHLO = range(3)


@dataclass
class _Conn:
    sock: socket.socket
    state: int = _CONNECTING
    buf: bytearray = field(default_factory=bytearray)


def reply_complete(buf: bytes | bytearray) -> bool:
    """Whether ``buf`` ends with the last line of an SMTP reply (``NNN text CRLF``)."""
    if not buf.endswith(b"\r\n"):
        return False
    last = bytes(buf[:-2]).rsplit(b"\r\n", 1)[-1]
    return len(last) >= 3 and (len(last) == 3 or last[3:4] == b" ")


@dataclass
class Held:
    sockets: list[socket.socket]
    failures: int
    first_error: str
    seconds: float

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def hold(host: str, port: int, n: int, *, batch: int = 256, deadline: float = 120.0) -> Held:
    sel = selectors.DefaultSelector()
    done: list[socket.socket] = []
    failures = 0
    first_error = ""
    created = 0
    in_flight = 0
    t0 = time.monotonic()

    def fail(conn: _Conn, why: str) -> None:
        nonlocal failures, first_error, in_flight
        sel.unregister(conn.sock)
        conn.sock.close()
        failures += 1
        in_flight -= 1
        first_error = first_error or why

    try:
        while len(done) + failures < n:
            if time.monotonic() - t0 > deadline:
                first_error = first_error or f"deadline of {deadline:.0f} s"
                failures += n - len(done) - failures
                break
            while in_flight < batch and created < n:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                created += 1
                in_flight += 1
                err = sock.connect_ex((host, port))
                conn = _Conn(sock)
                sel.register(sock, selectors.EVENT_WRITE, conn)
                if err not in (0, errno.EINPROGRESS):
                    fail(conn, f"connect: {errno.errorcode.get(err, err)}")
            for key, _mask in sel.select(timeout=1.0):
                conn = key.data
                assert isinstance(conn, _Conn)
                if conn.state == _CONNECTING:
                    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(conn, f"connect: {errno.errorcode.get(err, err)}")
                        continue
                    conn.state = _BANNER
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                    continue
                try:
                    data = conn.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    fail(conn, f"recv: {exc}")
                    continue
                if not data:
                    fail(conn, "closed by server")
                    continue
                conn.buf += data
                if not reply_complete(conn.buf):
                    continue
                if conn.state == _BANNER:
                    if not conn.buf.startswith(b"220"):
                        fail(conn, f"banner {bytes(conn.buf[:60])!r}")
                        continue
                    conn.buf.clear()
                    conn.state = _EHLO
                    conn.sock.send(b"EHLO idle.bench\r\n")
                else:
                    if not conn.buf.startswith(b"250"):
                        fail(conn, f"EHLO reply {bytes(conn.buf[:60])!r}")
                        continue
                    sel.unregister(conn.sock)
                    done.append(conn.sock)
                    in_flight -= 1
    except BaseException:
        for sock in done:
            sock.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        raise
    finally:
        sel.close()
    return Held(done, failures, first_error, time.monotonic() - t0)


def fresh_session(host: str, port: int, *, limit: float = 5.0) -> float | None:
    """Seconds for connect + banner + EHLO + QUIT, or None if it failed or took over ``limit``."""
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=limit) as sock:
            for command, want in (
                (b"", b"220"),
                (b"EHLO fresh.bench\r\n", b"250"),
                (b"QUIT\r\n", b"221"),
            ):
                if command:
                    sock.sendall(command)
                buf = b""
                while not reply_complete(buf):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return None
                    buf += chunk
                if not buf.startswith(want):
                    return None
    except OSError:
        return None
    return time.perf_counter() - t0


@dataclass(frozen=True)
class IdleResult:
    server: str
    n: int
    held: int
    failures: int
    first_error: str
    connect_seconds: float
    rss_before_kib: int
    rss_after_kib: int
    fresh: tuple[float | None, ...]
    nofile: int

    @property
    def kib_per_connection(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(self.held, 1)

    @property
    def fresh_ok(self) -> bool:
        return all(t is not None and t < 1.0 for t in self.fresh)

    @property
    def fresh_median(self) -> float | None:
        times = [t for t in self.fresh if t is not None]
        return statistics.median(times) if times else None

    @property
    def fresh_max(self) -> float | None:
        times = [t for t in self.fresh if t is not None]
        return max(times) if times else None


def idle_test(server: Server, n: int, *, fresh_samples: int = 5) -> IdleResult:
    # Warm the server's code paths once, so the baseline includes what one connection loads.
    fresh_session(server.host, server.port)
    time.sleep(0.5)
    before = server.rss_kib()
    held = hold(server.host, server.port, n)
    try:
        time.sleep(1.0)
        after = server.rss_kib()
        fresh: list[float | None] = []
        for _ in range(fresh_samples):
            fresh.append(fresh_session(server.host, server.port))
            time.sleep(0.1)
        return IdleResult(
            server.name,
            n,
            len(held.sockets),
            held.failures,
            held.first_error,
            held.seconds,
            before,
            after,
            tuple(fresh),
            server.nofile_limit(),
        )
    finally:
        held.close()
        time.sleep(0.5)
