"""One delivery attempt of one message: every destination at once, under the limits.

Theory of operation: the pending recipients are grouped by domain and each group is delivered
in its own task (a message to three domains makes three connections at once). A group first
asks the ``send_email`` plugins (OK: a plugin delivered it), then takes the local route (the
``queue`` hook chain, as for inbound mail: how bounces reach local users) or the remote one:
``get_mx`` plugins or DNS give the hops, and the connection is made under the destination's
``CapacityLimiter`` (taken first, so a message waiting for a busy destination holds no global
slot) and the global one. A destination none of whose hosts could be reached is marked dead for
``dead_destination`` seconds: its other messages are deferred without trying, instead of each
waiting out the same connect timeouts. With ``destination_rate``, a group about to connect first
reserves its slot in the destination's token bucket (``RateLimits``) and sleeps until it is
due, before taking either limiter; the attempt's deadline (``attempt_timeout``) is then counted
from that time, so waiting for a busy destination's turn never times an attempt out.

``settle`` then folds the outcomes into the envelope (pure: no I/O), which is what the unit
tests exercise: 2xx delivered, 5xx failed, 4xx pending with the next attempt on the retry
schedule, and every pending recipient failed once the message is older than ``give_up``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from ..config import Config
from ..events import DeliveryAttempted, Event
from ..hooks import (
    Action,
    Connection,
    DeliveryReport,
    HookRunner,
    Message,
    MXHost,
    Result,
    Transaction,
)
from ..protocol import MailParams, RcptParams, Reply, parse_path
from ._deliver import Deliverer, GroupResult, Outcome, SMTPDeliverer
from ._rate import RateLimits
from ._records import Envelope, Recipient, Status
from ._route import Route, RouteError, Router
from ._schedule import retry_delay

log = logging.getLogger("trio_mta.queue")

EXPIRED = "4.4.7"


def outbound_connection(env: Envelope, message: bytes | None) -> Connection:
    """The connection plugins see during outbound hooks: ``listener == "queue"``."""
    sender = None
    if env.sender is not None:
        sender, _ = parse_path(
            f"<{env.sender}>", utf8=True, allow_null=False, allow_postmaster=True
        )
    txn = Transaction(
        id=env.id,
        sender=sender,
        mail_params=MailParams(
            body=env.body, smtputf8=env.smtputf8, ret=env.ret, envid=env.envid, verp=env.verp
        ),
        started=trio.current_time(),
    )
    for r in env.pending:
        address, _ = parse_path(
            f"<{r.address}>", utf8=True, allow_null=False, allow_postmaster=True
        )
        assert address is not None
        txn.recipients.append((address, RcptParams(r.notify, r.orcpt)))
    if message is not None:
        txn.message = Message()
        txn.message.write(message)
    conn = Connection(
        id=f"queue-{env.id}",
        listener="queue",
        client_ip=env.client,
        client_port=0,
        local_ip="",
        local_port=0,
        started=trio.current_time(),
    )
    conn.transaction = txn
    return conn


def _reply_of(result: Result, soft: Reply, hard: Reply) -> Reply:
    base = hard if result.action in (Action.DENY, Action.DENYDISCONNECT) else soft
    text = " ".join(result.message) if result.message else " ".join(base.text)
    return Reply(result.code or base.code, result.enhanced or base.enhanced, text)


class Attempt:
    """The delivery side of the queue service (shared by every attempt)."""

    def __init__(
        self,
        config: Config,
        *,
        router: Router,
        deliverer: Deliverer,
        runner: Callable[[], HookRunner | None],
        publish: Callable[[Event], None] | None = None,
        wanted: Callable[[], bool] = lambda: True,
        now: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.config = config
        self.publish = publish
        self.wanted = wanted
        self.now = now
        self.router = router
        self.deliverer = deliverer
        self.runner = runner
        self.local_domains = frozenset(config.server.local_domains)
        self.global_limit = trio.CapacityLimiter(config.queue.concurrency)
        self._limits: dict[str, trio.CapacityLimiter] = {}
        self.rates = RateLimits(config.queue.destination_rate, config.queue.destination_burst)
        self.dead_until: dict[str, float] = {}  # trio time

    def limiter(self, key: str) -> trio.CapacityLimiter:
        limiter = self._limits.get(key)
        if limiter is None:
            limiter = self._limits[key] = trio.CapacityLimiter(self.config.queue.per_destination)
        return limiter

    async def run(
        self,
        env: Envelope,
        message: bytes,
        outcomes: dict[str, Outcome],
        deadline: trio.CancelScope | None = None,
    ) -> None:
        """Deliver to every pending recipient; outcomes land in ``outcomes`` as they come
        (so a timed-out attempt keeps those that arrived in time). ``deadline``: the scope
        that times the attempt out, pushed back while a group waits for its rate slot."""
        groups: dict[str, tuple[Route, list[Recipient]]] = {}
        for r in env.pending:
            route = self.router.route(r.domain)  # a smart host takes every domain at once
            groups.setdefault(route.key, (route, []))[1].append(r)
        runner = self.runner()
        async with trio.open_nursery() as destinations:
            for route, recipients in groups.values():
                destinations.start_soon(
                    self._group, runner, env, route, recipients, message, outcomes, deadline
                )

    async def _group(
        self,
        runner: HookRunner | None,
        env: Envelope,
        route: Route,
        recipients: list[Recipient],
        message: bytes,
        out: dict[str, Outcome],
        deadline: trio.CancelScope | None = None,
    ) -> None:
        domain = route.domain

        def answer(reply: Reply, remote: str = "") -> None:
            out.update((r.address, Outcome(reply, remote)) for r in recipients)

        sub = attrs.evolve(env, recipients=tuple(recipients))
        conn = outbound_connection(sub, message) if runner is not None else None
        if runner is not None and conn is not None and runner.has("send_email"):
            report = DeliveryReport(env.id, domain, tuple(r.address for r in recipients))
            result, plugin = await runner.run("send_email", conn, report)
            if result.action is Action.OK:
                answer(Reply(250, "2.0.0", f"Delivered by plugin {plugin}"), "plugin")
                return
            if result.action.is_denial:
                soft = Reply(451, "4.3.0", "Deferred by plugin")
                answer(_reply_of(result, soft, Reply(550, "5.3.0", "Refused by plugin")))
                return
        if domain in self.local_domains and route.config is None:
            self._attempted(env, route, recipients, None)
            answer(*await self._local(runner, conn))
            return
        if self.dead_until.get(route.key, 0.0) > trio.current_time():
            answer(Reply(451, "4.4.1", f"Destination {route.key} not reachable lately"))
            return
        try:
            hosts = await self._get_mx(runner, conn, domain)
            with trio.fail_after(self.config.queue.dns_timeout):
                route = await self.router.plan(route, hosts)
        except RouteError as exc:
            answer(exc.reply)
            return
        except trio.TooSlowError:
            answer(Reply(451, "4.4.3", f"DNS lookup for {domain} timed out"))
            return
        due = self.rates.reserve(route.key)
        if due > trio.current_time():
            if deadline is not None:
                deadline.deadline = max(deadline.deadline, due + self.config.queue.attempt_timeout)
            await trio.sleep_until(due)
        async with self.limiter(route.key), self.global_limit:
            self._attempted(env, route, recipients, route.hops[0].name if route.hops else None)
            done: GroupResult
            if isinstance(self.deliverer, SMTPDeliverer):
                # Answers land in ``out`` as they come: a cut attempt keeps them.
                done = await self.deliverer.deliver(route, env, recipients, message, progress=out)
            else:
                done = await self.deliverer.deliver(route, env, recipients, message)
        if done.unreachable and self.config.queue.dead_destination > 0:
            self.dead_until[route.key] = trio.current_time() + self.config.queue.dead_destination
        else:
            self.dead_until.pop(route.key, None)
        out.update(done.outcomes)

    def _attempted(
        self, env: Envelope, route: Route, recipients: list[Recipient], host: str | None
    ) -> None:
        """``delivery.attempt``, only if someone listens (O(1) when nobody does)."""
        if self.publish is not None and self.wanted():
            self.publish(
                DeliveryAttempted(
                    ts=self.now(),
                    txn=env.id,
                    recipients=tuple(r.address for r in recipients),
                    domain=route.domain,
                    attempt=env.attempts + 1,
                    mx_host=host,
                    sender=env.sender or "",
                )
            )

    async def _get_mx(
        self, runner: HookRunner | None, conn: Connection | None, domain: str
    ) -> list[MXHost] | None:
        if runner is None or conn is None or not runner.has("get_mx"):
            return None
        hosts: list[MXHost] = []
        result, _ = await runner.run("get_mx", conn, domain, hosts)
        if result.action is Action.OK and hosts:
            return hosts
        if result.action.is_denial:
            soft = Reply(451, "4.4.3", "Routing deferred by plugin")
            raise RouteError(_reply_of(result, soft, Reply(550, "5.4.4", "No route (plugin)")))
        return None

    async def _local(self, runner: HookRunner | None, conn: Connection | None) -> tuple[Reply, str]:
        if runner is None or conn is None:
            return Reply(451, "4.3.0", "Local delivery is not available"), ""
        result, plugin = await runner.run("queue", conn)
        if result.action is Action.OK:
            return Reply(250, "2.0.0", f"Delivered locally by {plugin}"), "local"
        if result.action.is_denial:
            soft = Reply(451, "4.3.0", "Local delivery deferred")
            return _reply_of(result, soft, Reply(550, "5.3.0", "Local delivery refused")), "local"
        return Reply(451, "4.3.0", "No plugin delivers local mail"), ""

    async def notify(self, old: Envelope, new: Envelope) -> None:
        """The ``delivered`` and ``deferred`` hooks for what this attempt changed."""
        runner = self.runner()
        if runner is None or not (runner.has("delivered") or runner.has("deferred")):
            return
        conn = outbound_connection(old, None)
        before = {r.address: r for r in old.recipients}
        for r in new.recipients:
            if before[r.address].status is not Status.PENDING:
                continue
            hook = {Status.DELIVERED: "delivered", Status.PENDING: "deferred"}.get(r.status)
            if hook is not None and runner.has(hook):
                reply = Reply(r.code, r.enhanced or None, r.text) if r.code else None
                report = DeliveryReport(
                    new.id, r.domain, (r.address,), reply, r.remote or None, new.attempts
                )
                await runner.run_all(hook, conn, report)


def settle(
    env: Envelope,
    outcomes: dict[str, Outcome],
    *,
    now: float,
    retry_first: float,
    retry_max: float,
    give_up: float,
) -> Envelope:
    """The envelope after an attempt at wall-clock time ``now`` (see the module comment)."""
    expired = now - env.created >= give_up
    updated: list[Recipient] = []
    for r in env.recipients:
        if r.status is not Status.PENDING:
            updated.append(r)
            continue
        outcome = outcomes.get(r.address) or Outcome(Reply(451, "4.4.7", "No outcome"))
        reply = outcome.reply
        status = (
            Status.DELIVERED
            if reply.is_positive
            else Status.FAILED
            if reply.is_permanent
            else Status.PENDING
        )
        text = " ".join(reply.text)
        enhanced = reply.enhanced or ""
        if not enhanced:  # a server without ENHANCEDSTATUSCODES may still write one
            enhanced, text = _split_enhanced(reply.code, text)
        if status is Status.PENDING and expired:
            status = Status.FAILED
            text = f"Delivery time expired; last error: {text}"
            enhanced = EXPIRED
        updated.append(
            attrs.evolve(
                r,
                status=status,
                code=reply.code,
                enhanced=enhanced,
                text=text,
                remote=outcome.remote,
            )
        )
    attempts = env.attempts + 1
    delay = retry_delay(attempts, first=retry_first, maximum=retry_max)
    return attrs.evolve(env, recipients=tuple(updated), attempts=attempts, next_attempt=now + delay)


def _split_enhanced(code: int, text: str) -> tuple[str, str]:
    first, _, rest = text.partition(" ")
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(code)[0]:
        return first, rest
    return "", text


def newly(old: Envelope, new: Envelope, status: Status) -> list[Recipient]:
    """Recipients that were pending in ``old`` and have ``status`` in ``new``."""
    before = {r.address: r.status for r in old.recipients}
    return [r for r in new.recipients if r.status is status and before[r.address] is Status.PENDING]
