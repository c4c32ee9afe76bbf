"""Greylisting (postgrey, Haraka's ``greylist``, qpsmtpd's ``greylisting``), state in SQLite.

A recipient is judged by its triplet: the client's network (IPv4 /24, IPv6 /64 by default), the
envelope sender (lower-cased; ``""`` for the null sender) and the recipient (lower-cased). The
first attempt of an unknown triplet is refused with ``451 4.7.1 Greylisted: please try again in
N seconds`` (RFC 3463 4.7.1: delivery not authorized, a temporary condition); a retry sooner than
``delay`` gets the same refusal with the seconds left, first-seen unchanged; a retry after
``delay`` and within ``retry_window`` passes, and the triplet then passes at once for
``pass_lifetime``, refreshed by every pass. A pending triplet older than ``retry_window`` is
forgotten and starts over. With ``auto_allow_after`` = N > 0 a network whose triplets passed N
times (counted at most once per ``COUNT_SPACING``) passes for every sender and recipient, for as
long as it keeps passing within ``pass_lifetime`` (postgrey's auto-whitelist-clients).

The check runs on ``rcpt_ok``: after a plugin accepted the recipient, so a recipient refused
anyway (unknown, relaying denied) gets its 5xx and creates no state. Never greylisted:
authenticated and relaying clients, clients with the connection note ``dns_list.allowed``,
clients in ``allow_ips``, senders whose domain (or a parent) is in ``allow_sender_domains``,
recipients in ``allow_recipients`` (``postmaster@`` by default, RFC 5321 §4.5.1). Every decision
sets the transaction notes ``greylist.result`` (``"pass"``, ``"greylisted"``,
``"skipped:<why>"``: the last recipient's) and ``greylist.recipients`` (recipient → result), and
logs one INFO line. The plugin fails open: a database error or a timeout lets the recipient
through (``on_error``/``on_timeout`` are CONT; set them to ``"denysoft"`` to fail closed).

Theory of operation
-------------------
The event loop never touches the disk. Memory is what this instance decides from; SQLite is the
durable copy and what other instances (the next generation after a SIGHUP, a restarted daemon,
another process on the same file) learn from:

* ``startup`` (or the first RCPT) opens the file in a worker thread, creates the schema, deletes
  expired rows and loads the rest into three ordered maps: pending triplets by first-seen,
  passed triplets by last pass, networks by last pass. Entries are appended in time order, so
  expiry pops them from the front, a few per decision, never scanning.
* Each decision that changes an entry puts a snapshot of the row on a queue (no waiting). A
  writer thread, which owns its own connection, takes everything waiting and commits it in one
  transaction (group commit): the busier the server, the bigger the batches.
* A triplet not in memory is looked up in the file (a worker thread) before it counts as new:
  an old generation still serving its connections after a reload, or another process, may have
  written it since the load.
* Rows are upserted last-writer-wins on ``updated`` (this instance's time of the decision), so
  writes are idempotent and two writers converge. Expired rows are deleted by the writer every
  ``PURGE_INTERVAL`` of plugin time (checked on each decision: no timer).
* ``shutdown`` (exit, or the old generation after a reload) commits what is queued and stops.

Durability: SQLite in WAL mode with ``synchronous=NORMAL``. A crash of the daemon loses only
decisions not yet committed, i.e. the batch in flight (milliseconds under normal load); a power
failure may also lose the last commits since the WAL was last synced. Neither corrupts the file;
the worst case is a sender greylisted once more.

Time is ``time.time()`` read at first use plus ``trio.current_time()`` elapsed since then: a
running instance is immune to wall-clock steps, and trio's ``MockClock`` drives it in tests.
"""

from __future__ import annotations

import collections
import importlib.util
import ipaddress
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

import attrs
import trio

from trio_mta import hooks
from trio_mta.protocol import Address


