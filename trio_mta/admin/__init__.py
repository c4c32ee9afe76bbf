"""The admin listener (the live event stream, the page, /metrics) and the ``watch`` client."""

from ._access import Access as Access
from ._cli import add_watch_parser as add_watch_parser
from ._filter import EventFilter as EventFilter
from ._metrics import Metrics as Metrics
from ._server import AdminServer as AdminServer
from ._server import AdminSetupError as AdminSetupError
from ._watch import DEFAULT_URL as DEFAULT_URL
from ._watch import WatchOptions as WatchOptions
from ._watch import watch as watch
