"""VERP in the queue: the envelope keeps the delimiters on disk, the deliverer sends one
transaction per recipient (sharing a session, surviving a break in the middle), and our own
notices go per recipient to the address its copy was sent from."""

from __future__ import annotations

import email
import email.policy
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import cast

import attrs
import pytest
import trio
import trio.testing

from tests.queue.kit import (
    BODY,
    EPOCH,
    RESOLVER,
    FakeDeliverer,
    connection,
    make_config,
    make_service,
    started,
    until_empty,
)
from trio_mta.config import TlsPolicy
from trio_mta.events import Delivered, DeliveryAttempted, DeliveryBounced, Event
from trio_mta.hooks import SendResult, SMTPClient, SMTPClientError
from trio_mta.protocol import Address, MailParams, Reply
from trio_mta.queue import (
    CorruptEntry,
    Envelope,
    Hop,
    QueueService,
    Recipient,
    Route,
    SMTPDeliverer,
    Spool,
    spool_root,
)
from trio_mta.queue._deliver import transactions
from trio_mta.queue._records import dumps, loads

LIST = "list-bounces@sender.test"


def envelope(recipients: Sequence[str], *, verp: str | None = "+=", **fields: object) -> Envelope:
    return Envelope(
        id="Q1",
        sender=LIST,
        recipients=tuple(Recipient(r) for r in recipients),
        created=EPOCH,
        next_attempt=EPOCH,
        verp=verp,
        **fields,  # type: ignore[arg-type]  # the optional fields, by name
    )


# -- the record ---------------------------------------------------------------------------------


def test_the_delimiters_are_kept_on_disk() -> None:
    env = envelope(["alice@remote.example"], verp="-=")
    assert loads(dumps(env)) == env
    assert json.loads(dumps(env))["verp"] == "-="
    assert loads(dumps(attrs.evolve(env, verp=None))).verp is None


def test_an_envelope_written_before_verp_reads_back_without_it() -> None:
    raw = json.loads(dumps(envelope(["alice@remote.example"])))
    del raw["verp"]
    assert loads(json.dumps(raw).encode()).verp is None


@pytest.mark.parametrize("bad", ["+", "ab", "+=+", 1, ["+", "="]])
def test_bad_delimiters_on_disk_make_a_corrupt_entry(bad: object) -> None:
    raw = json.loads(dumps(envelope(["alice@remote.example"])))
    raw["verp"] = bad
    with pytest.raises(CorruptEntry, match="VERP"):
        loads(json.dumps(raw).encode())


def test_return_path_per_recipient() -> None:
    env = envelope(["alice@remote.example", '"a b"@remote.example', "b" * 50 + "@remote.example"])
    assert [env.return_path(r.address) for r in env.recipients] == [
        "list-bounces+alice=remote.example@sender.test",
        '"list-bounces+a b=remote.example"@sender.test',
        LIST,  # over 64 octets folded: our own server would refuse it back, so the plain one
    ]
    assert attrs.evolve(env, verp=None).return_path("alice@remote.example") == LIST
    assert attrs.evolve(env, sender=None).return_path("alice@remote.example") is None


def test_one_transaction_per_recipient() -> None:
    env = envelope(["a@dest.test", "b@dest.test"])
    recipients = env.recipients
    assert transactions(env, recipients) == [
        ("list-bounces+a=dest.test@sender.test", [recipients[0]]),
        ("list-bounces+b=dest.test@sender.test", [recipients[1]]),
    ]
    assert transactions(attrs.evolve(env, verp=None), recipients) == [(LIST, recipients)]


def test_a_recipient_too_long_to_fold_is_sent_from_the_plain_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    long = "b" * 50 + "@dest.test"
    env = envelope(["a@dest.test", long])
    with caplog.at_level(logging.WARNING, "trio_mta.queue"):
        senders = [sender for sender, _ in transactions(env, env.recipients)]
    assert senders == ["list-bounces+a=dest.test@sender.test", LIST]
    [warning] = caplog.records
    assert warning.getMessage().startswith(f"queue: Q1 to=<{long}>: sent without VERP")