def _sibling(name: str) -> ModuleType:
    """The helper module ``name`` beside this file. Plugin files are executed by path under a
    per-load module name, never imported as a package, so the helper is loaded the same way."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{__name__}.{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its classes can then be found by module name (pickle)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from plugins import _greylist_store as store
else:
    store = _sibling("_greylist_store")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
K = TypeVar("K")
V = TypeVar("V")

DAY = 86400.0
PURGE_INTERVAL = 3600.0  # plugin time between deletions of expired rows from the file
COUNT_SPACING = 300.0  # a network's passes count at most once per this many seconds
SWEEP_BATCH = 256  # expired memory entries dropped per decision, at most
RESULT_NOTE = "greylist.result"
RECIPIENTS_NOTE = "greylist.recipients"
DNS_LIST_NOTE = "dns_list.allowed"

_DEFAULTS: Mapping[str, object] = {
    "delay": 300,
    "retry_window": DAY,
    "pass_lifetime": 35 * DAY,
    "auto_allow_after": 5,
    "ipv4_prefix": 24,
    "ipv6_prefix": 64,
    "allow_ips": [],
    "allow_sender_domains": [],
    "allow_recipients": ["postmaster@"],
    "database": "greylist.sqlite3",
}

# ----------------------------------------------------------------------------- configuration


@attrs.frozen
class Settings:
    delay: float
    retry_window: float
    pass_lifetime: float
    auto_allow_after: int
    ipv4_prefix: int
    ipv6_prefix: int
    allow_ips: tuple[IPNetwork, ...]
    allow_sender_domains: frozenset[str]
    allow_addresses: frozenset[str]  # "user@domain"
    allow_domains: frozenset[str]  # "domain", from "@domain"
    allow_locals: frozenset[str]  # "user", from "user@"
    database: Path


def _seconds(config: Mapping[str, object], key: str) -> float:
    value = config.get(key, _DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: must be a number of seconds, not {value!r}")
    if value <= 0:
        raise ValueError(f"{key}: must be more than 0 seconds, not {value!r}")
    return float(value)


def _integer(config: Mapping[str, object], key: str, top: int | None = None) -> int:
    value = config.get(key, _DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: must be a whole number >= 0, not {value!r}")
    if top is not None and value > top:
        raise ValueError(f"{key}: must be between 0 and {top}, not {value}")
    return value


def _strings(config: Mapping[str, object], key: str) -> list[str]:
    value = config.get(key, _DEFAULTS[key])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: must be a list of strings, not {value!r}")
    return [v.strip() for v in value]


def _domain(text: str) -> str | None:
    name = text.lower().rstrip(".")
    labels = name.split(".")
    if not name or "@" in name or any(not label or " " in label for label in labels):
        return None
    return name


def _recipient_entries(entries: list[str]) -> tuple[frozenset[str], ...]:
    """``allow_recipients`` as (addresses, domains, local parts)."""
    addresses, domains, locals_ = set(), set(), set()
    for entry in entries:
        local, at, rest = entry.lower().rpartition("@")
        domain = _domain(rest)
        local_ok = bool(local) and "@" not in local and " " not in local
        if at and local_ok and not rest:
            locals_.add(local)
        elif at and not local and domain:
            domains.add(domain)
        elif at and local_ok and domain:
            addresses.add(f"{local}@{domain}")
        else:
            raise ValueError(
                f"allow_recipients: {entry!r} is not an address, '@domain' or 'local-part@'"
            )
    return frozenset(addresses), frozenset(domains), frozenset(locals_)


def parse_settings(config: Mapping[str, object], var_dir: Path) -> Settings:
    """``config`` checked key by key; ValueError names the key and what is wrong."""
    unknown = set(config) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    delay, window = _seconds(config, "delay"), _seconds(config, "retry_window")
    if window <= delay:
        raise ValueError(f"retry_window ({window:g} s) must be longer than delay ({delay:g} s)")
    networks = []
    for entry in _strings(config, "allow_ips"):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"allow_ips: {entry!r} is not an IP address or network") from None
    sender_domains = set()
    for entry in _strings(config, "allow_sender_domains"):
        domain = _domain(entry)
        if domain is None:
            raise ValueError(f"allow_sender_domains: {entry!r} is not a domain name")
        sender_domains.add(domain)
    addresses, domains, locals_ = _recipient_entries(_strings(config, "allow_recipients"))
    database = config.get("database", _DEFAULTS["database"])
    if not isinstance(database, str) or not database.strip():
        raise ValueError(f"database: must be a file name or path, not {database!r}")
    return Settings(
        delay=delay,
        retry_window=window,
        pass_lifetime=_seconds(config, "pass_lifetime"),
        auto_allow_after=_integer(config, "auto_allow_after"),
        ipv4_prefix=_integer(config, "ipv4_prefix", 32),
        ipv6_prefix=_integer(config, "ipv6_prefix", 128),
        allow_ips=tuple(networks),
        allow_sender_domains=frozenset(sender_domains),
        allow_addresses=addresses,
        allow_domains=domains,
        allow_locals=locals_,
        database=var_dir / database,  # an absolute path replaces var_dir
    )


# ----------------------------------------------------------------------------- the triplet


def client_address(text: str) -> IPAddress | None:
    """The client's address; an IPv4-mapped IPv6 address as the IPv4 address it maps."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def network_of(ip: IPAddress, settings: Settings) -> str:
    """``ip``'s network in CIDR form, e.g. ``192.0.2.0/24`` (an IPv6 zone is ignored)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Network((int(ip), settings.ipv4_prefix), strict=False))
    return str(ipaddress.IPv6Network((int(ip), settings.ipv6_prefix), strict=False))


def mailbox(address: Address | None) -> str:
    """The triplet's text for an address: ``local@domain`` lower-cased, ``""`` for ``<>``."""
    if address is None:
        return ""
    local = address.unquoted_local_part.lower()
    return f"{local}@{address.domain_lower.rstrip('.')}" if address.domain else local


