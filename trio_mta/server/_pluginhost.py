"""The live plugin generation, and swapping it on reload without disturbing live sessions.

Each connection gets a ``HookHandler`` bound to the generation current when it arrived and
keeps it to the end. A reload starts the new generation (its ``startup`` finishes first), makes
it current, and shuts the old one down once its last connection has ended.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from ..hooks import HookCall, HookRunner, OutboundQueue, PluginHealth, PluginSet, Sandbox
from ._hooked import HookHandler
from ._session import Session

log = logging.getLogger("trio_mta.plugins")


class _CountedHandler(HookHandler):
    def __init__(
        self,
        runner: HookRunner,
        spill_dir: Path | None,
        done: Callable[[], None],
        queue: OutboundQueue | None = None,
    ):
        super().__init__(runner, spill_dir=spill_dir, queue=queue)
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
    ) -> None:
        self.current = plugins
        # Breakers, counts and latency of every plugin hook, shared by all sessions' runners
        # and the queue's (the runner health API).
        self.health = health if health is not None else PluginHealth()
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
            runner, self.spill_dir, lambda: self._release(generation, runner), self.queue
        )

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

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Shut retired generations down as their last connection ends; at exit, all of them."""
        task_status.started()
        try:
            async for retired in self._recv:
                await retired.shutdown()
                log.info("plugin generation %d shut down", retired.generation)
        finally:
            with trio.move_on_after(5, shield=True):
                for plugins in (*self._retired.values(), self.current):
                    await plugins.shutdown()
