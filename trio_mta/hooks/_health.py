"""Plugin health: per (plugin, hook) counts, latency, and the circuit breaker.

Theory of operation
-------------------
One ``PluginHealth`` serves the whole daemon (every session's runner, the queue's runners, every
plugin generation): a plugin's record is keyed by (plugin name, hook), so it survives a reload.

The breaker of a (plugin, hook) is CLOSED while calls run normally. ``breaker_failures``
failures in a row (timeouts or errors, no success between them) within ``breaker_window``
seconds trip it: OPEN. While open, a call is answered at once with the plugin's own result for
its last failure (``on_timeout`` or ``on_error``), using no worker, no thread and no time. After
``breaker_cooldown`` the breaker is HALF_OPEN: one call at a time probes the plugin, the others
are still answered at once; a probe that succeeds closes the breaker, one that fails opens it
for another cooldown. Failures must come in a row because a breaker protects against a broken
dependency (a dead scanner fails every call), not a poisonous message: a plugin that hangs on
one message a second and serves the fifty others keeps serving them.

Cost on the hot path: a closed breaker is one attribute comparison before the call and a few
integer and list stores after it (``success``). The clock is read only on failures and while
the breaker is not closed. Latency percentiles are computed from a ring of recent durations
only when someone asks (``snapshot``).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import TYPE_CHECKING

import attrs
import trio

from ._result import Result

if TYPE_CHECKING:
    from ._registry import HookEntry, PluginSet

log = logging.getLogger("trio_mta.plugins")

_MODULE_PREFIX = "trio_mta_plugin_"  # how the registry names a plugin file's module
_RING = 512  # recent call durations kept per (plugin, hook) for p50/p95
# Hooks of the outbound queue: their arguments (the queue's objects) do not cross to a worker.
_STAY_IN_PROCESS = frozenset({"get_mx", "send_email", "delivered", "deferred", "bounce"})


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class BreakerSettings:
    """``[plugins] breaker_failures``, ``breaker_window``, ``breaker_cooldown``."""

    failures: int = 5
    window: float = 60.0  # seconds
    cooldown: float = 30.0  # seconds
    threads: int = 16  # a plugin's sync hook calls in threads at once ([plugins] plugin_threads)
    # The loop watchdog: a plugin that blocks the loop (or spins a thread) this many times
    # within strike_window seconds is moved to the sandbox, or tripped (0: never).
    strikes: int = 3
    strike_window: float = 300.0
    slow_call: float = (
        0.05  # seconds: a call holding the loop longer is blamed ([plugins] watchdog_ms)
    )


@attrs.frozen
class BreakerChange:
    """A breaker's move, as told to ``PluginHealth``'s ``on_change`` (log, event, metric)."""

    plugin: str
    hook: str
    state: BreakerState
    reason: str


class HookHealth:
    """The mutable record of one (plugin, hook)."""

    __slots__ = (
        "_health",
        "_ring",
        "_ring_at",
        "abandoned",
        "abandoned_total",
        "breaker",
        "calls",
        "divert",
        "errors",
        "failed_run",
        "first_failure_at",
        "hook",
        "last_failure",
        "leftovers",
        "moved",
        "open_until",
        "plugin",
        "probing",
        "sandbox_timeouts",
        "short_circuited",
        "state",
        "timeouts",
    )

    def __init__(self, health: PluginHealth, plugin: str, hook: str) -> None:
        self._health = health
        self.plugin = plugin
        self.hook = hook
        self.breaker = True  # False: the plugin's ``breaker = false``
        self.state = BreakerState.CLOSED
        # Moved to the sandbox by the watchdog's strikes (``PluginHealth.strike``).
        self.moved = False
        # The runner's one test before a call: the breaker is not closed, or the call moved.
        self.divert = False
        self.leftovers = 0  # threads or tasks a call left running after it returned
        self.calls = 0
        self.timeouts = 0
        self.errors = 0
        # Timeouts of its calls in the sandbox (the pool counts the workers it had to kill).
        self.sandbox_timeouts = 0
        # Threads of this hook's calls still running after their deadline (``ThreadCall``s;
        # each removes itself from its thread when it ends), and how many ever were.
        self.abandoned: set[object] = set()
        self.abandoned_total = 0
        self.short_circuited = 0  # calls answered by an open breaker
        self.failed_run = 0  # failures in a row
        self.first_failure_at = 0.0
        self.open_until = 0.0
        self.probing = False
        self.last_failure: Result | None = None
        self._ring: list[float] = []
        self._ring_at = 0

    # -- the runner's side -----------------------------------------------------------------

    def admit(self) -> Result | None:
        """Called only when ``divert``: None lets the call run (a probe, or a call of a
        plugin moved to the sandbox); a Result answers it at once."""
        if self.state is BreakerState.CLOSED:
            return None
        if self.state is BreakerState.OPEN:
            if trio.current_time() < self.open_until:
                return self._short_circuit()
            self._move(BreakerState.HALF_OPEN, "cooldown over: probing")
        if self.probing:
            return self._short_circuit()
        self.probing = True
        return None

    def _short_circuit(self) -> Result:
        self.short_circuited += 1
        assert self.last_failure is not None  # set whenever the breaker opens
        return self.last_failure

    def success(self, duration: float) -> None:
        self.calls += 1
        self.failed_run = 0
        ring = self._ring
        if len(ring) < _RING:
            ring.append(duration)
        else:
            ring[self._ring_at] = duration
            self._ring_at = (self._ring_at + 1) % _RING
        if self.state is not BreakerState.CLOSED:
            self.probing = False
            self._move(BreakerState.CLOSED, "a probe call succeeded")

    def failure(
        self, duration: float, result: Result, *, timed_out: bool, blame: bool = True
    ) -> None:
        """``blame=False``: counted, but not against the breaker (the call never reached the
        plugin: it waited for the sandbox being started for it)."""
        self.calls += 1
        if timed_out:
            self.timeouts += 1
        else:
            self.errors += 1
        self.last_failure = result
        if not self.breaker or not blame:
            if self.probing:
                self.probing = False
            return
        now = trio.current_time()
        settings = self._health.settings
        if self.failed_run == 0 or now - self.first_failure_at > settings.window:
            self.failed_run, self.first_failure_at = 0, now
        self.failed_run += 1
        what = "timed out" if timed_out else "failed"
        if self.state is BreakerState.HALF_OPEN:
            self.probing = False
            self.open_until = now + settings.cooldown
            self._move(BreakerState.OPEN, f"the probe call {what}")
        elif self.state is BreakerState.CLOSED and self.failed_run >= settings.failures:
            self.open_until = now + settings.cooldown
            self._move(
                BreakerState.OPEN,
                f"{self.failed_run} calls in a row {what} within "
                f"{now - self.first_failure_at:.3g}s",
            )

    def probe_abandoned(self) -> None:
        """A probe ended without a verdict (cancelled from outside): let another probe."""
        self.probing = False

    # -- operators' side -------------------------------------------------------------------

    def trip(self, result: Result, reason: str, *, until: float | None = None) -> None:
        # until=math.inf: open until an operator's reset (or a reload of the plugin).
        """Open the breaker now (the watchdog's strikes), for a cooldown or until ``until``."""
        self.last_failure = result
        self.open_until = (
            until if until is not None else trio.current_time() + self._health.settings.cooldown
        )
        self.probing = False
        self._move(BreakerState.OPEN, reason)

    def reset(self, reason: str = "reset by the operator") -> None:
        self.failed_run = 0
        self.probing = False
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, reason)

    def move(self, moved: bool) -> None:
        self.moved = moved
        self.divert = moved or self.state is not BreakerState.CLOSED

    def _move(self, state: BreakerState, reason: str) -> None:
        self.state = state
        self.divert = self.moved or state is not BreakerState.CLOSED
        self._health.changed(BreakerChange(self.plugin, self.hook, state, reason))

    def latency(self, quantile: float) -> float | None:
        if not self._ring:
            return None
        ordered = sorted(self._ring)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    def snapshot(self) -> dict[str, object]:
        return {
            "plugin": self.plugin,
            "hook": self.hook,
            "breaker": self.state.value if self.breaker else "off",
            "calls": self.calls,
            "failures": self.timeouts + self.errors,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "short_circuited": self.short_circuited,
            "sandbox_timeouts": self.sandbox_timeouts,
            "abandoned_threads": len(self.abandoned),
            "abandoned_threads_total": self.abandoned_total,
            "left_running": self.leftovers,
            "moved_to_sandbox": self.moved,
            "p50_ms": _ms(self.latency(0.50)),
            "p95_ms": _ms(self.latency(0.95)),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class PluginHealth:
    """Every (plugin, hook)'s record; the runner health API (``snapshot``, ``reset``)."""

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        on_change: Callable[[BreakerChange], None] | None = None,
    ) -> None:
        self.settings = settings or BreakerSettings()
        self.on_change = on_change
        self._records: dict[tuple[str, str], HookHealth] = {}
        self._tables: dict[int, Mapping[str, tuple[HookHealth, ...]]] = {}
        self._limiters: dict[str, trio.CapacityLimiter] = {}
        # For the watchdog's sampler thread: plugin source file -> plugin name, and thread
        # ident -> (plugin, hook) of threads plugin calls left running.
        self.files: dict[str, str] = {}
        self.thread_owners: dict[int, tuple[str, str | None]] = {}
        self._strikes: dict[str, list[float]] = {}
        # Plugins the strikes moved to the sandbox or tripped (until a reload or reset).
        self.moved_plugins: set[str] = set()
        # Told (plugin, why) at the last strike; the plugin host moves the plugin.
        self.on_strikes: Callable[[str, str], None] | None = None
        # A sandbox the plugin host started for moved plugins (a runner made before it has
        # none), and the event its calls wait on while it starts.
        self.sandbox: object | None = None
        self.sandbox_starting: trio.Event | None = None

    def limiter(self, plugin: str) -> trio.CapacityLimiter:
        """The plugin's own thread limiter for its sync hooks (``threads`` at most at once)."""
        found = self._limiters.get(plugin)
        if found is None:
            found = self._limiters[plugin] = trio.CapacityLimiter(self.settings.threads)
        return found

    def record(self, plugin: str, hook: str) -> HookHealth:
        key = (plugin, hook)
        found = self._records.get(key)
        if found is None:
            found = self._records[key] = HookHealth(self, plugin, hook)
        return found

    def table(self, plugins: PluginSet) -> Mapping[str, tuple[HookHealth, ...]]:
        """Per hook, the records in the order of ``plugins.table[hook]`` (the runner indexes
        both alike). Built once per generation."""
        table = self._tables.get(plugins.generation)
        if table is None:
            for name, path in plugins.sources.items():
                self.files[str(path)] = name
                if name in self.moved_plugins:  # a reload: the new code gets a fresh start
                    self._unmove(name)
            table = self._tables[plugins.generation] = {
                hook: tuple(self._for_entry(entry) for entry in entries)
                for hook, entries in plugins.table.items()
            }
        return table

    def _for_entry(self, entry: HookEntry) -> HookHealth:
        found = self.record(entry.plugin.name, entry.hook)
        found.breaker = entry.breaker
        if not entry.breaker:
            found.reset("breaker switched off for this plugin")
        return found

    def plugin_of_module(self, module: str) -> str | None:
        """The plugin whose file was imported as ``module`` (``trio_mta_plugin_<name>_g<n>``)."""
        if not module.startswith(_MODULE_PREFIX):
            return None
        name, _, generation = module[len(_MODULE_PREFIX) :].rpartition("_g")
        return name if name and generation.isdigit() else None

    def attribute(self, frame: FrameType | None) -> tuple[str, str | None] | None:
        """The plugin (and hook) whose code ``frame`` or a caller of it runs: the innermost
        frame in a plugin's file names the plugin, the innermost ``hook_*`` of it the hook."""
        files = self.files
        plugin: str | None = None
        while frame is not None:
            code = frame.f_code
            name = files.get(code.co_filename)
            if name is not None:
                if plugin is None:
                    plugin = name
                if name == plugin and code.co_name.startswith("hook_"):
                    return plugin, code.co_name[5:]
            frame = frame.f_back
        return (plugin, None) if plugin is not None else None

    # -- the watchdog's strikes --------------------------------------------------------------

    def strike(self, plugin: str, why: str) -> None:
        """The watchdog saw ``plugin`` block the loop (or spin a thread): one strike."""
        settings = self.settings
        if settings.strikes <= 0 or plugin in self.moved_plugins:
            return
        now = trio.current_time()
        times = [t for t in self._strikes.get(plugin, ()) if now - t <= settings.strike_window]
        times.append(now)
        self._strikes[plugin] = times
        log.warning(
            "plugin %s: watchdog strike %d of %d (%s)", plugin, len(times), settings.strikes, why
        )
        if len(times) >= settings.strikes:
            del self._strikes[plugin]
            if self.on_strikes is not None:
                self.on_strikes(plugin, why)

    def move(
        self, plugins: PluginSet, plugin: str, *, sandbox: bool
    ) -> tuple[list[str], list[str]]:
        """Move ``plugin``'s in-process hooks to the sandbox (``sandbox``: one runs), or trip
        those that cannot go there until a reset or reload. Returns (moved, tripped) hooks."""
        moved: list[str] = []
        tripped: list[str] = []
        for hook, entries in plugins.table.items():
            for entry in entries:
                if entry.plugin.name != plugin or entry.sandbox:
                    continue
                record = self.record(plugin, hook)
                if sandbox and hook not in _STAY_IN_PROCESS:
                    record.move(True)
                    if record.open_until == math.inf:  # tripped while a sandbox started
                        record.reset("moved to the sandbox")
                    moved.append(hook)
                else:
                    record.move(False)
                    record.trip(entry.on_timeout, "watchdog strikes", until=math.inf)
                    tripped.append(hook)
        self.moved_plugins.add(plugin)
        return moved, tripped

    def _unmove(self, plugin: str) -> None:
        self.moved_plugins.discard(plugin)
        for record in self._records.values():
            if record.plugin == plugin:
                record.move(False)
                if record.open_until == math.inf:
                    record.reset("the plugin was reloaded")

    def forget(self, generation: int) -> None:
        """Drop a retired generation's table (its records stay: they are per name)."""
        self._tables.pop(generation, None)

    def changed(self, change: BreakerChange) -> None:
        if change.state is BreakerState.OPEN:
            log.warning(
                "plugin %s on %s: circuit breaker open (%s)",
                change.plugin,
                change.hook,
                change.reason,
            )
        else:
            log.info(
                "plugin %s on %s: circuit breaker %s (%s)",
                change.plugin,
                change.hook,
                change.state.value.replace("_", "-"),
                change.reason,
            )
        if self.on_change is not None:
            try:
                self.on_change(change)
            except Exception:
                log.exception("the breaker change callback failed")

    def snapshot(self) -> list[dict[str, object]]:
        """Per (plugin, hook): breaker state, calls, failures, p50/p95 latency (ms), ..."""
        return [r.snapshot() for _, r in sorted(self._records.items())]

    def reset(self, plugin: str, hook: str | None = None) -> list[str]:
        """Close the breakers of ``plugin`` (on ``hook``, or all its hooks); the hooks reset.

        Raises:
            KeyError: no record of that plugin (and hook).
        """
        found = [r for (p, h), r in self._records.items() if p == plugin and hook in (None, h)]
        if not found:
            raise KeyError(f"no plugin {plugin!r}" + (f" on hook {hook!r}" if hook else ""))
        for record in found:
            record.reset()
        if plugin in self.moved_plugins:  # moved or tripped by strikes: a fresh start
            self._unmove(plugin)
        return sorted(r.hook for r in found)

    def records(self) -> Iterable[HookHealth]:
        return self._records.values()
