"""The two hooks-level additions srs and batv need, tested without them:

* ``Transaction.relaying``: a plugin that accepted a recipient for relaying in this transaction
  sends the message to ``queue_outbound`` (and so the built-in queue), while the client's other
  recipients are still judged as a non-relaying client's;
* a ``bounce`` plugin may readdress the queue's failure report by setting the transaction's
  sender (a null sender's report still goes to the postmaster).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import trio
import trio.testing

from tests.queue.kit import FakeDeliverer, connection, make_service, started, until_empty
from trio_mta.hooks import (
    Connection,
    HookRunner,
    Message,
    PluginEnv,
    PluginSet,
    Transaction,
    load_plugins,
)
from trio_mta.protocol import Address, MailParams, RcptParams, RcptTo
from trio_mta.server import HookHandler

RELAY_ONE = """
from trio_mta import hooks

class Plugin(hooks.Plugin):
    def setup(self):
        self.queued = []

    async def hook_rcpt(self, conn, rcpt, params):
        if rcpt.local_part == "relay-me":
            conn.transaction.relaying = True
            return hooks.OK
        if rcpt.local_part == "local":
            return hooks.OK
        return hooks.CONT

    async def hook_queue(self, conn):
        self.queued.append("queue")
        return hooks.ok()

    async def hook_queue_outbound(self, conn):
        self.queued.append("queue_outbound")
        return hooks.CONT
"""

READDRESS = """
from trio_mta import hooks
from trio_mta.protocol import Address

class Plugin(hooks.Plugin):
    async def hook_bounce(self, conn, report):
        txn = conn.transaction
        if txn.sender is not None and txn.sender.local_part == "tagged-alice":
            txn.sender = Address("alice", "sender.test")
        elif txn.sender is None:
            txn.sender = Address("nobody", "sender.test")  # cannot make <> a real sender
        return hooks.CONT
"""


def plugin(tmp_path: Path, source: str) -> PluginSet:
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "probe.py").write_text(textwrap.dedent(source))
    return load_plugins(["probe"], directories=[directory], env=PluginEnv())


class FakeQueue:
    def __init__(self) -> None:
        self.submitted: list[tuple[str, ...]] = []

    async def submit(self, conn: Connection) -> str:
        assert conn.transaction is not None
        self.submitted.append(tuple(str(a) for a, _ in conn.transaction.recipients))
        return "Q1"


async def session(
    tmp_path: Path, recipients: list[str]
) -> tuple[list[int], Connection, FakeQueue, PluginSet]:
    """One transaction through the hook handler: the RCPT codes, the connection, the queue."""
    loaded = plugin(tmp_path, RELAY_ONE)
    queue = FakeQueue()
    handler = HookHandler(HookRunner(loaded), queue=queue)
    conn = Connection("c1", "mx", "192.0.2.9", 4000, "127.0.0.1", 25, 0.0)
    txn = conn.transaction = Transaction("t1", Address("a", "remote.test"), MailParams(), 0.0)
    codes = []
    for text in recipients:
        local, _, domain = text.partition("@")
        rcpt = RcptTo(Address(local, domain), RcptParams())
        answer = await handler.rcpt(conn, rcpt)
        codes.append(answer.code)
        if answer.code < 400:
            txn.recipients.append((rcpt.recipient, rcpt.params))
    txn.message = Message()
    txn.message.write(b"Subject: x\r\n\r\nbody\r\n")
    reply = await handler.message(conn)
    assert reply.code == 250, reply
    return codes, conn, queue, loaded


async def test_txn_relaying_sends_the_message_to_the_outbound_queue(tmp_path: Path) -> None:
    codes, conn, queue, loaded = await session(tmp_path, ["relay-me@far.test", "other@far.test"])
    # The flag relays one recipient only: the next one, which no plugin accepted, is refused
    # as for any client that may not relay.
    assert codes == [250, 550]
    assert conn.relaying is False
    assert loaded.plugins[0].queued == ["queue_outbound"]  # type: ignore[attr-defined]
    assert queue.submitted == [("relay-me@far.test",)]


async def test_without_the_flag_the_queue_hook_takes_the_message(tmp_path: Path) -> None:
    codes, conn, queue, loaded = await session(tmp_path, ["local@example.test"])
    assert codes == [250]
    assert conn.transaction is not None
    assert not conn.transaction.relaying
    assert loaded.plugins[0].queued == ["queue"]  # type: ignore[attr-defined]
    assert queue.submitted == []


async def test_a_bounce_plugin_readdresses_the_failure_report(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    loaded = plugin(tmp_path, READDRESS)
    fake = FakeDeliverer()
    service = await started(
        nursery, make_service(tmp_path, fake, runner=lambda: HookRunner(loaded))
    )
    await service.submit(connection("tagged-alice@sender.test", ["reject1@dest.test"]))
    await service.submit(connection("carol@sender.test", ["reject2@dest.test"]))
    await service.submit(connection(None, ["reject3@dest.test"]))
    await until_empty(service)
    bounces = sorted(c.recipients for c in fake.calls if c.sender is None and c.key != "dest.test")
    # Readdressed; left alone; a null sender's failure still goes to the postmaster, whatever
    # the plugin wrote into the sender.
    assert bounces == [
        ("alice@sender.test",),
        ("carol@sender.test",),
        ("postmaster@mx.example.test",),
    ]
    assert not [c for c in fake.calls if "tagged-alice@sender.test" in c.recipients]
