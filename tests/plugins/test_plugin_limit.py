from __future__ import annotations

from pathlib import Path

import pytest

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
