"""The SQLite side of the ``greylist`` plugin: schema, loading, and the writer thread.

Nothing here runs on the event loop except ``Writer.put`` (a queue put), ``Writer.flush`` and
``Writer.close`` (which wait for the thread from a worker thread). Everything else is called in
worker threads by the plugin, or runs in the writer thread, which owns its own connection.

Rows are upserted last-writer-wins on ``updated`` (the plugin's time of the decision): replaying
a batch changes nothing, and an old plugin generation's late write cannot undo a newer one's.
The file is in WAL mode with ``synchronous=NORMAL``: a commit survives a crash of the process;
a power failure may lose the last commits, never the file.
"""

from __future__ import annotations

import collections
import logging
import queue
import sqlite3
import threading
from pathlib import Path

import attrs
import trio

Key = tuple[str, str, str]  # (network, sender, recipient)
TripletRow = tuple[str, str, str, float, float | None, int, int, float]
ClientRow = tuple[str, int, float, float, float]

BUSY_SECONDS = 5.0  # SQLite's wait for another writer's lock
RETRY_SECONDS = 5.0  # between attempts of the writer while the file refuses writes
SCHEMA_VERSION = 1


@attrs.define
class Entry:
    first_seen: float  # first attempt of the current round
    last_pass: float | None = None  # None while pending
    attempts: int = 0  # refused attempts in this round
    passes: int = 0


@attrs.define
class Client:
    passes: int
    last_pass: float
    last_counted: float


@attrs.frozen
class Snapshot:
    pending: collections.OrderedDict[Key, Entry]
    passed: collections.OrderedDict[Key, Entry]
    clients: collections.OrderedDict[str, Client]
    now: float  # the time the file was loaded at: not before its newest row


@attrs.frozen
class Cutoffs:
    """Entries last touched before these times (plugin time) are expired."""

    pending: float
    passed: float

    @classmethod
    def at(cls, now: float, retry_window: float, pass_lifetime: float) -> Cutoffs:
        return cls(now - retry_window, now - pass_lifetime)


