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
}
ALL_PAUSES = {"pause": 1, "pause_helo": 2, "pause_mail": 3, "pause_rcpt": 4, "pause_data": 5.5}
EXPECTED = {"connect": 1, "helo": 2, "ehlo": 2, "mail": 3, "rcpt": 4, "data": 5.5}


async def pause_on(run: hooks.HookRunner, hook: str, conn: hooks.Connection) -> float:
    if conn.transaction is None:
        begin(conn)
    start = trio.current_time()
    result, _ = await verdict(run, hook, conn, *HOOK_ARGS[hook])
    assert result is hooks.CONT
    return trio.current_time() - start


async def test_default_pauses_one_second_before_the_greeting_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = runner("early_talker")
    conn = connection()
    assert {hook: await pause_on(run, hook, conn) for hook in HOOK_ARGS} == {
        "connect": 1,
        "helo": 0,
        "ehlo": 0,
        "mail": 0,
        "rcpt": 0,
        "data": 0,
    }


async def test_every_pause_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    run = runner("early_talker", ALL_PAUSES)
    conn = connection()
    assert {hook: await pause_on(run, hook, conn) for hook in HOOK_ARGS} == EXPECTED


async def test_pause_zero_turns_the_greeting_pause_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert await pause_on(runner("early_talker", {"pause": 0}), "connect", connection()) == 0


@pytest.mark.parametrize("ip", ["192.0.2.7", "::ffff:192.0.2.7", "2001:db8::7"])
async def test_whitelisted_clients_are_not_paused(
    ip: str, autojump_clock: trio.testing.MockClock
) -> None:
    run = runner("early_talker", {**ALL_PAUSES, "whitelist": ["192.0.2.0/24", "2001:db8::/32"]})
    conn = connection(ip)
    assert {hook: await pause_on(run, hook, conn) for hook in HOOK_ARGS} == dict.fromkeys(
        HOOK_ARGS, 0
    )
    assert await pause_on(run, "connect", connection("198.51.100.1")) == 1


async def test_relaying_clients_are_not_paused(autojump_clock: trio.testing.MockClock) -> None:
    run = runner("early_talker", ALL_PAUSES)
    assert await pause_on(run, "mail", connection(relaying=True)) == 0
    assert await pause_on(run, "mail", connection()) == 3


async def test_pause_is_cut_short_of_the_call_deadline(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A per-hook deadline shorter than the pause: the pause gives way instead of timing out.
    run = runner("early_talker", {"pause": 3, "hooks": {"connect": {"timeout": 0.5}}})
    with caplog.at_level(logging.WARNING):
        assert await pause_on(run, "connect", connection()) == pytest.approx(0.45)
    assert "pause of 3s cut to 0.45s" in caplog.text


def test_shipped_config_shows_the_defaults() -> None:
    shipped = load("early_talker", shipped_config("early_talker")).plugins[0]
    assert state(shipped) == state(load("early_talker").plugins[0])


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"pause": -1}, "pause: must be a number of seconds"),
        ({"pause_helo": "1"}, "pause_helo: must be a number of seconds"),
        ({"pause_mail": True}, "pause_mail: must be a number of seconds"),
        ({"pause_rcpt": [1]}, "pause_rcpt: must be a number of seconds"),
        ({"pause_data": -0.5}, "pause_data: must be a number of seconds"),
        ({"pause": 30, "timeout": 30}, "pauses must be shorter than timeout (30.0s), not 30.0s"),
        ({"pause_data": 10, "timeout": 5}, "pauses must be shorter than timeout (5.0s)"),
        ({"whitelist": "127.0.0.1"}, "whitelist: must be a list of networks"),
        ({"whitelist": [127]}, "whitelist: 127 is not a string"),
        ({"whitelist": ["127.0.0.1/33"]}, "whitelist: '127.0.0.1/33' is not an IP network"),
        ({"pause_ehlo": 1}, "unknown keys ['pause_ehlo']"),
    ],
)
def test_config_errors(config: dict[str, object], expected: str) -> None:
    assert expected in config_error("early_talker", config)