# -- the deliverer ------------------------------------------------------------------------------


@attrs.define
class FakeClient:
    """Stands in for ``SMTPClient``: records each transaction; the ``breaks``-th one (counted
    from 1 on this session) fails as a broken session does."""

    hop: str
    log: list[tuple[str, int, str, tuple[str, ...]]]
    serial: int  # which session this is (ids of dead objects get reused)
    breaks: int = 0
    capabilities: frozenset[str] = frozenset({"PIPELINING"})
    count: int = 0
    refuse: frozenset[str] = frozenset()  # recipients answered 550 at RCPT
    seconds: float = 0.0  # each transaction takes this long

    async def send_message(
        self,
        sender: Address | None,
        recipients: Sequence[Address],
        chunks: Sequence[bytes],
        **_: object,
    ) -> SendResult:
        await trio.sleep(self.seconds)
        self.count += 1
        if self.count == self.breaks:
            raise SMTPClientError("connection lost")
        self.log.append((self.hop, self.serial, str(sender), tuple(str(r) for r in recipients)))
        ok, no = Reply(250, "2.1.5", "OK"), Reply(550, "5.1.1", "No such user")
        rcpt = tuple(no if str(r) in self.refuse else ok for r in recipients)
        if all(r is no for r in rcpt):
            return SendResult(tuple(recipients), ok, rcpt, None)
        final = Reply(250, "2.0.0", "queued")
        return SendResult(tuple(recipients), ok, rcpt, final, sent=True)


class ScriptedDeliverer(SMTPDeliverer):
    """``SMTPDeliverer`` whose sessions are ``FakeClient``s: ``breaks[hop]`` says which
    transaction of that hop's first session fails."""

    def __init__(
        self,
        breaks: dict[str, int] | None = None,
        refuse: frozenset[str] = frozenset(),
        seconds: float = 0.0,
    ) -> None:
        super().__init__(helo="mx.example.test", connect_timeout=5.0)
        self.breaks = dict(breaks or {})
        self.refuse = refuse
        self.seconds = seconds
        self.log: list[tuple[str, int, str, tuple[str, ...]]] = []
        self.opened = 0

    def _open(self, route: Route, hop: Hop) -> AbstractAsyncContextManager[SMTPClient]:
        return self._fake(hop)

    @asynccontextmanager
    async def _fake(self, hop: Hop) -> AsyncIterator[SMTPClient]:
        await trio.lowlevel.checkpoint()
        self.opened += 1
        breaks = self.breaks.pop(hop.name, 0)
        fake = FakeClient(
            hop.name, self.log, self.opened, breaks=breaks, refuse=self.refuse, seconds=self.seconds
        )
        yield cast(SMTPClient, fake)  # the deliverer uses only what FakeClient has


ROUTE = Route(
    "dest.test",
    "dest.test",
    None,
    TlsPolicy.NEVER,
    25,
    (Hop("mx1", "192.0.2.1", 25), Hop("mx2", "192.0.2.2", 25)),
)


async def test_three_recipients_three_transactions_on_one_session() -> None:
    deliverer = ScriptedDeliverer()
    env = envelope(["a@dest.test", "b@dest.test", "c@dest.test"])
    result = await deliverer.deliver(ROUTE, env, env.recipients, BODY)
    assert {a: o.reply.code for a, o in result.outcomes.items()} == dict.fromkeys(
        ("a@dest.test", "b@dest.test", "c@dest.test"), 250
    )
    assert [(hop, sender, rcpts) for hop, _, sender, rcpts in deliverer.log] == [
        ("mx1", "list-bounces+a=dest.test@sender.test", ("a@dest.test",)),
        ("mx1", "list-bounces+b=dest.test@sender.test", ("b@dest.test",)),
        ("mx1", "list-bounces+c=dest.test@sender.test", ("c@dest.test",)),
    ]
    assert len({session for _, session, _, _ in deliverer.log}) == 1
    await deliverer.sessions.aclose()


