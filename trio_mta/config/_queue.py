"""The ``[queue]``, ``[resolver]`` and ``[[route]]`` sections: outbound delivery settings.

Same conventions as ``_schema``: each validator checks its own field and never names it.
"""

import enum
import ipaddress
import math
import re
from collections.abc import Callable, Sequence

import attrs

_FloatCheck = Callable[[object, object, float], None]
_IntCheck = Callable[[object, object, int], None]
_ROUTE_DOMAIN = re.compile(
    r"\*|\.?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    re.ASCII | re.IGNORECASE,
)
_HOST = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    re.ASCII | re.IGNORECASE,
)


class TlsPolicy(enum.Enum):
    """STARTTLS on outbound connections (the values of ``hooks.StartTLS``)."""

    NEVER = "never"
    OPPORTUNISTIC = "opportunistic"
    REQUIRED = "required"


def _positive(*, zero_ok: bool = False) -> _FloatCheck:
    def check(_inst: object, _attr: object, value: float) -> None:
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise ValueError(f"must be a finite number of seconds above 0 (got {value})")

    return check


def _rate(_inst: object, _attr: object, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number of messages per second, 0 or more (got {value})")


def _range(low: int, high: int) -> _IntCheck:
    def check(_inst: object, _attr: object, value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high} (got {value})")

    return check


def _check_address(_inst: object, _attr: object, value: str) -> None:
    if value and ("@" not in value or any(c in value for c in "<> \r\n")):
        raise ValueError(f"{value!r} is not a mailbox (local@domain)")


def _check_nameservers(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    for item in value:
        host, port = item, "53"
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "53" if not rest else "x"
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r}: a nameserver is an IP address[:port]") from None
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{item!r}: bad port")


@attrs.frozen
class QueueConfig:
    """The durable queue and outbound delivery (relayed and authenticated mail)."""

    # Relayed mail that no queue_outbound plugin took goes to the built-in queue.
    enabled: bool = True
    # The spool; "" is <var_dir>/queue. Must be on a real disk for fsync to mean anything.
    directory: str = ""
    fsync: bool = True
    port: int = attrs.field(default=25, validator=_range(1, 65535))
    concurrency: int = attrs.field(default=20, validator=_range(1, 10000))
    per_destination: int = attrs.field(default=4, validator=_range(1, 10000))
    active_window: int = attrs.field(default=1000, validator=_range(1, 1000000))
    retry_first: float = attrs.field(default=60.0, validator=_positive())
    retry_max: float = attrs.field(default=14400.0, validator=_positive())
    give_up: float = attrs.field(default=5 * 86400.0, validator=_positive())
    attempt_timeout: float = attrs.field(default=600.0, validator=_positive())
    connect_timeout: float = attrs.field(default=30.0, validator=_positive())
    dns_timeout: float = attrs.field(default=20.0, validator=_positive())
    # A destination none of whose hosts answered is not tried again for this long.
    dead_destination: float = attrs.field(default=60.0, validator=_positive(zero_ok=True))
    # Messages per second to one destination (0: no limit), with bursts of up to
    # ``destination_burst`` after a quiet spell.
    destination_rate: float = attrs.field(default=0.0, validator=_rate)
    destination_burst: int = attrs.field(default=5, validator=_range(1, 10000))
    starttls: TlsPolicy = attrs.field(default=TlsPolicy.OPPORTUNISTIC, converter=TlsPolicy)
    bounces: bool = True
    # A "delayed" report (RFC 3464) to the sender of a message still undelivered this long
    # after arrival, for recipients that gave no NOTIFY (0: never, as Postfix's
    # delay_warning_time); NOTIFY=DELAY recipients get one after this, or after
    # DELAY_NOTIFY_DEFAULT when it is 0.
    delay_warning: float = attrs.field(default=0.0, validator=_positive(zero_ok=True))
    # Where double bounces go; "" is postmaster@<server.hostname>.
    postmaster: str = attrs.field(default="", validator=_check_address)


@attrs.frozen
class ResolverConfig:
    # "IP" or "IP:PORT" ("[IPv6]:PORT"); empty: the servers of /etc/resolv.conf.
    nameservers: tuple[str, ...] = attrs.field(default=(), validator=_check_nameservers)


def _lower(value: str) -> str:
    return value.lower()


def _check_policy(_inst: object, _attr: object, value: str) -> None:
    if value and value not in {p.value for p in TlsPolicy}:
        choices = ", ".join(f'"{p.value}"' for p in TlsPolicy)
        raise ValueError(f'expected one of {choices} (or "" for the [queue] default)')


def _check_route_domain(_inst: object, _attr: object, value: str) -> None:
    if not _ROUTE_DOMAIN.fullmatch(value):
        raise ValueError(f"{value!r}: expected a domain, .domain (its subdomains) or *")


def _check_host(_inst: object, _attr: object, value: str) -> None:
    if not value:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or IP address") from None


@attrs.frozen
class RouteConfig:
    """Where mail for ``domain`` goes instead of its MX hosts (``*``: everything, a smart host;
    ``.example.com``: every subdomain). ``host`` "" keeps the MX lookup but applies the other
    settings (port, TLS) to it."""

    domain: str = attrs.field(default="*", converter=_lower, validator=_check_route_domain)
    host: str = attrs.field(default="", validator=_check_host)
    port: int = attrs.field(default=0, validator=_range(0, 65535))  # 0: [queue] port
    starttls: str = attrs.field(default="", validator=_check_policy)  # "": [queue] starttls
    auth_user: str = ""
    auth_password: str = attrs.field(default="", repr=False)
    # Send credentials over a plain-text connection (tests, trusted LANs only).
    auth_allow_plaintext: bool = False


def route_problems(routes: Sequence[RouteConfig]) -> list[tuple[int, str, str]]:
    problems: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    for position, route in enumerate(routes):
        if route.domain in seen:
            problems.append((position, "domain", f"a second route for {route.domain!r}"))
        seen.add(route.domain)
        if bool(route.auth_user) != bool(route.auth_password):
            problems.append((position, "auth_user", "auth_user and auth_password go together"))
        if route.auth_user and not route.host:
            problems.append((position, "host", "AUTH needs a fixed host"))
    return problems


def _check_routes(_inst: object, _attr: object, value: tuple[RouteConfig, ...]) -> None:
    problems = route_problems(value)
    if problems:
        raise ValueError(problems[0][2])
