from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.plugins.plugin_kit import (
    begin,
    config_error,
    connection,
    load,
    message,
    runner,
    shipped_config,
    state,
    verdict,
)
from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams, Reply

BOB = Address("bob", "example.test")
TOO_BIG = Reply(552, "5.3.4", ("Message too big for this server (limit 100 octets)",))
BUSY = Reply(421, "4.7.0", ("Too many connections from your address",))


async def test_every_limit_is_off_by_default() -> None:
    run = runner("limit")
    conns = [connection() for _ in range(200)]
    for conn in conns:
        assert (await verdict(run, "connect", conn))[0] is hooks.CONT
    conn = conns[0]
    for _ in range(100):
        assert (await verdict(run, "unrecognized_command", conn, "XYZZY", "XYZZY"))[0] is hooks.CONT
    txn = begin(conn, params=MailParams(size=10**9))
    assert (await verdict(run, "mail", conn, txn.sender, txn.mail_params))[0] is hooks.CONT
    txn.recipients.extend((BOB, RcptParams()) for _ in range(1000))
    assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[0] is hooks.CONT
    txn.message = message(b"x" * 100_000)
    assert (await verdict(run, "data_post", conn))[0] is hooks.CONT


# ----------------------------------------------------------------------------- recipients


async def test_recipient_past_the_limit_is_deferred() -> None:
    run = runner("limit", {"max_recipients": 2})
    conn = connection()
    txn = begin(conn)
    for _ in range(2):
        assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[0] is hooks.CONT
        txn.recipients.append((BOB, RcptParams()))  # the server records accepted recipients
    result, reply = await verdict(run, "rcpt", conn, BOB, RcptParams())
    assert result.action is hooks.Action.DENYSOFT
    assert reply == Reply(452, "4.5.3", ("Too many recipients",))
    begin(conn)  # a new transaction starts from zero
    assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[0] is hooks.CONT


# ----------------------------------------------------------------------------- unrecognized


async def test_unrecognized_commands_past_the_limit_disconnect() -> None:
    run = runner("limit", {"max_unrecognized_commands": 2})
    conn = connection()
    for _ in range(2):
        assert (await verdict(run, "unrecognized_command", conn, "FOO", "FOO bar"))[0] is hooks.CONT
    result, reply = await verdict(run, "unrecognized_command", conn, "FOO", "FOO bar")
    assert result.action is hooks.Action.DENYDISCONNECT
    assert result.action.disconnects
    assert reply == Reply(521, "5.5.1", ("Too many unrecognized commands (3), closing connection",))


async def test_unrecognized_commands_are_counted_per_connection() -> None:
    run = runner("limit", {"max_unrecognized_commands": 1})
    first, second = connection(), connection()
    assert (await verdict(run, "unrecognized_command", first, "FOO", "FOO"))[0] is hooks.CONT
    assert (await verdict(run, "unrecognized_command", second, "FOO", "FOO"))[0] is hooks.CONT
    assert (await verdict(run, "unrecognized_command", first, "FOO", "FOO"))[1] is not None


# ----------------------------------------------------------------------------- size


@pytest.mark.parametrize(("size", "refused"), [(100, False), (101, True), (None, False)])
async def test_size_parameter_is_checked_at_mail(size: int | None, refused: bool) -> None:
    conn = connection()
    txn = begin(conn, params=MailParams(size=size))
    _, reply = await verdict(
        runner("limit", {"max_message_size": 100}), "mail", conn, txn.sender, txn.mail_params
    )
    assert reply == (TOO_BIG if refused else None)


@pytest.mark.parametrize(("size", "refused"), [(100, False), (101, True)])
async def test_message_size_is_checked_after_data(size: int, refused: bool) -> None:
    conn = connection()
    txn = begin(conn)
    txn.message = message(b"x" * size, chunk=7)
    result, reply = await verdict(runner("limit", {"max_message_size": 100}), "data_post", conn)
    assert reply == (TOO_BIG if refused else None)
    assert result.action is (hooks.Action.DENY if refused else hooks.Action.CONT)