class WallClock:
    """Seconds since the epoch, moving with trio's clock (see the module docstring)."""

    def __init__(self) -> None:
        self._offset: float | None = None

    def __call__(self) -> float:
        now = trio.current_time()
        if self._offset is None:
            self._offset = time.time() - now
        return self._offset + now

    def not_before(self, when: float) -> None:
        """Move this clock forward to ``when`` if it is behind (never back)."""
        behind = when - self()
        if behind > 0 and self._offset is not None:
            self._offset += behind


# ----------------------------------------------------------------------------- the plugin


@attrs.frozen
class Verdict:
    result: str  # "pass", "greylisted" or "skipped:<why>"
    detail: str
    wait: int = 0  # greylisted: seconds until a retry can pass


class Plugin(hooks.Plugin):
    # Greylisting delays mail, it is not a security control: if the state cannot be read in
    # time, let the recipient through rather than refuse mail the plugin cannot judge.
    on_timeout = hooks.CONT
    on_error = hooks.CONT

    def setup(self) -> None:
        self.settings = parse_settings(self.config, self.env.var_dir)
        self.clock = WallClock()
        self._pending: collections.OrderedDict[store.Key, store.Entry] = collections.OrderedDict()
        self._passed: collections.OrderedDict[store.Key, store.Entry] = collections.OrderedDict()
        self._clients: collections.OrderedDict[str, store.Client] = collections.OrderedDict()
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()  # the reader is used by one worker at a time
        self._writer: store.Writer | None = None
        self._opening = trio.Lock()
        self._next_purge = 0.0
        self._closed = False

    # ------------------------------------------------------------------ life cycle

    async def startup(self) -> None:
        try:
            await self._open()
        except (sqlite3.Error, OSError) as exc:
            # Loudly, at start-up (or the reload is refused): later, errors only fail open.
            path = self.settings.database
            raise hooks.PluginLoadError(f"plugin {self.name!r}: cannot use {path}: {exc}") from exc

    async def shutdown(self) -> None:
        self._closed = True
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if writer is not None:
            await writer.close()
            if writer.lost:
                self.log.error("greylist: %d decisions lost at shutdown", writer.lost)
        if reader is not None:
            await trio.to_thread.run_sync(self._close_reader, reader)

    def _close_reader(self, reader: sqlite3.Connection) -> None:
        with self._reader_lock:  # not under a read still running in another worker
            reader.close()

    async def flush(self) -> bool:
        """Wait until every decision so far is committed to the file; False if that failed."""
        return await self._writer.flush() if self._writer is not None else True

    async def _open(self) -> None:
        if self._writer is not None:
            return
        async with self._opening:
            if self._closed:
                raise sqlite3.ProgrammingError("the plugin has been shut down")
            if not self._is_open():  # another task may have opened it while this one waited
                await self._load()

    def _is_open(self) -> bool:
        return self._writer is not None

    async def _load(self) -> None:
        now = self.clock()
        path = self.settings.database
        s = self.settings
        db, snapshot = await trio.to_thread.run_sync(
            store.open_and_load, path, now, s.retry_window, s.pass_lifetime
        )
        self.clock.not_before(snapshot.now)
        self._reader = db
        self._pending, self._passed = snapshot.pending, snapshot.passed
        self._clients = snapshot.clients
        self._writer = store.Writer(path, self.log)
        self._next_purge = snapshot.now + PURGE_INTERVAL
        self.log.info(
            "greylist: %s: %d pending, %d passed triplets, %d networks",
            path,
            len(self._pending),
            len(self._passed),
            len(self._clients),
        )

    # ------------------------------------------------------------------ the hook

    async def hook_rcpt_ok(self, conn: hooks.Connection, rcpt: Address) -> hooks.Result:
        txn = conn.transaction
        if txn is None:
            return hooks.CONT
        sender, recipient = mailbox(txn.sender), mailbox(rcpt)
        ip = client_address(conn.client_ip)
        network = network_of(ip, self.settings) if ip is not None else conn.client_ip
        why = self._exemption(conn, ip, txn.sender, rcpt)
        verdict = Verdict(f"skipped:{why}", "")
        if why is None:
            try:
                verdict = await self._decide((network, sender, recipient))
            except (sqlite3.Error, OSError) as exc:
                self.log.error("conn=%s greylist state unavailable: %s", conn.id, exc)
                verdict = Verdict("skipped:error", "")
        txn.notes[RESULT_NOTE] = verdict.result
        results = txn.notes.setdefault(RECIPIENTS_NOTE, {})
        if isinstance(results, dict):
            results[recipient] = verdict.result
        self.log.info(
            "conn=%s greylist %s client=%s from=<%s> to=<%s>%s",
            conn.id,
            verdict.result,
            network,
            sender,
            recipient,
            verdict.detail,
        )
        if verdict.result != "greylisted":
            return hooks.CONT
        return hooks.denysoft(
            f"Greylisted: please try again in {verdict.wait} seconds", code=451, enhanced="4.7.1"
        )

    def _exemption(
        self, conn: hooks.Connection, ip: IPAddress | None, sender: Address | None, rcpt: Address
    ) -> str | None:
        """Why this recipient is not greylisted, or None."""
        s = self.settings
        if conn.auth_user is not None:
            return "authenticated"
        if conn.relaying:
            return "relaying"
        if conn.notes.get(DNS_LIST_NOTE):
            return "dns_list"
        if ip is None:
            return "no_client_ip"
        if any(ip.version == net.version and ip in net for net in s.allow_ips):
            return "allow_ips"
        if sender is not None and s.allow_sender_domains:
            labels = sender.domain_lower.rstrip(".").split(".")
            parents = (".".join(labels[i:]) for i in range(len(labels)))
            if any(domain in s.allow_sender_domains for domain in parents):
                return "allow_sender_domains"
        local = rcpt.unquoted_local_part.lower()
        domain = rcpt.domain_lower.rstrip(".")
        if (
            local in s.allow_locals
            or (domain and domain in s.allow_domains)
            or f"{local}@{domain}" in s.allow_addresses
        ):
            return "allow_recipients"
        return None

    async def _decide(self, key: store.Key) -> Verdict:
        await self._open()
        s = self.settings
        now = self.clock()
        self._housekeeping(now)
        client = self._clients.get(key[0])
        if (
            s.auto_allow_after
            and client is not None
            and client.passes >= s.auto_allow_after
            and client.last_pass >= now - s.pass_lifetime
        ):
            self._count_pass(key[0], now)
            return Verdict("pass", f" network auto-allowed, passes={client.passes}")
        entry = self._remembered(key, now)
        if entry is None:
            found = await trio.to_thread.run_sync(self._read, key, self._cutoffs(now))
            entry = self._remembered(key, now)  # another task may have decided meanwhile
            if entry is None and found is not None:
                entry = found
                (self._pending if found.last_pass is None else self._passed)[key] = found
        if entry is None:
            self._pending[key] = entry = store.Entry(first_seen=now, attempts=1)
            self._store(key, entry, now)
            return Verdict("greylisted", " new", math.ceil(s.delay))
        age = now - entry.first_seen
        if entry.last_pass is None and age < s.delay:
            entry.attempts += 1
            self._store(key, entry, now)
            wait = math.ceil(min(s.delay, s.delay - age))
            return Verdict("greylisted", f" age={age:.0f}s attempts={entry.attempts}", wait)
        detail = f" age={age:.0f}s"
        if entry.last_pass is None:
            detail += f" after {entry.attempts} attempts"
            del self._pending[key]
        else:
            detail += f" passes={entry.passes}"
            del self._passed[key]
        entry.last_pass = now
        entry.passes += 1
        self._passed[key] = entry  # at the end: the map stays in order of last pass
        self._store(key, entry, now)
        self._count_pass(key[0], now)
        return Verdict("pass", detail)

    def _cutoffs(self, now: float) -> store.Cutoffs:
        return store.Cutoffs.at(now, self.settings.retry_window, self.settings.pass_lifetime)

    def _remembered(self, key: store.Key, now: float) -> store.Entry | None:
        """The entry for ``key`` in memory if it has not expired (an expired one is dropped)."""
        cutoffs = self._cutoffs(now)
        entry = self._passed.get(key)
        if entry is not None:
            assert entry.last_pass is not None
            if entry.last_pass >= cutoffs.passed:
                return entry
            del self._passed[key]
        entry = self._pending.get(key)
        if entry is not None:
            if entry.first_seen >= cutoffs.pending:
                return entry
            del self._pending[key]
        return None

    def _read(self, key: store.Key, cutoffs: store.Cutoffs) -> store.Entry | None:
        """(Worker thread.) ``key``'s entry in the file, if another writer stored one."""
        with self._reader_lock:
            return None if self._reader is None else store.read_entry(self._reader, key, cutoffs)

    def _count_pass(self, network: str, now: float) -> None:
        if not self.settings.auto_allow_after or self._writer is None:
            return
        client = self._clients.pop(network, None)
        if client is None or client.last_pass < now - self.settings.pass_lifetime:
            client = store.Client(passes=0, last_pass=now, last_counted=-math.inf)
        if now - client.last_counted >= COUNT_SPACING:
            client.passes += 1
            client.last_counted = now
        client.last_pass = now
        self._clients[network] = client  # at the end: in order of last pass
        self._writer.put(store.ClientWrite((network, client.passes, now, client.last_counted, now)))

    def _store(self, key: store.Key, entry: store.Entry, now: float) -> None:
        if self._writer is not None:
            row = (*key, entry.first_seen, entry.last_pass, entry.attempts, entry.passes, now)
            self._writer.put(store.TripletWrite(row))

    def _housekeeping(self, now: float) -> None:
        """Drop a few expired entries from the front of each map; every PURGE_INTERVAL, have
        the writer delete expired rows from the file."""
        cutoffs = self._cutoffs(now)
        _sweep(self._pending, lambda e: e.first_seen >= cutoffs.pending)
        _sweep(self._passed, lambda e: (e.last_pass or 0.0) >= cutoffs.passed)
        _sweep(self._clients, lambda c: c.last_pass >= cutoffs.passed)
        if now >= self._next_purge and self._writer is not None:
            self._writer.put(cutoffs)
            self._next_purge = now + PURGE_INTERVAL


def _sweep(table: collections.OrderedDict[K, V], alive: Callable[[V], bool]) -> None:
    for _ in range(SWEEP_BATCH):
        if not table:
            return
        first = next(iter(table.values()))
        if alive(first):
            return
        table.popitem(last=False)
