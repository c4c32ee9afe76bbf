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
import time
from collections.abc import Awaitable, Callable
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


def _ignore(call: HookCall) -> None:
    return None


class HookRunner:
    def __init__(
        self,
        plugins: PluginSet,
        *,
        sandbox: Sandbox | None = None,
        observe: Callable[[HookCall], None] = _ignore,
    ) -> None:
        self.plugins = plugins
        self.sandbox = sandbox
        self.observe = observe

    def has(self, hook: str) -> bool:
        return bool(self.plugins.table.get(hook))

    async def run(self, hook: str, conn: Connection, *args: object) -> tuple[Result, str | None]:
        """Run the chain; return the deciding result and the plugin that gave it."""
        entries = self.plugins.table.get(hook)
        if not entries:
            return CONT, None
        txn = conn.transaction
        for entry in entries:
            # Looked up per entry: a plugin earlier in this very chain may add to the sets.
            name = entry.plugin.name
            if (conn.skip_plugins and name in conn.skip_plugins) or (
                txn is not None and txn.skip_plugins and name in txn.skip_plugins
            ):
                continue
            result = await self._call(entry, conn, args)
            if result.action is Action.CONT:
                continue
            if result.action.is_denial and hook != "deny" and self.has("deny"):
                override, _ = await self.run("deny", conn, Denial(hook, entry.plugin.name, result))
                if override.action is Action.OK:
                    continue
            return result, entry.plugin.name
        return CONT, None

    async def run_all(self, hook: str, conn: Connection, *args: object) -> None:
        """Every plugin, results ignored (``always_run`` hooks)."""
        for entry in self.plugins.table.get(hook, ()):
            await self._call(entry, conn, args)

    async def _call(self, entry: HookEntry, conn: Connection, args: tuple[object, ...]) -> Result:
        token = current_hook.set((entry.plugin.name, entry.hook))
        started = time.perf_counter()
        timed_out = False
        error: str | None = None
        try:
            with trio.move_on_after(entry.timeout) as scope:
                value = await self._invoke(entry, conn, args)
            if scope.cancelled_caught:
                timed_out = True
                log.warning(
                    "conn=%s plugin %s timed out on %s after %.3gs",
                    conn.id,
                    entry.plugin.name,
                    entry.hook,
                    entry.timeout,
                )
                result = entry.on_timeout
            elif value is None:
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
        self.observe(
            HookCall(
                entry.hook,
                entry.plugin.name,
                result.action,
                finished - started,
                timed_out,
                error,
            )
        )
        return result

    async def _invoke(self, entry: HookEntry, conn: Connection, args: tuple[object, ...]) -> object:
        if entry.sandbox:
            if self.sandbox is None:
                raise RuntimeError("plugin wants the process sandbox, but none is running")
            return await self.sandbox.call(entry, conn, args)
        if entry.is_async:
            fn: Callable[..., Awaitable[object]] = entry.fn  # type: ignore[assignment]
            return await fn(conn, *args)
        return await trio.to_thread.run_sync(
            functools.partial(entry.fn, conn, *args), abandon_on_cancel=True
        )


def is_always_run(hook: str) -> bool:
    return HOOKS[hook].always_run
