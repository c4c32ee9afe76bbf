"""The composition root: builds the parts from the config, runs them, handles signals.

``run`` is ``master(8)`` in miniature: it starts the SMTP server, says "ready" only once every
listener is bound, and on SIGTERM/SIGINT asks the server to stop accepting and drain. SIGHUP
re-reads the configuration; an invalid new one is reported and the running one stays.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio

from . import logs
from .admin import AdminServer, Metrics
from .config import Config
from .control import ControlServer, VarDirLock, socket_path
from .events import EventBus
from .hooks import (
    BreakerSettings,
    HookRunner,
    PluginEnv,
    PluginHealth,
    PluginLoadError,
    PluginSet,
    ProcessSandbox,
    load_plugins,
    watch_loop,
)
from .ops import DaemonStatus, bind_and_drop_privileges, notified_reload, sd_notify
from .queue import QueueService
from .reloader import Reloader
from .resolver import DNSResolver, parse_nameserver
from .server import (
    BoundListener,
    MemoryGuard,
    PluginHost,
    SMTPServer,
    TlsProvider,
    auth_warnings,
    breaker_reporter,
    moved_reporter,
    plugin_observer,
    slow_step_reporter,
)

log = logging.getLogger("trio_mta")


def plugin_env(config: Config) -> PluginEnv:
    return PluginEnv(
        hostname=config.server.hostname,
        var_dir=config.server.var_dir,
        local_domains=config.server.local_domains,
        config_dir=config.config_dir,
        resolver=DNSResolver([parse_nameserver(n) for n in config.resolver.nameservers] or None),
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
        lifecycle_timeout=config.plugins.lifecycle_timeout,
        env=plugin_env(config),
    )


def make_queue(config: Config, host: PluginHost, bus: EventBus | None = None) -> QueueService:
    """The outbound queue; its hooks run on the plugin generation current at each attempt.

    Its delivery events go on ``bus`` while a watcher is subscribed, and always with
    ``[admin]`` on (the metrics count them, and replay keeps them: they are rare)."""
    nameservers = [parse_nameserver(n) for n in config.resolver.nameservers]
    admin = config.admin.enabled
    return QueueService(
        config,
        resolver=DNSResolver(nameservers or None),
        runner=lambda: HookRunner(host.current, sandbox=host.sandbox, health=host.health),
        pid_file=True,
        publish=bus.publish if bus is not None else None,
        wanted=(lambda: True) if admin else (lambda: bus is not None and bus.active),
    )


def plugin_health(config: Config, bus: EventBus) -> PluginHealth:
    """Breakers, counts and watchdog strikes of every plugin hook, for the daemon's life
    (reloads keep them)."""
    p = config.plugins
    settings = BreakerSettings(
        p.breaker_failures,
        p.breaker_window,
        p.breaker_cooldown,
        threads=p.plugin_threads,
        strikes=p.watchdog_strikes,
        strike_window=p.watchdog_window,
        slow_call=p.watchdog_ms / 1000,
    )
    return PluginHealth(settings, on_change=breaker_reporter(bus))


def make_bus(config: Config) -> EventBus:
    admin = config.admin
    return EventBus(retain=admin.replay if admin.enabled else 0, buffer=admin.buffer)


def _follow_watchers(config: Config, bus: EventBus, host: PluginHost) -> None:
    """Plugin calls are timed and published only while a watcher wants them (or with [admin]
    plugin_metrics): otherwise the runner skips that work."""
    observer = plugin_observer(bus)

    def follow(watched: bool) -> None:
        host.set_observe(observer if watched or config.admin.plugin_metrics else None)

    bus.on_detail(follow)
    follow(bus.detail)


GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


def _tune_gc() -> None:
    """Once everything long-lived exists (config, plugins, modules): freeze it out of the
    cyclic collector's sight, and collect young objects less often. Almost everything a
    session allocates is freed by reference counting; the collector only hunts cycles, and
    with the default threshold it ran every few connections and walked the whole heap often.
    Measured with scripts/bench at c=100, a connection per message: 386-405 -> 366-370 us of
    CPU per message; reused connections unchanged."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def _needs_sandbox(plugins: PluginSet) -> bool:
    return any(e.sandbox for entries in plugins.table.values() for e in entries)


