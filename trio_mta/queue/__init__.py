"""The durable queue and outbound delivery: spool, scheduler, workers, routes, bounces.

``QueueService`` is what the app runs (``await nursery.start(service.serve)``) and hands to the
server as its ``hooks.OutboundQueue``; ``add_parser`` is the ``trio-mta queue`` command.
"""

from ._attempt import settle as settle
from ._cli import add_parser as add_parser
from ._control import ask as ask
from ._deliver import Deliverer as Deliverer
from ._deliver import GroupResult as GroupResult
from ._deliver import Outcome as Outcome
from ._deliver import SMTPDeliverer as SMTPDeliverer
from ._dsn import DsnAction as DsnAction
from ._dsn import build_dsn as build_dsn
from ._records import CorruptEntry as CorruptEntry
from ._records import Envelope as Envelope
from ._records import Kind as Kind
from ._records import Recipient as Recipient
from ._records import Status as Status
from ._route import Hop as Hop
from ._route import Route as Route
from ._route import RouteError as RouteError
from ._route import Router as Router
from ._schedule import Scheduler as Scheduler
from ._schedule import retry_delay as retry_delay
from ._select import Selection as Selection
from ._service import QueueService as QueueService
from ._service import spool_root as spool_root
from ._spool import Spool as Spool
