"""The daemon's memory guard: ``[limits] memory_soft_mb``.

Theory of operation
-------------------
A task reads the resident set size from ``/proc/self/statm`` (one small read, ~10 us) four
times a second, and every 50 ms once it is above 80 % of the limit: a plugin allocating in a
loop grows by hundreds of MiB a second, and each reading missed is that much past the limit.
Nothing runs on the SMTP path except one attribute test (``over``) at connect and at MAIL.

Above the limit the guard is *over*: new connections get ``421 4.3.2`` and new transactions
(MAIL) ``451 4.3.2`` (RFC 3463: system not accepting network messages), and it stays over
until the RSS falls below 90 % of the limit (hysteresis, so it does not flap). When it fires it
logs and publishes ``memory.guard`` naming the plugin calls running at that moment, and starts
``tracemalloc``; at the next reading the allocations made since are grouped by plugin file:
the calls of the plugin that allocated most (over ``_BLAME_MB``) are cancelled (they get their
``on_timeout`` result) and named as the cause. ``tracemalloc`` stops when the guard clears:
its cost (it slows every allocation) is paid only while the daemon is already refusing work.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import trio

from ..events import EventBus, MemoryGuarded
from ..hooks import PluginHealth
from ..protocol import Reply

log = logging.getLogger("trio_mta.memory")

CONNECT_REFUSED = Reply(421, "4.3.2", ("Service busy (memory), closing connection",))
MAIL_REFUSED = Reply(451, "4.3.2", ("Service busy (memory), try again later",))

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = Path("/proc/self/statm")
_BLAME_MB = 8.0  # a plugin's allocations since the guard fired, to be cancelled as the cause


def _load_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


_MALLOC_TRIM = _load_trim()


def _trim() -> None:
    """Give free heap memory back to the system (glibc's ``malloc_trim``), where there is one."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def rss_mb() -> float:
    """This process's resident set size in MiB (0 where /proc is not available)."""
    try:
        fields = _STATM.read_bytes().split()
    except OSError:
        return 0.0
    return int(fields[1]) * _PAGE / (1024 * 1024)


class MemoryGuard:
    def __init__(
        self,
        limit_mb: int,
        *,
        health: PluginHealth,
        running: Callable[[], list[tuple[str, str, trio.CancelScope | None]]],
        bus: EventBus | None = None,
        read: Callable[[], float] = rss_mb,
    ) -> None:
        self.limit_mb = limit_mb
        self.health = health
        self.running = running  # (plugin, hook, its cancel scope) of every call in progress
        self.bus = bus
        self.read = read
        self.over = False
        self.rss = 0.0
        self.fired = 0  # times the guard went over
        self._trimmed_at = 0.0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                self.check()
                near = self.rss > 0.8 * self.limit_mb
                await trio.sleep(0.05 if near or self.over else 0.25)
        finally:
            if tracemalloc.is_tracing():
                tracemalloc.stop()

    def check(self) -> None:
        self.rss = rss = self.read()
        if not self.over:
            if rss > self.limit_mb:
                self._fire(rss)
            return
        if tracemalloc.is_tracing():
            cancelled = self._blame()
            # What the cancelled calls freed stays in malloc's heap (glibc raises its mmap
            # threshold after big frees): without a trim the RSS never falls back. A trim and
            # a collection cost milliseconds: after a cancel, else twice a second at most.
            now = time.monotonic()
            if cancelled or now - self._trimmed_at >= 0.5:
                self._trimmed_at = now
                _trim()
                self.rss = rss = self.read()
        if rss < 0.9 * self.limit_mb:
            self.over = False
            if tracemalloc.is_tracing():
                tracemalloc.stop()
            log.warning(
                "memory back to %.0f MiB (limit %d MiB): accepting connections and mail again",
                rss,
                self.limit_mb,
            )
            self._publish("under", [])

    def _fire(self, rss: float) -> None:
        self.over = True
        self.fired += 1
        calls = [f"{plugin}/{hook}" for plugin, hook, _ in self.running()]
        log.error(
            "memory %.0f MiB over memory_soft_mb %d: refusing new connections (421 4.3.2) and "
            "mail (451 4.3.2); plugin calls running: %s",
            rss,
            self.limit_mb,
            ", ".join(calls) or "none",
        )
        self._publish("over", calls)
        tracemalloc.start(1)  # only now: finds who allocates from here on

    def _blame(self) -> bool:
        """Group the allocations made since the guard fired by plugin; cancel the calls of the
        plugin that allocated most, if any plugin did. Returns whether it cancelled any."""
        snapshot = tracemalloc.take_snapshot()
        files = self.health.files
        by_plugin: dict[str, float] = {}
        for stat in snapshot.statistics("filename"):
            plugin = files.get(stat.traceback[0].filename)
            if plugin is not None:
                by_plugin[plugin] = by_plugin.get(plugin, 0.0) + stat.size / (1024 * 1024)
        tracemalloc.clear_traces()
        if not by_plugin:
            return False
        plugin, grown = max(by_plugin.items(), key=lambda item: item[1])
        if grown < _BLAME_MB:
            return False
        cancelled = []
        for name, hook, scope in self.running():
            if name == plugin and scope is not None:
                scope.cancel()
                cancelled.append(f"{name}/{hook}")
        log.error(
            "memory: plugin %s allocated %.0f MiB since the guard fired; cancelled its calls: %s",
            plugin,
            grown,
            ", ".join(cancelled) or "none running",
        )
        self._publish("over", cancelled, cause=plugin)
        return bool(cancelled)

    def _publish(self, state: str, plugins: list[str], cause: str | None = None) -> None:
        if self.bus is not None:
            self.bus.publish(
                MemoryGuarded(
                    ts=self.bus.clock(),
                    rss_mb=round(self.rss, 1),
                    limit_mb=self.limit_mb,
                    state=state,
                    plugins=tuple(plugins),
                    cause=cause,
                )
            )
