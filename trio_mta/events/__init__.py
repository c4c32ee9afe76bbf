"""Typed events and the bus they travel on (publish is synchronous and O(1); a subscriber
that falls behind loses events and is told how many with a ``Gap``)."""

from ._bus import EventBus as EventBus
from ._bus import RawItem as RawItem
from ._bus import Subscription as Subscription
from ._bus import Tap as Tap
from ._bus import as_event as as_event
from ._counters import Counters as Counters
from ._json import VALUES_ENCODERS as VALUES_ENCODERS
from ._json import event_json as event_json
from ._types import EVENT_TYPES as EVENT_TYPES
from ._types import SCHEMA_VERSION as SCHEMA_VERSION
from ._types import AuthAttempted as AuthAttempted
from ._types import ConfigReloaded as ConfigReloaded
from ._types import ConnectionClosed as ConnectionClosed
from ._types import ConnectionOpened as ConnectionOpened
from ._types import Delivered as Delivered
from ._types import DeliveryAttempted as DeliveryAttempted
from ._types import DeliveryBounced as DeliveryBounced
from ._types import DeliveryDeferred as DeliveryDeferred
from ._types import Event as Event
from ._types import Gap as Gap
from ._types import HeloReceived as HeloReceived
from ._types import LoopBlocked as LoopBlocked
from ._types import MailReceived as MailReceived
from ._types import MemoryGuarded as MemoryGuarded
from ._types import PluginBreaker as PluginBreaker
from ._types import PluginCalled as PluginCalled
from ._types import PluginMoved as PluginMoved
from ._types import RcptReceived as RcptReceived
from ._types import SandboxWorker as SandboxWorker
from ._types import StatsSampled as StatsSampled
from ._types import TlsStarted as TlsStarted
from ._types import TransactionEnded as TransactionEnded
from ._types import TransactionRefused as TransactionRefused
from ._types import event_dict as event_dict
