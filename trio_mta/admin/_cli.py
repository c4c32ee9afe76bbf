"""The ``trio-mta watch`` subcommand: its options, and their defaults from the configuration."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from ..config import ConfigError, load_config, parse_listen
from ._watch import DEFAULT_URL, WatchOptions, watch

TOKEN_ENV = "TRIO_MTA_ADMIN_TOKEN"
_ANY = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def add_watch_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    config_dir: Callable[[str | None], Path | None],
) -> None:
    p = sub.add_parser(
        "watch",
        help="print transactions, refusals and deliveries as they happen (the admin stream)",
        description="One line per completed transaction, refusal, delivery attempt and delivery "
        "outcome (delivered, deferred, bounced: queue id, recipients, remote host, reply); "
        "--follow for every event, --json for the raw events. The URL and token default to "
        "the [admin] section of the configuration.",
    )
    p.add_argument("--url", help=f"the event stream (default: from [admin] listen, {DEFAULT_URL})")
    p.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV}, then [admin] token)")
    p.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
    p.add_argument("--follow", action="store_true", help="every event, one line each")
    p.add_argument("--json", action="store_true", help="raw events, one JSON object per line")
    p.add_argument("--type", action="append", default=[], help="event type or prefix (repeatable)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--inbound", action="store_true", help="only SMTP transactions and refusals")
    side.add_argument("--outbound", action="store_true", help="only delivery attempts and outcomes")
    p.add_argument("--ip", action="append", default=[], help="client address or CIDR")
    p.add_argument("--sender-domain", action="append", default=[], metavar="DOMAIN")
    p.add_argument("--rcpt-domain", action="append", default=[], metavar="DOMAIN")
    p.add_argument("--replay", type=int, default=0, metavar="N", help="recent events first")
    p.add_argument(
        "--reconnect",
        action="store_true",
        help="when the stream ends or the server is away, connect again (until Ctrl-C)",
    )
    color = p.add_mutually_exclusive_group()
    color.add_argument("--color", dest="color", action="store_const", const=True, default=None)
    color.add_argument("--no-color", dest="color", action="store_const", const=False)
    p.set_defaults(func=lambda args: cmd_watch(args, config_dir(args.config)))


def _from_config(config_dir: Path | None) -> tuple[str, str]:
    """The URL and token the configuration implies ("" when there is none)."""
    try:
        admin = load_config(config_dir).admin
    except ConfigError:
        return DEFAULT_URL, ""
    host, port = parse_listen(admin.listen)
    host = _ANY.get(host, "127.0.0.1" if host == "localhost" else host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"ws://{netloc}/events", admin.token


def cmd_watch(args: argparse.Namespace, config_dir: Path | None) -> int:
    url, token = _from_config(config_dir)
    options = WatchOptions(
        url=args.url or url,
        token=args.token or os.environ.get(TOKEN_ENV) or token or None,
        follow=args.follow,
        json=args.json,
        types=tuple(args.type),
        inbound=not args.outbound,
        outbound=not args.inbound,
        ips=tuple(args.ip),
        sender_domains=tuple(args.sender_domain),
        rcpt_domains=tuple(args.rcpt_domain),
        replay=args.replay,
        color=args.color,
        reconnect=args.reconnect,
    )
    try:
        status: int = trio.run(watch, options)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `trio-mta watch | head`
        sys.stderr.close()
        return 0
    return status
