from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from tests.plugins.plugin_kit import (
    ALICE,
    begin,
    config_error,
    connection,
    load,
    runner,
    shipped_config,
    state,
    verdict,
)
from trio_mta import hooks
from trio_mta.protocol import MailParams, RcptParams

HOOK_ARGS: dict[str, tuple[object, ...]] = {
    "connect": (),
    "helo": ("client.example",),
    "ehlo": ("client.example",),
    "mail": (ALICE, MailParams()),
    "rcpt": (ALICE, RcptParams()),
    "data": (),
    "data_post": (),
}


async def timed(
    run: hooks.HookRunner, hook: str, conn: hooks.Connection
) -> tuple[hooks.Result, float]:
    start = trio.current_time()
    result, _ = await verdict(run, hook, conn, *HOOK_ARGS[hook])
    return result, trio.current_time() - start


def test_it_hooks_exactly_the_replying_commands() -> None:
    assert set(load("tarpit").table) == set(HOOK_ARGS)


@pytest.mark.parametrize("hook", list(HOOK_ARGS))
async def test_no_delay_by_default(hook: str, autojump_clock: trio.testing.MockClock) -> None:
    conn = connection()
    begin(conn)
    assert await timed(runner("tarpit"), hook, conn) == (hooks.CONT, 0)


@pytest.mark.parametrize("hook", list(HOOK_ARGS))
async def test_configured_delay_on_every_hook(
    hook: str, autojump_clock: trio.testing.MockClock
) -> None:
    conn = connection()
    begin(conn)
    assert await timed(runner("tarpit", {"delay": 3}), hook, conn) == (hooks.CONT, 3)


async def test_connection_note_overrides_the_config(autojump_clock: trio.testing.MockClock) -> None:
    conn = connection(notes={"tarpit": 5})
    run = runner("tarpit", {"delay": 1})
    assert (await timed(run, "connect", conn))[1] == 5  # no transaction yet
    begin(conn)
    assert (await timed(run, "rcpt", conn))[1] == 5
    conn.notes["tarpit"] = 0
    assert (await timed(run, "rcpt", conn))[1] == 0


async def test_transaction_note_overrides_the_connection_note(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = connection(notes={"tarpit": 5})
    begin(conn).notes["tarpit"] = 7.5
    assert (await timed(runner("tarpit"), "data_post", conn))[1] == 7.5
    begin(conn)  # the next transaction has no note of its own
    assert (await timed(runner("tarpit"), "mail", conn))[1] == 5


@pytest.mark.parametrize("bad", ["10", -1, True, None, float("nan")])
async def test_a_bad_note_is_ignored_with_a_warning(
    bad: object, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    conn = connection(notes={"tarpit": 4})
    begin(conn).notes["tarpit"] = bad
    with caplog.at_level(logging.WARNING):
        assert (await timed(runner("tarpit", {"delay": 1}), "rcpt", conn))[1] == 4
    assert "transaction note tarpit=" in caplog.text
    conn.notes["tarpit"] = bad
    assert (await timed(runner("tarpit", {"delay": 1}), "rcpt", conn))[1] == 1


async def test_delay_is_cut_short_of_the_plugin_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    run = runner("tarpit", {"delay": 10, "timeout": 2})
    with caplog.at_level(logging.WARNING):
        result, elapsed = await timed(run, "helo", connection())
    assert result is hooks.CONT  # not the timeout's 451
    assert elapsed == pytest.approx(1.95)
    assert "delay of 10s cut to 1.95s" in caplog.text


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def test_hang_up_cancels_the_delay_and_leaves_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[hooks.HookCall] = []
    run = hooks.HookRunner(load("tarpit", {"delay": 20}), observe=calls.append)
    conn = connection()
    begin(conn)
    before = count_tasks()
    outcome: list[object] = []

    async def session() -> None:
        outcome.append(await run.run("rcpt", conn, *HOOK_ARGS["rcpt"]))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session)
        await trio.sleep(1)
        assert count_tasks() == before + 1  # the session, asleep in the plugin
        nursery.cancel_scope.cancel()  # what the server does when the client hangs up
    assert trio.current_time() - start == 1
    assert outcome == []  # the chain did not finish with a verdict
    assert calls == []  # and the cancellation was not counted as a timeout or an error
    assert count_tasks() == before


def test_shipped_config_shows_the_defaults() -> None:
    shipped = load("tarpit", shipped_config("tarpit")).plugins[0]
    assert state(shipped) == state(load("tarpit").plugins[0])


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"delay": -1}, "delay: must be a number of seconds"),
        ({"delay": "5"}, "delay: must be a number of seconds"),
        ({"delay": True}, "delay: must be a number of seconds"),
        ({"delay": float("inf")}, "delay: must be a number of seconds"),
        ({"delay": float("nan")}, "delay: must be a number of seconds"),
        ({"dely": 5}, "unknown keys ['dely']"),
    ],
)
def test_config_errors(config: dict[str, object], expected: str) -> None:
    assert expected in config_error("tarpit", config)
