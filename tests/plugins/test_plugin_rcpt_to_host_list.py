"""rcpt_to_host_list: local domains, the bare postmaster, and the routing characters of the
open-relay tricks (RFC 5321 §3.6.1)."""

from __future__ import annotations

import pytest

from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams

from .plugin_kit import config_error, connection, runner, shipped_config, verdict


async def judge(address: Address, config: dict[str, object] | None = None) -> str:
    _, reply = await verdict(
        runner("rcpt_to_host_list", config), "rcpt", connection(), address, RcptParams()
    )
    return "cont" if reply is None else str(reply)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (Address("u", "example.test"), "250 2.1.5 Recipient OK"),
        (Address("u", "EXAMPLE.TEST."), "250 2.1.5 Recipient OK"),
        (Address("postmaster", ""), "250 2.1.5 Recipient OK"),
        (Address("u", "other.example"), "cont"),
        (Address("u", "[192.0.2.1]"), "cont"),
        # a source route is not a reason to accept: the mailbox decides
        (Address("u", "other.example", ("example.test",)), "cont"),
        (Address("u", "example.test", ("other.example",)), "250 2.1.5 Recipient OK"),
    ],
)
async def test_local_domains(address: Address, expected: str) -> None:
    assert await judge(address) == expected


REFUSED = "550 5.7.1 Relaying denied: routing characters (% ! @) in the local part"


@pytest.mark.parametrize(
    "address",
    [
        Address("user%other.example", "example.test"),
        Address("other.example!user", "example.test"),
        Address('"user@other.example"', "example.test"),
        Address('"user%other"', "example.test"),
        Address('"a\\@b"', "example.test"),
    ],
    ids=str,
)
async def test_routing_characters_in_local_recipients_are_refused(address: Address) -> None:
    assert await judge(address) == REFUSED
    allowed = await judge(address, {"allow_routing_characters": True})
    assert allowed == "250 2.1.5 Recipient OK"


async def test_routing_characters_at_other_domains_are_left_to_the_relay_rule() -> None:
    assert await judge(Address("user%example.test", "other.example")) == "cont"


async def test_the_refusal_holds_for_relaying_clients_too() -> None:
    conn = connection(relaying=True)
    result, _ = await verdict(
        runner("rcpt_to_host_list"),
        "rcpt",
        conn,
        Address("user%other.example", "example.test"),
        RcptParams(),
    )
    assert result.action is hooks.Action.DENY


def test_config_errors() -> None:
    assert "allow_routing_characters must be true or false" in config_error(
        "rcpt_to_host_list", {"allow_routing_characters": "yes"}
    )


def test_shipped_config_is_the_default() -> None:
    assert shipped_config("rcpt_to_host_list") == {"allow_routing_characters": False}
