"""The daemon's log: text or JSON lines, to stderr, a file (reopened for logrotate) or syslog."""

from ._format import JsonFormatter as JsonFormatter
from ._format import TextFormatter as TextFormatter
from ._setup import LogSetupError as LogSetupError
from ._setup import ReopenableFileHandler as ReopenableFileHandler
from ._setup import build_handler as build_handler
from ._setup import configure as configure
from ._setup import reopen as reopen
