"""The configuration tree: frozen attrs classes whose defaults are the embedded configuration.

Rules live on the fields as attrs converters and validators, so a tree built by the loader, by
``attrs.evolve`` in the CLI, or by a test is held to the same rules. Two conventions keep the
loader generic (see ``_loader``):

* Every validator checks one field on its own and raises ``ValueError`` whose message reads well
  after ``"<file>: <key>: "``; it never names the field, because the caller knows the name the
  operator used (a TOML key or a command-line option) and this module does not.
* A rule that spans fields or items (listener conflicts) is a plain function here that returns
  every problem, used both by a validator (first problem) and by the loader (all of them).
"""

import enum
import ipaddress
import math
import re
import ssl
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import attrs

from ._admin import AdminConfig
from ._queue import QueueConfig, ResolverConfig, RouteConfig, _check_routes

_IntCheck = Callable[[object, object, int], None]
_FloatCheck = Callable[[object, object, float], None]

# Letters, digits and inner hyphens (RFC 1035 §2.3.1, relaxed by RFC 1123 §2.1 to allow a
# leading digit). Internationalised names must be given in their A-label (xn--) form.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII | re.IGNORECASE)
_LISTENER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# "220 " + a 253-octet hostname + " " + the banner + CRLF must fit the 512-octet reply line of
# RFC 5321 §4.5.3.1.5.
_MAX_BANNER = 200
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ListenerKind(enum.Enum):
    MX = "mx"
    SUBMISSION = "submission"
    SMTPS = "smtps"


class LogFormat(enum.Enum):
    TEXT = "text"  # time LEVEL logger message
    JSON = "json"  # one JSON object per line


class LogDestination(enum.Enum):
    STDERR = "stderr"
    FILE = "file"  # [log] file, reopened on SIGUSR1 and SIGHUP (logrotate)
    SYSLOG = "syslog"  # [log] syslog_socket, a Unix datagram socket


_SYSLOG_FACILITIES = (
    "mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5",
    "local6", "local7",
)  # fmt: skip


class BareLineEndings(enum.Enum):
    REJECT = "reject"
    NORMALIZE = "normalize"


class TlsVersion(enum.Enum):
    TLSv1_2 = "TLSv1.2"
    TLSv1_3 = "TLSv1.3"


def _at_least(minimum: int) -> _IntCheck:
    def check(_inst: object, _attr: object, value: int) -> None:
        if value < minimum:
            raise ValueError(f"must be at least {minimum} (got {value})")

    return check


def _between(low: int, high: int) -> _IntCheck:
    def check(_inst: object, _attr: object, value: int) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be from {low} to {high} (got {value})")

    return check


def _seconds(*, zero_ok: bool = False) -> _FloatCheck:
    def check(_inst: object, _attr: object, value: float) -> None:
        # TOML can spell inf and nan; neither is a usable deadline.
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number of seconds (got {value})")
        if value < 0 or (value == 0 and not zero_ok):
            bound = "at least 0" if zero_ok else "greater than 0"
            raise ValueError(f"must be {bound} seconds (got {value})")

    return check


def _domain_problem(name: str) -> str | None:
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{name!r} is not a valid domain name (use the ASCII xn-- form for IDNs)"
    return None


def _check_domain(_inst: object, _attr: object, value: str) -> None:
    problem = _domain_problem(value)
    if problem is not None:
        raise ValueError(problem)


def _check_domains(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    problems = [p for p in map(_domain_problem, value) if p is not None]
    if problems:
        raise ValueError("; ".join(problems))


def _lower_domains(value: Iterable[str]) -> tuple[str, ...]:
    # A bare string is iterable too, and its one-letter "domains" would all validate.
    if isinstance(value, str):
        raise TypeError("local_domains must be a sequence of strings, not a string")
    return tuple(domain.lower() for domain in value)


def _check_banner(_inst: object, _attr: object, value: str) -> None:
    # The banner goes verbatim into a reply line: CR or LF would let the config inject reply
    # lines, and replies are ASCII unless SMTPUTF8 was negotiated, which a banner precedes.
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise ValueError("must be printable ASCII without control characters")
    if len(value) > _MAX_BANNER:
        raise ValueError(f"must be at most {_MAX_BANNER} characters (got {len(value)})")


def _check_listener_name(_inst: object, _attr: object, value: str) -> None:
    if not _LISTENER_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid listener name (1-64 letters, digits, '_', '.', '-',"
            " starting with a letter or digit)"
        )


def _upper(value: str) -> str:
    # Level names are case-insensitive ("info", "Info"); a non-string is left to the validator.
    return value.upper() if isinstance(value, str) else value


def _check_facility(_inst: object, _attr: object, value: str) -> None:
    if value not in _SYSLOG_FACILITIES:
        raise ValueError(f"must be one of {', '.join(_SYSLOG_FACILITIES)} (got {value!r})")


def _check_log_level(_inst: object, _attr: object, value: str) -> None:
    if value not in _LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)} (got {value!r})")


