"""A plugin call that never returns meets its deadline: the client hears 451 4.3.0 exactly then,
the call is cancelled (its ``finally`` runs), and other connections never notice.

Virtual time (``autojump_clock``) over real loopback sockets: the clock jumps only when every
task is blocked, so the stuck call's deadline is the only thing that can move it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from .kit import JOURNAL_QUEUE, Journal, app_config, message, running_app, write_plugin

TIMEOUT = 7.0
CAP = 10  # seconds, real time

STUCK = """
class Plugin(Base):
    async def hook_rcpt(self, conn, rcpt, params):
        if rcpt.local_part != "stuck":
            return CONT
        note(self, "start", conn=conn.id)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            note(self, "cancelled", conn=conn.id)
            raise
        finally:
            note(self, "finally", conn=conn.id)
"""


async def test_a_stuck_rcpt_hook_is_cancelled_at_its_deadline_while_others_deliver(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, plugin_dir: Path, journal: Journal
) -> None:
    write_plugin(plugin_dir, "stuck", STUCK)
    write_plugin(plugin_dir, "record_queue", JOURNAL_QUEUE)
    config = app_config(
        tmp_path / "var",
        plugin_dir,
        ["stuck", "rcpt_to_host_list", "record_queue"],
        {
            "stuck": {"journal": str(journal.path), "timeout": TIMEOUT},
            "record_queue": {"journal": str(journal.path)},
        },
    )
    with trio.fail_after(CAP):
        async with running_app(config) as mta:
            stuck = await mta.greeted()
            await stuck.command("MAIL FROM:<a@example.org>", 250)
            sent_at = trio.current_time()
            await stuck.send("RCPT TO:<stuck@example.test>\r\n")
            answered = trio.Event()
            elapsed: list[float] = []

            async def wait_for_the_answer() -> None:
                await stuck.expect(451, "4.3.0")
                elapsed.append(trio.current_time() - sent_at)
                answered.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_the_answer)
                await trio.testing.wait_all_tasks_blocked()
                assert [e["t"] for e in journal.entries("start")] == [sent_at]
                # A whole transaction on another connection, while the first one waits.
                other = await mta.greeted()
                reply = await other.transaction("b@example.org", ["u@example.test"], message("2"))
                assert reply.code == 250, reply
                await other.command("QUIT", 221)
                assert not answered.is_set()
                assert trio.current_time() == sent_at  # no virtual time passed meanwhile
            # The session goes on after the refusal.
            await stuck.command("RCPT TO:<v@example.test>", 250)
            await stuck.command("DATA", 354)
            await stuck.send(message("1") + b".\r\n")
            await stuck.expect(250)

    assert elapsed == [pytest.approx(TIMEOUT, abs=1e-9)]
    [start] = journal.entries("start")
    [cancelled] = journal.entries("cancelled")
    [final] = journal.entries("finally")
    assert cancelled["conn"] == final["conn"] == start["conn"]
    assert final["t"] == pytest.approx(sent_at + TIMEOUT, abs=1e-9)
    queued = {e["message"].split("X-Tag: ")[1][0]: e["rcpts"] for e in journal.entries("queued")}
    assert queued == {"2": ["u@example.test"], "1": ["v@example.test"]}
