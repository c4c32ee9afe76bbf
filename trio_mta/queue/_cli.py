"""``trio-mta queue …``: list, show, stats, flush, hold, release, delete (see ``_control``)."""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from ..config import Config, ConfigError
from ._control import Command, entries, send_command
from ._records import Envelope, Status
from ._service import spool_root
from ._spool import Spool


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    load: Callable[[argparse.Namespace], Config],
) -> None:
    """The ``queue`` subcommand; ``load`` gives the configuration from --config/--var-dir."""
    queue = sub.add_parser("queue", help="inspect and manage the outbound queue")
    queue.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
    queue.add_argument("--var-dir", metavar="DIR", help="state directory (default: ./var)")
    queue.add_argument(
        "action", choices=("list", "show", "stats", "flush", "hold", "release", "delete")
    )
    queue.add_argument("target", nargs="?", help="a queue id (flush: an id or a domain)")

    def command(args: argparse.Namespace) -> int:
        try:
            config = load(args)
        except ConfigError as exc:
            print(f"trio-mta: invalid configuration:\n{exc}", file=sys.stderr)
            return 1
        return run(args, config)

    queue.set_defaults(func=command)


def _when(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _state(env: Envelope, now: float) -> str:
    if env.held:
        return "HELD"
    if env.attempts == 0:
        return "new"
    due = env.next_attempt - now
    return "due" if due <= 0 else f"retry in {due:.0f}s"


def list_text(envs: list[Envelope], now: float) -> str:
    lines = [
        f"{'ID':<24} {'SIZE':>8} {'ARRIVED (UTC)':<19} {'TRIES':>5} STATE / SENDER → RECIPIENTS"
    ]
    for env in envs:
        pending = env.pending
        lines.append(
            f"{env.id:<24} {env.size:>8} {_when(env.created):<19} {env.attempts:>5} "
            f"{_state(env, now)} / <{env.sender or ''}> → " + ", ".join(r.address for r in pending)
        )
        lines.extend(
            f"{'':<24}   ({r.address}: {r.code} {r.enhanced} {r.text})" for r in pending if r.code
        )
    lines.append(f"-- {len(envs)} message(s)")
    return "\n".join(lines)


def show_text(spool: Spool, env: Envelope, now: float) -> str:
    lines = [
        f"id: {env.id}",
        f"kind: {env.kind.value}",
        f"sender: <{env.sender or ''}>",
        f"arrived: {_when(env.created)} UTC from {env.client or '-'}",
        f"size: {env.size}",
        f"attempts: {env.attempts}, state: {_state(env, now)}",
        f"dsn: ret={env.ret or '-'} envid={env.envid or '-'}",
        "recipients:",
    ]
    for r in env.recipients:
        said = f" {r.code} {r.enhanced} {r.text}" if r.code else ""
        where = f" [{r.remote}]" if r.remote else ""
        lines.append(f"  {r.address}: {r.status.value}{where}{said}")
    head = spool.message_path(env.id).read_bytes()[:65536]
    end = head.find(b"\r\n\r\n")
    lines += ["headers:", head[: end if end >= 0 else None].decode("utf-8", "replace")]
    return "\n".join(lines)


def stats_text(spool: Spool, envs: list[Envelope]) -> str:
    by_domain: collections.Counter[str] = collections.Counter()
    for env in envs:
        by_domain.update(r.domain for r in env.recipients if r.status is Status.PENDING)
    corrupt = len(list(spool.corrupt.glob("*.env"))) if spool.corrupt.is_dir() else 0
    lines = [
        f"messages: {len(envs)}",
        f"held: {sum(1 for e in envs if e.held)}",
        f"pending recipients: {sum(by_domain.values())}",
        f"bytes: {sum(e.size for e in envs)}",
        f"corrupt entries: {corrupt}",
    ]
    if envs:
        lines.append(f"oldest: {_when(min(e.created for e in envs))} UTC")
    lines += [f"  {domain}: {count}" for domain, count in by_domain.most_common(20)]
    return "\n".join(lines)


def run(args: argparse.Namespace, config: Config) -> int:
    root = spool_root(config)
    spool = Spool(root)
    now = time.time()
    action, target = args.action, args.target
    if action in ("show", "hold", "release", "delete") and not target:
        print(f"trio-mta queue {action}: a queue id is needed")
        return 2
    if action == "list":
        print(list_text(entries(spool), now))
        return 0
    if action == "stats":
        print(stats_text(spool, entries(spool)))
        return 0
    if action == "show":
        try:
            print(show_text(spool, spool.read(target), now))
        except (OSError, ValueError) as exc:
            print(f"trio-mta queue: no message {target} ({exc})")
            return 1
        return 0
    answer = send_command(Path(root), Command(action, target))
    print(answer)
    return 1 if answer.startswith("error") else 0