# ----------------------------------------------------------------------------- per-IP


async def test_connections_past_the_per_ip_limit_are_refused() -> None:
    run = runner("limit", {"max_connections_per_ip": 2})
    first, second, third = (connection("192.0.2.1") for _ in range(3))
    assert (await verdict(run, "connect", first))[0] is hooks.CONT
    assert (await verdict(run, "connect", second))[0] is hooks.CONT
    result, reply = await verdict(run, "connect", third)
    assert result.action is hooks.Action.DENYSOFTDISCONNECT
    assert reply == BUSY
    # Another address has its own count.
    assert (await verdict(run, "connect", connection("192.0.2.2")))[0] is hooks.CONT


async def test_a_closed_connection_frees_its_place() -> None:
    run = runner("limit", {"max_connections_per_ip": 1})
    first, second = connection("192.0.2.1"), connection("192.0.2.1")
    await verdict(run, "connect", first)
    await run.run_all("disconnect", first)
    assert (await verdict(run, "connect", second))[0] is hooks.CONT
    # Disconnect hooks running twice (or for a connection never counted) free nothing more.
    await run.run_all("disconnect", first)
    assert (await verdict(run, "connect", connection("192.0.2.1")))[1] == BUSY


async def test_a_refused_connection_does_not_free_a_place() -> None:
    run = runner("limit", {"max_connections_per_ip": 1})
    counted, refused = connection("192.0.2.1"), connection("192.0.2.1")
    await verdict(run, "connect", counted)
    assert (await verdict(run, "connect", refused))[1] == BUSY
    await run.run_all("disconnect", refused)
    assert (await verdict(run, "connect", connection("192.0.2.1")))[1] == BUSY


GATE = """
from trio_mta import hooks

class Plugin(hooks.Plugin):
    async def hook_connect(self, conn):
        return hooks.deny() if conn.notes.get("block") else hooks.CONT
"""


def gated(user_dir: Path, order: list[str]) -> hooks.HookRunner:
    (user_dir / "gate.py").write_text(GATE)
    plugins = hooks.load_plugins(
        order, directories=[user_dir], configs={"limit": {"max_connections_per_ip": 1}}
    )
    return hooks.HookRunner(plugins)


async def test_a_connection_refused_by_an_earlier_plugin_is_not_counted(tmp_path: Path) -> None:
    run = gated(tmp_path, ["gate", "limit"])
    blocked = connection("192.0.2.1", notes={"block": True})
    counted = connection("192.0.2.1")
    assert (await verdict(run, "connect", blocked))[0].action is hooks.Action.DENY
    # The blocked one took no place, so this one is admitted ...
    assert (await verdict(run, "connect", counted))[0] is hooks.CONT
    # ... and the blocked one's disconnect does not free this one's place.
    await run.run_all("disconnect", blocked)
    assert (await verdict(run, "connect", connection("192.0.2.1")))[1] == BUSY


async def test_a_connection_refused_by_a_later_plugin_is_uncounted_at_disconnect(
    tmp_path: Path,
) -> None:
    run = gated(tmp_path, ["limit", "gate"])
    blocked = connection("192.0.2.1", notes={"block": True})
    assert (await verdict(run, "connect", blocked))[0].action is hooks.Action.DENY
    assert (await verdict(run, "connect", connection("192.0.2.1")))[1] == BUSY
    await run.run_all("disconnect", blocked)
    assert (await verdict(run, "connect", connection("192.0.2.1")))[0] is hooks.CONT


# ----------------------------------------------------------------------------- config


def test_shipped_config_shows_the_defaults() -> None:
    shipped = load("limit", shipped_config("limit")).plugins[0]
    assert state(shipped) == state(load("limit").plugins[0])