def normalize_listen_host(host: str) -> str:
    """Return the canonical form of a listener host, or raise ``ValueError``.

    Only address literals and ``localhost`` are accepted: binding to a name that needs DNS would
    make startup depend on the resolver, and the config layer does no DNS.
    """
    if host.lower() == "localhost":
        return "localhost"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f'host must be an IP address or "localhost" (got {host!r})') from None


def parse_listen(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[HOST]:PORT``) into a normalized ``(host, port)``.

    Args:
      text: e.g. ``"127.0.0.1:2525"``, ``"[::1]:2525"`` or ``"localhost:25"``.

    Returns:
      The host in canonical form (IPv6 without brackets, compressed) and the port.

    Raises:
      ValueError: with a message that names what is wrong, suitable for showing to an operator.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"expected [IPV6]:PORT (got {text!r})")
        host_text, port_text = text[1:end], text[end + 2 :]
        try:
            host = str(ipaddress.IPv6Address(host_text))
        except ValueError:
            raise ValueError(f"{host_text!r} in brackets is not an IPv6 address") from None
    else:
        host_text, colon, port_text = text.rpartition(":")
        if not colon or not host_text:
            raise ValueError(f"expected HOST:PORT, IPv6 as [::1]:2525 (got {text!r})")
        if ":" in host_text:
            raise ValueError(f"IPv6 addresses must be in brackets, as [::1]:2525 (got {text!r})")
        host = normalize_listen_host(host_text)
    # int() would also take "+25", " 25" and "2_5"; a port is plain ASCII digits.
    if not (port_text.isascii() and port_text.isdigit() and 0 <= int(port_text) <= 65535):
        raise ValueError(f"port must be a number from 0 to 65535 (got {port_text!r})")
    return host, int(port_text)


def format_listen(host: str, port: int) -> str:
    """The ``HOST:PORT`` form that :func:`parse_listen` reads back to ``(host, port)``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class ListenerConfig:
    name: str = attrs.field(validator=_check_listener_name)
    host: str = attrs.field(converter=normalize_listen_host)
    port: int = attrs.field(validator=_between(0, 65535))  # 0: any free port (tests)
    kind: ListenerKind = ListenerKind.MX
    # SMTP AUTH (RFC 4954) on this listener, when an auth plugin is loaded; only over TLS
    # unless auth_allow_plaintext. Submission and smtps listeners require it before MAIL.
    auth: bool = True
    auth_allow_plaintext: bool = False

    @property
    def listen(self) -> str:
        return format_listen(self.host, self.port)


def listener_conflicts(listeners: Sequence[ListenerConfig]) -> list[tuple[int, str, str]]:
    """Every clash among ``listeners`` as ``(position, toml_key, why)``; later one is blamed."""
    conflicts: list[tuple[int, str, str]] = []
    by_name: dict[str, ListenerConfig] = {}
    by_address: dict[tuple[str, int], ListenerConfig] = {}
    for position, listener in enumerate(listeners):
        first = by_name.setdefault(listener.name, listener)
        if first is not listener:
            conflicts.append((position, "name", f"duplicate listener name {listener.name!r}"))
        # Port 0 asks the kernel for any free port: several such listeners never clash.
        first = by_address.setdefault((listener.host, listener.port), listener)
        if first is not listener and listener.port != 0:
            why = f"{listener.listen} is already used by listener {first.name!r}"
            conflicts.append((position, "listen", why))
    return conflicts


def _check_listeners(_inst: object, _attr: object, value: tuple[ListenerConfig, ...]) -> None:
    if not value:
        raise ValueError("at least one listener is required")
    conflicts = listener_conflicts(value)
    if conflicts:
        raise ValueError(conflicts[0][2])


@attrs.frozen
class ServerConfig:
    hostname: str = attrs.field(default="localhost", validator=_check_domain)
    var_dir: Path = Path("var")
    local_domains: tuple[str, ...] = attrs.field(
        default=("localhost", "example.test"), converter=_lower_domains, validator=_check_domains
    )
    banner: str = attrs.field(default="ESMTP trio-mta", validator=_check_banner)
    received_header: bool = True
    # Started as root: drop to this user (and group; "" = the user's own) once the listeners
    # are bound, before anything is read or written. "" = stay who we were started as.
    user: str = ""
    group: str = ""


@attrs.frozen
class Timeouts:
    """Deadlines in seconds; each is a phase's own budget (RFC 5321 §4.5.3.2)."""

    banner: float = attrs.field(default=300.0, validator=_seconds())
    command: float = attrs.field(default=300.0, validator=_seconds())
    data_block: float = attrs.field(default=300.0, validator=_seconds())
    data_total: float = attrs.field(default=1800.0, validator=_seconds())
    session: float = attrs.field(default=3600.0, validator=_seconds())
    tls_handshake: float = attrs.field(default=30.0, validator=_seconds())
    drain: float = attrs.field(default=30.0, validator=_seconds())
    greeting_delay: float = attrs.field(default=0.0, validator=_seconds(zero_ok=True))


