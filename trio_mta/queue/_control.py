"""``trio-mta queue`` actions: through the running daemon, or on a stopped spool.

Theory of operation: the state directory's lock (``control.VarDirLock``) says whether a daemon
runs. If the CLI can take it, none does: the CLI keeps it while it reads or changes the files,
so a daemon cannot start in the middle (it would refuse, naming the CLI's pid). If it cannot,
the daemon holding it is asked over the control socket, and acts at once on its own state
(held entries leave its scheduler, flushed ones are due now). Envelope files are only ever
replaced by rename, so the daemon, the CLI and a reader never see half a file.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import attrs

from ..control import AlreadyRunning, NotRunning, VarDirLock, request
from ._records import CorruptEntry, Envelope, dumps
from ._select import Selection
from ._spool import Spool
from ._views import envelope_view, show_view

ACTIONS = ("list", "show", "flush", "hold", "release", "delete")


class DaemonBusy(Exception):
    """The state directory is locked, but nothing answers on the control socket."""


def ask(var_dir: Path, spool_root: Path, action: str, args: dict[str, Any]) -> Any:
    """Blocking. ``queue.<action>`` with ``args`` (a ``Selection``'s, plus ``id``/``body`` for
    show): the daemon's answer, or the same computed on the stopped spool.

    Raises:
        ValueError, LookupError: a bad selection, or no such message (offline).
        control.ControlError: the daemon refused (the message says why).
        DaemonBusy: a daemon holds the lock but does not answer (starting, or stuck).
    """
    lock = VarDirLock(var_dir)
    try:
        if var_dir.is_dir():
            lock.acquire()
    except AlreadyRunning as exc:
        try:
            return request(var_dir, f"queue.{action}", **args)
        except NotRunning:
            raise DaemonBusy(f"{exc}, but it does not answer on its control socket") from None
    try:
        return offline(Spool(spool_root, fsync=True), action, args)
    finally:
        lock.release()


def offline(spool: Spool, action: str, args: dict[str, Any]) -> Any:
    """Blocking. ``action`` on a spool no daemon runs on (the caller holds the lock)."""
    now = time.time()
    if action == "show":
        id = args.get("id")
        try:
            env = spool.read(str(id))
        except (FileNotFoundError, CorruptEntry, OSError):
            raise LookupError(f"no message {id}") from None
        return show_view(spool, env, now, body=bool(args.get("body")))
    selection = Selection.from_args(args)
    if action == "list":
        found = entries(spool) if selection.empty else selection.pick(entries(spool), now)
        return [envelope_view(e, now) for e in sorted(found, key=lambda e: e.created)]
    if action == "flush" and selection.empty:
        selection = attrs.evolve(selection, all=True)
    selection.check()
    picked = selection.pick(entries(spool), now)
    missing = [i for i in selection.ids if i not in {e.id for e in picked}]
    if missing and not picked:
        raise LookupError(f"no message {', '.join(missing)}")
    for env in picked:
        if action == "delete":
            spool.envelope_path(env.id).unlink(missing_ok=True)
            spool.message_path(env.id).unlink(missing_ok=True)
        elif action == "flush":
            if not env.held:
                _replace(spool.envelope_path(env.id), dumps(attrs.evolve(env, next_attempt=0.0)))
        elif action in ("hold", "release"):
            held = action == "hold"
            changed = attrs.evolve(env, held=held, next_attempt=env.next_attempt if held else 0.0)
            _replace(spool.envelope_path(env.id), dumps(changed))
        else:
            raise ValueError(f"unknown action {action!r}")
    ids = [e.id for e in picked if action != "flush" or not e.held]
    verb = {"delete": "deleted", "flush": "flushed", "hold": "held", "release": "released"}
    answer = {"action": verb[action], "ids": ids, "offline": True}
    return answer | ({"missing": missing} if missing else {})


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def entries(spool: Spool) -> list[Envelope]:
    """Blocking. Every readable entry (an entry removed meanwhile is skipped)."""
    found = []
    for id in spool.ids():
        try:
            found.append(spool.read(id))
        except (FileNotFoundError, CorruptEntry):
            continue
    return found