async def _start_plugins(plugins: PluginSet, signals: AsyncIterator[int]) -> bool:
    """The plugins' ``startup()`` (each under its deadline), obeying SIGTERM/SIGINT meanwhile:
    a start-up that hangs must not leave the daemon deaf. False: a signal stopped it.

    Raises:
        PluginLoadError: a plugin failed to start, or did not within ``lifecycle_timeout``.
    """
    stopped = False
    failed: PluginLoadError | None = None
    async with trio.open_nursery() as nursery:

        async def obey() -> None:
            nonlocal stopped
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum in (signal.SIGTERM, signal.SIGINT):
                    log.info("signal %s during plugin start-up: stopping", name)
                    stopped = True
                    nursery.cancel_scope.cancel()
                    return
                log.info("signal %s ignored: the plugins are still starting", name)

        nursery.start_soon(obey)
        try:
            await plugins.startup()
        except PluginLoadError as exc:
            failed = exc
        nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return not stopped


class _Reloads:
    """SIGHUP's reload runs as a task, so the signal loop goes on obeying SIGTERM and further
    SIGHUPs while plugins start or stop (each under its deadline); SIGHUPs that arrive during
    a reload make one more reload after it, not one each."""

    def __init__(self, reload: Callable[[], Awaitable[object]], nursery: trio.Nursery) -> None:
        self._reload = reload
        self._nursery = nursery
        self._running = False
        self._again = False

    def request(self) -> None:
        if self._running:
            self._again = True
            log.info("SIGHUP during a reload: another reload follows it")
            return
        self._running = True
        self._nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            again = True
            while again:
                self._again = False
                try:
                    await self._reload()
                except Exception:  # a bug in the reload must not take the daemon down
                    log.exception("reload failed")
                again = self._again
        finally:
            self._running = False


def setup_logging(config: Config) -> None:
    """The ``[log]`` format and destination for the whole process.

    Raises:
        LogSetupError: the log file or syslog socket cannot be opened.
    """
    logs.configure(config.log, config.server.var_dir)


async def run(
    config: Config,
    *,
    on_ready: Callable[[list[BoundListener]], None] | None = None,
    bus: EventBus | None = None,
    on_admin: Callable[[tuple[str, int] | None], None] | None = None,
    task_status: trio.TaskStatus[list[BoundListener]] = trio.TASK_STATUS_IGNORED,
    tune_gc: bool = False,
    pinned: frozenset[str] = frozenset(),
) -> None:
    """Run the daemon until SIGTERM/SIGINT, then drain and return.

    ``bus`` carries the events (a new one from ``[admin]`` if not given); ``on_admin`` is told
    the admin listener's address (None: it could not bind) before the SMTP listeners open.
    ``tune_gc``: the daemon's process is ours alone, so tune its garbage collector
    (``_tune_gc``); an embedding program (the tests) keeps its own settings. ``pinned``: the
    settings the command line gave (``"listeners"``, ``"server.var_dir"``), which a reload
    keeps whatever the file says.

    Raises:
        PluginLoadError: a configured plugin cannot be loaded (nothing is listening yet).
        TlsSetupError: a certificate cannot be loaded or generated (nothing is listening yet).
        AdminSetupError: the admin listener would be exposed without a token.
        AlreadyRunning: another daemon holds ``var_dir`` (nothing was touched).
    """
    bus = bus if bus is not None else make_bus(config)
    admin = None
    if config.admin.enabled:
        metrics = Metrics(bus, plugin_metrics=config.admin.plugin_metrics)
        admin = AdminServer(
            config.admin,
            bus,
            metrics,
            server_name=config.server.hostname,
            var_dir=config.server.var_dir,
        )
    config.server.var_dir.mkdir(parents=True, exist_ok=True)
    # One daemon per state directory, decided before the spool is recovered or a port bound:
    # a second one would deliver the same spool again (and remove the first's files on exit).
    lock = VarDirLock(config.server.var_dir)
    lock.acquire()
    try:
        sockets = bind_and_drop_privileges(config, lock.path)
        await _run_locked(
            config, bus, admin, on_ready, on_admin, task_status, tune_gc, pinned, sockets
        )
    finally:
        lock.release()
    log.info("stopped")


