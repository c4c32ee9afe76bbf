"""The event types: what the daemon tells watchers, one frozen attrs class per kind of event.

Every event carries ``ts`` (wall-clock seconds since the epoch, from the bus's injected clock),
``conn`` (the SMTP connection id, or None) and ``txn`` (the transaction id, which is also the
queue id of an accepted message, or None). Its ``TYPE`` is the ``type`` field of the JSON form
and ``SCHEMA_VERSION`` its ``v``. ``docs/events.md`` documents every field; a test checks that
the document and these classes agree.

Secrets never enter an event: AUTH events name the mechanism and, on success only, the user (a
failed login's "user" may be a mistyped password).

Fields are keyword-only, so adding one (with a default) never breaks a publisher.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

SCHEMA_VERSION = 1


@attrs.frozen(kw_only=True)
class Event:
    TYPE: ClassVar[str] = "event"
    FIELDS: ClassVar[tuple[str, ...]] = ()

    ts: float
    conn: str | None = None
    txn: str | None = None


# -- connection -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ConnectionOpened(Event):
    TYPE: ClassVar[str] = "connection.open"

    ip: str
    port: int
    listener: str
    local_ip: str
    local_port: int


@attrs.frozen(kw_only=True)
class TlsStarted(Event):
    TYPE: ClassVar[str] = "connection.tls"

    ip: str
    version: str | None
    cipher: str | None


@attrs.frozen(kw_only=True)
class AuthAttempted(Event):
    TYPE: ClassVar[str] = "connection.auth"

    ip: str
    mechanism: str | None
    success: bool
    code: int
    user: str | None = None  # only on success


@attrs.frozen(kw_only=True)
class ConnectionClosed(Event):
    TYPE: ClassVar[str] = "connection.close"

    ip: str
    reason: str
    duration: float  # seconds
    transactions: int


# -- transaction ----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class HeloReceived(Event):
    TYPE: ClassVar[str] = "transaction.helo"

    ip: str
    name: str
    extended: bool
    code: int
    reply: str


@attrs.frozen(kw_only=True)
class MailReceived(Event):
    TYPE: ClassVar[str] = "transaction.mail"

    ip: str
    sender: str
    code: int
    reply: str


@attrs.frozen(kw_only=True)
class RcptReceived(Event):
    TYPE: ClassVar[str] = "transaction.rcpt"

    ip: str
    sender: str
    recipient: str
    code: int
    reply: str


@attrs.frozen(kw_only=True)
class TransactionEnded(Event):
    TYPE: ClassVar[str] = "transaction.end"

    ip: str
    helo: str | None
    sender: str
    recipients: tuple[str, ...]
    size: int
    outcome: str  # accepted, refused, reset, aborted
    code: int | None
    reply: str
    queue_id: str | None
    duration: float  # seconds since MAIL
    refused: tuple[str, ...] = ()  # recipients refused at RCPT in this transaction


@attrs.frozen(kw_only=True)
class TransactionRefused(Event):
    """A 4xx/5xx reply to HELO/EHLO, AUTH, MAIL, RCPT, DATA or the end of the data, or a
    refused connection: what Postfix logs as ``NOQUEUE: reject``."""

    TYPE: ClassVar[str] = "transaction.refused"

    ip: str
    stage: str  # connect, helo, auth, mail, rcpt, data
    sender: str | None  # "" for <>; None before MAIL (or when MAIL could not be parsed)
    recipient: str | None  # only at rcpt
    code: int
    reply: str
    plugin: str  # the plugin that decided, or "core" for a built-in rule


# -- plugins --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PluginCalled(Event):
    TYPE: ClassVar[str] = "plugin.call"

    ip: str | None
    plugin: str
    hook: str
    result: str  # cont, ok, deny, denysoft, ...
    duration: float  # seconds
    timed_out: bool = False
    error: str | None = None


@attrs.frozen(kw_only=True)
class LoopBlocked(Event):
    TYPE: ClassVar[str] = "plugin.watchdog"

    duration: float  # seconds the event loop was held
    task: str
    plugin: str | None
    hook: str | None


@attrs.frozen(kw_only=True)
class PluginBreaker(Event):
    TYPE: ClassVar[str] = "plugin.breaker"

    plugin: str
    hook: str
    state: str  # "open" | "half_open" | "closed"
    reason: str


@attrs.frozen(kw_only=True)
class PluginMoved(Event):
    TYPE: ClassVar[str] = "plugin.moved"

    plugin: str
    hooks: tuple[str, ...]
    why: str  # the last watchdog strike
    to: str  # "sandbox" (its hooks now run in the sandbox) or "tripped" (answered at once)


@attrs.frozen(kw_only=True)
class MemoryGuarded(Event):
    TYPE: ClassVar[str] = "memory.guard"

    rss_mb: float
    limit_mb: int
    state: str  # "over" (refusing connections and mail) | "under" (accepting again)
    plugins: tuple[str, ...]  # plugin/hook calls running when it fired (or cancelled: cause)
    cause: str | None = None  # the plugin whose allocations were found and cancelled


@attrs.frozen(kw_only=True)
class SandboxWorker(Event):
    """The plugin sandbox's pool changed, or a call had to wait for one of its workers."""

    TYPE: ClassVar[str] = "sandbox.worker"

    pid: int
    action: str  # spawn | kill | recycle | retire | exit | wait
    reason: str
    waited: float = 0.0  # seconds a call waited for a worker (action "wait")


