"""Running a hook's plugin chain: Haraka's semantics with Trio's cancellation.

Theory of operation
-------------------
Plugins on a hook run one after another in (priority, configured order). Each call runs in its
own cancel scope with its own deadline: when it passes, the call is *cancelled* (its awaits
raise ``Cancelled`` and its ``finally`` blocks run) and the entry's ``on_timeout`` result
applies, by default DENYSOFT 451 4.3.0. An exception is caught at this boundary only, logged
with its traceback, and answered with ``on_error`` (also DENYSOFT by default: a failing
``data_post`` never fails open). ``Cancelled`` from outside (the client hung up, shutdown)
is never caught: it ends the chain.

The first result other than CONT ends the chain. A denial first runs the ``deny`` meta-hook,
whose OK overrides it (the chain then goes on). ``always_run`` hooks run every plugin and ignore
results. Synchronous hook functions run in a worker thread (abandoned on timeout, as a thread
cannot be cancelled); sandboxed ones go to the process pool, which kills the worker instead.

Cost: a chain whose plugins all have no ``await`` in their hook code (judged from the bytecode
when loading) cannot block, so it runs with no cancel scope and no deadline at all; each call is
one coroutine stepped once. Otherwise one cancel scope serves the chain and a call's deadline is
armed only when it first blocks, counting from the call's start. A call that returns after its
deadline fired (it swallowed ``Cancelled``) has timed out: it is blamed, and the chain goes on
in a fresh scope, so the next plugin never meets a cancelled one.

The task's ``current_runner`` context variable leads the loop watchdog to this runner, whose
``active`` and ``last`` entries name whoever held the event loop (a hook that blocks and returns
without a checkpoint has already finished when the watchdog looks, hence ``last``).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import threading
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Protocol

import attrs
import trio

from ._context import Connection
from ._health import HookHealth, PluginHealth
from ._registry import HookEntry, PluginSet
from ._result import CONT, Action, Result
from ._spec import HOOKS

log = logging.getLogger("trio_mta.plugins")

# CPython's table of live ``threading.Thread``s: its len() is how a call that left a thread
# running is noticed, at ~50 ns (``threading.active_count()`` takes a lock: ~0.75 us here).
_LIVE_THREADS: dict[int, threading.Thread] = threading._active  # type: ignore[attr-defined]

# The runner of the task's session, so the loop watchdog (which sees only the task) can ask
# it which plugin call is running or finished last.
current_runner: contextvars.ContextVar[HookRunner | None] = contextvars.ContextVar(
    "current_runner", default=None
)


@attrs.frozen
class HookCall:
    """One finished plugin call, as reported to observers (events, metrics)."""

    hook: str
    plugin: str
    action: Action
    duration: float
    timed_out: bool = False
    error: str | None = None


@attrs.frozen
class Denial:
    """What the ``deny`` meta-hook is told."""

    hook: str
    plugin: str
    result: Result


class Sandbox(Protocol):
    async def call(self, entry: HookEntry, conn: Connection, args: tuple[object, ...]) -> Result:
        """Run the hook in a worker process; raise on crash; kill the worker if cancelled."""
        ...


@types.coroutine
def _finish(
    coro: Coroutine[object, object, object], trap: object, runner: HookRunner, entry: HookEntry
) -> Generator[object, object, object]:
    """Drive ``coro`` to its end from a point where it has yielded ``trap``, forwarding every
    yield to Trio and every resumption back to ``coro`` (what ``yield from`` would do). Each
    step is timed: one that held the loop too long blames ``entry`` for the loop watchdog."""
    slow = runner.health.settings.slow_call
    while True:
        try:
            sent = yield trap
        except BaseException as exc:
            started = time.perf_counter()
            try:
                trap = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            finally:
                runner.timed_step(entry, started, slow)
        else:
            started = time.perf_counter()
            try:
                trap = coro.send(sent)
            except StopIteration as stop:
                return stop.value
            finally:
                runner.timed_step(entry, started, slow)


class HookRunner:
    def __init__(
        self,
        plugins: PluginSet,
        *,
        sandbox: Sandbox | None = None,
        observe: Callable[[HookCall], None] | None = None,
        health: PluginHealth | None = None,
    ) -> None:
        self.plugins = plugins
        self.sandbox = sandbox
        self.observe = observe
        # Shared by the daemon's runners (breakers, counts, latency); a runner of its own
        # otherwise (tests, tools).
        self.health = health if health is not None else PluginHealth()
        self._records = self.health.table(plugins)
        # Told when a plugin call starts and stops blocking: the driver watches for the
        # client hanging up only then (it costs a task, so not for calls that never block).
        self.on_block: Callable[[], None] | None = None
        self.on_unblock: Callable[[], None] | None = None
        # For the loop watchdog: the call in progress, and the last one with its end time.
        self.active: HookEntry | None = None
        self.active_scope: trio.CancelScope | None = None  # its chain's (the memory guard's)
        self.last: HookEntry | None = None
        self.last_finished = 0.0
        # A call that held the loop longer than the watchdog's threshold, and when it ended.
        self.blamed: HookEntry | None = None
        self.blamed_at = 0.0
        self._awaiting_sandbox = False  # a call waits for a sandbox being started (_timed_out)
        # Per hook: whether some entry may block (then the chain needs a cancel scope).
        self._blocking = plugins.blocking

    def has(self, hook: str) -> bool:
        return bool(self.plugins.table.get(hook))

    async def run(self, hook: str, conn: Connection, *args: object) -> tuple[Result, str | None]:
        """Run the chain; return the deciding result and the plugin that gave it."""
        entries = self.plugins.table.get(hook)
        if not entries:
            return CONT, None
        return await self._chain(hook, entries, conn, args, stop=True)

    async def run_all(self, hook: str, conn: Connection, *args: object) -> None:
        """Every plugin, results ignored (``always_run`` hooks)."""
        entries = self.plugins.table.get(hook)
        if entries:
            await self._chain(hook, entries, conn, args, stop=False)

    async def _chain(
        self,
        hook: str,
        entries: tuple[HookEntry, ...],
        conn: Connection,
        args: tuple[object, ...],
        *,
        stop: bool,
    ) -> tuple[Result, str | None]:
        if current_runner.get() is not self:
            current_runner.set(self)
        records = self._records[hook]
        if not self._blocking[hook] and not self.health.moved_plugins:
            # Every call finishes in one step: no deadline can fire, so no scope is needed,
            # and the calls run in a plain loop.
            index = 0
            while index < len(entries):
                index, decided = self._run_now(entries, records, index, conn, args, stop)
                if decided is None:
                    break
                if await self._decides(hook, entries[index - 1], conn, decided):
                    return decided, entries[index - 1].plugin.name
            return CONT, None
        # One cancel scope serves the whole chain; its deadline is armed only while a plugin
        # call is actually blocked (see _invoke). A timeout ends the scope, so the chain goes
        # on, if it does, in a fresh one.
        index = 0
        while index < len(entries):
            swallowed = False
            with trio.CancelScope() as scope:
                while index < len(entries):
                    entry = entries[index]
                    record = records[index]
                    index += 1
                    if self._skipped(entry, conn):
                        continue
                    if record.divert and (
                        (verdict := self._breaker_says(entry, record)) is not None
                    ):
                        result = verdict
                    else:
                        result = await self._call(entry, record, conn, args, scope)
                    if scope.cancel_called:
                        # The call's deadline fired, yet it returned: the plugin swallowed
                        # its Cancelled. It timed out all the same, and it is the one to
                        # blame (the next plugin would meet the cancelled scope at once).
                        swallowed = True
                        break
                    if (
                        stop
                        and result.action is not Action.CONT
                        and await self._decides(hook, entry, conn, result)
                    ):
                        return result, entry.plugin.name
            if not (swallowed or scope.cancelled_caught):
                break
            result = self._timed_out(entries[index - 1], records[index - 1], conn)
            if stop and await self._decides(hook, entries[index - 1], conn, result):
                return result, entries[index - 1].plugin.name
        return CONT, None

    def _run_now(
        self,
        entries: tuple[HookEntry, ...],
        records: tuple[HookHealth, ...],
        index: int,
        conn: Connection,
        args: tuple[object, ...],
        stop: bool,
    ) -> tuple[int, Result | None]:
        """Calls that cannot suspend, from ``index`` on, until one gives a verdict (when
        ``stop``). Returns the index after it and the verdict, or None at the end."""
        count = len(entries)
        txn = conn.transaction
        observe = self.observe
        perf_counter = time.perf_counter
        cont, result_type = CONT, Result  # locals: this loop is the per-call hot path
        slow, threads = self.health.settings.slow_call, _LIVE_THREADS
        threads_before = len(threads)
        while index < count:
            entry = entries[index]
            record = records[index]
            index += 1
            # Re-read every time: a plugin earlier in this very chain may add to the sets.
            if (conn.skip_plugins and entry.plugin.name in conn.skip_plugins) or (
                txn is not None and txn.skip_plugins and entry.plugin.name in txn.skip_plugins
            ):
                continue
            if record.divert:
                verdict = self._breaker_says(entry, record)
                if verdict is not None:
                    if stop and verdict.action is not Action.CONT:
                        return index, verdict
                    continue
            # No ``active`` mark here: a call that holds the loop has finished by the time the
            # watchdog looks, and ``last`` names it.
            started = perf_counter()
            error: str | None = None
            try:
                coro = entry.fn(conn, *args)
                try:
                    coro.send(None)  # type: ignore[attr-defined]  # a coroutine
                except StopIteration as done:
                    value = done.value
                else:
                    coro.close()  # type: ignore[attr-defined]  # a coroutine
                    raise RuntimeError("a hook judged unable to suspend did suspend")
                if value is None:
                    result = cont
                elif type(value) is result_type:
                    result = value
                else:
                    error = f"returned {type(value).__name__}, not a Result"
                    result = self._bad(entry, conn, value)
            except Exception as exc:
                error = repr(exc)
                log.exception(
                    "conn=%s plugin %s failed on %s", conn.id, entry.plugin.name, entry.hook
                )
                result = entry.on_error
            self.last = entry
            self.last_finished = finished = perf_counter()
            if finished - started > slow:
                self.blamed, self.blamed_at = entry, finished  # for the loop watchdog
            if len(threads) != threads_before:
                threads_before = self._left_running(entry, record, threads_before)
            if error is None:
                record.success(finished - started)
            else:
                record.failure(finished - started, result, timed_out=False)
            if observe is not None:
                observe(
                    HookCall(
                        entry.hook,
                        entry.plugin.name,
                        result.action,
                        finished - started,
                        False,
                        error,
                    )
                )
            if stop and result is not cont and result.action is not Action.CONT:
                return index, result
        return index, None

    def _left_running(self, entry: HookEntry, record: HookHealth, known: int) -> int:
        """The number of threads changed during ``entry``'s call: name the new ones whose
        code is a plugin's (by their target's module, else the call's plugin), remember
        their owner for the watchdog's sampler. Returns the count now."""
        owners = self.health.thread_owners
        for thread in threading.enumerate():
            ident = thread.ident
            if ident is None or ident in owners or isinstance(thread, threading._DummyThread):
                continue
            # What it runs: the function given to Thread(), else its class's run().
            target = getattr(thread, "_target", None) or thread.run
            module = getattr(target, "__module__", None) or ""
            plugin = self.health.plugin_of_module(module)
            if plugin is None:
                if module.startswith(("trio", "threading", "concurrent", "asyncio")):
                    continue  # the server's and libraries' own workers
                plugin = entry.plugin.name  # started by this call, with some library's code
            owners[ident] = (plugin, entry.hook if plugin == entry.plugin.name else None)
            if plugin == entry.plugin.name:
                record.leftovers += 1
            log.warning(
                "plugin %s left a thread running after its %s call: %s (target %s.%s)",
                plugin,
                entry.hook,
                thread.name,
                module,
                getattr(target, "__qualname__", "?"),
            )
        return len(_LIVE_THREADS)

    @staticmethod
    def _bad(entry: HookEntry, conn: Connection, value: object) -> Result:
        log.error(
            "conn=%s plugin %s on %s returned %s, not a Result",
            conn.id,
            entry.plugin.name,
            entry.hook,
            type(value).__name__,
        )
        return entry.on_error

    @staticmethod
    def _skipped(entry: HookEntry, conn: Connection) -> bool:
        # Looked up per entry: a plugin earlier in this very chain may add to the sets.
        if conn.skip_plugins and entry.plugin.name in conn.skip_plugins:
            return True
        txn = conn.transaction
        return bool(txn is not None and txn.skip_plugins and entry.plugin.name in txn.skip_plugins)

    async def _decides(self, hook: str, entry: HookEntry, conn: Connection, result: Result) -> bool:
        if result.action is Action.CONT:
            return False
        if result.action.is_denial and hook != "deny" and self.has("deny"):
            override, _ = await self.run("deny", conn, Denial(hook, entry.plugin.name, result))
            if override.action is Action.OK:
                return False
        return True

    def _breaker_says(self, entry: HookEntry, record: HookHealth) -> Result | None:
        """An open breaker's answer (reported like a call), or None: the call runs."""
        verdict = record.admit()
        if verdict is not None and self.observe is not None:
            self.observe(
                HookCall(entry.hook, entry.plugin.name, verdict.action, 0.0, False, "breaker open")
            )
        return verdict

    def _timed_out(self, entry: HookEntry, record: HookHealth, conn: Connection) -> Result:
        log.warning(
            "conn=%s plugin %s timed out on %s after %.3gs%s",
            conn.id,
            entry.plugin.name,
            entry.hook,
            entry.timeout,
            # What the timeout cost beyond the call: a killed worker, or a thread left running.
            " (sandboxed: cancelled in its worker, which is killed if it cannot stop)"
            if entry.sandbox
            else (" (its thread abandoned, still running)" if not entry.is_async else ""),
        )
        if entry.sandbox or record.moved:
            record.sandbox_timeouts += 1
        # A call that timed out waiting for the sandbox started for a moved plugin never ran
        # the plugin: not the plugin's failure (the breaker would refuse its healthy calls).
        record.failure(
            entry.timeout, entry.on_timeout, timed_out=True, blame=not self._awaiting_sandbox
        )
        self._awaiting_sandbox = False
        if self.observe is not None:
            self.observe(
                HookCall(
                    entry.hook, entry.plugin.name, entry.on_timeout.action, entry.timeout, True
                )
            )
        return entry.on_timeout

    async def _call(
        self,
        entry: HookEntry,
        record: HookHealth,
        conn: Connection,
        args: tuple[object, ...],
        scope: trio.CancelScope,
    ) -> Result:
        observe = self.observe
        started = time.perf_counter()
        error: str | None = None
        self.active = entry
        self.active_scope = scope
        threads_before = len(_LIVE_THREADS)
        try:
            value = await self._invoke(entry, record, conn, args, scope)
            if value is None:
                result = CONT
            elif type(value) is Result:
                result = value
            else:
                error = f"returned {type(value).__name__}, not a Result"
                log.error(
                    "conn=%s plugin %s on %s %s", conn.id, entry.plugin.name, entry.hook, error
                )
                result = entry.on_error
        except Exception as exc:
            error = repr(exc)
            log.exception("conn=%s plugin %s failed on %s", conn.id, entry.plugin.name, entry.hook)
            result = entry.on_error
        except BaseException:
            # Cancelled: our deadline (``_timed_out`` records it) or from outside (no verdict).
            if record.probing:
                record.probe_abandoned()
            raise
        finally:
            self.active = None
            self.last = entry
            self.last_finished = finished = time.perf_counter()
            if len(_LIVE_THREADS) != threads_before:
                self._left_running(entry, record, threads_before)
        if scope.cancel_called:
            # It returned after its deadline fired: a timeout, recorded by ``_timed_out``.
            if record.probing:
                record.probe_abandoned()
            return result
        if error is None:
            record.success(finished - started)
        else:
            record.failure(finished - started, result, timed_out=False)
        if observe is not None:
            observe(
                HookCall(
                    entry.hook, entry.plugin.name, result.action, finished - started, False, error
                )
            )
        return result

    async def _invoke(
        self,
        entry: HookEntry,
        record: HookHealth,
        conn: Connection,
        args: tuple[object, ...],
        scope: trio.CancelScope,
    ) -> object:
        sandboxed = entry.sandbox or record.moved
        if entry.is_async and not sandboxed:
            # Step the plugin's coroutine once by hand: most calls finish without blocking,
            # and those need no deadline (a call that never yields cannot be cancelled
            # anyway; the loop watchdog reports it). Only a call that blocks arms one, from
            # the moment it first blocks.
            # The deadline counts from the call's start (docs/plugins.md): work done before
            # the first await is part of the call's time.
            started = trio.current_time()
            step_started = time.perf_counter()
            coro: Coroutine[object, object, object] = entry.fn(conn, *args)  # type: ignore[assignment]
            try:
                trap = coro.send(None)
            except StopIteration as stop:
                return stop.value
            finally:
                self.timed_step(entry, step_started, self.health.settings.slow_call)
            scope.deadline = started + entry.timeout
            self._blocking_changed(True)
            try:
                return await _finish(coro, trap, self, entry)
            finally:
                scope.deadline = math.inf
                self._blocking_changed(False)
        scope.deadline = trio.current_time() + entry.timeout
        self._blocking_changed(True)
        try:
            return await self._invoke_elsewhere(entry, record, conn, args, sandboxed=sandboxed)
        finally:
            scope.deadline = math.inf
            self._blocking_changed(False)

    def timed_step(self, entry: HookEntry, started: float, slow: float) -> None:
        now = time.perf_counter()
        if now - started > slow:
            self.blamed, self.blamed_at = entry, now

    def _blocking_changed(self, blocked: bool) -> None:
        callback = self.on_block if blocked else self.on_unblock
        if callback is not None:
            callback()

    async def _invoke_elsewhere(
        self,
        entry: HookEntry,
        record: HookHealth,
        conn: Connection,
        args: tuple[object, ...],
        *,
        sandboxed: bool,
    ) -> object:
        if sandboxed:
            if self.sandbox is None:
                await self._find_sandbox()
            if self.sandbox is None:
                raise RuntimeError("plugin wants the process sandbox, but none is running")
            return await self.sandbox.call(entry, conn, args)
        # The plugin's own thread limiter: its abandoned threads cannot take the slots of
        # other plugins' calls, nor of the blocking DNS helper (Trio's default limiter).
        # Its slot is taken here, so that a call cancelled while waiting for one is told
        # from a call whose thread runs on (abandoned: it keeps the slot until it ends).
        call = ThreadCall(functools.partial(entry.fn, conn, *args))
        limiter = self.health.limiter(entry.plugin.name)
        await limiter.acquire_on_behalf_of(call)
        held = _Held(limiter, call)
        try:
            return await trio.to_thread.run_sync(
                call,
                abandon_on_cancel=True,
                limiter=held,  # type: ignore[arg-type]  # duck-typed, as documented
            )
        except trio.Cancelled:
            if held.acquired:
                call.abandon(record)
            else:  # cancelled before the thread started
                limiter.release_on_behalf_of(call)
            raise

    async def _find_sandbox(self) -> None:
        """A plugin moved to the sandbox by the watchdog, with no sandbox when this runner
        was made: the one started for it (waiting for its start, within the deadline)."""
        health = self.health
        if health.sandbox is None and health.sandbox_starting is not None:
            self._awaiting_sandbox = True
            await health.sandbox_starting.wait()
            self._awaiting_sandbox = False
        self.sandbox = health.sandbox  # type: ignore[assignment]  # set by the plugin host


