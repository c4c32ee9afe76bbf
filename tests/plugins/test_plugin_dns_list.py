"""dns_list through the hook runner, with a static resolver (no sockets) or a stub one whose
lookups take virtual time (``autojump_clock``)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.reversename
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from plugins.dns_list import IPAddress, lookup_address, reverse_name
from tests.plugins.plugin_kit import begin, config_error, connection, shipped_config, verdict
from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams, Reply

BOB = Address("bob", "example.test")
RCPT = RcptParams()
CLIENT = "192.0.2.10"  # documentation address: looked up only with check_loopback
LISTED_NAME = "10.2.0.192.bl.test"
BL = {"zone": "bl.test"}
WL = {"zone": "wl.test", "type": "allow"}
LISTED_REPLY = Reply(550, "5.7.1", ("Client host [192.0.2.10] blocked using bl.test",))


def load_dns_list(
    config: Mapping[str, object],
    resolver: hooks.Resolver | None,
    *,
    before: Sequence[str] = (),
    before_configs: Mapping[str, Mapping[str, object]] | None = None,
    timeout: float = 5.0,
) -> hooks.HookRunner:
    env = hooks.PluginEnv(
        hostname="mx.example.test",
        var_dir=Path("/nonexistent"),
        local_domains=("example.test",),
        resolver=resolver,
    )
    configs: dict[str, Mapping[str, object]] = {name: {} for name in before}
    configs.update(before_configs or {})
    configs["dns_list"] = {"check_loopback": True, "timeout": timeout, **config}
    plugins = hooks.load_plugins([*before, "dns_list"], configs=configs, env=env)
    return hooks.HookRunner(plugins)


def plugin_of(run: hooks.HookRunner) -> hooks.Plugin:
    [plugin] = [p for p in run.plugins.plugins if p.name == "dns_list"]
    return plugin


def static(
    a: Mapping[str, Sequence[str]] | None = None,
    txt: Mapping[str, Sequence[str]] | None = None,
    fail: Sequence[str] = (),
) -> hooks.StaticResolver:
    return hooks.StaticResolver(a=a or {}, txt=txt or {}, fail=fail)


async def session(
    run: hooks.HookRunner, ip: str = CLIENT, **fields: object
) -> tuple[hooks.Connection, Reply | None, Reply | None, Reply | None]:
    """connect, MAIL, then one RCPT as the server runs them: (conn, connect reply, rcpt reply,
    rcpt_ok reply); a hook that refused ends the list with its reply."""
    conn = connection(ip, **fields)
    connected = (await verdict(run, "connect", conn))[1]
    begin(conn)
    rcpt = (await verdict(run, "rcpt", conn, BOB, RCPT))[1]
    rcpt_ok = (await verdict(run, "rcpt_ok", conn, BOB))[1]
    return conn, connected, rcpt, rcpt_ok


# ----------------------------------------------------------------------------- configuration


def test_the_shipped_file_needs_a_zone_and_then_loads() -> None:
    shipped = shipped_config("dns_list")
    assert "zones: at least one zone is needed" in config_error("dns_list", shipped)
    run = load_dns_list({**shipped, "zones": [BL]}, static())
    plugin = plugin_of(run)
    assert plugin.reject_at.value == "rcpt"  # type: ignore[attr-defined]  # the plugin's own
    assert plugin.soft_on_error is False  # type: ignore[attr-defined]  # attributes, set up
    assert plugin.skip_listeners == {"submission", "smtps"}  # type: ignore[attr-defined]  # there


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"zones": [BL], "zone": "x"}, "unknown keys ['zone']"),
        ({}, "zones: at least one zone is needed"),
        ({"zones": "bl.test"}, "zones: at least one zone is needed"),
        ({"zones": ["bl.test"]}, "zones[0]: must be a table"),
        ({"zones": [{"zone": "a.test", "codez": []}]}, "zones[0]: unknown keys ['codez']"),
        ({"zones": [{"type": "block"}]}, "zones[0]: 'zone' (the list's DNS zone) is required"),
        ({"zones": [BL, {"zone": "x.test", "type": "deny"}]}, "zones[1].type: must be 'block'"),
        ({"zones": [{"zone": "bad_zone!.test"}]}, "zones[0].zone: 'bad_zone!.test' is not a DNS"),
        ({"zones": [{"zone": "a..test"}]}, "bad label ''"),
        ({"zones": [{"zone": ".".join(["x" * 60] * 4)}]}, "1 to 189 characters"),
        ({"zones": [BL, {"zone": "BL.test."}]}, "zones: 'bl.test' is configured twice"),
        ({"zones": [{"zone": "a.test", "codes": "127.0.0.2"}]}, "codes: must be a list"),
        ({"zones": [{"zone": "a.test", "codes": []}]}, "codes: must name at least one code"),
        ({"zones": [{"zone": "a.test", "codes": ["10.0.0.2"]}]}, "outside 127.0.0.0/8"),
        ({"zones": [{"zone": "a.test", "codes": ["127.0.0.x"]}]}, "not an IPv4 address"),
        ({"zones": [{"zone": "a.test", "codes": ["127.0.0.9-127.0.0.3"]}]}, "end comes before"),
        ({"zones": [{"zone": "a.test", "codes": ["126.0.0.0/7"]}]}, "outside 127.0.0.0/8"),
        ({"zones": [{"zone": "a.test", "codes": ["127.0.0.1/24"]}]}, "not an IPv4 network"),
        ({"zones": [{"zone": "a.test", "reason": "{host} listed"}]}, "unknown placeholders"),
        ({"zones": [{"zone": "a.test", "reason": "{ip"}]}, "reason: "),
        ({"zones": [{"zone": "a.test", "reason": "a\r\nb"}]}, "one line of printable ASCII"),
        ({"zones": [{"zone": "a.test", "reason": ""}]}, "reason: must be a non-empty string"),
        ({"zones": [{"zone": "a.test", "ipv6": "no"}]}, "ipv6: must be true or false"),
        ({"zones": [BL], "reject_at": "mail"}, "reject_at: must be 'rcpt' or 'connect'"),
        ({"zones": [BL], "check_loopback": 1}, "check_loopback: must be true or false"),
        ({"zones": [BL], "soft_on_error": "yes"}, "soft_on_error: must be true or false"),
        ({"zones": [BL], "nameservers": ["dns.example"]}, "nameservers: "),
        ({"zones": [BL], "nameservers": "127.0.0.1"}, "nameservers: must be a list"),
        ({"zones": [BL], "skip_listeners": "submission"}, "skip_listeners: must be a list"),
    ],
)
def test_bad_settings_are_refused_with_the_key_named(
    config: dict[str, object], message: str
) -> None:
    assert message in config_error("dns_list", config)


def test_runner_keys_pass_and_nameservers_override_the_server_resolver() -> None:
    run = load_dns_list({"zones": [BL], "nameservers": ["127.0.0.1:5353"]}, static())
    resolver = plugin_of(run).resolver  # type: ignore[attr-defined]  # the plugin's own
    assert isinstance(resolver, hooks.DNSResolver)
    assert resolver.nameservers == [("127.0.0.1", 5353)]


# ----------------------------------------------------------------------------- names


def test_reverse_names_of_known_addresses() -> None:
    assert reverse_name(ipaddress.IPv4Address("192.0.2.1")) == "1.2.0.192"
    assert reverse_name(ipaddress.IPv4Address("127.0.0.2")) == "2.0.0.127"
    nibbles = "1" + "0" * 23 + "8bd01002"
    assert reverse_name(ipaddress.IPv6Address("2001:db8::1")) == ".".join(nibbles)


@given(st.ip_addresses())
def test_reverse_name_is_the_arpa_name_without_its_suffix(ip: IPAddress) -> None:
    # RFC 5782 §2.1, §2.4: the labels of in-addr.arpa / ip6.arpa, in front of the list's zone.
    arpa = ip.reverse_pointer
    suffix = ".in-addr.arpa" if ip.version == 4 else ".ip6.arpa"
    name = reverse_name(ip)
    assert name == arpa.removesuffix(suffix)
    if ip.version == 4 or ip.ipv4_mapped is None:  # dnspython writes those the IPv4 way
        assert f"{name}{suffix}." == dns.reversename.from_address(str(ip)).to_text()
    assert len(name.split(".")) == (4 if ip.version == 4 else 32)


@pytest.mark.parametrize(
    ("client", "looked_up"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket
        ("2001:DB8::7", "2001:db8::7"),
        ("fe80::1%eth0", "fe80::1"),
        ("not-an-address", None),
    ],
)
def test_the_address_looked_up(client: str, looked_up: str | None) -> None:
    found = lookup_address(client)
    assert (None if found is None else str(found)) == looked_up


# ----------------------------------------------------------------------------- listed or not


async def test_a_listed_client_is_refused_at_rcpt_with_the_zone_and_its_txt_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = static(
        a={LISTED_NAME: ["127.0.0.2", "127.0.0.4"]},
        txt={LISTED_NAME: ["See https://bl.test/lookup?ip=192.0.2.10"]},
    )
    run = load_dns_list({"zones": [BL]}, resolver)
    with caplog.at_level(logging.INFO, "trio_mta.plugin.dns_list"):
        conn, connected, rcpt, rcpt_ok = await session(run)
    assert connected is None  # reject_at = "rcpt": the greeting goes out
    text = (
        "Client host [192.0.2.10] blocked using bl.test; See https://bl.test/lookup?ip=192.0.2.10"
    )
    assert rcpt == Reply(550, "5.7.1", (text,))
    assert rcpt_ok == rcpt
    assert conn.notes["dns_list.listed"] == {"bl.test": ["127.0.0.2", "127.0.0.4"]}
    assert "dns_list.allowed" not in conn.notes
    [hit] = [r.getMessage() for r in caplog.records if "listed in" in r.getMessage()]
    assert hit == "conn=c1 dns_list: 192.0.2.10 listed in bl.test (block): 127.0.0.2, 127.0.0.4"
    assert ("A", LISTED_NAME) in resolver.queries


async def test_an_unlisted_client_is_left_alone() -> None:
    resolver = static(a={"2.0.0.127.bl.test": ["127.0.0.2"]})
    run = load_dns_list({"zones": [BL, WL]}, resolver)
    conn, connected, rcpt, rcpt_ok = await session(run)
    assert (connected, rcpt, rcpt_ok) == (None, None, None)
    assert not [k for k in conn.notes if k.startswith("dns_list.")]
    # Both zones were asked (and each once about 127.0.0.1, the list's own test entry).
    assert sorted(resolver.queries) == [
        ("A", "1.0.0.127.bl.test"),
        ("A", "1.0.0.127.wl.test"),
        ("A", LISTED_NAME),
        ("A", "10.2.0.192.wl.test"),
    ]


async def test_the_first_listing_zone_in_the_configured_order_is_named() -> None:
    resolver = static(a={LISTED_NAME: ["127.0.0.2"], "10.2.0.192.other.test": ["127.0.0.3"]})
    run = load_dns_list({"zones": [{"zone": "other.test"}, BL]}, resolver)
    conn, _, rcpt, _ = await session(run)
    assert rcpt is not None
    assert rcpt.text == ("Client host [192.0.2.10] blocked using other.test",)
    assert conn.notes["dns_list.listed"] == {"other.test": ["127.0.0.3"], "bl.test": ["127.0.0.2"]}


async def test_a_custom_reason_and_an_unprintable_or_long_txt() -> None:
    resolver = static(
        a={LISTED_NAME: ["127.0.0.2"], "10.2.0.192.long.test": ["127.0.0.2"]},
        txt={LISTED_NAME: ["caf\u00e9\x07"], "10.2.0.192.long.test": ["x" * 400]},
    )
    reason = "{ip} is on {zone}, {{sorry}}"
    zones = [{"zone": "bl.test", "reason": reason}, {"zone": "long.test"}]
    run = load_dns_list({"zones": zones}, resolver)
    _, _, rcpt, _ = await session(run)
    assert rcpt == Reply(550, "5.7.1", ("192.0.2.10 is on bl.test, {sorry}",))  # TXT unfit
    run = load_dns_list({"zones": [{"zone": "long.test"}]}, resolver)
    conn, _, rcpt, _ = await session(run)
    assert rcpt is not None
    [line] = rcpt.text
    assert line == "Client host [192.0.2.10] blocked using long.test; " + "x" * 147 + "..."
    assert conn.notes["dns_list.txt"] == {"long.test": "x" * 147 + "..."}


async def test_a_listing_without_a_txt_record_or_with_a_failing_one() -> None:
    resolver = static(a={LISTED_NAME: ["127.0.0.2"]})
    _, _, rcpt, _ = await session(load_dns_list({"zones": [BL]}, resolver))
    assert rcpt == LISTED_REPLY
    failing = static(a={LISTED_NAME: ["127.0.0.2"]})

    async def txt(name: str) -> list[str]:
        raise hooks.DNSError("SERVFAIL")

    failing.txt = txt  # type: ignore[method-assign]  # a TXT lookup that fails
    _, _, rcpt, _ = await session(load_dns_list({"zones": [BL]}, failing))
    assert rcpt == LISTED_REPLY


# ----------------------------------------------------------------------------- codes


@pytest.mark.parametrize(
    ("codes", "answers", "listed"),
    [
        (None, ["127.0.0.2"], ["127.0.0.2"]),
        (None, ["127.1.2.3", "127.0.0.2"], ["127.0.0.2", "127.1.2.3"]),
        (["127.0.0.2"], ["127.0.0.3"], None),
        (["127.0.0.2", "127.0.0.4-127.0.0.11"], ["127.0.0.11", "127.0.0.3"], ["127.0.0.11"]),
        (["127.0.0.4-127.0.0.11"], ["127.0.0.3", "127.0.0.12"], None),
        (["127.0.1.0/24"], ["127.0.1.106", "127.0.0.2"], ["127.0.1.106"]),
    ],
)
async def test_only_the_zones_codes_count(
    codes: list[str] | None, answers: list[str], listed: list[str] | None
) -> None:
    zone: dict[str, object] = {"zone": "bl.test"} if codes is None else {**BL, "codes": codes}
    run = load_dns_list({"zones": [zone]}, static(a={LISTED_NAME: answers}))
    conn, _, rcpt, _ = await session(run)
    assert conn.notes.get("dns_list.listed") == (None if listed is None else {"bl.test": listed})
    assert (rcpt is not None) == (listed is not None)


@pytest.mark.parametrize(
    ("answer", "codes", "why"),
    [
        ("192.0.2.99", None, "answered 192.0.2.99, outside 127.0.0.0/8: not a listing"),
        ("127.255.255.254", None, "answered 127.255.255.254: the list refuses our queries"),
        ("127.255.255.255", ["127.0.0.0/8"], "answered 127.255.255.255: the list refuses"),
        ("127.0.0.255", ["127.0.0.0/16"], "answered 127.0.0.255: the list refuses"),
    ],
)
async def test_refusals_and_answers_outside_loopback_never_count(
    answer: str, codes: list[str] | None, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    zones: list[dict[str, object]] = [
        {**BL, **({"codes": codes} if codes else {})},
        {**WL, **({"codes": codes} if codes else {})},
    ]
    answers = {LISTED_NAME: [answer], "10.2.0.192.wl.test": [answer]}
    run = load_dns_list({"zones": zones}, static(a=answers))
    with caplog.at_level(logging.WARNING, "trio_mta.plugin.dns_list"):
        conn, _, rcpt, _ = await session(run)
    assert rcpt is None
    assert "dns_list.listed" not in conn.notes
    assert "dns_list.allowed" not in conn.notes
    ignored = conn.notes["dns_list.ignored"]
    assert isinstance(ignored, dict)
    assert list(ignored) == ["bl.test", "wl.test"]
    assert why in str(ignored["bl.test"])
    assert any(why in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# ----------------------------------------------------------------------------- allow lists


async def test_an_allow_list_beats_every_block_list() -> None:
    resolver = static(a={LISTED_NAME: ["127.0.0.2"], "10.2.0.192.wl.test": ["127.0.10.2"]})
    other_wl = {"zone": "wl2.test", "type": "allow"}
    run = load_dns_list({"zones": [BL, other_wl, WL], "reject_at": "connect"}, resolver)
    conn, connected, rcpt, rcpt_ok = await session(run)
    assert (connected, rcpt, rcpt_ok) == (None, None, None)
    assert conn.notes["dns_list.allowed"] == "wl.test"
    assert conn.notes["dns_list.listed"] == {"bl.test": ["127.0.0.2"]}  # still there to read


async def test_an_allow_list_that_failed_makes_a_block_listing_temporary() -> None:
    resolver = static(a={LISTED_NAME: ["127.0.0.2"]}, fail=["10.2.0.192.wl.test"])
    run = load_dns_list({"zones": [BL, WL]}, resolver)
    conn, _, rcpt, rcpt_ok = await session(run)
    assert rcpt is not None
    assert (rcpt.code, rcpt.enhanced) == (451, "4.7.1")
    assert rcpt.text == (
        "Client host [192.0.2.10] blocked using bl.test"
        " (allow list wl.test did not answer; try again later)",
    )
    assert rcpt_ok == rcpt
    errors = conn.notes["dns_list.errors"]
    assert isinstance(errors, dict)
    assert list(errors) == ["wl.test"]


# ----------------------------------------------------------------------------- who is checked


async def test_relaying_authenticated_and_skipped_clients_are_never_refused() -> None:
    resolver = static(a={LISTED_NAME: ["127.0.0.2"]})
    run = load_dns_list({"zones": [BL], "reject_at": "connect"}, resolver)
    # Relaying from connect_init on (relay_acl): not even looked up.
    conn, connected, rcpt, rcpt_ok = await session(run, relaying=True)
    assert (connected, rcpt, rcpt_ok) == (None, None, None)
    assert resolver.queries == []
    conn = connection(CLIENT)
    conn.listener = "submission"
    assert (await verdict(run, "connect", conn))[1] is None
    assert resolver.queries == []
    # Listed at connect, then authenticated: its recipients are accepted.
    run = load_dns_list({"zones": [BL]}, resolver)
    conn = connection(CLIENT)
    assert (await verdict(run, "connect", conn))[1] is None
    assert "dns_list.listed" in conn.notes
    conn.auth_user = "alice"
    conn.relaying = True  # as the server sets after a successful AUTH
    begin(conn)
    assert (await verdict(run, "rcpt", conn, BOB, RCPT))[1] is None
    assert (await verdict(run, "rcpt_ok", conn, BOB))[1] is None


async def test_a_client_whitelisted_by_another_plugin_is_not_refused() -> None:
    run = load_dns_list({"zones": [BL]}, static(a={LISTED_NAME: ["127.0.0.2"]}))
    conn = connection(CLIENT)
    await verdict(run, "connect", conn)
    txn = begin(conn)
    assert (await verdict(run, "rcpt", conn, BOB, RCPT))[1] == LISTED_REPLY
    txn.notes["whitelisted"] = "access: mail"
    assert (await verdict(run, "rcpt", conn, BOB, RCPT))[1] is None


async def test_a_client_allowed_by_access_at_connect_is_not_looked_up() -> None:
    resolver = static(a={LISTED_NAME: ["127.0.0.2"], "1.100.51.198.bl.test": ["127.0.0.2"]})
    access = {"client": {"allow": ["192.0.2.0/24"]}}
    run = load_dns_list(
        {"zones": [BL], "reject_at": "connect"},
        resolver,
        before=["access"],
        before_configs={"access": access},
    )
    conn, connected, rcpt, rcpt_ok = await session(run)
    assert (connected, rcpt, rcpt_ok) == (None, None, None)
    assert conn.notes["whitelisted"] == "access: client"
    assert resolver.queries == []
    # Another client of the same list, not allowed by access, is refused.
    _, connected, _, _ = await session(run, ip="198.51.100.1")
    assert connected is not None
    assert connected.code == 554


@pytest.mark.parametrize(
    ("ip", "check_loopback", "queried"),
    [
        ("127.0.0.2", False, False),
        ("10.1.2.3", False, False),
        ("192.168.1.1", False, False),
        ("169.254.1.1", False, False),
        ("100.64.0.1", False, False),  # shared address space (RFC 6598)
        ("::1", False, False),
        ("fe80::1%eth0", False, False),
        ("fd00::1", False, False),
        ("127.0.0.2", True, True),
        ("192.168.1.1", True, True),
        ("8.8.8.8", False, True),  # a global address; the resolver here is static
    ],
)
async def test_non_global_addresses_are_looked_up_only_with_check_loopback(
    ip: str, check_loopback: bool, queried: bool
) -> None:
    resolver = static()
    run = load_dns_list({"zones": [BL], "check_loopback": check_loopback}, resolver)
    await verdict(run, "connect", connection(ip))
    assert bool(resolver.queries) == queried


async def test_ipv6_clients_use_nibbles_and_zones_may_leave_them_out() -> None:
    name = "1" + "0" * 23 + "8bd01002"
    v6_name = ".".join(name) + ".bl.test"
    resolver = static(a={v6_name: ["127.0.0.2"], "2.0.0.127.v4only.test": ["127.0.0.2"]})
    zones = [BL, {"zone": "v4only.test", "ipv6": False}]
    run = load_dns_list({"zones": zones}, resolver)
    conn, _, rcpt, _ = await session(run, ip="2001:db8::1")
    assert rcpt == Reply(550, "5.7.1", ("Client host [2001:db8::1] blocked using bl.test",))
    assert [n for _, n in resolver.queries if n.endswith("v4only.test")] == []
    assert ("A", v6_name) in resolver.queries
    # An IPv4 client seen through an IPv6 socket is an IPv4 client, for every zone.
    resolver.queries.clear()
    conn, _, rcpt, _ = await session(run, ip="::ffff:127.0.0.2")
    assert conn.notes["dns_list.listed"] == {"v4only.test": ["127.0.0.2"]}
    assert rcpt == Reply(550, "5.7.1", ("Client host [127.0.0.2] blocked using v4only.test",))


# ----------------------------------------------------------------------------- where refused


async def test_reject_at_connect_refuses_the_greeting_with_554() -> None:
    resolver = static(a={LISTED_NAME: ["127.0.0.2"]}, txt={LISTED_NAME: ["listed for spam"]})
    run = load_dns_list({"zones": [BL], "reject_at": "connect"}, resolver)
    result, reply = await verdict(run, "connect", connection(CLIENT))
    assert result.action is hooks.Action.DENY  # every connect refusal closes the session
    text = "Client host [192.0.2.10] blocked using bl.test; listed for spam"
    assert reply == Reply(554, "5.7.1", (text,))


async def test_rcpt_ok_refuses_when_an_earlier_plugin_accepted_the_recipient() -> None:
    # rcpt_to_host_list says OK for a local recipient and ends the rcpt chain before dns_list.
    resolver = static(a={LISTED_NAME: ["127.0.0.2"]})
    run = load_dns_list({"zones": [BL]}, resolver, before=["rcpt_to_host_list"])
    _, _, rcpt, rcpt_ok = await session(run)
    assert rcpt is not None
    assert rcpt.code == 250  # rcpt_to_host_list's OK
    assert rcpt_ok == LISTED_REPLY


# ----------------------------------------------------------------------------- failures


async def test_a_failing_block_list_fails_open_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = static(fail=[LISTED_NAME])
    with caplog.at_level(logging.WARNING, "trio_mta.plugin.dns_list"):
        conn, connected, rcpt, rcpt_ok = await session(load_dns_list({"zones": [BL]}, resolver))
    assert (connected, rcpt, rcpt_ok) == (None, None, None)
    errors = conn.notes["dns_list.errors"]
    assert isinstance(errors, dict)
    assert "SERVFAIL" in str(errors["bl.test"])
    assert any("bl.test failed" in r.getMessage() for r in caplog.records)


async def test_soft_on_error_defers_a_client_a_block_list_could_not_judge() -> None:
    resolver = static(fail=[LISTED_NAME])
    run = load_dns_list({"zones": [BL, WL], "soft_on_error": True}, resolver)
    _, _, rcpt, rcpt_ok = await session(run)
    text = "Cannot check [192.0.2.10] against bl.test now; try again later"
    assert rcpt == Reply(451, "4.7.1", (text,))
    assert rcpt_ok == rcpt
    # At connect, a temporary refusal of the greeting is a 421.
    run = load_dns_list({"zones": [BL], "soft_on_error": True, "reject_at": "connect"}, resolver)
    result, reply = await verdict(run, "connect", connection(CLIENT))
    assert result.action is hooks.Action.DENYSOFT
    assert reply == Reply(421, "4.7.1", (text,))
    # An allow list that fails is no reason to defer anybody.
    resolver = static(fail=["10.2.0.192.wl.test"])
    run = load_dns_list({"zones": [BL, WL], "soft_on_error": True}, resolver)
    assert (await session(run))[2:] == (None, None)


class Slow:
    """A resolver whose A lookups take ``delay`` seconds of virtual time, forever for names in
    ``stuck``, and answer from ``a`` (NXDOMAIN otherwise)."""

    def __init__(
        self, a: Mapping[str, list[str]], *, delay: float = 1.0, stuck: Sequence[str] = ()
    ) -> None:
        self.table = dict(a)
        self.delay = delay
        self.stuck = set(stuck)
        self.cancelled: list[str] = []

    async def a(self, name: str) -> list[str]:
        try:
            if name in self.stuck:
                await trio.sleep_forever()
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled.append(name)
            raise
        if name not in self.table:
            raise hooks.NXDomain(name)
        return self.table[name]

    async def txt(self, name: str) -> list[str]:
        raise hooks.NXDomain(name)

    aaaa = ptr = txt

    async def mx(self, name: str) -> list[hooks.MX]:
        raise hooks.NXDomain(name)


async def test_zones_are_looked_up_concurrently(autojump_clock: trio.testing.MockClock) -> None:
    zones = [{"zone": f"z{i}.test"} for i in range(5)]
    resolver = Slow({"10.2.0.192.z3.test": ["127.0.0.2"]}, delay=1.0)
    run = load_dns_list({"zones": zones}, resolver)
    start = trio.current_time()
    conn = connection(CLIENT)
    await verdict(run, "connect", conn)
    assert trio.current_time() - start == 1.0  # five lookups (and five test entries) at once
    assert conn.notes["dns_list.listed"] == {"z3.test": ["127.0.0.2"]}


async def test_a_silent_zone_stops_at_the_deadline_and_the_others_still_count(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    zones = [{"zone": "silent.test"}, BL]
    resolver = Slow({LISTED_NAME: ["127.0.0.2"]}, stuck=["10.2.0.192.silent.test"])
    run = load_dns_list({"zones": zones}, resolver, timeout=2.0)
    start = trio.current_time()
    conn = connection(CLIENT)
    with caplog.at_level(logging.WARNING, "trio_mta.plugin.dns_list"):
        result, reply = await verdict(run, "connect", conn)
    assert reply is None
    # Stopped by the plugin itself, just short of its 2 s deadline: no timeout for the runner.
    assert trio.current_time() - start == pytest.approx(2.0 - 0.05)
    assert result is hooks.CONT
    assert resolver.cancelled == ["10.2.0.192.silent.test"]
    assert conn.notes["dns_list.errors"] == {"silent.test": "no answer before the deadline"}
    assert not any("timed out" in r.getMessage() for r in caplog.records)
    begin(conn)
    assert (await verdict(run, "rcpt", conn, BOB, RCPT))[1] == Reply(
        550, "5.7.1", ("Client host [192.0.2.10] blocked using bl.test",)
    )


async def test_a_silent_zone_alone_lets_mail_through_unless_soft_on_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = Slow({}, stuck=[LISTED_NAME])
    for soft, expected in [(False, None), (True, 451)]:
        run = load_dns_list({"zones": [BL], "soft_on_error": soft}, resolver, timeout=0.5)
        start = trio.current_time()
        _, connected, rcpt, _ = await session(run)
        assert trio.current_time() - start == pytest.approx(0.45)
        assert connected is None
        assert (rcpt.code if rcpt else None) == expected


# ----------------------------------------------------------------------------- test entry


async def test_a_zone_that_lists_127_0_0_1_is_ignored_until_it_stops(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    wildcard = {"1.0.0.127.bl.test": ["127.0.0.2"], LISTED_NAME: ["127.0.0.2"]}
    resolver = Slow(wildcard, delay=0.1)
    run = load_dns_list({"zones": [BL]}, resolver)
    with caplog.at_level(logging.WARNING, "trio_mta.plugin.dns_list"):
        conn, _, rcpt, rcpt_ok = await session(run)
    assert (rcpt, rcpt_ok) == (None, None)
    assert "dns_list.listed" not in conn.notes
    ignored = conn.notes["dns_list.ignored"]
    assert isinstance(ignored, dict)
    assert "lists 127.0.0.1" in str(ignored["bl.test"])
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "RFC 5782 §5" in error.getMessage()
    # The test entry is asked again only ten minutes later; until then the zone stays ignored.
    del resolver.table["1.0.0.127.bl.test"]
    await trio.sleep(599)
    conn, _, rcpt, _ = await session(run)
    assert rcpt is None
    await trio.sleep(1)
    conn, _, rcpt, _ = await session(run)
    assert rcpt == LISTED_REPLY
    assert "dns_list.ignored" not in conn.notes


async def test_the_test_entry_is_asked_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = static()
    run = load_dns_list({"zones": [BL]}, resolver)
    for _ in range(3):
        await verdict(run, "connect", connection(CLIENT))
    await trio.sleep(600)
    await verdict(run, "connect", connection(CLIENT))
    tests = [name for _, name in resolver.queries if name.startswith("1.0.0.127.")]
    assert tests == ["1.0.0.127.bl.test"] * 2
