"""The queue service: spool recovery, the scheduler and the delivery workers, supervised.

Theory of operation
-------------------
``serve`` recovers the spool (every entry is scheduled again, corrupt ones set aside), then
runs in one supervisor nursery: the scheduler (sleeps until the next due time), the dispatcher
(takes a slot of the active window, then the next due id, and starts a worker task for it).
Only then does it report ready, and the SMTP listeners start after it. ``commands`` gives the
``queue.*`` handlers of the control socket (``_commands``): hold, release, delete and flush act
on this running service at once.

``submit`` is the server's way in: the envelope and the message are stored durably (shielded
from cancellation: once the data is on its way to disk the entry will exist, so it must also
be scheduled) before the queue id is returned and the client gets its 250.

A worker runs one attempt under ``attempt_timeout``. The attempt is the isolation boundary: an
exception in it (a bug) is logged and counts as a temporary failure of every pending recipient,
so the message is retried on the usual schedule and the supervisor never dies of it. After the
attempt the bounces are stored first, then the envelope is updated or the entry removed: a
crash in between may repeat a bounce, never lose one.

Delivery events (``delivery.*``) go out through the injected ``publish`` callable, and are not
even built unless ``wanted()`` says someone listens: the attempt publishes ``delivery.attempt``
per destination, ``_published`` one outcome event per domain, host and reply after it.

Invariants: ``envelopes`` holds every entry in the spool (waiting, active or held); an id is
waiting in the scheduler, active in one worker, or held; the active window bounds the number
of workers (and so the messages in memory).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple, Unpack

import attrs
import trio

from ..config import Config
from ..control import Handler
from ..events import Delivered, DeliveryBounced, DeliveryDeferred, Event
from ..hooks import Connection, HookRunner
from ..protocol import Reply
from ..resolver import Resolver
from ._attempt import Attempt, newly, settle
from ._commands import QueueCommands
from ._deliver import Deliverer, Outcome, SMTPDeliverer
from ._notices import Notices
from ._records import Envelope, Recipient, Status
from ._route import Router
from ._schedule import Scheduler
from ._spool import Spool

log = logging.getLogger("trio_mta.queue")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
_SMALL = 256 * 1024  # messages up to this size are read on the event loop
_PARALLEL = 256  # envelope writes of one queue command in flight at once


def spool_root(config: Config) -> Path:
    return (
        Path(config.queue.directory) if config.queue.directory else config.server.var_dir / "queue"
    )


class QueueIds:
    """Ids for the messages the queue makes itself (bounces), unique across restarts."""

    def __init__(self) -> None:
        self._salt = os.urandom(3).hex()
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        return f"{int(time.time()):x}{self._salt}b{self._count:05x}"


@attrs.define
class QueueStats:
    accepted: int = 0
    attempts: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    bounces: int = 0
    crashes: int = 0


class QueueService:
    def __init__(
        self,
        config: Config,
        *,
        resolver: Resolver,
        runner: Callable[[], HookRunner | None] = lambda: None,
        deliverer: Deliverer | None = None,
        now: Callable[[], float] = time.time,
        ids: Callable[[], str] | None = None,
        pid_file: bool = False,
        spool: Spool | None = None,
        publish: Callable[[Event], None] | None = None,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        q = config.queue
        self.config = config
        self.spool = spool or Spool(spool_root(config), fsync=q.fsync)
        self.now = now
        self.ids = ids or QueueIds()
        self.pid_file = pid_file
        self.scheduler = Scheduler()
        deliverer = deliverer or SMTPDeliverer(
            helo=config.server.hostname, connect_timeout=q.connect_timeout
        )
        self.publish = publish
        self.wanted = wanted
        self.attempt = Attempt(
            config,
            router=Router(config, resolver),
            deliverer=deliverer,
            runner=runner,
            publish=publish,
            wanted=wanted,
            now=now,
        )
        self.runner = runner
        self.notices = Notices(config, ids=self.ids, now=now, runner=runner)
        self.envelopes: dict[str, Envelope] = {}
        self.corrupt: list[tuple[str, str]] = []
        self.stats = QueueStats()
        self.ready = trio.Event()
        self._deleted: set[str] = set()
        self._window = trio.Semaphore(q.active_window)
        self._changed = trio.Event()
        self.active = 0  # attempts running
        self.stopping = False  # no new attempt starts (shutdown)

    # ------------------------------------------------------------------ the server's side

    async def submit(self, conn: Connection) -> str:
        """``hooks.OutboundQueue``: store ``conn.transaction`` durably, schedule it."""
        txn = conn.transaction
        assert txn is not None
        if not self.ready.is_set():
            raise RuntimeError("the queue is not running")
        now = self.now()
        recipients = tuple(
            Recipient(
                str(a) if a.domain else f"{a}@{self.config.server.hostname}", p.notify, p.orcpt
            )
            for a, p in txn.recipients
        )
        params = txn.mail_params
        env = Envelope(
            id=txn.id,
            sender=str(txn.sender) if txn.sender is not None else None,
            recipients=recipients,
            created=now,
            next_attempt=now,
            ret=params.ret,
            envid=params.envid,
            smtputf8=params.smtputf8,
            body=params.body,
            client=conn.client_ip,
            verp=params.verp,  # XVERP, or a plugin's (verp's senders): one sender per recipient
        )
        with trio.CancelScope(shield=True):
            env = await self.spool.store(env, txn.iter_message())
            self._accept(env)
        self.stats.accepted += 1
        return env.id

    def _accept(self, env: Envelope) -> None:
        self.envelopes[env.id] = env
        if not env.held:
            self.scheduler.add(env.id, self._trio_time(env.next_attempt))

    def _trio_time(self, wall: float) -> float:
        return trio.current_time() + max(0.0, wall - self.now())

    # ------------------------------------------------------------------ running

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # On the event loop, on purpose: nothing is served yet, and a thread here would let a
        # test's autojump clock run ahead of the start-up.
        envelopes, corrupt = self.spool.recover()
        await trio.lowlevel.checkpoint()
        self.corrupt.extend(corrupt)
        for env in envelopes:
            self._accept(env)
        if envelopes or corrupt:
            log.info("queue: recovered %d entries, %d corrupt", len(envelopes), len(corrupt))
        pid_file = self.spool.root / "daemon.pid"
        try:
            async with trio.open_nursery() as supervisor:
                send, receive = trio.open_memory_channel[str](0)
                supervisor.start_soon(self.scheduler.run, send, name="queue scheduler")
                supervisor.start_soon(self._dispatch, receive, supervisor, name="queue dispatch")
                deliverer = self.attempt.deliverer
                if isinstance(deliverer, SMTPDeliverer):
                    supervisor.start_soon(deliverer.sessions.reap, name="queue session reaper")
                if self.pid_file:
                    pid_file.write_text(f"{os.getpid()}\n")
                self.ready.set()
                task_status.started()
        finally:
            if self.pid_file:
                pid_file.unlink(missing_ok=True)
            with trio.move_on_after(5, shield=True):
                await self.spool.aclose()

    async def _dispatch(
        self, receive: trio.MemoryReceiveChannel[str], supervisor: trio.Nursery
    ) -> None:
        while True:
            await self._window.acquire()
            id = await receive.receive()
            if self.stopping:  # stays in the spool, for the next start
                self._window.release()
                self.scheduler.done(id)
                continue
            self.active += 1
            supervisor.start_soon(self._work, id, name=f"queue worker {id}")

    def stop_delivering(self) -> None:
        """Shutdown, first step: start no more attempts (what is due stays in the spool for
        the next start); those running go on. ``wait_idle`` waits for them."""
        self.stopping = True
        self._notify_changed()

    async def wait_idle(self) -> None:
        """Until no attempt is running. A daemon stopping waits here (bounded by its drain
        time) before it cancels the queue: an attempt cut after the final dot was sent may
        have delivered the message without our knowing, and it would go again after the
        restart (RFC 1047's duplicate)."""
        await self.wait_until(lambda: self.active == 0)

    async def _work(self, id: str) -> None:
        env = self.envelopes.get(id)
        try:
            if env is not None and id in self._deleted:
                # Deleted between the scheduler's pick and this start: the delete left the
                # removal to us, as to a running attempt.
                await self.spool.remove(id)
                self.envelopes.pop(id, None)
                self._deleted.discard(id)
                return
            if env is None or env.held:
                return
            try:
                message = await self._read(env)
                outcomes: dict[str, Outcome] = {}
                with trio.move_on_after(self.config.queue.attempt_timeout) as deadline:
                    await self.attempt.run(env, message, outcomes, deadline)
                env = await self._finish(env, outcomes, message)
            except Exception as exc:  # the isolation boundary of one attempt
                log.exception("queue: attempt for %s crashed; retrying later", id)
                self.stats.crashes += 1
                if id in self.envelopes:
                    # Kept in memory only (the disk may be what failed): the back-off grows.
                    failure = Outcome(Reply(451, "4.3.0", f"Internal error: {exc!r}"[:200]))
                    outcomes = dict.fromkeys((r.address for r in env.pending), failure)
                    old, env = env, settle(env, outcomes, **self._retry())
                    self.envelopes[id] = env
                    self._published(old, env)
        finally:
            self.active -= 1
            self.scheduler.done(id)
            self._window.release()
            current = self.envelopes.get(id)
            if current is not None and not current.held and env is not None:
                self.scheduler.add(id, self._trio_time(env.next_attempt))
            self._notify_changed()

    async def _read(self, env: Envelope) -> bytes:
        path = self.spool.message_path(env.id)
        if env.size <= _SMALL:
            return path.read_bytes()
        return await self._blocking(path.read_bytes)

    async def _blocking(self, fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
        """Disk work in a thread (on the event loop for an ``inline`` test spool)."""
        if self.spool.inline:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args)

    def _retry(self) -> dict[str, float]:
        q = self.config.queue
        return {
            "now": self.now(),
            "retry_first": q.retry_first,
            "retry_max": q.retry_max,
            "give_up": q.give_up,
        }

    async def _finish(
        self, old: Envelope, outcomes: dict[str, Outcome], message: bytes
    ) -> Envelope:
        new = settle(old, outcomes, **self._retry())
        self.stats.attempts += 1
        await self.attempt.notify(old, new)
        self._published(old, new)
        failed = newly(old, new, Status.FAILED)
        delivered = newly(old, new, Status.DELIVERED)
        self.stats.delivered += len(delivered)
        self.stats.failed += len(failed)
        self.stats.deferred += len(new.pending)
        for r in (*delivered, *failed):
            log.info(
                "queue: %s to=<%s> %s %s [%s]",
                new.id,
                r.address,
                r.status.value,
                f"{r.code} {r.enhanced} {r.text}",
                r.remote,
            )
        notices = await self.notices.for_attempt(new, failed, delivered, message)
        if not new.done:
            due, delayed = await self.notices.for_delay(new, message)
            if due:  # stored before the envelope says so: a crash may repeat it, not lose it
                notices += delayed
                new = attrs.evolve(new, delay_warned=True)
        for notice, data in notices:
            stored = await self.spool.store(notice, [data])
            self._accept(stored)
            self.stats.bounces += 1
        current = self.envelopes.get(old.id)
        if new.done or old.id in self._deleted:
            await self.spool.remove(old.id)
            self.envelopes.pop(old.id, None)
            self._deleted.discard(old.id)
            return new
        new = attrs.evolve(new, held=current.held if current is not None else False)
        await self.spool.update(new)
        self.envelopes[old.id] = new
        return new

    def _published(self, old: Envelope, new: Envelope) -> None:
        """``delivery.delivered``, ``.deferred`` and ``.bounced`` for what this attempt
        changed: one event per domain, answering host and reply. Skipped when nobody
        listens."""
        if self.publish is None or not self.wanted():
            return
        before = {r.address: r.status for r in old.recipients}
        groups: dict[tuple[Status, str, str, int, str], list[str]] = {}
        for r in new.recipients:
            if before[r.address] is Status.PENDING:
                reply = f"{r.enhanced} {r.text}" if r.enhanced else r.text
                key = (r.status, r.domain, r.remote, r.code, reply)
                groups.setdefault(key, []).append(r.address)
        now = self.now()
        sender, delay = new.sender or "", max(0.0, now - new.created)
        for (status, domain, remote, code, reply), addresses in groups.items():
            recipients, host = tuple(addresses), remote or None
            event: Event
            if status is Status.DELIVERED:
                event = Delivered(
                    ts=now, txn=new.id, recipients=recipients, domain=domain,
                    attempt=new.attempts, mx_host=host, code=code, reply=reply,
                    sender=sender, delay=delay,
                )  # fmt: skip
            elif status is Status.FAILED:
                event = DeliveryBounced(
                    ts=now, txn=new.id, recipients=recipients, domain=domain,
                    attempt=new.attempts, mx_host=host, code=code or None, reply=reply,
                    sender=sender, delay=delay,
                )  # fmt: skip
            else:
                event = DeliveryDeferred(
                    ts=now, txn=new.id, recipients=recipients, domain=domain,
                    attempt=new.attempts, mx_host=host, code=code or None, reply=reply,
                    until=new.next_attempt, sender=sender, delay=delay,
                )  # fmt: skip
            self.publish(event)

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds, checked after every attempt (for tests and drains)."""
        while not predicate():
            await self._changed.wait()

    # ------------------------------------------------------------------ control

    def commands(self) -> dict[str, Handler]:
        """The ``queue.*`` commands for the control socket (``_commands``)."""
        return QueueCommands(self).handlers()

    async def hold_ids(self, ids: list[str], *, held: bool) -> list[str]:
        """Hold ``ids`` (no attempt starts until released) or release them (due now); the
        ids acted on. The schedule changes at once; the envelopes are then written together
        (one group commit for many), shielded: an operator's hold is never half on disk."""
        found = [id for id in ids if id in self.envelopes]
        writes: list[Envelope] = []
        for id in found:
            env = self.envelopes[id]
            if not held and not env.held:
                continue  # not held: only made due now, below (nothing to write)
            if held:
                self.scheduler.discard(id)  # first: it cannot start while we write
            env = attrs.evolve(env, held=held, next_attempt=env.next_attempt if held else 0.0)
            self.envelopes[id] = env
            if id not in self.scheduler.active:  # else the attempt's end writes it
                writes.append(env)
        with trio.CancelScope(shield=True):
            await self._each(self.spool.update, writes)
        if not held:  # after the writes: an attempt's own update must come after ours
            now = trio.current_time()
            for id in found:
                if id in self.envelopes and not self.envelopes[id].held:
                    self.scheduler.add(id, now)
        return found

    async def delete_ids(self, ids: list[str]) -> list[str]:
        """Remove ``ids`` from the spool (after its attempt, for one that runs); the ids."""
        found = [id for id in ids if id in self.envelopes]
        removals = []
        for id in found:
            self._deleted.add(id)
            self.scheduler.discard(id)
            if id not in self.scheduler.active:
                removals.append(id)

        async def remove(id: str) -> None:
            await self.spool.remove(id)
            self.envelopes.pop(id, None)
            self._deleted.discard(id)

        with trio.CancelScope(shield=True):
            await self._each(remove, removals)
        return found

    async def _each(self, fn: Callable[[T], Awaitable[object]], items: list[T]) -> None:
        """``fn`` on every item at once (at most ``_PARALLEL`` at a time), so the spool's
        writer takes them in a few batches instead of one disk sync each."""
        limit = trio.Semaphore(_PARALLEL)

        async def one(item: T) -> None:
            try:
                await fn(item)
            finally:
                limit.release()

        async with trio.open_nursery() as nursery:
            for item in items:
                await limit.acquire()
                nursery.start_soon(one, item)

    def flush_ids(self, ids: list[str]) -> list[str]:
        """Every id of ``ids`` that waits for its retry is due now, and its destinations are
        no longer skipped as dead. Held ones stay held; running ones are running."""
        waiting = set(self.scheduler.ids_waiting())
        flushed = [id for id in ids if id in waiting]
        now = trio.current_time()
        for id in flushed:
            self.scheduler.add(id, now)
        if flushed:  # the operator wants a try now, even where a destination seemed dead
            self.attempt.dead_until.clear()
        return flushed

    def statistics(self) -> dict[str, int]:
        held = sum(1 for e in self.envelopes.values() if e.held)
        return {
            "entries": len(self.envelopes),
            "held": held,
            "active": len(self.scheduler.active),
            "waiting": len(self.scheduler),
            "corrupt": len(self.corrupt),
            **attrs.asdict(self.stats),
        }
