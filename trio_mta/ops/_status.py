"""The running daemon's answers on the control socket: ``status``, ``plugins`` and
``config.pending`` (what ``trio-mta status``, ``trio-mta plugins`` and ``trio-mta check
--against-running`` print)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from .. import __version__
from ..config import Config, ConfigError
from ..queue import QueueService
from ..reloader import Reloader
from ..server import BoundListener, PluginHost
from ._plugins import plugin_table


def _absolute(path: Path | None) -> str | None:
    # Resolved once asked: the daemon does not chdir, so this is what it uses.
    return str(path.resolve()) if path is not None else None


def queue_counts(queue: QueueService, now: float) -> dict[str, int]:
    """Messages in the spool by state: active (an attempt runs), held, deferred (waiting for
    a retry), waiting (due or new, waiting for a worker)."""
    active = queue.scheduler.active
    counts = {"messages": 0, "active": 0, "held": 0, "deferred": 0, "waiting": 0}
    for env in queue.envelopes.values():
        counts["messages"] += 1
        if env.id in active:
            counts["active"] += 1
        elif env.held:
            counts["held"] += 1
        elif env.attempts and env.next_attempt > now:
            counts["deferred"] += 1
        else:
            counts["waiting"] += 1
    return counts


@attrs.define
class DaemonStatus:
    """What the daemon knows about itself, for the control socket."""

    config: Config
    host: PluginHost
    reloader: Reloader
    listeners: Sequence[BoundListener] = ()
    queue: QueueService | None = None
    started: float = attrs.field(factory=time.time)

    def handlers(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "plugins": self.plugins,
            "config.pending": self.pending,
        }

    async def status(self, _args: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        plugins = plugin_table(self.host.current, self.host.health.snapshot())
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "uptime": now - self.started,
            "config_dir": _absolute(self.config.config_dir),
            "var_dir": _absolute(self.config.server.var_dir),
            "listeners": [
                {"name": b.name, "address": f"{b.host}:{b.port}", "kind": kind}
                for b, kind in zip(self.listeners, self._kinds(), strict=False)
            ],
            "queue": queue_counts(self.queue, now) if self.queue is not None else None,
            "plugins": plugins["plugins"],
            "generation": plugins["generation"],
            "reloads": self.reloader.reloads,
            "restart_needed": list(self.reloader.restart_needed),
        }

    def _kinds(self) -> list[str]:
        kinds = {listener.name: listener.kind.value for listener in self.config.listeners}
        return [kinds.get(b.name, "mx") for b in self.listeners]

    async def plugins(self, _args: dict[str, Any]) -> dict[str, Any]:
        return plugin_table(self.host.current, self.host.health.snapshot())

    async def pending(self, _args: dict[str, Any]) -> dict[str, Any]:
        """What a SIGHUP would apply now, and what differs but needs a restart.

        Raises:
            ValueError: the configuration on disk is invalid (the message lists why).
        """
        try:
            changes = await self.reloader.pending()
        except ConfigError as exc:  # the operator's file, answered as such (on one line)
            why = "; ".join(str(exc).splitlines())
            raise ValueError(f"the configuration on disk is invalid: {why}") from None
        return {
            "config_dir": _absolute(self.config.config_dir),
            "applied_on_reload": list(changes.applied),
            "restart_needed": list(changes.restart),
            "restart_pending_since_start": list(self.reloader.restart_needed),
        }
