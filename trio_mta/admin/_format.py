"""Event dicts (as received from ``/events``) as one readable terminal line each."""

from __future__ import annotations

import time

RESET = "\x1b[0m"
COLORS = {
    "green": "\x1b[32m",
    "yellow": "\x1b[33m",
    "red": "\x1b[31m",
    "dim": "\x1b[2m",
    "cyan": "\x1b[36m",
    "bold": "\x1b[1m",
}


class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, color: str) -> str:
        return f"{COLORS[color]}{text}{RESET}" if self.color else text


def _clock(item: dict[str, object]) -> str:
    ts = item.get("ts")
    if not isinstance(ts, int | float):
        return "--:--:--"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _size(octets: object) -> str:
    if not isinstance(octets, int):
        return "-"
    if octets < 1024:
        return f"{octets} B"
    if octets < 1024 * 1024:
        return f"{octets / 1024:.1f} KiB"
    return f"{octets / 1024 / 1024:.1f} MiB"


def _ms(seconds: object) -> str:
    return f"{seconds * 1000:.0f} ms" if isinstance(seconds, int | float) else "-"


def code_color(code: object) -> str:
    if not isinstance(code, int):
        return "dim"
    return "green" if code < 400 else "yellow" if code < 500 else "red"


def format_transaction(item: dict[str, object], style: Style) -> str:
    """``transaction.end`` (or ``gap``) as the one-line summary ``watch`` prints."""
    if item.get("type") == "gap":
        return style(f"-- {item.get('dropped')} events lost: this watcher fell behind --", "yellow")
    outcome = str(item.get("outcome"))
    code = item.get("code")
    color = {"accepted": "green", "refused": code_color(code)}.get(outcome, "dim")
    if outcome == "refused" and not isinstance(code, int):
        color = "red" if str(item.get("reply", ""))[:1] == "5" else "yellow"
    rcpts = item.get("recipients")
    to = ", ".join(f"<{r}>" for r in rcpts) if isinstance(rcpts, list) and rcpts else "-"
    parts = [
        style(_clock(item), "dim"),
        f"[{item.get('ip')}]",
        f"<{item.get('sender') or ''}> -> {to}",
        _size(item.get("size")),
        style(outcome, color),
        style(str(item.get("reply") or ""), color),
        style(_ms(item.get("duration")), "dim"),
    ]
    return "  ".join(parts)


def format_event(item: dict[str, object], style: Style) -> str:
    """Any event as one line: time, connection, type, then its own fields (``--follow``)."""
    kind = str(item.get("type"))
    if kind == "transaction.end":
        return format_transaction(item, style)
    if kind == "gap":
        return format_transaction(item, style)
    head = f"{style(_clock(item), 'dim')} {item.get('conn') or '-':>22} {style(kind, 'cyan')}"
    skip = {"v", "type", "ts", "seq", "conn", "txn"}
    fields = " ".join(f"{k}={v}" for k, v in item.items() if k not in skip and v is not None)
    code = item.get("code")
    if kind == "plugin.call":
        result = str(item.get("result"))
        color = {"cont": "dim", "ok": "green"}.get(result, "red" if "deny" in result else "yellow")
        if item.get("timed_out") or item.get("error"):
            color = "red"
        fields = style(fields, color)
    elif isinstance(code, int):
        fields = style(fields, code_color(code))
    return f"{head} {fields}"
