from __future__ import annotations

from collections.abc import Mapping

import pytest

from tests.mailauth.conftest import DNS
from tests.mailauth.kit import begin, connection, plugins, verdict
from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, Reply


async def mail(
    dnsmasq: DNS,
    sender: Address | None,
    *,
    ip: str = "127.0.0.1",
    config: dict[str, object] | None = None,
    fields: Mapping[str, object] | None = None,
) -> tuple[hooks.Connection, Reply | None]:
    run = plugins(["spf"], dnsmasq.resolver(), {"spf": config or {}})
    conn = connection(ip, helo="helo.test")
    for key, value in (fields or {}).items():
        setattr(conn, key, value)
    begin(conn, sender)
    reply = (await verdict(run, "mail", conn, sender, MailParams()))[1]
    return conn, reply


@pytest.mark.parametrize(
    ("domain", "ip", "result"),
    [
        ("sender.test", "127.0.0.1", "pass"),
        ("incl.test", "127.0.0.1", "pass"),
        ("soft.test", "127.0.0.1", "softfail"),
        ("fail.test", "127.0.0.1", "fail"),
        ("nopolicy.test", "127.0.0.1", "neutral"),
        ("nothing.test", "127.0.0.1", "none"),
    ],
)
async def test_mail_from_results_are_noted(dnsmasq: DNS, domain: str, ip: str, result: str) -> None:
    conn, _ = await mail(dnsmasq, Address("a", domain), ip=ip)
    assert conn.transaction is not None
    note = conn.transaction.notes["spf"]
    assert isinstance(note, dict)
    assert (note["result"], note["domain"], note["identity"]) == (result, domain, "mailfrom")
    helo = conn.notes["spf_helo"]
    assert isinstance(helo, dict)
    assert helo["result"] == "pass"
    assert helo["domain"] == "helo.test"


async def test_fail_is_refused_with_5_7_23_softfail_and_pass_are_accepted(dnsmasq: DNS) -> None:
    _, reply = await mail(dnsmasq, Address("a", "fail.test"))
    assert reply is not None
    assert (reply.code, reply.enhanced) == (550, "5.7.23")
    assert "SPF fail" in reply.text[0]
    for domain in ("soft.test", "sender.test"):
        _, reply = await mail(dnsmasq, Address("a", domain))
        assert reply is None


async def test_configured_actions(dnsmasq: DNS) -> None:
    config: dict[str, object] = {"actions": {"softfail": "defer", "fail": "accept"}}
    _, reply = await mail(dnsmasq, Address("a", "soft.test"), config=config)
    assert reply is not None
    assert (reply.code, reply.enhanced) == (451, "4.7.24")
    _, reply = await mail(dnsmasq, Address("a", "fail.test"), config=config)
    assert reply is None


@pytest.mark.parametrize(
    "fields", [{"relaying": True}, {"auth_user": "bob"}, {"listener": "submission"}]
)
async def test_never_refused_for_relay_auth_or_submission(
    dnsmasq: DNS, fields: dict[str, object]
) -> None:
    conn, reply = await mail(dnsmasq, Address("a", "fail.test"), fields=fields)
    assert reply is None
    assert conn.transaction is not None
    assert "spf" not in conn.transaction.notes


async def test_null_sender_checks_postmaster_at_helo(dnsmasq: DNS) -> None:
    conn, reply = await mail(dnsmasq, None, ip="192.0.2.7")
    assert reply is not None
    assert reply.code == 550
    assert conn.transaction is not None
    note = conn.transaction.notes["spf"]
    assert isinstance(note, dict)
    assert note["domain"] == "helo.test"
    assert note["result"] == "fail"


def test_bad_config_is_refused() -> None:
    with pytest.raises(hooks.PluginLoadError, match="unknown SPF result"):
        plugins(["spf"], None, {"spf": {"actions": {"bogus": "reject"}}})
    with pytest.raises(hooks.PluginLoadError, match="action must be one of"):
        plugins(["spf"], None, {"spf": {"actions": {"fail": "explode"}}})