@pytest.mark.parametrize(
    "key",
    ["max_recipients", "max_unrecognized_commands", "max_message_size", "max_connections_per_ip"],
)
@pytest.mark.parametrize("value", [-1, 1.5, "10", True])
def test_limits_must_be_whole_numbers(key: str, value: object) -> None:
    assert f"{key}: must be a whole number" in config_error("limit", {key: value})


def test_unknown_keys_are_refused() -> None:
    assert "unknown keys ['max_rcpt']" in config_error("limit", {"max_rcpt": 5})


# ----------------------------------------------------------------------------- rates

CONN_RATE = {"max_connection_rate": 2, "rate_window": 60}


async def test_connections_past_the_rate_are_refused_until_the_window_refills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    run = runner("limit", CONN_RATE)
    for _ in range(2):
        assert (await verdict(run, "connect", connection()))[0] is hooks.CONT
    result, reply = await verdict(run, "connect", connection())
    assert result.action is hooks.Action.DENYSOFTDISCONNECT
    assert reply == Reply(
        421, "4.7.0", ("Too many connections from your address, try again in 30 s",)
    )
    assert (await verdict(run, "connect", connection("192.0.2.99")))[0] is hooks.CONT
    await trio.sleep(30)
    assert (await verdict(run, "connect", connection()))[0] is hooks.CONT
    assert (await verdict(run, "connect", connection()))[1] is not None


async def test_the_rate_counts_connections_not_concurrency() -> None:
    run = runner("limit", CONN_RATE)
    for _ in range(2):
        conn = connection()
        assert (await verdict(run, "connect", conn))[0] is hooks.CONT
        await run.run_all("disconnect", conn)  # closing does not give the allowance back
    assert (await verdict(run, "connect", connection()))[1] is not None


async def test_loopback_is_exempt_by_default_and_the_exemption_is_configurable() -> None:
    run = runner("limit", CONN_RATE)
    for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.5"] * 3:
        assert (await verdict(run, "connect", connection(ip)))[0] is hooks.CONT
    run = runner("limit", {**CONN_RATE, "rate_exempt": ["192.0.2.0/28"]})
    for _ in range(3):
        assert (await verdict(run, "connect", connection("192.0.2.10")))[0] is hooks.CONT
    for _ in range(2):
        assert (await verdict(run, "connect", connection("127.0.0.1")))[0] is hooks.CONT
    assert (await verdict(run, "connect", connection("127.0.0.1")))[1] is not None


async def test_ipv6_clients_share_their_slash_64() -> None:
    run = runner("limit", CONN_RATE)
    assert (await verdict(run, "connect", connection("2001:db8:0:1::a")))[0] is hooks.CONT
    assert (await verdict(run, "connect", connection("2001:db8:0:1::b")))[0] is hooks.CONT
    assert (await verdict(run, "connect", connection("2001:db8:0:1:ffff::c")))[1] is not None
    assert (await verdict(run, "connect", connection("2001:db8:0:2::a")))[0] is hooks.CONT


async def test_messages_past_the_rate_are_deferred_at_mail() -> None:
    run = runner("limit", {"max_message_rate": 2})
    conn = connection()
    for _ in range(2):
        txn = begin(conn)
        assert (await verdict(run, "mail", conn, txn.sender, txn.mail_params))[0] is hooks.CONT
    txn = begin(conn)
    result, reply = await verdict(run, "mail", conn, txn.sender, txn.mail_params)
    assert result.action is hooks.Action.DENYSOFT
    assert reply == Reply(450, "4.7.1", ("Too much mail from your address, try again in 30 s",))
    other = connection()  # a new connection from the same address shares the allowance
    txn = begin(other)
    assert (await verdict(run, "mail", other, txn.sender, txn.mail_params))[1] is not None


async def test_recipients_past_the_rate_are_deferred_whichever_transaction() -> None:
    run = runner("limit", {"max_recipient_rate": 3, "rate_window": 30})
    conn = connection()
    begin(conn)
    for _ in range(2):
        assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[0] is hooks.CONT
    begin(conn)
    assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[0] is hooks.CONT
    result, reply = await verdict(run, "rcpt", conn, BOB, RcptParams())
    assert result.action is hooks.Action.DENYSOFT
    assert reply == Reply(
        450, "4.7.1", ("Too many recipients from your address, try again in 10 s",)
    )


