"""Day-one operations: ``status``, ``plugins`` (and the daemon's answers to them on the control
socket), ``check --against-running`` and ``init``."""

from ._cli import NOT_RUNNING as NOT_RUNNING
from ._cli import add_parsers as add_parsers
from ._cli import against_running as against_running
from ._init import add_init_parser as add_init_parser
from ._init import templates_dir as templates_dir
from ._init import write_config as write_config
from ._plugins import plugin_table as plugin_table
from ._plugins import plugin_table_text as plugin_table_text
from ._service import PrivilegeError as PrivilegeError
from ._service import account_problem as account_problem
from ._service import bind_and_drop_privileges as bind_and_drop_privileges
from ._service import drop_privileges as drop_privileges
from ._service import notified_reload as notified_reload
from ._service import sd_notify as sd_notify
from ._status import DaemonStatus as DaemonStatus
from ._status import queue_counts as queue_counts
