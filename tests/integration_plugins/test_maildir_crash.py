"""The ``queue_maildir`` writer process killed under the server (OOM killer, a stray signal): a
message in flight gets a temporary failure and nothing half-written shows in ``new/``; the next
message starts a new writer and is delivered. Real sockets, a real child, the real clock (the
child is invisible to the MockClock)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio
import trio.testing

from tests.helpers.maildir import all_messages, bodies_in

from .kit import Running, app_config, message, running_app

CAP = 10  # seconds, real time
ORDER = ["rcpt_to_host_list", "queue_maildir"]


def writer_children() -> set[int]:
    """Our child processes running the batch-process worker (zombies have no command line)."""
    me = os.getpid()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"trio_mta.storage.worker" in cmdline:
            found.add(int(entry.name))
    return found


async def deliver(mta: Running, tag: str) -> int:
    client = await mta.greeted()
    reply = await client.transaction("a@example.org", ["bob@example.test"], message(tag))
    await client.command("QUIT", 221)
    return reply.code


async def wait_until_reaped(pid: int) -> None:
    """The server reaps its writer once it has seen it die: then the next message cannot be
    handed to the dead one."""
    while True:
        try:
            os.kill(pid, 0)  # a zombie still takes signals
        except ProcessLookupError:
            return
        await trio.sleep(0.005)


async def test_a_killed_writer_is_replaced_for_the_next_message(
    tmp_path: Path, plugin_dir: Path
) -> None:
    var_dir = tmp_path / "var"
    config = app_config(var_dir, plugin_dir, ORDER)
    with trio.fail_after(CAP):
        before = writer_children()
        async with running_app(config) as mta:
            assert await deliver(mta, "first") == 250
            [writer] = writer_children() - before
            os.kill(writer, signal.SIGKILL)
            await wait_until_reaped(writer)

            assert await deliver(mta, "second") == 250
            [new_writer] = writer_children() - before
            assert new_writer != writer
    assert bodies_in(var_dir, "example.test", "bob") == sorted(
        [message("first"), message("second")]
    )
    assert len(all_messages(var_dir)) == 2  # and nothing left in tmp/


async def test_a_message_in_flight_when_the_writer_dies_gets_451_and_is_not_delivered(
    tmp_path: Path, plugin_dir: Path
) -> None:
    var_dir = tmp_path / "var"
    config = app_config(var_dir, plugin_dir, ORDER)
    with trio.fail_after(CAP):
        before = writer_children()
        async with running_app(config) as mta:
            assert await deliver(mta, "before") == 250
            [writer] = writer_children() - before

            client = await mta.greeted()
            await client.command("MAIL FROM:<a@example.org>", 250)
            await client.command("RCPT TO:<bob@example.test>", 250)
            await client.command("DATA", 354)
            os.kill(writer, signal.SIGSTOP)  # it can take the job but not do it
            await client.send(message("in flight") + b".\r\n")
            # The server has read the message and handed it over: it waits for the answer.
            await trio.testing.wait_all_tasks_blocked()
            assert len(all_messages(var_dir)) == 1  # only "before" so far
            os.kill(writer, signal.SIGKILL)
            await client.expect(451, "4.3.0")
            # The session goes on: the client may try again at once, to a new writer.
            await client.command("RSET", 250)
            reply = await client.transaction(
                "a@example.org", ["bob@example.test"], message("retry")
            )
            assert reply.code == 250
            [new_writer] = writer_children() - before
            assert new_writer != writer
    assert bodies_in(var_dir, "example.test", "bob") == sorted(
        [message("before"), message("retry")]
    )
    assert len(all_messages(var_dir)) == 2  # nothing half-written, in new/ or tmp/
