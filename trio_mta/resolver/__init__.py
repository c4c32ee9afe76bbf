"""DNS behind a small Protocol: the dnspython-over-trio implementation, and a static one for tests.

Every lookup answers with the records (an empty list when the name exists without records of
that type), raises ``NXDomain`` when the name does not exist, and ``DNSError`` for everything
that may be temporary (timeouts, SERVFAIL, REFUSED, no server reachable). No method takes a
timeout: callers wrap lookups in ``trio.fail_after``/``move_on_after``.
"""

from ._dns import DNSResolver as DNSResolver
from ._dns import parse_nameserver as parse_nameserver
from ._dns import system_nameservers as system_nameservers
from ._static import StaticResolver as StaticResolver
from ._types import MX as MX
from ._types import DNSError as DNSError
from ._types import NXDomain as NXDomain
from ._types import Resolver as Resolver