# ----------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplet (
    network TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_pass REAL,
    attempts INTEGER NOT NULL,
    passes INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (network, sender, recipient)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client (
    network TEXT PRIMARY KEY,
    passes INTEGER NOT NULL,
    last_pass REAL NOT NULL,
    last_counted REAL NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
"""
# Last writer wins, by the time of the decision: replaying a batch changes nothing, and an old
# generation's late write cannot undo a newer one's.
_UPSERT_TRIPLET = """
INSERT INTO triplet VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (network, sender, recipient) DO UPDATE SET
    first_seen = excluded.first_seen, last_pass = excluded.last_pass,
    attempts = excluded.attempts, passes = excluded.passes, updated = excluded.updated
WHERE excluded.updated >= triplet.updated
"""
_UPSERT_CLIENT = """
INSERT INTO client VALUES (?, ?, ?, ?, ?)
ON CONFLICT (network) DO UPDATE SET
    passes = excluded.passes, last_pass = excluded.last_pass,
    last_counted = excluded.last_counted, updated = excluded.updated
WHERE excluded.updated >= client.updated
"""
_TRIPLET_COLUMNS = "network, sender, recipient, first_seen, last_pass, attempts, passes"


def connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are the explicit BEGIN IMMEDIATE ... COMMIT below, so a
    # batch takes the write lock up front instead of failing half-way on a busy file.
    db = sqlite3.connect(path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def open_and_load(
    path: Path, now: float, retry_window: float, pass_lifetime: float
) -> tuple[sqlite3.Connection, Snapshot]:
    """(Worker thread.) Open ``path`` (the schema created if new), delete what expired while
    the daemon was down, and load the rest in expiry order.

    The load happens at ``now``, or at the newest ``updated`` in the file if that is later: a
    wall clock set back across a restart must not leave stored entries in the future (only
    differences between the plugin's own times matter, so running ahead is harmless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    try:
        db.execute("BEGIN IMMEDIATE")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"{path}: schema version {version}, not {SCHEMA_VERSION}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        newest = db.execute(
            "SELECT MAX(t) FROM (SELECT MAX(updated) AS t FROM triplet"
            " UNION ALL SELECT MAX(updated) FROM client)"
        ).fetchone()[0]
        now = max(now, newest or now)
        _purge(db, Cutoffs.at(now, retry_window, pass_lifetime))
        db.execute("COMMIT")
        snapshot = _load(db, now)
    except BaseException:
        db.close()
        raise
    return db, snapshot


def _load(db: sqlite3.Connection, now: float) -> Snapshot:
    pending: collections.OrderedDict[Key, Entry] = collections.OrderedDict()
    passed: collections.OrderedDict[Key, Entry] = collections.OrderedDict()
    clients: collections.OrderedDict[str, Client] = collections.OrderedDict()
    rows = db.execute(
        f"SELECT {_TRIPLET_COLUMNS} FROM triplet WHERE last_pass IS NULL ORDER BY first_seen"
    )
    for network, sender, recipient, *rest in rows:
        pending[(network, sender, recipient)] = Entry(*rest)
    rows = db.execute(
        f"SELECT {_TRIPLET_COLUMNS} FROM triplet WHERE last_pass IS NOT NULL ORDER BY last_pass"
    )
    for network, sender, recipient, *rest in rows:
        passed[(network, sender, recipient)] = Entry(*rest)
    rows = db.execute("SELECT network, passes, last_pass, last_counted FROM client ORDER BY 3")
    for network, passes, last_pass, last_counted in rows:
        clients[network] = Client(passes, last_pass, last_counted)
    return Snapshot(pending, passed, clients, now)


def _purge(db: sqlite3.Connection, cutoffs: Cutoffs) -> None:
    db.execute(
        "DELETE FROM triplet WHERE (last_pass IS NULL AND first_seen < ?) OR last_pass < ?",
        (cutoffs.pending, cutoffs.passed),
    )
    db.execute("DELETE FROM client WHERE last_pass < ?", (cutoffs.passed,))


@attrs.frozen
class TripletWrite:
    row: TripletRow


@attrs.frozen
class ClientWrite:
    row: ClientRow


@attrs.define
class Barrier:
    """Released by the writer once everything queued before it is committed (or failed)."""

    done: threading.Event = attrs.Factory(threading.Event)
    ok: bool = False


Op = TripletWrite | ClientWrite | Cutoffs | Barrier | None  # None: stop


@attrs.define
class Batch:
    triplets: dict[Key, TripletRow] = attrs.Factory(dict)  # the latest row per key
    clients: dict[str, ClientRow] = attrs.Factory(dict)
    purge: Cutoffs | None = None
    barriers: list[Barrier] = attrs.Factory(list)
    stop: bool = False

    def add(self, op: Op) -> None:
        if op is None:
            self.stop = True
        elif isinstance(op, Cutoffs):
            self.purge = op
        elif isinstance(op, Barrier):
            self.barriers.append(op)
        elif isinstance(op, TripletWrite):
            self.triplets[op.row[:3]] = op.row
        else:
            self.clients[op.row[0]] = op.row

    @property
    def rows(self) -> int:
        return len(self.triplets) + len(self.clients)

    def commit(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_UPSERT_TRIPLET, self.triplets.values())
            db.executemany(_UPSERT_CLIENT, self.clients.values())
            if self.purge is not None:
                _purge(db, self.purge)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.triplets.clear()
        self.clients.clear()
        self.purge = None

    def release(self, ok: bool) -> None:
        for barrier in self.barriers:
            barrier.ok = ok
            barrier.done.set()
        self.barriers.clear()


class Writer:
    """The thread that owns the write connection; ``put`` never waits."""

    def __init__(self, path: Path, log: logging.Logger) -> None:
        self._path = path
        self._log = log
        self._queue: queue.SimpleQueue[Op] = queue.SimpleQueue()
        # A daemon thread: a plugin dropped without shutdown() must not hang the interpreter's
        # exit (its last batch may then be lost, as in a crash).
        self._thread = threading.Thread(target=self._run, name="greylist-writer", daemon=True)
        self._thread.start()
        self.lost = 0  # rows given up at stop because the file refused them

    def put(self, op: TripletWrite | ClientWrite | Cutoffs) -> None:
        self._queue.put(op)

    async def flush(self) -> bool:
        """Wait until everything put so far is committed; False if the commit failed."""
        barrier = Barrier()
        self._queue.put(barrier)
        await trio.to_thread.run_sync(barrier.done.wait)
        return barrier.ok

    async def close(self) -> None:
        """Commit what is queued (one last attempt if the file is failing), then stop."""
        self._queue.put(None)
        await trio.to_thread.run_sync(self._thread.join)

    def _gather(self, batch: Batch, wait: float | None) -> None:
        try:
            batch.add(self._queue.get(timeout=wait))
            while True:
                batch.add(self._queue.get_nowait())
        except queue.Empty:
            pass

    def _run(self) -> None:
        batch = Batch()
        db: sqlite3.Connection | None = None
        failing = False
        while not batch.stop:
            self._gather(batch, RETRY_SECONDS if failing else None)
            try:
                if batch.rows or batch.purge is not None:
                    db = db or connect(self._path)
                    batch.commit(db)
            except sqlite3.Error as exc:
                if not failing:
                    self._log.error(
                        "greylist: cannot write %s (%s); keeping %d rows, retrying every %gs",
                        self._path,
                        exc,
                        batch.rows,
                        RETRY_SECONDS,
                    )
                failing = True
                if db is not None:
                    db.close()
                db = None
            else:
                if failing:
                    self._log.info("greylist: writing %s again", self._path)
                failing = False
            batch.release(ok=not failing)
        if failing:
            self.lost = batch.rows
            self._log.error("greylist: %d rows not written to %s", batch.rows, self._path)
        if db is not None:
            db.close()


def read_entry(db: sqlite3.Connection, key: Key, cutoffs: Cutoffs) -> Entry | None:
    """The unexpired entry for ``key`` in the file (another writer may have stored it)."""
    row = db.execute(
        "SELECT first_seen, last_pass, attempts, passes FROM triplet"
        " WHERE network = ? AND sender = ? AND recipient = ?",
        key,
    ).fetchone()
    if row is None:
        return None
    entry = Entry(*row)
    if entry.last_pass is None:
        return entry if entry.first_seen >= cutoffs.pending else None
    return entry if entry.last_pass >= cutoffs.passed else None
