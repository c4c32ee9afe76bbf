"""``trio-mta status``, ``trio-mta plugins`` and ``trio-mta check --against-running``: the
running daemon asked over its control socket (``<var_dir>/control.sock``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from ..config import Config, ConfigError
from ..control import ControlError, NotRunning, request
from ..hooks import PluginLoadError, PluginSet
from ._plugins import plugin_table, plugin_table_text

NOT_RUNNING = 3  # as `systemctl status` and LSB init scripts: "program is not running"

LoadConfig = Callable[[argparse.Namespace], Config]


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def status_text(s: dict[str, Any]) -> str:
    lines = [
        f"trio-mta {s['version']}: running, pid {s['pid']}, up {_ago(s['uptime'])}"
        f" (since {_utc(s['started'])})",
        f"config: {s['config_dir'] or 'embedded defaults'}; var_dir: {s['var_dir']}",
        "listeners: "
        + ", ".join(f"{x['name']} {x['address']} ({x['kind']})" for x in s["listeners"]),
    ]
    q = s["queue"]
    if q is None:
        lines.append("queue: disabled")
    else:
        lines.append(
            f"queue: {q['messages']} messages ({q['active']} active, {q['waiting']} waiting,"
            f" {q['deferred']} deferred, {q['held']} held)"
        )
    plugins = ", ".join(f"{p['name']} [breaker {p['breaker']}]" for p in s["plugins"])
    lines.append(f"plugins (generation {s['generation']}): {plugins or '(none)'}")
    restart = s["restart_needed"]
    lines.append(
        f"reloads: {s['reloads']}; changed settings waiting for a restart: "
        + (", ".join(restart) if restart else "none")
    )
    return "\n".join(lines)


def _ask(config: Config, cmd: str) -> Any:
    """Raises NotRunning, ControlError."""
    return request(config.server.var_dir, cmd)


def _not_running(config: Config) -> int:
    print(
        f"trio-mta: not running (nothing answers on {config.server.var_dir}/control.sock)",
        file=sys.stderr,
    )
    return NOT_RUNNING


def cmd_status(args: argparse.Namespace, load: LoadConfig) -> int:
    try:
        config = load(args)
        result = _ask(config, "status")
    except ConfigError as exc:
        print(f"trio-mta: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    except NotRunning:
        if args.json:
            print(json.dumps({"running": False}))
        return _not_running(config)
    except ControlError as exc:
        print(f"trio-mta: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"running": True, **result}, indent=2))
    else:
        print(status_text(result))
    return 0


def cmd_plugins(
    args: argparse.Namespace, load: LoadConfig, load_plugins: Callable[[Config], PluginSet]
) -> int:
    """Live from the running daemon (its generation, breakers, counts), else from the
    configuration (the plugins are loaded, not started, as ``check`` does)."""
    try:
        config = load(args)
    except ConfigError as exc:
        print(f"trio-mta: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    live = not args.offline
    table: dict[str, Any] | None = None
    if live:
        try:
            table = _ask(config, "plugins")
        except NotRunning:
            live = False
        except ControlError as exc:
            print(f"trio-mta: {exc}", file=sys.stderr)
            return 1
    if table is None:
        try:
            table = plugin_table(load_plugins(config))
        except PluginLoadError as exc:
            print(f"trio-mta: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"running": live, **table}, indent=2))
    else:
        where = "running daemon" if live else "configuration (daemon not running)"
        print(f"# from the {where}")
        print(plugin_table_text(table, live=live))
    return 0


def against_running(config: Config) -> int:
    """``check --against-running``: what a SIGHUP would apply, and what needs a restart."""
    try:
        pending = _ask(config, "config.pending")
    except NotRunning:
        return _not_running(config)
    except ControlError as exc:
        print(f"trio-mta: {exc}", file=sys.stderr)
        return 1
    applied, restart = pending["applied_on_reload"], pending["restart_needed"]
    print(f"against the running daemon (its configuration {pending['config_dir']}):")
    print("  a reload (SIGHUP) would apply: " + (", ".join(applied) or "nothing"))
    print("  changed, needing a restart: " + (", ".join(restart) or "nothing"))
    return 0


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    load: LoadConfig,
    load_plugins: Callable[[Config], PluginSet],
) -> None:
    """``status`` and ``plugins``; ``load`` gives the configuration from --config/--var-dir."""
    status = sub.add_parser(
        "status", help="is the daemon running: pid, uptime, listeners, queue, plugins"
    )
    plugins = sub.add_parser(
        "plugins", help="plugins in order and the hooks they run on (live state when running)"
    )
    for p in (status, plugins):
        p.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
        p.add_argument("--var-dir", metavar="DIR", help="state directory (default: ./var)")
        p.add_argument("--json", action="store_true", help="JSON for scripts")
    plugins.add_argument(
        "--offline", action="store_true", help="from the configuration, even if it runs"
    )
    status.set_defaults(func=lambda args: cmd_status(args, load))
    plugins.set_defaults(func=lambda args: cmd_plugins(args, load, load_plugins))
