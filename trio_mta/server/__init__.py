"""Inbound SMTP: listeners, the per-connection Trio driver, phase deadlines, limits."""

from ._counted import CountedConnection as CountedConnection
from ._driver import ConnectionDriver as ConnectionDriver
from ._handler import SessionHandler as SessionHandler
from ._hooked import HookHandler as HookHandler
from ._listen import BoundListener as BoundListener
from ._listen import SMTPServer as SMTPServer
from ._listen import bind_listeners as bind_listeners
from ._listen import protocol_limits as protocol_limits
from ._memguard import MemoryGuard as MemoryGuard
from ._memguard import rss_mb as rss_mb
from ._observe import breaker_reporter as breaker_reporter
from ._observe import moved_reporter as moved_reporter
from ._observe import plugin_observer as plugin_observer
from ._observe import slow_step_reporter as slow_step_reporter
from ._pluginhost import PluginHost as PluginHost
from ._preflight import auth_warnings as auth_warnings
from ._session import IdGenerator as IdGenerator
from ._session import Session as Session
from ._session import Transaction as Transaction
from ._tls import TlsProvider as TlsProvider
from ._tls import TlsSetupError as TlsSetupError
from ._transport import SocketTransport as SocketTransport
from ._transport import StreamTransport as StreamTransport
from ._transport import Transport as Transport
