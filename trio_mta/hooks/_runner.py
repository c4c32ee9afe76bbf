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

The plugin and hook currently running are kept in a context variable so the loop watchdog can
name whoever held the event loop. A hook that blocks and returns without a checkpoint finishes
inside the very step it blocked, so the variable is already reset when the watchdog looks:
``last_hook`` keeps (plugin, hook, finish time) of the task's last call for that case.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Protocol

import attrs
import trio

from ._context import Connection
from ._registry import HookEntry, PluginSet
from ._result import CONT, Action, Result
from ._spec import HOOKS

log = logging.getLogger("trio_mta.plugins")

current_hook: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "current_hook", default=None
)
last_hook: contextvars.ContextVar[tuple[str, str, float] | None] = contextvars.ContextVar(
    "last_hook", default=None
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
    coro: Coroutine[object, object, object], trap: object
) -> Generator[object, object, object]:
    """Drive ``coro`` to its end from a point where it has yielded ``trap``, forwarding every
    yield to Trio and every resumption back to ``coro`` (what ``yield from`` would do)."""
    while True:
        try:
            sent = yield trap
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                trap = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class HookRunner:
    def __init__(
        self,
        plugins: PluginSet,
        *,
        sandbox: Sandbox | None = None,
        observe: Callable[[HookCall], None] | None = None,
    ) -> None:
        self.plugins = plugins
        self.sandbox = sandbox
        self.observe = observe
        # Told when a plugin call starts and stops blocking: the driver watches for the
        # client hanging up only then (it costs a task, so not for calls that never block).
        self.on_block: Callable[[], None] | None = None
        self.on_unblock: Callable[[], None] | None = None

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
        # One cancel scope serves the whole chain; its deadline is armed only while a plugin
        # call is actually blocked (see _invoke). A timeout ends the scope, so the chain goes
        # on, if it does, in a fresh one.
        index = 0
        while index < len(entries):
            with trio.CancelScope() as scope:
                while index < len(entries):
                    entry = entries[index]
                    index += 1
                    if self._skipped(entry, conn):
                        continue
                    result = await self._call(entry, conn, args, scope)
                    if stop and await self._decides(hook, entry, conn, result):
                        return result, entry.plugin.name
            if not scope.cancelled_caught:
                break
            result = self._timed_out(entries[index - 1], conn)
            if stop and await self._decides(hook, entries[index - 1], conn, result):
                return result, entries[index - 1].plugin.name
        return CONT, None

    @staticmethod
    def _skipped(entry: HookEntry, conn: Connection) -> bool:
        # Looked up per entry: a plugin earlier in this very chain may add to the sets.
        name = entry.plugin.name
        txn = conn.transaction
        return bool(
            (conn.skip_plugins and name in conn.skip_plugins)
            or (txn is not None and txn.skip_plugins and name in txn.skip_plugins)
        )

    async def _decides(self, hook: str, entry: HookEntry, conn: Connection, result: Result) -> bool:
        if result.action is Action.CONT:
            return False
        if result.action.is_denial and hook != "deny" and self.has("deny"):
            override, _ = await self.run("deny", conn, Denial(hook, entry.plugin.name, result))
            if override.action is Action.OK:
                return False
        return True

    def _timed_out(self, entry: HookEntry, conn: Connection) -> Result:
        log.warning(
            "conn=%s plugin %s timed out on %s after %.3gs",
            conn.id,
            entry.plugin.name,
            entry.hook,
            entry.timeout,
        )
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
        conn: Connection,
        args: tuple[object, ...],
        scope: trio.CancelScope,
    ) -> Result:
        token = current_hook.set((entry.plugin.name, entry.hook))
        started = time.perf_counter()
        error: str | None = None
        try:
            value = await self._invoke(entry, conn, args, scope)
            if value is None:
                result = CONT
            elif isinstance(value, Result):
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
        finally:
            current_hook.reset(token)
            finished = time.perf_counter()
            last_hook.set((entry.plugin.name, entry.hook, finished))
        if self.observe is not None:
            self.observe(
                HookCall(
                    entry.hook, entry.plugin.name, result.action, finished - started, False, error
                )
            )
        return result

    async def _invoke(
        self,
        entry: HookEntry,
        conn: Connection,
        args: tuple[object, ...],
        scope: trio.CancelScope,
    ) -> object:
        start = trio.current_time()
        if entry.is_async and not entry.sandbox:
            # Step the plugin's coroutine once by hand: most calls finish without blocking,
            # and those need no deadline (a call that never yields cannot be cancelled
            # anyway; the loop watchdog reports it). Only a call that blocks arms one.
            coro: Coroutine[object, object, object] = entry.fn(conn, *args)  # type: ignore[assignment]
            try:
                trap = coro.send(None)
            except StopIteration as stop:
                return stop.value
            scope.deadline = start + entry.timeout
            self._blocking(True)
            try:
                return await _finish(coro, trap)
            finally:
                scope.deadline = math.inf
                self._blocking(False)
        scope.deadline = start + entry.timeout
        self._blocking(True)
        try:
            return await self._invoke_elsewhere(entry, conn, args)
        finally:
            scope.deadline = math.inf
            self._blocking(False)

    def _blocking(self, blocked: bool) -> None:
        callback = self.on_block if blocked else self.on_unblock
        if callback is not None:
            callback()

    async def _invoke_elsewhere(
        self, entry: HookEntry, conn: Connection, args: tuple[object, ...]
    ) -> object:
        if entry.sandbox:
            if self.sandbox is None:
                raise RuntimeError("plugin wants the process sandbox, but none is running")
            return await self.sandbox.call(entry, conn, args)
        return await trio.to_thread.run_sync(
            functools.partial(entry.fn, conn, *args), abandon_on_cancel=True
        )


def is_always_run(hook: str) -> bool:
    return HOOKS[hook].always_run