async def _run_locked(
    config: Config,
    bus: EventBus,
    admin: AdminServer | None,
    on_ready: Callable[[list[BoundListener]], None] | None,
    on_admin: Callable[[tuple[str, int] | None], None] | None,
    task_status: trio.TaskStatus[list[BoundListener]],
    tune_gc: bool,
    pinned: frozenset[str],
    sockets: list[socket.socket] | None = None,
) -> None:
    spill_dir = config.server.var_dir / "tmp"
    spill_dir.mkdir(exist_ok=True)
    plugins = load_plugin_set(config)
    for line in auth_warnings(config, plugins):
        log.warning("%s", line)
    tls = TlsProvider.from_config(config)  # may generate the first-run certificate
    health = plugin_health(config, bus)
    with (
        trio.open_signal_receiver(
            signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1
        ) as signals,
        watch_loop(config.plugins.watchdog_ms / 1000, slow_step_reporter(bus), health),
    ):
        async with trio.open_nursery() as services:
            sandbox = None
            # Also started later, for a plugin the watchdog's strikes move to the sandbox.
            sandbox_factory = functools.partial(ProcessSandbox.from_config, config.plugins, bus)
            if _needs_sandbox(plugins):
                sandbox = sandbox_factory()
                await services.start(sandbox.serve)
            host = PluginHost(
                plugins,
                sandbox=sandbox,
                spill_dir=spill_dir,
                health=health,
                sandbox_factory=sandbox_factory,
                on_moved=moved_reporter(bus),
            )
            # `trio-mta queue|status|plugins` and the admin child talk to this daemon here.
            control = ControlServer(socket_path(config.server.var_dir))
            await services.start(control.serve)
            for name, handler in host.commands().items():
                control.register(name, handler)
            # Plugins finish their async start-up before the first client is accepted.
            if not await _start_plugins(plugins, signals):
                services.cancel_scope.cancel()
                return
            await services.start(host.serve)
            if config.limits.memory_soft_mb:
                guard = MemoryGuard(
                    config.limits.memory_soft_mb, health=health, running=host.running, bus=bus
                )
                await services.start(guard.serve)
                host.memory_guard = guard
            _follow_watchers(config, bus, host)
            reloader = Reloader(config, host, load_plugin_set, tls=tls, bus=bus, pinned=pinned)
            reloads = _Reloads(lambda: notified_reload(reloader), services)
            if admin is not None:  # before SMTP: a watcher may see the very first connection
                admin_address = await services.start(admin.serve)
                if on_admin is not None:
                    on_admin(admin_address)
            queue = None
            if config.queue.enabled:
                # Spool recovered and workers up before the first client can relay a message.
                queue = make_queue(config, host, bus)
                await services.start(queue.serve)
                host.queue = queue
                for name, handler in queue.commands().items():
                    control.register(name, handler)
                if admin is not None:  # /metrics' trio_mta_queue_size and the page's chart
                    envelopes = queue.envelopes
                    admin.metrics.queue_size = envelopes.__len__
            if tune_gc:
                _tune_gc()
            server = SMTPServer(config, host.handler, tls=tls, bus=bus, sockets=sockets)
            bound: list[BoundListener] = await services.start(server.serve)
            for b in bound:
                log.info("listening name=%s address=%s:%d", b.name, b.host, b.port)
            # `trio-mta status|plugins|check --against-running` (they answer once listening).
            daemon = DaemonStatus(config, host, reloader, listeners=bound, queue=queue)
            for name, handler in daemon.handlers().items():
                control.register(name, handler)
            if on_ready is not None:
                on_ready(bound)
            task_status.started(bound)
            # systemd Type=notify: `systemctl start` returns now, with mail able to flow.
            sd_notify("READY=1\nSTATUS=accepting mail")
            drained_by = math.inf
            async for signum in signals:
                if signum in (signal.SIGHUP, signal.SIGUSR1) and logs.reopen():
                    # logrotate renamed the file: the next line starts the new one.
                    log.info("signal %s: log file reopened", signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    reloads.request()
                if signum in (signal.SIGHUP, signal.SIGUSR1):
                    continue
                log.info("signal %s: shutting down (drain %.0fs)", signum, config.timeouts.drain)
                sd_notify("STOPPING=1\nSTATUS=draining")
                drained_by = trio.current_time() + config.timeouts.drain
                server.request_shutdown()
                if queue is not None:
                    queue.stop_delivering()
                break
            await server.stopped.wait()
            if queue is not None:
                # Deliveries in progress finish (within the drain time) rather than be cut.
                with trio.move_on_at(drained_by):
                    await queue.wait_idle()
            services.cancel_scope.cancel()
