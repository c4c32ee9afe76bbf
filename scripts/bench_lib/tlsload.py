"""One load process of the TLS bench: ``concurrency`` Trio tasks, each connecting in a loop
(connect, TLS handshake if asked, read the banner, QUIT, read 221, close) until the time is up.
Prints one JSON line: completed sessions, errors, the first error and the seconds it ran.

Run as ``python -m bench_lib.tlsload HOST PORT SECONDS CONCURRENCY {plain,tls}``.
"""

from __future__ import annotations

import json
import ssl
import sys

import trio


async def _read_reply(stream: trio.abc.Stream, buf: bytearray) -> bytes:
    """One whole reply (multi-line aware); leftover bytes stay in ``buf``."""
    while True:
        end = buf.find(b"\r\n")
        while end >= 0:
            line = bytes(buf[: end + 2])
            if line[3:4] == b" ":
                reply = bytes(buf[: end + 2])
                del buf[: end + 2]
                return reply
            end = buf.find(b"\r\n", end + 2)
        data = await stream.receive_some(4096)
        if not data:
            raise EOFError(f"closed after {bytes(buf)!r}")
        buf += data


async def _session(host: str, port: int, ctx: ssl.SSLContext | None) -> None:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if ctx is not None:
            stream = trio.SSLStream(stream, ctx, server_hostname=None)
            await stream.do_handshake()
        buf = bytearray()
        banner = await _read_reply(stream, buf)
        if not banner.startswith(b"220"):
            raise RuntimeError(f"banner {banner!r}")
        await stream.send_all(b"QUIT\r\n")
        bye = await _read_reply(stream, buf)
        if not bye.startswith(b"221"):
            raise RuntimeError(f"QUIT answered {bye!r}")
    finally:
        await trio.aclose_forcefully(stream)


async def _load(
    host: str, port: int, seconds: float, concurrency: int, tls: bool
) -> dict[str, object]:
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    done = errors = 0
    first_error = ""
    start = trio.current_time()
    deadline = start + seconds

    async def worker() -> None:
        nonlocal done, errors, first_error
        while trio.current_time() < deadline:
            try:
                await _session(host, port, ctx)
                done += 1
            except (OSError, EOFError, RuntimeError, trio.BrokenResourceError) as exc:
                errors += 1
                first_error = first_error or repr(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return {
        "done": done,
        "errors": errors,
        "first_error": first_error,
        "seconds": trio.current_time() - start,
    }


def main(argv: list[str]) -> int:
    host, port, seconds, concurrency, mode = argv
    result = trio.run(_load, host, int(port), float(seconds), int(concurrency), mode == "tls")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
