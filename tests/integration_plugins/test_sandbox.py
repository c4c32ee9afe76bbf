"""Sandboxed plugins through the daemon: ``app.run`` starts the worker pool because a loaded
plugin asks for ``sandbox = "process"``; a runaway hook is killed at its deadline (the client
hears 451, the worker that ran it is gone), a memory hog hits its rlimit, and other
connections complete whole transactions meanwhile. Real clock, real processes."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from tests.helpers.maildir import bodies_in

from .kit import Journal, Running, app_config, message, running_app, write_plugin

TIMEOUT = 1.0
CAP = 20  # seconds, real time

RUNAWAY = """
class Plugin(Base):
    def hook_rcpt(self, conn, rcpt, params):
        note(self, "call", rcpt=rcpt.local_part)
        if rcpt.local_part == "stuck":
            {body}
        if rcpt.local_part == "hog":
            # Far past the 128 MiB limit, yet bounded: a broken limit fails the test (the
            # recipient is accepted) rather than the machine.
            hoard = [bytearray(10**7) for _ in range(200)]
        return CONT
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110  # another process: there is nothing to await
            await trio.sleep(0.02)


async def deliver(mta: Running, rcpt: str, tag: str) -> None:
    client = await mta.greeted()
    reply = await client.transaction("a@example.org", [rcpt], message(tag))
    assert reply.code == 250, reply
    await client.command("QUIT", 221)


@pytest.mark.parametrize(
    "body", ["while True:\n                pass", "time.sleep(3600)"], ids=["spin", "sleep"]
)
async def test_a_runaway_sandboxed_hook_is_killed_at_its_deadline(
    tmp_path: Path, plugin_dir: Path, journal: Journal, body: str
) -> None:
    write_plugin(plugin_dir, "runaway", RUNAWAY.format(body=body))
    var_dir = tmp_path / "var"
    config = app_config(
        var_dir,
        plugin_dir,
        ["runaway", "rcpt_to_host_list", "queue_maildir"],
        {"runaway": {"journal": str(journal.path), "sandbox": "process", "timeout": TIMEOUT}},
        sandbox_workers=2,
    )
    with trio.fail_after(CAP):
        async with running_app(config) as mta:
            stuck = await mta.greeted()
            await stuck.command("MAIL FROM:<a@example.org>", 250)
            sent_at = trio.current_time()
            await stuck.send("RCPT TO:<stuck@example.test>\r\n")
            answered: list[float] = []

            async def wait_for_the_answer() -> None:
                await stuck.expect(451, "4.3.0")
                answered.append(trio.current_time() - sent_at)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_for_the_answer)
                [call] = await journal.wait_for("call")
                runaway_pid = call["pid"]
                assert runaway_pid != os.getpid()  # it ran in a worker process
                await deliver(mta, "u@example.test", "during the stall")
                assert answered == []
                during = time.monotonic()
            # The worker that ran it is killed and reaped, and the pool still serves.
            await eventually(lambda: not alive(runaway_pid))
            await deliver(mta, "u@example.test", "after the stall")

    [elapsed] = answered
    assert TIMEOUT <= elapsed < TIMEOUT + 0.5
    assert during - call["mono"] < TIMEOUT  # the other transaction really ran meanwhile
    pids = {e["pid"] for e in journal.entries("call")}
    assert len(pids) >= 2  # the others ran in another worker: the first was busy, then dead
    assert bodies_in(var_dir, "example.test", "u") == sorted(
        [message("during the stall"), message("after the stall")]
    )


async def test_a_sandboxed_memory_hog_fails_quickly_and_the_server_lives_on(
    tmp_path: Path, plugin_dir: Path, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    write_plugin(plugin_dir, "runaway", RUNAWAY.format(body="pass"))
    var_dir = tmp_path / "var"
    config = app_config(
        var_dir,
        plugin_dir,
        ["runaway", "rcpt_to_host_list", "queue_maildir"],
        {"runaway": {"journal": str(journal.path), "sandbox": "process", "timeout": 10}},
        sandbox_workers=2,
        sandbox_memory_mb=128,
    )
    with trio.fail_after(CAP), caplog.at_level(logging.ERROR, "trio_mta.plugins"):
        async with running_app(config) as mta:
            hog = await mta.greeted()
            await hog.command("MAIL FROM:<a@example.org>", 250)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver, mta, "u@example.test", "beside the hog")
                await hog.command("RCPT TO:<hog@example.test>", 451, "4.3.0")
                elapsed = trio.current_time() - start
            await hog.command("RCPT TO:<u@example.test>", 250)
            await hog.command("DATA", 354)
            await hog.send(message("after the hog") + b".\r\n")
            await hog.expect(250)

    assert elapsed < 3
    [failure] = [r for r in caplog.records if "failed on rcpt" in r.getMessage()]
    assert failure.exc_info is not None
    assert "the sandbox memory limit was reached" in str(failure.exc_info[1])
    assert bodies_in(var_dir, "example.test", "u") == sorted(
        [message("beside the hog"), message("after the hog")]
    )