async def test_authenticated_sessions_are_held_to_their_users_rate_not_their_address() -> None:
    run = runner(
        "limit", {"max_message_rate": 1, "max_recipient_rate": 1, "max_user_recipient_rate": 2}
    )
    anonymous = connection()
    begin(anonymous)
    assert (await verdict(run, "rcpt", anonymous, BOB, RcptParams()))[0] is hooks.CONT
    assert (await verdict(run, "rcpt", anonymous, BOB, RcptParams()))[1] is not None
    # Same address, authenticated: its address's exhausted rates do not apply...
    alice = connection(auth_user="alice")
    for _ in range(2):
        txn = begin(alice)
        assert (await verdict(run, "mail", alice, txn.sender, txn.mail_params))[0] is hooks.CONT
        assert (await verdict(run, "rcpt", alice, BOB, RcptParams()))[0] is hooks.CONT
    # ...its user's does, wherever the user connects from (loopback exemption included).
    elsewhere = connection("127.0.0.1", auth_user="alice")
    begin(elsewhere)
    _result, reply = await verdict(run, "rcpt", elsewhere, BOB, RcptParams())
    assert reply == Reply(
        450, "4.7.1", ("Too many recipients for this account, try again in 30 s",)
    )
    carol = connection(auth_user="carol")
    begin(carol)
    assert (await verdict(run, "rcpt", carol, BOB, RcptParams()))[0] is hooks.CONT


async def test_a_recipient_over_the_per_transaction_limit_does_not_spend_the_rate() -> None:
    run = runner("limit", {"max_recipients": 1, "max_recipient_rate": 2})
    conn = connection()
    txn = begin(conn)
    assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[0] is hooks.CONT
    txn.recipients.append((BOB, RcptParams()))
    for _ in range(5):
        assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[1].code == 452  # type: ignore[union-attr]
    begin(conn)
    assert (await verdict(run, "rcpt", conn, BOB, RcptParams()))[0] is hooks.CONT


async def test_a_rate_refusal_is_logged_with_the_client(caplog: pytest.LogCaptureFixture) -> None:
    run = runner("limit", {"max_connection_rate": 1})
    await verdict(run, "connect", connection("198.51.100.4"))
    with caplog.at_level(logging.INFO):
        await verdict(run, "connect", connection("198.51.100.4"))
    assert "max_connection_rate reached for 198.51.100.4" in caplog.text


@pytest.mark.parametrize(
    "key",
    ["max_connection_rate", "max_message_rate", "max_recipient_rate", "max_user_recipient_rate"],
)
@pytest.mark.parametrize("value", [-1, 1.5, "10", True])
def test_rates_must_be_whole_numbers(key: str, value: object) -> None:
    assert f"{key}: must be a whole number" in config_error("limit", {key: value})


@pytest.mark.parametrize(
    ("config", "error"),
    [
        ({"rate_window": 0}, "rate_window: must be a positive number"),
        ({"rate_window": -5}, "rate_window: must be a positive number"),
        ({"rate_window": "60"}, "rate_window: must be a positive number"),
        ({"rate_window": float("inf")}, "rate_window: must be a finite number"),
        ({"rate_ipv6_prefix": 0}, "rate_ipv6_prefix: must be a whole number from 1 to 128"),
        ({"rate_ipv6_prefix": 129}, "rate_ipv6_prefix: must be a whole number from 1 to 128"),
        ({"rate_exempt": "127.0.0.1"}, "rate_exempt: must be a list of networks"),
        ({"rate_exempt": ["127.0.0.1/8", "nonsense"]}, "rate_exempt: 'nonsense' is not a network"),
    ],
)
def test_rate_options_are_checked(config: dict[str, object], error: str) -> None:
    assert error in config_error("limit", config)
