"""The plugin API (what plugin authors import) and the hook runner.

Public for plugins: ``Plugin``, ``hook``, ``Action``, ``Result``, ``CONT``, ``OK`` and the
result helpers, ``Connection``, ``Transaction``, ``Message``, ``PluginEnv``; for ``auth``
plugins, ``Credentials`` and the scrypt helpers (``hash_password``, ``verify_password``, users
files). The runner and the registry are for the server.
"""

# Mail authentication (spf, dkim, dmarc, arc plugins): the resolver, and blocking libraries
# doing their DNS through it from a worker thread.
from ..resolver import MX as MX
from ..resolver import DNSError as DNSError
from ..resolver import DNSResolver as DNSResolver
from ..resolver import NXDomain as NXDomain
from ..resolver import Resolver as Resolver
from ..resolver import StaticResolver as StaticResolver
from ..resolver import parse_nameserver as parse_nameserver

# Delivery into Maildir folders (queue_maildir runs the store in a hooks.BatchProcess child).
from ..storage.maildir import MaildirDelivery as MaildirDelivery
from ..storage.maildir import MaildirStore as MaildirStore
from ..storage.maildir import mailbox_dirname as mailbox_dirname
from ._auth import Credentials as Credentials
from ._auth import check_username as check_username
from ._auth import hash_password as hash_password
from ._auth import parse_users as parse_users
from ._auth import update_users as update_users
from ._auth import verify_password as verify_password
from ._batchproc import BatchProcess as BatchProcess
from ._batchproc import BatchProcessError as BatchProcessError
from ._blockingdns import Abandoned as Abandoned
from ._blockingdns import SyncDNS as SyncDNS
from ._blockingdns import run_with_dns as run_with_dns
from ._context import Connection as Connection
from ._context import Message as Message
from ._context import Transaction as Transaction
from ._health import BreakerChange as BreakerChange
from ._health import BreakerSettings as BreakerSettings
from ._health import BreakerState as BreakerState
from ._health import HookHealth as HookHealth
from ._health import PluginHealth as PluginHealth
from ._outbound import DeliveryReport as DeliveryReport
from ._outbound import MXHost as MXHost
from ._outbound import OutboundQueue as OutboundQueue
from ._plugin import HookOptions as HookOptions
from ._plugin import Plugin as Plugin
from ._plugin import PluginEnv as PluginEnv
from ._plugin import hook as hook
from ._registry import RUNNER_KEYS as RUNNER_KEYS
from ._registry import HookEntry as HookEntry
from ._registry import PluginLoadError as PluginLoadError
from ._registry import PluginSet as PluginSet
from ._registry import builtin_plugin_dir as builtin_plugin_dir
from ._registry import load_plugins as load_plugins
from ._result import CONT as CONT
from ._result import ERROR_RESULT as ERROR_RESULT
from ._result import OK as OK
from ._result import TIMEOUT_RESULT as TIMEOUT_RESULT
from ._result import Action as Action
from ._result import Result as Result
from ._result import deny as deny
from ._result import denydisconnect as denydisconnect
from ._result import denysoft as denysoft
from ._result import denysoftdisconnect as denysoftdisconnect
from ._result import disconnect as disconnect
from ._result import ok as ok
from ._runner import Denial as Denial
from ._runner import HookCall as HookCall
from ._runner import HookRunner as HookRunner
from ._runner import Sandbox as Sandbox
from ._runner import current_runner as current_runner
from ._sandbox import ProcessSandbox as ProcessSandbox
from ._sandbox import SandboxError as SandboxError
from ._sandbox import WorkerCrashed as WorkerCrashed
from ._sandbox import open_sandbox as open_sandbox
from ._sandbox import worker_env as worker_env
from ._smtpclient import SendResult as SendResult
from ._smtpclient import SMTPClient as SMTPClient
from ._smtpclient import SMTPClientError as SMTPClientError
from ._smtpclient import SMTPConnectError as SMTPConnectError
from ._smtpclient import StartTLS as StartTLS
from ._smtpclient import open_smtp_client as open_smtp_client
from ._spec import HOOKS as HOOKS
from ._spec import HookSpec as HookSpec
from ._spec import reply_for as reply_for
from ._watchdog import LoopWatchdog as LoopWatchdog
from ._watchdog import SlowStep as SlowStep
from ._watchdog import log_slow_step as log_slow_step
from ._watchdog import watch_loop as watch_loop