def _as_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _check_networks(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    for text in value:
        try:
            ipaddress.ip_network(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a network ({exc})") from None


# Postfix exempts $mynetworks (by default the host's own) from its client limits: a local
# application is not a stranger to be rationed.
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


@attrs.frozen
class Limits:
    max_connections: int = attrs.field(default=1000, validator=_at_least(1))
    max_connections_per_ip: int = attrs.field(default=50, validator=_at_least(1))
    max_recipients: int = attrs.field(default=100, validator=_at_least(1))
    max_message_size: int = attrs.field(default=35 * 1024 * 1024, validator=_at_least(1))
    max_unrecognized_commands: int = attrs.field(default=10, validator=_at_least(1))
    # Below RFC 5321's 512 and 1000 octets only for tests; under these floors a normal EHLO or
    # header line could not fit at all.
    command_line: int = attrs.field(default=512, validator=_at_least(64))
    text_line: int = attrs.field(default=1000, validator=_at_least(80))
    auth_line: int = attrs.field(default=12288, validator=_at_least(1))
    # Above this resident size (MiB) new connections get 421 4.3.2 and MAIL 451 4.3.2 until it
    # falls below 90 % of it (server._memguard). 0: no guard.
    memory_soft_mb: int = attrs.field(default=1024, validator=_at_least(0))
    # Clients here are not held to max_connections_per_ip nor the AUTH failure tarpit.
    exempt_networks: tuple[str, ...] = attrs.field(
        default=LOOPBACK_NETWORKS, converter=_as_tuple, validator=_check_networks
    )


@attrs.frozen
class DataConfig:
    bare_line_endings: BareLineEndings = BareLineEndings.REJECT


@attrs.frozen
class LogConfig:
    level: str = attrs.field(default="INFO", converter=_upper, validator=_check_log_level)
    transaction_log: bool = True
    format: LogFormat = LogFormat.TEXT
    destination: LogDestination = LogDestination.STDERR
    # destination = "file": relative paths are relative to [server] var_dir.
    file: str = "trio-mta.log"
    syslog_socket: str = "/dev/log"
    syslog_facility: str = attrs.field(default="mail", validator=_check_facility)


def _check_plugin_names(_inst: object, _attr: object, value: tuple[str, ...]) -> None:
    bad = [name for name in value if not name.isidentifier()]
    if bad:
        raise ValueError(f"not valid plugin names: {', '.join(map(repr, bad))}")
    if len(set(value)) != len(value):
        raise ValueError("a plugin is listed more than once")


@attrs.frozen
class PluginsConfig:
    # Haraka's config/plugins, as a TOML list: the order plugins run in on every hook.
    order: tuple[str, ...] = attrs.field(
        default=("rcpt_to_host_list", "queue_maildir"), validator=_check_plugin_names
    )
    timeout: float = attrs.field(default=30.0, validator=_seconds())
    # Searched before the built-in plugins; relative paths are relative to the config dir.
    directories: tuple[Path, ...] = ()
    # The sandbox pool: at least sandbox_workers (the old key: the minimum), at most
    # sandbox_workers_max, with sandbox_spares idle ones started ahead of need.
    sandbox_workers: int = attrs.field(default=2, validator=_between(1, 64))
    sandbox_workers_max: int = attrs.field(default=8, validator=_between(1, 256))
    sandbox_spares: int = attrs.field(default=1, validator=_between(0, 64))
    sandbox_idle_seconds: float = attrs.field(default=60.0, validator=_seconds())
    sandbox_stall_seconds: float = attrs.field(default=0.5, validator=_seconds())
    sandbox_memory_mb: int = attrs.field(default=1024, validator=_at_least(64))
    sandbox_cpu_seconds: int = attrs.field(default=60, validator=_at_least(1))
    watchdog_ms: float = attrs.field(default=50.0, validator=_seconds())
    cleanup_timeout: float = attrs.field(default=5.0, validator=_seconds())
    # The circuit breaker of each (plugin, hook): this many timeouts or errors in a row within
    # breaker_window seconds open it for breaker_cooldown seconds (hooks._health).
    breaker_failures: int = attrs.field(default=5, validator=_at_least(1))
    breaker_window: float = attrs.field(default=60.0, validator=_seconds())
    breaker_cooldown: float = attrs.field(default=30.0, validator=_seconds())
    # Threads one plugin's sync hooks may use at once (abandoned ones count until they end).
    plugin_threads: int = attrs.field(default=16, validator=_between(1, 256))
    # An in-process plugin the loop watchdog names this many times within watchdog_window
    # seconds (blocking the loop, or a busy thread of it) moves to the sandbox, or is tripped
    # if its hooks cannot run there. 0: never.
    watchdog_strikes: int = attrs.field(default=3, validator=_between(0, 1000))
    watchdog_window: float = attrs.field(default=300.0, validator=_seconds())
    # Deadline of each plugin's startup() and shutdown() (at start, reload and exit).
    lifecycle_timeout: float = attrs.field(default=30.0, validator=_seconds())


def _check_ciphers(_inst: object, _attr: object, value: str) -> None:
    if value:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
        except ssl.SSLError:
            raise ValueError(f"{value!r} selects no cipher this OpenSSL knows") from None


@attrs.frozen
class TlsConfig:
    """Certificates and protocol floor for STARTTLS and implicit TLS.

    Paths are strings, empty meaning "none" (TOML has no null); relative ones are relative to
    the config directory. Whether the files load is checked by the loader (``_tlsfiles``).
    """

    cert: str = ""
    key: str = ""  # empty: the private key is in the cert file
    cert_dir: str = ""  # SNI: <hostname>.pem (+ .key), _wildcard.<domain>.pem for *.<domain>
    min_version: TlsVersion = TlsVersion.TLSv1_2
    ciphers: str = attrs.field(default="", validator=_check_ciphers)  # TLS <= 1.2 only
    generate_self_signed: bool = True

    @property
    def enabled(self) -> bool:
        """Whether there is a default certificate (configured, or generated on first run)."""
        return bool(self.cert) or self.generate_self_signed


@attrs.frozen
class AuthConfig:
    """SMTP AUTH policy: the sender constraint and the per-IP failure limit."""

    # MAIL FROM must belong to the authenticated user (Postfix's reject_sender_login_mismatch).
    constrain_sender: bool = True
    # Failed attempts from one IP (IPv6: one /64) within failure_window: the next failure
    # closes the connection with 421 and AUTH is refused (421) until the window passes.
    max_failures: int = attrs.field(default=10, validator=_at_least(1))
    failure_window: float = attrs.field(default=3600.0, validator=_seconds())
    # The first failure is answered at once, the second after failure_delay, each next one
    # after twice the previous delay, at most max_failure_delay.
    failure_delay: float = attrs.field(default=1.0, validator=_seconds(zero_ok=True))
    max_failure_delay: float = attrs.field(default=30.0, validator=_seconds(zero_ok=True))


def _default_listeners() -> tuple[ListenerConfig, ...]:
    return (
        ListenerConfig(name="mx", host="127.0.0.1", port=2525),
        ListenerConfig(
            name="submission", host="127.0.0.1", port=5587, kind=ListenerKind.SUBMISSION
        ),
        ListenerConfig(name="smtps", host="127.0.0.1", port=5465, kind=ListenerKind.SMTPS),
    )


@attrs.frozen
class Config:
    """The whole configuration; ``Config()`` is what runs when no file is given."""

    server: ServerConfig = ServerConfig()
    listeners: tuple[ListenerConfig, ...] = attrs.field(
        factory=_default_listeners, validator=_check_listeners
    )
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    data: DataConfig = DataConfig()
    log: LogConfig = LogConfig()
    plugins: PluginsConfig = PluginsConfig()
    auth: AuthConfig = AuthConfig()
    queue: QueueConfig = attrs.field(factory=QueueConfig)
    resolver: ResolverConfig = attrs.field(factory=ResolverConfig)
    routes: tuple[RouteConfig, ...] = attrs.field(default=(), validator=_check_routes)
    tls: TlsConfig = TlsConfig()
    admin: AdminConfig = attrs.field(factory=AdminConfig)
    # conf/plugins/<name>.toml, one table per plugin, as read (each plugin validates its own).
    plugin_configs: dict[str, dict[str, object]] = attrs.field(factory=dict, hash=False)
    # Where the tree was loaded from, so reload and relative plugin paths know where to look.
    config_dir: Path | None = None