async def test_without_verp_one_transaction_for_all() -> None:
    deliverer = ScriptedDeliverer()
    env = envelope(["a@dest.test", "b@dest.test"], verp=None)
    await deliverer.deliver(ROUTE, env, env.recipients, BODY)
    assert [(s, r) for _, _, s, r in deliverer.log] == [(LIST, ("a@dest.test", "b@dest.test"))]
    await deliverer.sessions.aclose()


async def test_a_session_breaking_midway_keeps_the_answers_given() -> None:
    # mx1's session breaks at the second transaction: a's answer stands, b and c go to mx2.
    deliverer = ScriptedDeliverer({"mx1": 2})
    env = envelope(["a@dest.test", "b@dest.test", "c@dest.test"])
    result = await deliverer.deliver(ROUTE, env, env.recipients, BODY)
    assert [(hop, rcpts) for hop, _, _, rcpts in deliverer.log] == [
        ("mx1", ("a@dest.test",)),
        ("mx2", ("b@dest.test",)),
        ("mx2", ("c@dest.test",)),
    ]
    assert {a: (o.reply.code, o.remote) for a, o in result.outcomes.items()} == {
        "a@dest.test": (250, "mx1[192.0.2.1]"),
        "b@dest.test": (250, "mx2[192.0.2.2]"),
        "c@dest.test": (250, "mx2[192.0.2.2]"),
    }
    await deliverer.sessions.aclose()


async def test_a_parked_session_that_breaks_midway_reconnects_for_the_rest() -> None:
    # mx1's first session fails at its third transaction: the second message's second one.
    deliverer = ScriptedDeliverer({"mx1": 3})
    first = envelope(["a@dest.test"])
    await deliverer.deliver(ROUTE, first, first.recipients, BODY)  # the session is parked
    second = envelope(["b@dest.test", "c@dest.test"])
    result = await deliverer.deliver(ROUTE, second, second.recipients, BODY)
    assert all(o.reply.code == 250 for o in result.outcomes.values())
    assert [(hop, r) for hop, _, _, r in deliverer.log] == [
        ("mx1", ("a@dest.test",)),
        ("mx1", ("b@dest.test",)),
        ("mx1", ("c@dest.test",)),
    ]
    sessions = [session for _, session, _, _ in deliverer.log]
    assert sessions[0] == sessions[1] != sessions[2]  # reused, then a fresh one for c
    await deliverer.sessions.aclose()


# -- notices ------------------------------------------------------------------------------------


async def store(tmp_path: Path, env: Envelope) -> None:
    """Put ``env`` in the spool as a daemon that accepted it before it stopped would have."""
    spool = Spool(spool_root(make_config(tmp_path)), fsync=False, inline=True)
    spool.create()
    await spool.store(env, [BODY])


