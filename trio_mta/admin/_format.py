"""Event dicts (as received from ``/events``) as one readable terminal line each.

Times are local and 24-hour: ``HH:MM:SS`` for the event itself (ISO 8601's time of day), the full
``YYYY-MM-DD HH:MM:SS`` for a time that may be another day (a deferred message's next attempt).
"""

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


def iso_time(ts: object) -> str:
    """Epoch seconds as local ``YYYY-MM-DD HH:MM:SS`` (24-hour), or ``-``."""
    if not isinstance(ts, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _seconds(value: object) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.1f}s" if value < 60 else f"{value / 60:.1f}min" if value < 3600 else (
        f"{value / 3600:.1f}h")  # fmt: skip


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
    refused = item.get("refused")
    if isinstance(refused, list) and refused:
        to += style(" (refused " + ", ".join(f"<{r}>" for r in refused) + ")", "red")
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


_DELIVERY_COLOR = {"delivered": "green", "deferred": "yellow", "bounced": "red", "attempt": "dim"}


def _addresses(value: object) -> str:
    return ", ".join(f"<{r}>" for r in value) if isinstance(value, list) and value else "-"


def format_delivery(item: dict[str, object], style: Style) -> str:
    """A ``delivery.*`` event: the queue id, what happened, to whom, the remote host and its
    reply, the attempt, how long since arrival and (deferred) when the next attempt is due."""
    outcome = str(item.get("type", "")).removeprefix("delivery.")
    color = _DELIVERY_COLOR.get(outcome, "dim")
    label = f"attempt {item.get('attempt')}" if outcome == "attempt" else outcome
    sender = item.get("sender")
    parts = [
        style(_clock(item), "dim"),
        style(str(item.get("txn") or "-"), "bold"),
        style(label, color),
        (f"<{sender}> -> " if isinstance(sender, str) else "") + _addresses(item.get("recipients")),
        f"via {item.get('mx_host') or 'local'}" if outcome == "attempt" else
        f"host {item.get('mx_host') or '-'}",
    ]  # fmt: skip
    if outcome != "attempt":
        code = item.get("code")
        reply = str(item.get("reply") or "")
        answer = (
            f"{code} {reply}"
            if isinstance(code, int) and not reply.startswith(str(code))
            else reply
        )
        parts.append(style(answer, color))
        notes = [f"attempt {item.get('attempt')}"]
        if isinstance(item.get("delay"), int | float):
            notes.append(f"delay {_seconds(item.get('delay'))}")
        if outcome == "deferred":
            notes.append(f"next {iso_time(item.get('until'))}")
        parts.append(style(", ".join(notes), "dim"))
    return "  ".join(parts)


def format_refusal(item: dict[str, object], style: Style) -> str:
    """A ``transaction.refused`` event: who was refused at which stage, the reply, and the
    plugin that decided (what operators grep for in Postfix's ``NOQUEUE: reject`` lines)."""
    code = item.get("code")
    color = code_color(code)
    recipient = item.get("recipient")
    sender = item.get("sender")
    who = f"<{sender or ''}>" if sender is not None else "-"
    if recipient:
        who += f" -> <{recipient}>"
    parts = [
        style(_clock(item), "dim"),
        f"[{item.get('ip')}]",
        style(f"refused at {item.get('stage')}", color),
        who,
        style(f"{code} {item.get('reply') or ''}".strip(), color),
        style(f"by {item.get('plugin') or 'core'}", "dim"),
    ]
    return "  ".join(parts)


def format_summary(item: dict[str, object], style: Style) -> str | None:
    """The default ``watch`` line for an event, or None for events it does not show."""
    kind = str(item.get("type"))
    if kind in ("transaction.end", "gap"):
        return format_transaction(item, style)
    if kind == "transaction.refused":
        return format_refusal(item, style)
    if kind.startswith("delivery."):
        return format_delivery(item, style)
    return None


def format_event(item: dict[str, object], style: Style) -> str:
    """Any event as one line: time, connection, type, then its own fields (``--follow``)."""
    kind = str(item.get("type"))
    summary = format_summary(item, style)
    if summary is not None:
        return summary
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
