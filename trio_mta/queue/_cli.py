"""``trio-mta queue …``: list, show, stats, flush, hold, release, delete (see ``_control``).

Actions take queue ids, ``ALL``, or filters (``--domain``, ``--from``, ``--to``,
``--older-than``); ``list`` and ``show`` print ``--json`` for scripts; ``show --body`` prints the
envelope and then the whole message, as Postfix's ``postcat -q`` does.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..config import Config, ConfigError
from ..control import ControlError
from ._control import DaemonBusy, ask
from ._select import ALL, parse_duration
from ._service import spool_root
from ._spool import Spool

View = dict[str, Any]


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    load: Callable[[argparse.Namespace], Config],
) -> None:
    """The ``queue`` subcommand; ``load`` gives the configuration from --config/--var-dir."""
    queue = sub.add_parser(
        "queue",
        help="inspect and manage the outbound queue (the running daemon's, or a stopped spool)",
    )
    queue.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
    queue.add_argument("--var-dir", metavar="DIR", help="state directory (default: ./var)")
    queue.add_argument(
        "action", choices=("list", "show", "stats", "flush", "hold", "release", "delete")
    )
    queue.add_argument(
        "targets",
        nargs="*",
        metavar="ID",
        help=f"queue ids, or {ALL} (flush: also a domain; without any: everything)",
    )
    queue.add_argument("--domain", help="messages with a pending recipient in this domain")
    queue.add_argument(
        "--from", dest="sender", metavar="ADDR", help="sender address, @domain, or <> (bounces)"
    )
    queue.add_argument(
        "--to", dest="recipient", metavar="ADDR", help="pending recipient address or @domain"
    )
    queue.add_argument(
        "--older-than", metavar="AGE", help="arrived at least this long ago (90s, 15m, 4h, 2d)"
    )
    queue.add_argument("--json", action="store_true", help="list/show: JSON for scripts")
    queue.add_argument("--body", action="store_true", help="show: the whole message too")

    def command(args: argparse.Namespace) -> int:
        try:
            config = load(args)
        except ConfigError as exc:
            print(f"trio-mta: invalid configuration:\n{exc}", file=sys.stderr)
            return 1
        return run(args, config)

    queue.set_defaults(func=command)


def selection_args(args: argparse.Namespace) -> dict[str, Any]:
    """The request's selection from the command line.

    Raises:
        ValueError: a bad --older-than.
    """
    ids = list(args.targets)
    domain = args.domain
    if args.action == "flush" and len(ids) == 1 and "." in ids[0]:
        domain, ids = ids[0], []  # `queue flush example.com`, as before
    chosen: dict[str, Any] = {"ids": ids} if ids else {}
    for key in ("sender", "recipient"):
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    if domain is not None:
        chosen["domain"] = domain
    if args.older_than is not None:
        chosen["older_than"] = parse_duration(args.older_than)
    return chosen


def run(args: argparse.Namespace, config: Config) -> int:
    action = args.action
    try:
        request = selection_args(args)
    except ValueError as exc:
        print(f"trio-mta queue: {exc}", file=sys.stderr)
        return 2
    if action == "show":
        if len(args.targets) != 1:
            print("trio-mta queue show: one queue id is needed", file=sys.stderr)
            return 2
        request = {"id": args.targets[0], "body": args.body}
    try:
        result = ask(config.server.var_dir, spool_root(config), _asked(action), request)
    except (ValueError, LookupError, ControlError, DaemonBusy) as exc:
        print(f"trio-mta queue {action}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # another user's state directory or socket, a full disk
        where = f": {exc.filename}" if exc.filename else ""
        print(f"trio-mta queue {action}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    now = time.time()
    if action == "stats":
        # Entries set aside as unreadable: files only (the daemon never reads them again).
        corrupt = Spool(spool_root(config)).corrupt
        result = stats(result) | {"corrupt": len(list(corrupt.glob("*.env")))}
    if args.json and action in ("list", "show", "stats"):
        print(json.dumps(result, indent=1))
    elif action == "list":
        print(list_text(result, now))
    elif action == "stats":
        print(stats_text(result))
    elif action == "show":
        _write(show_text(result) + "\n")
    else:
        print(action_text(result))
        # As postsuper: the others are done, each id not found is named, and the exit says so.
        for id in result.get("missing", []):
            print(f"trio-mta queue {action}: no message {id}", file=sys.stderr)
        return 1 if result.get("missing") else 0
    return 0


def _asked(action: str) -> str:
    return "list" if action == "stats" else action


def _write(text: str) -> None:
    # surrogateescape: the octets of a message that is not UTF-8 come out as they are.
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.buffer.flush()


def action_text(result: View) -> str:
    ids, verb = result["ids"], result["action"]
    if verb == "flushed":
        later = " (due when the daemon starts)" if result.get("offline") else ""
        return f"flushed {len(ids)}{later}"
    return "\n".join(f"{verb} {id}" for id in ids) if ids else f"{verb} 0"


def _when(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _state(env: View, now: float) -> str:
    if env["held"]:
        return "HELD"
    if env["attempts"] == 0:
        return "new"
    due = env["next_attempt"] - now
    return "due" if due <= 0 else f"retry in {due:.0f}s"


def _pending(env: View) -> list[View]:
    return [r for r in env["recipients"] if r["status"] == "pending"]


def list_text(envs: list[View], now: float) -> str:
    lines = [
        f"{'ID':<24} {'SIZE':>8} {'ARRIVED (UTC)':<19} {'TRIES':>5} STATE / SENDER → RECIPIENTS"
    ]
    for env in envs:
        pending = _pending(env)
        lines.append(
            f"{env['id']:<24} {env['size']:>8} {_when(env['created']):<19} {env['attempts']:>5} "
            f"{_state(env, now)} / <{env['sender'] or ''}> → "
            + ", ".join(r["address"] for r in pending)
        )
        lines.extend(
            f"{'':<24}   ({r['address']}: {r['code']} {r['enhanced']} {r['text']})"
            for r in pending
            if r["code"]
        )
    lines.append(f"-- {len(envs)} message(s)")
    return "\n".join(lines)


def show_text(env: View) -> str:
    lines = [
        f"id: {env['id']}",
        f"kind: {env['kind']}",
        f"sender: <{env['sender'] or ''}>",
        f"arrived: {_when(env['created'])} UTC from {env['client'] or '-'}",
        f"size: {env['size']}",
        f"attempts: {env['attempts']}, state: {_state(env, time.time())}",
        f"dsn: ret={env['ret'] or '-'} envid={env['envid'] or '-'}",
        "recipients:",
    ]
    for r in env["recipients"]:
        said = f" {r['code']} {r['enhanced']} {r['text']}" if r["code"] else ""
        where = f" [{r['remote']}]" if r["remote"] else ""
        notify = f" notify={','.join(r['notify'])}" if r["notify"] else ""
        lines.append(f"  {r['address']}: {r['status']}{where}{said}{notify}")
    if "message" in env:
        lines += ["*** message ***", env["message"].rstrip("\r\n")]
    else:
        lines += ["headers:", env["headers"]]
    return "\n".join(lines)


def stats(envs: list[View]) -> dict[str, Any]:
    by_domain: collections.Counter[str] = collections.Counter()
    for env in envs:
        by_domain.update(r["address"].rpartition("@")[2].lower() for r in _pending(env))
    return {
        "messages": len(envs),
        "held": sum(1 for e in envs if e["held"]),
        "pending_recipients": sum(by_domain.values()),
        "bytes": sum(e["size"] for e in envs),
        "oldest": min((e["created"] for e in envs), default=None),
        "domains": dict(by_domain.most_common(20)),
    }


def stats_text(figures: dict[str, Any]) -> str:
    lines = [
        f"messages: {figures['messages']}",
        f"held: {figures['held']}",
        f"pending recipients: {figures['pending_recipients']}",
        f"bytes: {figures['bytes']}",
        f"corrupt entries: {figures['corrupt']}",
    ]
    if figures["oldest"] is not None:
        lines.append(f"oldest: {_when(figures['oldest'])} UTC")
    lines += [f"  {domain}: {count}" for domain, count in figures["domains"].items()]
    return "\n".join(lines)
