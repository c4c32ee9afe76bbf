"""The live plugin generation, and swapping it on reload without disturbing live sessions.

Each connection gets a ``HookHandler`` bound to the generation current when it arrived and
keeps it to the end. A reload starts the new generation (its ``startup`` finishes first), makes
it current, and shuts the old one down once its last connection has ended.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from ..hooks import HookCall, HookRunner, OutboundQueue, PluginHealth, PluginSet, Sandbox
from ._hooked import HookHandler
from ._memguard import MemoryGuard
from ._session import Session

log = logging.getLogger("trio_mta.plugins")


class SandboxService(Sandbox, Protocol):
    """A sandbox that PluginHost can start itself (``ProcessSandbox``)."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...


class _CountedHandler(HookHandler):
    def __init__(
        self,
        runner: HookRunner,
        spill_dir: Path | None,
        done: Callable[[], None],
        queue: OutboundQueue | None = None,
        guard: MemoryGuard | None = None,
    ):
        super().__init__(runner, spill_dir=spill_dir, queue=queue, guard=guard)
        self._done = done

    async def disconnect(self, conn: Session) -> None:
        try:
            await super().disconnect(conn)
        finally:
            self._done()


class PluginHost:
    def __init__(
        self,
        plugins: PluginSet,
        *,
        sandbox: Sandbox | None = None,
        spill_dir: Path | None = None,
        observe: Callable[[HookCall], None] | None = None,
        queue: OutboundQueue | None = None,
        health: PluginHealth | None = None,
        sandbox_factory: Callable[[], SandboxService] | None = None,
        on_moved: Callable[[str, tuple[str, ...], str, str], None] | None = None,
    ) -> None:
        self.current = plugins
        # Breakers, counts and latency of every plugin hook, shared by all sessions' runners
        # and the queue's (the runner health API).
        self.health = health if health is not None else PluginHealth()
        self.health.on_strikes = self._struck
        # Starts a sandbox when the watchdog's strikes move a plugin there and none runs.
        self.sandbox_factory = sandbox_factory
        self.on_moved = on_moved  # (plugin, hooks, why, "sandbox" | "tripped"): the event
        self._nursery: trio.Nursery | None = None
        self.memory_guard: MemoryGuard | None = None  # set by the app with [limits] on
        self.queue = queue  # the built-in outbound queue, handed to every handler
        self.sandbox = sandbox
        self.spill_dir = spill_dir
        self.observe = observe
        # The live sessions' runners (a plain set: each is removed when its session ends).
        self._runners: set[HookRunner] = set()
        self._users: dict[int, int] = {}
        self._retired: dict[int, PluginSet] = {}
        self._send, self._recv = trio.open_memory_channel[PluginSet](16)

    def handler(self) -> HookHandler:
        """A handler for a new connection, on the current generation."""
        plugins = self.current
        generation = plugins.generation
        self._users[generation] = self._users.get(generation, 0) + 1
        runner = HookRunner(plugins, sandbox=self.sandbox, observe=self.observe, health=self.health)
        self._runners.add(runner)
        return _CountedHandler(
            runner,
            self.spill_dir,
            lambda: self._release(generation, runner),
            self.queue,
            self.memory_guard,
        )

    def running(self) -> list[tuple[str, str, trio.CancelScope | None]]:
        """(plugin, hook, cancel scope) of every session's plugin call in progress."""
        return [
            (r.active.plugin.name, r.active.hook, r.active_scope)
            for r in self._runners
            if r.active is not None
        ]

    def set_observe(self, observe: Callable[[HookCall], None] | None) -> None:
        """Report plugin calls to ``observe`` from now on, live sessions included (None: stop;
        the runner then skips timing its calls). Flipped when the first watcher arrives and
        when the last one leaves."""
        self.observe = observe
        for runner in list(self._runners):
            runner.observe = observe

    def _release(self, generation: int, runner: HookRunner) -> None:
        self._runners.discard(runner)
        left = self._users[generation] - 1
        self._users[generation] = left
        if left == 0 and generation in self._retired:
            self.health.forget(generation)
            self._send.send_nowait(self._retired.pop(generation))

    async def replace(self, plugins: PluginSet) -> None:
        """Start ``plugins`` and make them current; the old set retires when unused."""
        await plugins.startup()
        old, self.current = self.current, plugins
        if self._users.get(old.generation, 0) == 0:
            await old.shutdown()
        else:
            self._retired[old.generation] = old

    def commands(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        """Control-socket commands: ``breaker.reset`` (``plugin``, optional ``hook``) closes
        breakers (and undoes a watchdog move); ``plugins.health`` is the health snapshot."""

        async def reset(args: dict[str, Any]) -> Any:
            plugin, hook = args.get("plugin"), args.get("hook")
            if not isinstance(plugin, str) or not (hook is None or isinstance(hook, str)):
                raise ValueError("breaker.reset needs plugin (a name) and optionally hook")
            return {"plugin": plugin, "hooks": self.health.reset(plugin, hook)}

        async def health(args: dict[str, Any]) -> Any:
            return self.health.snapshot()

        return {"breaker.reset": reset, "plugins.health": health}

    def _struck(self, plugin: str, why: str) -> None:
        """The watchdog's last strike against ``plugin``: its hooks go to the sandbox. If none
        runs, one is started and their calls wait for it (within their deadlines): running
        them in-process meanwhile would block the loop again, tripping them would refuse the
        healthy ones. Without a way to start one, they are tripped."""
        health = self.health
        can_start = self.sandbox_factory is not None and self._nursery is not None
        if self.sandbox is None and can_start and health.sandbox_starting is None:
            health.sandbox_starting = trio.Event()
            assert self._nursery is not None
            self._nursery.start_soon(self._start_sandbox)
        moved, tripped = health.move(
            self.current, plugin, sandbox=self.sandbox is not None or can_start
        )
        self._report(plugin, moved, tripped, why)

    def _report(self, plugin: str, moved: list[str], tripped: list[str], why: str) -> None:
        if moved:
            log.warning(
                "plugin %s moved to the sandbox for %s after its watchdog strikes (last: %s)",
                plugin,
                ", ".join(moved),
                why,
            )
        if tripped:
            log.warning(
                "plugin %s tripped on %s after its watchdog strikes (last: %s); "
                "calls get its on_timeout result until a reload or breaker.reset",
                plugin,
                ", ".join(tripped),
                why,
            )
        if self.on_moved is not None:
            for hooks, to in ((moved, "sandbox"), (tripped, "tripped")):
                if hooks:
                    self.on_moved(plugin, tuple(hooks), why, to)

    async def _start_sandbox(self) -> None:
        assert self.sandbox_factory is not None
        assert self._nursery is not None
        health = self.health
        sandbox = self.sandbox_factory()
        try:
            await self._nursery.start(sandbox.serve)
        except Exception:
            log.exception("could not start the sandbox: the plugins moved there are tripped")
            for plugin in list(health.moved_plugins):
                moved, tripped = health.move(self.current, plugin, sandbox=False)
                self._report(plugin, moved, tripped, "the sandbox did not start")
        else:
            self.sandbox = health.sandbox = sandbox
            for runner in self._runners:
                runner.sandbox = sandbox
        finally:
            assert health.sandbox_starting is not None
            health.sandbox_starting.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Shut retired generations down as their last connection ends; at exit, all of them.
        Also the home of a sandbox started for a plugin the watchdog moved."""
        try:
            async with trio.open_nursery() as self._nursery:
                task_status.started()
                async for retired in self._recv:
                    await retired.shutdown()
                    log.info("plugin generation %d shut down", retired.generation)
        finally:
            with trio.move_on_after(5, shield=True):
                for plugins in (*self._retired.values(), self.current):
                    await plugins.shutdown()
