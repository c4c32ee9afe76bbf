"""Queue entries as plain data: what ``queue.list``/``queue.show`` answer and ``--json`` prints.

The message travels as text decoded with ``surrogateescape`` (JSON escapes the surrogates), so
``show --body`` gives back every octet of a message that is not UTF-8.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from ._records import Envelope
from ._spool import Spool

HEAD_LIMIT = 65536  # octets read for the headers


def state(env: Envelope, now: float) -> str:
    if env.held:
        return "held"
    if env.attempts == 0:
        return "new"
    return "due" if env.next_attempt <= now else "deferred"


def envelope_view(env: Envelope, now: float) -> dict[str, Any]:
    data = attrs.asdict(env, value_serializer=_plain)
    data["state"] = state(env, now)
    return data


def _plain(_inst: object, _field: object, value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def read_message(spool: Spool, id: str) -> bytes:
    """Blocking."""
    return spool.message_path(id).read_bytes()


def headers_of(spool: Spool, id: str) -> str:
    """Blocking. The message's header section (at most ``HEAD_LIMIT`` octets)."""
    with spool.message_path(id).open("rb") as f:
        head = f.read(HEAD_LIMIT)
    end = head.find(b"\r\n\r\n")
    return head[: end if end >= 0 else None].decode("utf-8", "surrogateescape")


def show_view(spool: Spool, env: Envelope, now: float, *, body: bool) -> dict[str, Any]:
    """Blocking. The envelope, its headers and, with ``body``, the whole message."""
    view = envelope_view(env, now)
    view["headers"] = headers_of(spool, env.id)
    if body:
        view["message"] = read_message(spool, env.id).decode("utf-8", "surrogateescape")
    return view
