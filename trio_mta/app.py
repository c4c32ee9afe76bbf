"""The composition root: builds the parts from the config, runs them, handles signals.

``run`` is ``master(8)`` in miniature: it starts the SMTP server, says "ready" only once every
listener is bound, and on SIGTERM/SIGINT asks the server to stop accepting and drain. SIGHUP
re-reads the configuration; an invalid new one is reported and the running one stays.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from .config import Config, ConfigError, load_config
from .hooks import PluginEnv, PluginLoadError, PluginSet, ProcessSandbox, load_plugins, watch_loop
from .server import BoundListener, PluginHost, SMTPServer, TlsProvider

log = logging.getLogger("trio_mta")


def plugin_env(config: Config) -> PluginEnv:
    return PluginEnv(
        hostname=config.server.hostname,
        var_dir=config.server.var_dir,
        local_domains=config.server.local_domains,
        config_dir=config.config_dir,
    )


def load_plugin_set(config: Config) -> PluginSet:
    """The plugins ``config`` names, loaded and configured (not started).

    Raises:
        PluginLoadError: naming the plugin that is missing, broken or misconfigured.
    """
    base = config.config_dir or Path.cwd()
    return load_plugins(
        config.plugins.order,
        directories=[base / d for d in config.plugins.directories],
        configs=config.plugin_configs,
        default_timeout=config.plugins.timeout,
        env=plugin_env(config),
    )


def _needs_sandbox(plugins: PluginSet) -> bool:
    return any(e.sandbox for entries in plugins.table.values() for e in entries)


def setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log.level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


async def run(
    config: Config,
    *,
    on_ready: Callable[[list[BoundListener]], None] | None = None,
    task_status: trio.TaskStatus[list[BoundListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM/SIGINT, then drain and return.

    Raises:
        PluginLoadError: a configured plugin cannot be loaded (nothing is listening yet).
        TlsSetupError: a certificate cannot be loaded or generated (nothing is listening yet).
    """
    config.server.var_dir.mkdir(parents=True, exist_ok=True)
    spill_dir = config.server.var_dir / "tmp"
    spill_dir.mkdir(exist_ok=True)
    plugins = load_plugin_set(config)
    tls = TlsProvider.from_config(config)  # may generate the first-run certificate
    with (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals,
        watch_loop(config.plugins.watchdog_ms / 1000),
    ):
        async with trio.open_nursery() as services:
            sandbox = None
            if _needs_sandbox(plugins):
                sandbox = ProcessSandbox.from_config(config.plugins)
                await services.start(sandbox.serve)
            host = PluginHost(plugins, sandbox=sandbox, spill_dir=spill_dir)
            # Plugins finish their async start-up before the first client is accepted.
            await plugins.startup()
            await services.start(host.serve)
            server = SMTPServer(config, host.handler, tls=tls)
            bound: list[BoundListener] = await services.start(server.serve)
            for b in bound:
                log.info("listening name=%s address=%s:%d", b.name, b.host, b.port)
            if on_ready is not None:
                on_ready(bound)
            task_status.started(bound)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    await _reload(config, host, tls)
                    continue
                log.info("signal %s: shutting down (drain %.0fs)", signum, config.timeouts.drain)
                server.request_shutdown()
                break
            await server.stopped.wait()
            services.cancel_scope.cancel()
    log.info("stopped")


async def _reload(config: Config, host: PluginHost, tls: TlsProvider | None = None) -> None:
    """Re-read the configuration and re-import the plugins. Listener, limit, timeout and
    state-directory changes need a restart; the plugin set and plugin settings change at once.
    A broken new configuration or plugin is reported and the running set stays."""
    try:
        new_config = load_config(config.config_dir)
        # The plugins keep the running state directory: it may come from the command line
        # (--var-dir), which the file knows nothing about.
        server = attrs.evolve(new_config.server, var_dir=config.server.var_dir)
        # Certificates (checked by the loader) are renewed even if a plugin then fails.
        if tls is not None:
            tls.reload(attrs.evolve(new_config, server=server))
        plugins = load_plugin_set(attrs.evolve(new_config, server=server))
    except (ConfigError, PluginLoadError) as exc:
        log.error("reload refused, keeping the running configuration and plugins:\n%s", exc)
        return
    if _needs_sandbox(plugins) and host.sandbox is None:
        log.error("reload refused: a sandboxed plugin needs a restart to start the sandbox")
        return
    try:
        await host.replace(plugins)
    except Exception:  # a plugin's own start-up: the plugin boundary, not the daemon's end
        log.exception("reload refused: a plugin failed to start; keeping the running plugins")
        await plugins.shutdown()
        return
    log.info("reload: plugin generation %d in service", plugins.generation)