class _Held:
    """A slot already taken, handed to ``to_thread.run_sync``, which releases it when the
    thread ends (also an abandoned one). Trio starts the thread right after ``acquire``."""

    def __init__(self, limiter: trio.CapacityLimiter, owner: object) -> None:
        self.limiter = limiter
        self.owner = owner
        self.acquired = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        self.acquired = True

    def release_on_behalf_of(self, borrower: object) -> None:
        self.limiter.release_on_behalf_of(self.owner)


class ThreadCall:
    """A sync hook call run in a thread; an abandoned one is counted until it really ends."""

    __slots__ = ("_abandoned_in", "_fn", "finished")

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn = fn
        self.finished = False
        self._abandoned_in: set[object] | None = None

    def __call__(self) -> object:
        try:
            return self._fn()
        finally:
            self.finished = True
            left = self._abandoned_in
            if left is not None:
                left.discard(self)  # one atomic operation under the GIL

    def abandon(self, record: HookHealth) -> None:
        """From the loop thread, on cancel. Either order of the two threads' steps ends with
        the call out of the set once its thread has finished."""
        if self._done():
            return
        record.abandoned.add(self)
        record.abandoned_total += 1
        self._abandoned_in = record.abandoned
        if self._done():  # the thread may have ended meanwhile
            record.abandoned.discard(self)

    def _done(self) -> bool:
        return self.finished


def is_always_run(hook: str) -> bool:
    return HOOKS[hook].always_run