# -- delivery (published by the queue) ------------------------------------------------------


@attrs.frozen(kw_only=True)
class DeliveryAttempted(Event):
    TYPE: ClassVar[str] = "delivery.attempt"

    recipients: tuple[str, ...]
    domain: str
    attempt: int
    mx_host: str | None
    sender: str = ""  # the envelope sender ("" for <>)


@attrs.frozen(kw_only=True)
class DeliveryDeferred(Event):
    TYPE: ClassVar[str] = "delivery.deferred"

    recipients: tuple[str, ...]
    domain: str
    attempt: int
    mx_host: str | None
    code: int | None
    reply: str
    until: float  # epoch seconds of the next attempt
    sender: str = ""  # the envelope sender ("" for <>)
    delay: float = 0.0  # seconds since the message arrived (Postfix's delay=)


@attrs.frozen(kw_only=True)
class DeliveryBounced(Event):
    TYPE: ClassVar[str] = "delivery.bounced"

    recipients: tuple[str, ...]
    domain: str
    attempt: int
    mx_host: str | None
    code: int | None
    reply: str
    sender: str = ""  # the envelope sender ("" for <>)
    delay: float = 0.0  # seconds since the message arrived


@attrs.frozen(kw_only=True)
class Delivered(Event):
    TYPE: ClassVar[str] = "delivery.delivered"

    recipients: tuple[str, ...]
    domain: str
    attempt: int
    mx_host: str | None
    code: int
    reply: str
    sender: str = ""  # the envelope sender ("" for <>)
    delay: float = 0.0  # seconds since the message arrived


# -- the daemon -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ConfigReloaded(Event):
    """A SIGHUP reload: what it put in force and what it could not (needs a restart)."""

    TYPE: ClassVar[str] = "config.reload"

    ok: bool  # False: refused, the running configuration and plugins stay
    generation: int | None  # the plugin generation now in service (None when refused)
    applied: tuple[str, ...]  # changed settings now in force, e.g. "[plugins] order"
    restart_needed: tuple[str, ...]  # changed settings NOT in force until a restart
    error: str | None = None


# -- the daemon's state (published by the admin listener while someone watches) -------------


@attrs.frozen(kw_only=True)
class StatsSampled(Event):
    """Once a second while someone watches: what charts need and no event tells (the page
    draws queue depth from it). Sampling is O(1): counts the daemon keeps anyway."""

    TYPE: ClassVar[str] = "server.stats"

    queue: int | None  # messages in the queue (None: no built-in queue)
    connections: int  # SMTP connections open
    uptime: float  # seconds since the daemon started


# -- the stream itself ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Gap(Event):
    """This subscriber fell behind: ``dropped`` events it would have received were lost."""

    TYPE: ClassVar[str] = "gap"

    dropped: int


EVENT_TYPES: tuple[type[Event], ...] = (
    ConnectionOpened,
    TlsStarted,
    AuthAttempted,
    ConnectionClosed,
    HeloReceived,
    MailReceived,
    RcptReceived,
    TransactionEnded,
    TransactionRefused,
    PluginCalled,
    LoopBlocked,
    PluginBreaker,
    PluginMoved,
    MemoryGuarded,
    SandboxWorker,
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryBounced,
    Delivered,
    ConfigReloaded,
    StatsSampled,
    Gap,
)

for _cls in EVENT_TYPES:
    # Read by the encoder: the field names once per class, in declaration order.
    _cls.FIELDS = tuple(a.name for a in attrs.fields(_cls))
del _cls


def event_dict(event: Event, seq: int | None = None) -> dict[str, object]:
    """The JSON-ready form: ``v``, ``type``, ``seq`` (when known), then every field."""
    out: dict[str, object] = {"v": SCHEMA_VERSION, "type": event.TYPE}
    if seq is not None:
        out["seq"] = seq
    for name in event.FIELDS:
        out[name] = getattr(event, name)
    return out
