"""Where the daemon's log goes: stderr, a file (reopened on demand, for logrotate) or syslog.

``configure`` replaces the root logger's handlers once at start-up; ``reopen`` is what the
daemon calls on SIGUSR1 and SIGHUP: after logrotate renamed the file, the next line goes to a
new file of the configured name (logrotate's ``postrotate kill -USR1``, no ``copytruncate``).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
from pathlib import Path

from ..config import LogConfig, LogDestination, LogFormat
from ._format import JsonFormatter, TextFormatter


class LogSetupError(Exception):
    """The configured log destination cannot be opened (the message says which and why)."""


class ReopenableFileHandler(logging.FileHandler):
    """A ``FileHandler`` that opens its path again on ``reopen()``. Unlike
    ``WatchedFileHandler`` it costs no ``stat`` per record: the hot path pays nothing."""

    def reopen(self) -> None:
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


def _syslog_handler(config: LogConfig) -> logging.Handler:
    facility = logging.handlers.SysLogHandler.facility_names[config.syslog_facility]
    # A Unix datagram socket, as /dev/log is (journald and rsyslog both read it). The handler
    # itself tolerates a missing socket (and drops lines until it appears); at start-up that
    # is a configuration mistake, so try it first.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(config.syslog_socket)
    except OSError as exc:
        raise LogSetupError(
            f"[log] syslog_socket {config.syslog_socket!r}: {exc.strerror or exc}"
        ) from None
    handler = logging.handlers.SysLogHandler(
        address=config.syslog_socket, facility=facility, socktype=socket.SOCK_DGRAM
    )
    handler.ident = f"trio-mta[{os.getpid()}]: "
    return handler


def _file_handler(config: LogConfig, var_dir: Path) -> ReopenableFileHandler:
    path = var_dir / config.file  # an absolute file replaces var_dir
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return ReopenableFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise LogSetupError(f"[log] file {str(path)!r}: {exc.strerror or exc}") from None


def build_handler(config: LogConfig, var_dir: Path) -> logging.Handler:
    """The handler ``config`` describes, with its formatter.

    Raises:
        LogSetupError: the file or syslog socket cannot be opened.
    """
    handler: logging.Handler
    if config.destination is LogDestination.FILE:
        handler = _file_handler(config, var_dir)
    elif config.destination is LogDestination.SYSLOG:
        handler = _syslog_handler(config)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if config.format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(stamp=config.destination is not LogDestination.SYSLOG))
    return handler


def configure(config: LogConfig, var_dir: Path) -> None:
    """Send every log record at ``config.level`` or above where ``config`` says.

    Raises:
        LogSetupError: the file or syslog socket cannot be opened (nothing was changed).
    """
    handler = build_handler(config, var_dir)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level)


def reopen() -> bool:
    """Reopen the log file, if logging goes to one (SIGUSR1, SIGHUP). Returns whether it did."""
    reopened = False
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
            reopened = True
    return reopened
