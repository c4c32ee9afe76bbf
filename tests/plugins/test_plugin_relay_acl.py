from __future__ import annotations

import pytest

from tests.plugins.plugin_kit import (
    config_error,
    connection,
    load,
    runner,
    shipped_config,
    state,
    verdict,
)
from trio_mta import hooks
from trio_mta.protocol import Reply

LAN = {"allow": ["127.0.0.1/8", "::1", "10.0.0.0/8", "2001:db8::/32"]}


async def connect(run: hooks.HookRunner, conn: hooks.Connection) -> Reply | None:
    """What the server does at connect: every connect_init, then the connect chain."""
    await run.run_all("connect_init", conn)
    return (await verdict(run, "connect", conn))[1]


async def test_default_lets_nobody_relay() -> None:
    run = runner("relay_acl")
    conn = connection("127.0.0.1")
    assert await connect(run, conn) is None
    assert conn.relaying is False
    assert "relay_acl" not in conn.notes


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.200.3.4", "127.0.0.0/8"),
        ("::1", "::1/128"),
        ("10.255.255.255", "10.0.0.0/8"),
        ("::ffff:10.1.2.3", "10.0.0.0/8"),
        ("2001:DB8::25", "2001:db8::/32"),
    ],
)
async def test_allowed_networks_relay(ip: str, network: str) -> None:
    conn = connection(ip)
    assert await connect(runner("relay_acl", LAN), conn) is None
    assert conn.relaying is True
    assert conn.notes["relay_acl"] == network


@pytest.mark.parametrize(
    "ip", ["192.0.2.10", "11.0.0.1", "::2", "2001:db9::1", "::ffff:192.0.2.1", "", "unix:/x"]
)
async def test_other_clients_do_not_relay(ip: str) -> None:
    conn = connection(ip)
    assert await connect(runner("relay_acl", LAN), conn) is None
    assert conn.relaying is False


async def test_relaying_granted_elsewhere_is_kept() -> None:
    conn = connection("192.0.2.10", relaying=True)
    assert await connect(runner("relay_acl", LAN), conn) is None
    assert conn.relaying is True


async def test_deny_outside_refuses_other_clients_at_connect() -> None:
    run = runner("relay_acl", {**LAN, "deny_outside": True})
    conn = connection("192.0.2.10")
    result, reply = await verdict(run, "connect", conn)
    assert result.action is hooks.Action.DENY
    assert reply == Reply(554, "5.7.1", ("Relaying not permitted from your address",))
    # A client that is not an IP address at all is outside too.
    assert (await verdict(run, "connect", connection("")))[1] is not None


async def test_deny_outside_admits_allowed_clients() -> None:
    run = runner("relay_acl", {**LAN, "deny_outside": True})
    conn = connection("10.0.0.1")
    assert await connect(run, conn) is None
    assert conn.relaying is True


async def test_deny_outside_uses_the_configured_message() -> None:
    run = runner("relay_acl", {"deny_outside": True, "message": "Internal relay only"})
    _, reply = await verdict(run, "connect", connection("127.0.0.1"))
    assert reply == Reply(554, "5.7.1", ("Internal relay only",))


async def test_outside_clients_pass_without_deny_outside() -> None:
    result, _ = await verdict(runner("relay_acl", LAN), "connect", connection("192.0.2.10"))
    assert result is hooks.CONT


def test_runner_keys_are_accepted_beside_the_plugin_keys() -> None:
    plugins = load("relay_acl", {**LAN, "timeout": 2, "priority": -5, "hooks": {}})
    assert [e.priority for e in plugins.entries("connect")] == [-5]


def test_shipped_config_shows_the_defaults() -> None:
    assert state(load("relay_acl", shipped_config("relay_acl")).plugins[0]) == state(
        load("relay_acl").plugins[0]
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"allow": "10.0.0.0/8"}, "allow: must be a list"),
        ({"allow": [10]}, "allow: 10 is not a string"),
        ({"allow": ["10.0.0.0/33"]}, "allow: '10.0.0.0/33' is not an IP network"),
        ({"allow": ["example.test"]}, "allow: 'example.test' is not an IP network"),
        ({"deny_outside": "yes"}, "deny_outside: must be true or false"),
        ({"message": ""}, "message: must be one non-empty line"),
        ({"message": "two\r\nlines"}, "message: must be one non-empty line"),
        ({"alow": ["10.0.0.0/8"]}, "unknown keys ['alow']"),
    ],
)
def test_config_errors(config: dict[str, object], expected: str) -> None:
    assert expected in config_error("relay_acl", config)
