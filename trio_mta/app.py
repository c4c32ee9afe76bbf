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

import trio

from .config import Config, ConfigError, DeliveryMode, load_config
from .server import (
    BoundListener,
    LocalDeliveryHandler,
    MaildirStore,
    SessionHandler,
    SMTPServer,
)

log = logging.getLogger("trio_mta")


def make_handler_factory(config: Config) -> Callable[[], SessionHandler]:
    store = None
    if config.delivery.mode is DeliveryMode.MAILDIR:
        store = MaildirStore(
            config.server.var_dir / "maildir", config.server.hostname, fsync=config.delivery.fsync
        )
    handler = LocalDeliveryHandler(config.server.local_domains, store)
    return lambda: handler


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
    """Run the daemon until SIGTERM/SIGINT, then drain and return."""
    config.server.var_dir.mkdir(parents=True, exist_ok=True)
    server = SMTPServer(config, make_handler_factory(config))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as services:
            bound: list[BoundListener] = await services.start(server.serve)
            for b in bound:
                log.info("listening name=%s address=%s:%d", b.name, b.host, b.port)
            if on_ready is not None:
                on_ready(bound)
            task_status.started(bound)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _reload(config.config_dir)
                    continue
                log.info("signal %s: shutting down (drain %.0fs)", signum, config.timeouts.drain)
                server.request_shutdown()
                break
    log.info("stopped")


def _reload(config_dir: Path | None) -> None:
    # The engine has nothing reloadable yet beyond validation; plugins and TLS certificates
    # hook in here. An invalid file never replaces the running configuration.
    try:
        load_config(config_dir)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration:\n%s", exc)
        return
    log.info("reload: configuration re-read and valid")
