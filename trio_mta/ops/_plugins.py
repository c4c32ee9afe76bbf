"""The plugin table (Haraka's ``haraka -o``): the plugins in order, and per hook the plugins that
run on it in call order, with their deadline and where they run; with a running daemon, each
(plugin, hook)'s breaker state, calls, failures and latency from the runner's health API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..hooks import HOOKS, PluginSet

NA = "n/a"  # no health record: never called, or not running


def plugin_table(
    plugins: PluginSet, health: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """JSON-ready: ``order`` (names), ``hooks`` (per hook, in the order hooks run in a
    session, its entries in call order) and ``plugins`` (per plugin, its hooks and worst
    breaker state: open > half_open > closed; "n/a" without a record)."""
    records = {(h["plugin"], h["hook"]): h for h in health or ()}
    hooks: list[dict[str, Any]] = []
    worst: dict[str, str] = {}
    per_plugin: dict[str, list[str]] = {p.name: [] for p in plugins.plugins}
    known = list(HOOKS)
    names = sorted(plugins.table, key=lambda h: (known.index(h) if h in known else len(known), h))
    for hook in names:
        entries = []
        for entry in plugins.entries(hook):
            name = entry.plugin.name
            record = records.get((name, hook))
            state = str(record["breaker"]) if record is not None else NA
            per_plugin.setdefault(name, []).append(hook)
            worst[name] = _worse(worst.get(name, NA), state)
            entries.append(
                {
                    "plugin": name,
                    "timeout": entry.timeout,
                    "priority": entry.priority,
                    "runs": "sandbox" if entry.sandbox else "async" if entry.is_async else "thread",
                    "breaker": state,
                    "calls": record["calls"] if record is not None else None,
                    "failures": record["failures"] if record is not None else None,
                    "p95_ms": record["p95_ms"] if record is not None else None,
                }
            )
        hooks.append({"hook": hook, "plugins": entries})
    return {
        "generation": plugins.generation,
        "order": [p.name for p in plugins.plugins],
        "hooks": hooks,
        "plugins": [
            {"name": n, "hooks": h, "breaker": worst.get(n, NA)} for n, h in per_plugin.items()
        ],
    }


_RANK = {NA: 0, "off": 0, "closed": 1, "half_open": 2, "open": 3}


def _worse(a: str, b: str) -> str:
    return a if _RANK.get(a, 0) >= _RANK.get(b, 0) else b


def plugin_table_text(table: Mapping[str, Any], *, live: bool) -> str:
    lines = [f"plugins, in order: {', '.join(table['order']) or '(none)'}"]
    if live:
        lines[0] += f" (generation {table['generation']})"
    width = max((len(h["hook"]) for h in table["hooks"]), default=4)
    for hook in table["hooks"]:
        parts = []
        for e in hook["plugins"]:
            part = f"{e['plugin']} ({e['timeout']:g}s, {e['runs']}"
            if live:
                part += f", breaker {e['breaker']}"
                if e["calls"] is not None:
                    part += f", {e['calls']} calls, {e['failures']} failed"
                    if e["p95_ms"] is not None:
                        part += f", p95 {e['p95_ms']:g} ms"
            parts.append(part + ")")
        lines.append(f"  {hook['hook']:<{width}}  " + ", ".join(parts))
    return "\n".join(lines)
