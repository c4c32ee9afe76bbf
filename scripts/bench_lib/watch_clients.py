"""Watchers for ``scripts/bench --watchers``: websocket clients of trio-mta's ``/events``.

``python -m bench_lib.watch_clients URL --reader QUERY ... --stalled QUERY ...`` connects one
client per option (QUERY is its query string, "" for the whole stream, every plugin call
included), prints ``ready`` once each has its hello, then reads until SIGTERM and prints one
JSON line of what the readers got (events, gaps, events lost). Readers count what they get; a
stalled client never reads after its hello, with a small receive buffer, so the server's send
to it blocks almost at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import urllib.parse
from collections.abc import Sequence

import trio
import trio_websocket

STALLED_RCVBUF = 4096


async def _connect(
    nursery: trio.Nursery, url: str, *, rcvbuf: int | None
) -> trio_websocket.WebSocketConnection:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect((host, port))
    stream = trio.SocketStream(sock)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    return await trio_websocket.wrap_client_stream(
        nursery,
        stream,
        f"{host}:{port}",
        resource,
        message_queue_size=1,
        receive_buffer_size=None if rcvbuf is None else 4096,
    )


async def _read(ws: trio_websocket.WebSocketConnection, stats: dict[str, int]) -> None:
    try:
        while True:
            message = await ws.get_message()
            assert isinstance(message, str)
            # Counted, not parsed (gaps excepted): the watchers share the machine with the
            # server and the load, and their own CPU is not what is measured here.
            stats["events"] += message.count('{"v":')
            if '"type":"gap"' in message:
                for item in json.loads(message):
                    if item["type"] == "gap":
                        stats["events"] -= 1
                        stats["gaps"] += 1
                        stats["lost"] += item["dropped"]
    except trio_websocket.ConnectionClosed:
        return


async def main_async(url: str, readers: list[str], stalled: list[str]) -> dict[str, int]:
    stats = {"events": 0, "gaps": 0, "lost": 0}
    async with trio.open_nursery() as nursery:
        clients = []
        for index, query in enumerate(readers + stalled):
            full = f"{url}?{query}" if query else url
            rcvbuf = STALLED_RCVBUF if index >= len(readers) else None
            ws = await _connect(nursery, full, rcvbuf=rcvbuf)
            await ws.get_message()  # the hello
            clients.append(ws)
        for ws in clients[: len(readers)]:
            nursery.start_soon(_read, ws, stats)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="watch_clients")
    p.add_argument("url")
    p.add_argument("--reader", action="append", default=[], metavar="QUERY")
    p.add_argument("--stalled", action="append", default=[], metavar="QUERY")
    args = p.parse_args(argv)
    stats = trio.run(main_async, args.url, args.reader, args.stalled)
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