async def test_bounces_go_per_recipient_to_the_verp_address(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await store(
        tmp_path,
        attrs.evolve(
            envelope(["reject1@dest.test", "reject2@dest.test", "ok@dest.test"]),
            recipients=(
                Recipient("reject1@dest.test"),
                Recipient("reject2@dest.test"),
                Recipient("ok@dest.test", notify=("SUCCESS",)),
            ),
        ),
    )
    fake = FakeDeliverer()
    service = await started(nursery, make_service(tmp_path, fake))
    await until_empty(service)
    notices = [c for c in fake.calls if c.sender is None]
    assert sorted(c.recipients for c in notices) == [
        ("list-bounces+ok=dest.test@sender.test",),
        ("list-bounces+reject1=dest.test@sender.test",),
        ("list-bounces+reject2=dest.test@sender.test",),
    ]
    for notice in notices:
        report = email.message_from_bytes(notice.message, policy=email.policy.compat32)
        [to] = notice.recipients
        assert report["To"] == f"<{to}>"
        # Each report is about its own recipient only.
        folded = to.split("+", 1)[1].split("@")[0].replace("=", "@")
        assert f"Final-Recipient: rfc822; {folded}".encode() in notice.message
        assert notice.message.count(b"Final-Recipient:") == 1


async def test_submit_keeps_the_delimiters(nursery: trio.Nursery, tmp_path: Path) -> None:
    service = await started(nursery, make_service(tmp_path, FakeDeliverer()))
    conn = connection(LIST, ["a@dest.test"])
    assert conn.transaction is not None
    conn.transaction.mail_params = MailParams(verp="+=")
    id = await service.submit(conn)
    assert service.spool.read(id).verp == "+="


def scripted_service(
    tmp_path: Path,
    deliverer: ScriptedDeliverer,
    publish: Callable[[Event], None] | None = None,
    *,
    attempt_timeout: float = 600.0,
    retry_first: float = 60.0,
) -> QueueService:
    """A queue service (on the trio clock) whose SMTP sessions are ``FakeClient``s."""
    config = make_config(tmp_path, attempt_timeout=attempt_timeout, retry_first=retry_first)
    return QueueService(
        config,
        spool=Spool(spool_root(config), fsync=False, inline=True),
        resolver=RESOLVER,
        deliverer=deliverer,
        now=lambda: EPOCH + trio.current_time(),
        publish=publish,
    )


async def test_an_attempt_cut_by_its_deadline_keeps_the_transactions_done(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Three transactions of 10 s each against a 25 s attempt: a and b are done when it is cut.
    await store(tmp_path, envelope(["a@dest.test", "b@dest.test", "c@dest.test"]))
    deliverer = ScriptedDeliverer(seconds=10.0)
    service = await started(
        nursery, scripted_service(tmp_path, deliverer, attempt_timeout=25.0, retry_first=60.0)
    )
    t0 = trio.current_time()
    await until_empty(service)
    sent = [(rcpts, serial) for _, serial, _, rcpts in deliverer.log]
    assert [rcpts for rcpts, _ in sent] == [("a@dest.test",), ("b@dest.test",), ("c@dest.test",)]
    assert trio.current_time() - t0 == pytest.approx(25.0 + 60.0 + 10.0)  # c, on the retry


async def test_events_and_logs_stay_per_recipient(
    nursery: trio.Nursery,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trio_mta.queue")
    await store(tmp_path, envelope(["a@dest.test", "reject@dest.test", "b@other.test"]))
    events: list[Event] = []
    deliverer = ScriptedDeliverer(refuse=frozenset({"reject@dest.test"}))
    service = await started(nursery, scripted_service(tmp_path, deliverer, events.append))
    await until_empty(service)
    ours = [e for e in events if e.txn == "Q1"]
    attempted = sorted((e.domain, e.recipients) for e in ours if isinstance(e, DeliveryAttempted))
    assert attempted == [
        ("dest.test", ("a@dest.test", "reject@dest.test")),
        ("other.test", ("b@other.test",)),
    ]
    delivered = sorted(r for e in ours if isinstance(e, Delivered) for r in e.recipients)
    assert delivered == ["a@dest.test", "b@other.test"]
    [bounced] = [e for e in ours if isinstance(e, DeliveryBounced)]
    assert (bounced.recipients, bounced.code) == (("reject@dest.test",), 550)
    # The bounce went, as a message of its own, to the VERP address of the failed recipient.
    [notice] = [e for e in events if e.txn != "Q1" and isinstance(e, Delivered)]
    assert notice.recipients == ("list-bounces+reject=dest.test@sender.test",)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("queue: Q1 ")]
    assert sorted(line.split(" [")[0] for line in lines) == [
        "queue: Q1 to=<a@dest.test> delivered 250 2.0.0 queued",
        "queue: Q1 to=<b@other.test> delivered 250 2.0.0 queued",
        "queue: Q1 to=<reject@dest.test> failed 550 5.1.1 No such user",
    ]
    senders = sorted(sender for _, _, sender, rcpts in deliverer.log if rcpts != notice.recipients)
    assert senders == [
        "list-bounces+a=dest.test@sender.test",
        "list-bounces+b=other.test@sender.test",
        "list-bounces+reject=dest.test@sender.test",
    ]
