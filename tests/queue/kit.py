"""A queue service on a temporary spool with a scripted deliverer, a static resolver and a wall
clock that follows the trio clock (so ``autojump_clock`` drives retries and expiry)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import trio

from trio_mta.config import Config, QueueConfig, RouteConfig, ServerConfig
from trio_mta.events import Event
from trio_mta.hooks import Connection, HookRunner, Message, Transaction
from trio_mta.protocol import Address, MailParams, RcptParams, Reply
from trio_mta.queue import (
    Envelope,
    GroupResult,
    Outcome,
    QueueService,
    Recipient,
    Route,
    Spool,
    spool_root,
)
from trio_mta.resolver import StaticResolver

EPOCH = 1_700_000_000.0
BODY = b"From: a@sender.test\r\nSubject: hi\r\n\r\nbody\r\n"
RESOLVER = StaticResolver(
    mx={"dest.test": [(10, "mx.dest.test")], "other.test": [(10, "mx.other.test")],
        "sender.test": [(10, "mx.sender.test")]},
    a={"mx.dest.test": ["192.0.2.1"], "mx.other.test": ["192.0.2.2"],
       "mx.sender.test": ["192.0.2.3"], "mx.example.test": ["192.0.2.5"]},
)  # fmt: skip


@attrs.frozen
class Call:
    time: float
    key: str
    recipients: tuple[str, ...]
    sender: str | None
    message: bytes = attrs.field(repr=False, default=b"")
    hops: tuple[tuple[str, int], ...] = ()


def default_reply(address: str, attempt: int) -> Reply:
    """By local part: reject… 550, defer… 451 always, late… 451 on the first attempt."""
    local = address.split("@")[0]
    if local.startswith("reject"):
        return Reply(550, "5.1.1", "No such user")
    if local.startswith("defer") or (local.startswith("late") and attempt == 1):
        return Reply(451, "4.7.1", "Try later")
    return Reply(250, "2.0.0", "OK")


class FakeDeliverer:
    """Answers per recipient with ``reply(address, attempt_number)``; can take time, fail,
    or mark a destination unreachable; keeps every call and the peak concurrency."""

    def __init__(
        self,
        reply: Callable[[str, int], Reply] = default_reply,
        *,
        seconds: float = 0.0,
        unreachable: Sequence[str] = (),
        crash_first: int = 0,
    ) -> None:
        self.reply = reply
        self.seconds = seconds
        self.unreachable = set(unreachable)
        self.crash_first = crash_first
        self.calls: list[Call] = []
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.seen: dict[str, int] = {}

    async def deliver(
        self, route: Route, envelope: Envelope, recipients: Sequence[Recipient], message: bytes
    ) -> GroupResult:
        self.calls.append(
            Call(trio.current_time(), route.key, tuple(r.address for r in recipients),
                 envelope.sender, message, tuple((h.address, h.port) for h in route.hops))
        )  # fmt: skip
        if self.crash_first > 0:
            self.crash_first -= 1
            raise RuntimeError("deliverer bug")
        self.active[route.key] = self.active.get(route.key, 0) + 1
        self.peak[route.key] = max(self.peak.get(route.key, 0), self.active[route.key])
        self.peak_total = max(self.peak_total, sum(self.active.values()))
        try:
            await trio.sleep(self.seconds)
        finally:
            self.active[route.key] -= 1
        if route.key in self.unreachable:
            failure = Outcome(Reply(451, "4.4.1", "No host could be reached"))
            return GroupResult({r.address: failure for r in recipients}, unreachable=True)
        outcomes = {}
        for r in recipients:
            self.seen[r.address] = self.seen.get(r.address, 0) + 1
            reply = self.reply(r.address, self.seen[r.address])
            outcomes[r.address] = Outcome(reply, route.hops[0].name if route.hops else "")
        return GroupResult(outcomes)


def make_config(var_dir: Path, *, routes: tuple[RouteConfig, ...] = (), **queue: object) -> Config:
    settings: dict[str, object] = {"fsync": False, "dead_destination": 0.0, **queue}
    return attrs.evolve(
        Config(),
        server=ServerConfig(var_dir=var_dir, hostname="mx.example.test"),
        queue=attrs.evolve(QueueConfig(), **settings),  # type: ignore[arg-type]  # test knobs
        routes=routes,
    )


def make_service(
    var_dir: Path,
    deliverer: FakeDeliverer,
    *,
    runner: Callable[[], HookRunner | None] = lambda: None,
    routes: tuple[RouteConfig, ...] = (),
    resolver: StaticResolver = RESOLVER,
    publish: Callable[[Event], None] | None = None,
    wanted: Callable[[], bool] = lambda: True,
    **queue: object,
) -> QueueService:
    config = make_config(var_dir, routes=routes, **queue)
    return QueueService(
        config,
        spool=Spool(spool_root(config), fsync=config.queue.fsync, inline=True),
        resolver=resolver,
        deliverer=deliverer,
        runner=runner,
        now=lambda: EPOCH + trio.current_time(),
        publish=publish,
        wanted=wanted,
    )


_ids = iter(range(1, 1_000_000))


def connection(
    sender: str | None,
    recipients: Sequence[str],
    body: bytes = BODY,
    *,
    notify: tuple[str, ...] = (),
    ret: str | None = None,
) -> Connection:
    def address(text: str) -> Address:
        local, _, domain = text.rpartition("@")
        return Address(local, domain)

    conn = Connection("c1", "mx", "192.0.2.9", 4000, "127.0.0.1", 25, 0.0)
    txn = Transaction(
        id=f"msg{next(_ids):06d}",
        sender=address(sender) if sender else None,
        mail_params=MailParams(ret=ret),
        started=0.0,
    )
    txn.recipients = [(address(r), RcptParams(notify=notify)) for r in recipients]
    txn.message = Message()
    txn.message.write(body)
    conn.transaction = txn
    return conn


async def started(nursery: trio.Nursery, service: QueueService) -> QueueService:
    await nursery.start(service.serve)
    return service


async def until_empty(service: QueueService, cap: float = math.inf) -> None:
    with trio.fail_after(cap):
        await service.wait_until(lambda: not service.envelopes)
