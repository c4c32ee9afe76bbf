"""``trio-mta watch``: the terminal client of ``/events``.

One line per completed transaction (``transaction.end``), per refusal (``transaction.refused``)
and per delivery attempt and outcome (``delivery.*``) by default; ``--inbound`` or ``--outbound``
keeps one side; every event with ``--follow``, raw JSON objects (one per line) with ``--json``.
Colour only when the output is a terminal and ``NO_COLOR`` is not set. Filters are passed to the
server, which applies them.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from typing import TextIO

import attrs
import trio
import trio_websocket

from ._format import Style, format_event, format_summary

DEFAULT_URL = "ws://127.0.0.1:8025/events"
INBOUND = ("transaction.end", "transaction.refused")
OUTBOUND = ("delivery",)
RETRY_MAX = 30.0  # seconds between attempts to reach a server that stays away


@attrs.frozen
class WatchOptions:
    url: str = DEFAULT_URL
    token: str | None = None
    follow: bool = False
    json: bool = False
    types: tuple[str, ...] = ()
    inbound: bool = True  # the summary's sides (without --type)
    outbound: bool = True
    ips: tuple[str, ...] = ()
    sender_domains: tuple[str, ...] = ()
    rcpt_domains: tuple[str, ...] = ()
    replay: int = 0
    color: bool | None = None  # None: only on a terminal
    reconnect: bool = False  # after the stream ends or the server is away, connect again
    retry_delay: float = 1.0  # seconds before the first new attempt; doubles up to RETRY_MAX

    def stream_url(self) -> str:
        """The URL with the filters as query parameters (the server filters)."""
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"--url must be ws:// or wss:// (got {self.url!r})")
        query = urllib.parse.parse_qsl(parts.query)
        summary = (INBOUND if self.inbound else ()) + (OUTBOUND if self.outbound else ())
        sides = summary if not (self.inbound and self.outbound) else ()
        types = self.types or (sides if self.follow or self.json else summary)
        for name, values in (
            ("type", types),
            ("ip", self.ips),
            ("sender_domain", self.sender_domains),
            ("rcpt_domain", self.rcpt_domains),
        ):
            if values:
                query.append((name, ",".join(values)))
        if self.replay:
            query.append(("replay", str(self.replay)))
        path = parts.path or "/events"
        return urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, path, urllib.parse.urlencode(query), "")
        )


def _use_color(options: WatchOptions, out: TextIO) -> bool:
    if options.color is not None:
        return options.color
    return out.isatty() and not os.environ.get("NO_COLOR")


async def watch(options: WatchOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print events until the server closes the stream; returns the exit status. With
    ``reconnect``, a closed stream or an unreachable server means waiting and connecting again
    (the daemon restarting, its watcher process replaced) until interrupted; a refusal (token,
    origin) still ends it.

    Error handling: a refused handshake, an unreachable server or a closed stream is one line
    on ``err`` and status 1.
    """
    try:
        url = options.stream_url()
    except ValueError as exc:
        print(f"trio-mta watch: {exc}", file=err)
        return 2
    headers = [(b"authorization", f"Bearer {options.token}".encode())] if options.token else []
    style = Style(_use_color(options, out))
    delay = options.retry_delay
    while True:
        status, streamed = await _stream(url, headers, options, style, out, err)
        if status is None or not options.reconnect:
            return 1 if status is None else status
        delay = options.retry_delay if streamed else min(delay * 2, RETRY_MAX)
        print(f"trio-mta watch: connecting again in {delay:g}s", file=err)
        err.flush()
        await trio.sleep(delay)


async def _stream(
    url: str,
    headers: list[tuple[bytes, bytes]],
    options: WatchOptions,
    style: Style,
    out: TextIO,
    err: TextIO,
) -> tuple[int | None, bool]:
    """One connection: ``(status, whether events flowed)``; status None for a refusal, which
    another attempt would not change."""
    streamed = False
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
            while True:
                message = await ws.get_message()
                streamed = True
                for item in json.loads(message):
                    _show(item, options, style, out, err, url)
                out.flush()
    except trio_websocket.ConnectionRejected as exc:
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        print(f"trio-mta watch: refused ({exc.status_code}): {body}", file=err)
        return (1 if exc.status_code >= 500 else None), streamed
    except trio_websocket.ConnectionClosed as exc:
        print(f"trio-mta watch: the server closed the stream ({exc.reason})", file=err)
        return 1, streamed
    except (OSError, trio_websocket.HandshakeError) as exc:
        print(f"trio-mta watch: cannot connect to {url}: {exc}", file=err)
        return 1, streamed


def _show(
    item: dict[str, object],
    options: WatchOptions,
    style: Style,
    out: TextIO,
    err: TextIO,
    url: str,
) -> None:
    kind = item.get("type")
    if kind == "hello":
        print(f"watching {url} (replay {item.get('replay', 0)}; Ctrl-C to stop)", file=err)
        err.flush()
        return
    if options.json:
        print(json.dumps(item, ensure_ascii=False), file=out)
    elif options.follow:
        # The page's once-a-second samples only on request (--type server): a line a second
        # of them would drown the events themselves.
        if kind != "server.stats" or options.types:
            print(format_event(item, style), file=out)
    else:
        line = format_summary(item, style)
        if line is not None:
            print(line, file=out)
