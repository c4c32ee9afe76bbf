"""One sandboxed call inside a worker: the plugin it names, the objects it sees, its reply.

The parent sends views (tuples) of the connection and transaction; ``prepare`` rebuilds real
``Connection``/``Transaction`` objects from them and snapshots what the hook may change, and
``finish`` turns the result and those changes into the JSON reply the parent applies.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._context import Connection, Message, Transaction
from ._plugin import HOOK_PREFIX, Plugin, PluginEnv
from ._result import Result

_READ_SIZE = 65536
_RECHECK = 1.0  # seconds between looks at a plugin file's mtime (a changed file is reloaded)


class FileMessage(Message):
    """The parent's message, read-only, from the file it was spooled to."""

    def __init__(self, path: str, size: int, header_block: bytes, complete: bool) -> None:
        super().__init__()
        self._path = Path(path)
        self.size = size
        self._block = header_block
        self._complete = complete

    def write(self, data: bytes) -> None:
        raise RuntimeError("the message is read-only in the sandbox")

    @property
    def headers_complete(self) -> bool:
        return self._complete

    @property
    def header_block(self) -> bytes:
        return self._block

    def chunks(self) -> Iterator[bytes]:
        left = self.size
        with self._path.open("rb") as f:
            while left > 0 and (block := f.read(min(_READ_SIZE, left))):
                left -= len(block)
                yield block

    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        return None


class Slot:
    """One plugin as this worker knows it: the spec the parent sent, and the live instance."""

    def __init__(self, spec: tuple[str, str, Mapping[str, object], PluginEnv]) -> None:
        self.name, path, self.config, self.env = spec
        self.path = Path(path)
        self.mtime = -1
        self.checked = 0.0
        self.instance: Plugin | None = None
        self.is_async: dict[str, bool] = {}

    def ready(self) -> bool:
        """Loaded, and its file unchanged (looked at once a second at most)."""
        if self.instance is None:
            return False
        now = time.monotonic()
        if now - self.checked < _RECHECK:
            return True
        self.checked = now
        try:
            return self.path.stat().st_mtime_ns == self.mtime
        except OSError:
            return True  # gone: keep what is loaded


class Prepared:
    __slots__ = ("args", "conn", "conn_notes", "fn", "lists", "txn_before", "txn_notes")

    def __init__(self, fn: Callable[..., Any], conn: Connection, args: tuple[object, ...]) -> None:
        self.fn = fn
        self.conn = conn
        self.args = args
        self.conn_notes: dict[str, Any] = {}
        self.txn_notes: dict[str, Any] | None = None
        self.txn_before: tuple[int, set[str], set[str]] | None = None
        self.lists: dict[int, list[object]] = {}


def prepare(slot: Slot, plugin: Plugin, request: tuple[Any, ...]) -> Prepared:
    hook, conn_view, txn_view, args = request
    fn = getattr(plugin, HOOK_PREFIX + hook)
    conn, conn_notes, txn_notes = rebuild_connection(conn_view, txn_view)
    call = Prepared(fn, conn, args)
    call.conn_notes, call.txn_notes = conn_notes, txn_notes
    txn = conn.transaction
    if txn is not None:
        call.txn_before = (len(txn.added_headers), set(txn.removed_headers), set(txn.skip_plugins))
    for i, arg in enumerate(args):
        if isinstance(arg, list):
            call.lists[i] = list(arg)
    return call


def error_reply(text: str) -> dict[str, Any]:
    return {"error": text}


def finish(call: Prepared, value: object, error: BaseException | None) -> dict[str, Any]:
    """The reply: the result or error, and every change the hook made to what it was given."""
    conn = call.conn
    reply: dict[str, Any] = {}
    reply["relaying"] = conn.relaying
    notes = diff_notes(call.conn_notes, conn.notes)
    if notes:
        reply["notes"] = notes
    txn = conn.transaction
    if txn is not None and call.txn_before is not None and call.txn_notes is not None:
        added, removed, skipped = call.txn_before
        edits: dict[str, Any] = {}
        tnotes = diff_notes(call.txn_notes, txn.notes)
        if tnotes:
            edits["notes"] = tnotes
        if len(txn.added_headers) > added:
            edits["add"] = txn.added_headers[added:]
        if txn.removed_headers != removed:
            edits["remove"] = sorted(txn.removed_headers - removed)
        if txn.skip_plugins != skipped:
            edits["skip"] = sorted(txn.skip_plugins)
        if edits:
            reply["txn"] = edits
    changed = {str(i): call.args[i] for i, before in call.lists.items() if call.args[i] != before}
    if changed:
        reply["args"] = changed
    if error is not None:
        if isinstance(error, MemoryError):
            reply["error"] = "MemoryError: the sandbox memory limit was reached"
            reply["recycle"] = "the call ran out of memory"
        else:
            reply["error"] = "".join(traceback.format_exception(error))
    elif isinstance(value, Result):
        reply["result"] = [value.action.value, value.message, value.code, value.enhanced]
    elif value is not None:
        reply["error"] = f"returned {type(value).__name__}, not a Result"
    return reply


def rebuild_connection(
    view: tuple[Any, ...], txn_view: tuple[Any, ...] | None
) -> tuple[Connection, dict[str, Any], dict[str, Any] | None]:
    """Real ``Connection``/``Transaction`` objects, and snapshots of their notes to diff."""
    (cid, listener, ip, port, local_ip, local_port, started, helo, extended, tls_version,
     tls_cipher, auth_user, relaying, transactions, notes) = view  # fmt: skip
    conn = Connection(
        id=cid,
        listener=listener,
        client_ip=ip,
        client_port=port,
        local_ip=local_ip,
        local_port=local_port,
        started=started,
        helo=helo,
        extended=extended,
        tls_version=tls_version,
        tls_cipher=tls_cipher,
        auth_user=auth_user,
        relaying=relaying,
        transactions=transactions,
        notes=json.loads(notes) if notes != "{}" else {},
    )
    conn_notes = json.loads(notes) if notes != "{}" else {}
    if txn_view is None:
        return conn, conn_notes, None
    (tid, sender, mail_params, tstarted, recipients, tnotes, added, removed, skip,
     message) = txn_view  # fmt: skip
    conn.transaction = Transaction(
        id=tid,
        sender=sender,
        mail_params=mail_params,
        started=tstarted,
        recipients=recipients,
        notes=json.loads(tnotes) if tnotes != "{}" else {},
        message=FileMessage(*message) if message is not None else None,
        added_headers=added,
        removed_headers=set(removed),
        skip_plugins=set(skip),
    )
    return conn, conn_notes, json.loads(tnotes) if tnotes != "{}" else {}


def diff_notes(before: Mapping[str, Any], after: Mapping[Any, Any]) -> dict[str, Any]:
    """What changed: ``set`` (new or different values) and ``del`` (keys that went away)."""
    if not before and not after:
        return {}
    changed = {k: v for k, v in after.items() if k not in before or before[k] != v}
    removed = [k for k in before if k not in after]
    return {"set": changed, "del": removed} if changed or removed else {}
