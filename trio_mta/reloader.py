"""SIGHUP: re-read the configuration and the plugins, and say exactly what changed.

Every setting that differs from the running daemon's is named: those a reload puts in force
(the plugin set and settings, certificates, the log level) and those that need a restart
(listeners, limits, timeouts, the queue...), in a log line and a ``config.reload`` event, and on
demand (``trio-mta check --against-running``) without reloading anything.

The slow part (parsing TOML, executing every plugin file and its ``setup()``, building the TLS
context: about 110 ms with the shipped conf, most of it auth_flat_file's scrypt calibration)
runs in a worker thread, so connections keep being served meanwhile; only the swap of the
plugin generation (``PluginHost.replace``, which runs the plugins' async ``startup()``) happens
on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import attrs
import trio

from .config import Config, ConfigChanges, ConfigError, compare_configs, load_config
from .events import ConfigReloaded, EventBus
from .hooks import PluginLoadError, PluginSet
from .server import PluginHost, TlsProvider, auth_warnings

log = logging.getLogger("trio_mta")


def _needs_sandbox(plugins: PluginSet) -> bool:
    return any(e.sandbox for entries in plugins.table.values() for e in entries)


@attrs.define
class Reloader:
    """The daemon's configuration over its life: what it started with, what the last reload
    put in force, and what is waiting for a restart."""

    started: Config  # restart-needed settings stay these until the process ends
    host: PluginHost
    load_plugins: Callable[[Config], PluginSet]
    tls: TlsProvider | None = None
    bus: EventBus | None = None
    # Fields the command line set (--listen, --var-dir): the file's values are not in force.
    pinned: Collection[str] = frozenset()
    current: Config = attrs.field(init=False)  # the last configuration put in force
    restart_needed: tuple[str, ...] = attrs.field(init=False, default=())
    reloads: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self.current = self.started

    def _read(self) -> Config:
        """The configuration file as it is now (in a worker thread).

        Raises:
            ConfigError: naming every problem.
        """
        return load_config(self.started.config_dir)

    def _effective(self, new: Config) -> Config:
        # The plugins keep the running state directory: it may come from the command line
        # (--var-dir), which the file knows nothing about.
        return attrs.evolve(
            new, server=attrs.evolve(new.server, var_dir=self.started.server.var_dir)
        )

    def _prepare(self) -> tuple[Config, PluginSet]:
        """Everything slow of a reload, off the event loop: parse, certificates, plugins.

        Raises:
            ConfigError, PluginLoadError: the reload is refused.
        """
        new = self._read()
        effective = self._effective(new)
        # Certificates (checked by the loader) are renewed even if a plugin then fails.
        if self.tls is not None:
            self.tls.reload(effective)
        return new, self.load_plugins(effective)

    def changes(self, new: Config) -> ConfigChanges:
        """Applied: what differs from the last configuration put in force. Restart: what differs
        from the configuration the process started with (reloads never change those)."""
        applied = compare_configs(self.current, new, pinned=self.pinned).applied
        restart = compare_configs(self.started, new, pinned=self.pinned).restart
        return ConfigChanges(applied, restart)

    async def pending(self) -> ConfigChanges:
        """What a reload would change now, and what would still need a restart (nothing is
        loaded or applied: ``trio-mta check --against-running``).

        Raises:
            ConfigError: the file as it is now is invalid.
        """
        new = await trio.to_thread.run_sync(self._read)
        return self.changes(new)

    async def reload(self) -> ConfigReloaded:
        """Re-read and apply; a broken new configuration or plugin is reported and the running
        set stays. Returns the event it published."""
        try:
            new, plugins = await trio.to_thread.run_sync(self._prepare)
        except (ConfigError, PluginLoadError) as exc:
            log.error("reload refused, keeping the running configuration and plugins:\n%s", exc)
            return self._publish(False, None, ConfigChanges(), str(exc))
        changes = self.changes(new)
        # Even when refused below, the file now differs from the running daemon this way.
        self.restart_needed = changes.restart
        refused = ConfigChanges((), changes.restart)
        if _needs_sandbox(plugins) and self.host.sandbox is None:
            log.error("reload refused: a sandboxed plugin needs a restart to start the sandbox")
            return self._publish(False, None, refused, "a sandboxed plugin needs a restart")
        try:
            await self.host.replace(plugins)
        except Exception as exc:  # a plugin's own start-up: the plugin boundary
            log.exception("reload refused: a plugin failed to start; keeping the running plugins")
            await plugins.shutdown()
            return self._publish(False, None, refused, f"a plugin failed to start: {exc}")
        if new.log.level != self.current.log.level:
            logging.getLogger().setLevel(new.log.level)
        self.current = new
        self.reloads += 1
        log.info(
            "reload: plugin generation %d in service; changed and applied: %s",
            plugins.generation,
            ", ".join(changes.applied) or "nothing",
        )
        # The listeners are the running ones (they need a restart); the plugins are new.
        for line in auth_warnings(self.started, plugins):
            log.warning("%s", line)
        return self._publish(True, plugins.generation, changes, None)

    def _publish(
        self, ok: bool, generation: int | None, changes: ConfigChanges, error: str | None
    ) -> ConfigReloaded:
        if changes.restart:
            log.warning(
                "reload: changed settings that need a restart and are NOT in force: %s",
                ", ".join(changes.restart),
            )
        event = ConfigReloaded(
            ts=self.bus.clock() if self.bus is not None else 0.0,
            ok=ok,
            generation=generation,
            applied=changes.applied,
            restart_needed=changes.restart,
            error=error,
        )
        if self.bus is not None:
            self.bus.publish(event)  # rare: always published
        return event
