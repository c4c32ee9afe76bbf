"""Routing with a static resolver: MX order, implicit MX, Null MX, errors, configured routes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.queue.kit import make_config
from trio_mta.config import RouteConfig, TlsPolicy
from trio_mta.hooks import MXHost
from trio_mta.queue import Hop, RouteError, Router
from trio_mta.resolver import StaticResolver

DNS = StaticResolver(
    mx={
        "multi.test": [(20, "c.multi.test"), (10, "a.multi.test"), (10, "b.multi.test")],
        "null.test": [(0, "")],
        "broken.test": [(10, "gone.broken.test"), (20, "flaky.broken.test")],
        "v6.test": [(10, "mx.v6.test")],
    },
    a={"a.multi.test": ["192.0.2.1"], "b.multi.test": ["192.0.2.2"],
       "c.multi.test": ["192.0.2.3"], "implicit.test": ["192.0.2.9"], "mx.v6.test": ["192.0.2.6"],
       "smart.test": ["192.0.2.7"], "noaddr.test": []},
    aaaa={"mx.v6.test": ["2001:db8::6"]},
    fail=["flaky.broken.test", "tempfail.test"],
)  # fmt: skip


def router(tmp_path: Path, *routes: RouteConfig, seed: int = 0) -> Router:
    return Router(make_config(tmp_path, routes=routes), DNS, rng=random.Random(seed))


async def hops(r: Router, domain: str) -> list[tuple[str, str, int]]:
    planned = await r.plan(r.route(domain))
    return [(h.name, h.address, h.port) for h in planned.hops]


async def test_preference_order_with_equal_preferences_shuffled(tmp_path: Path) -> None:
    orders = set()
    for seed in range(20):
        found = await hops(router(tmp_path, seed=seed), "multi.test")
        assert found[2] == ("c.multi.test", "192.0.2.3", 25)
        orders.add(tuple(name for name, _, _ in found[:2]))
    assert orders == {("a.multi.test", "b.multi.test"), ("b.multi.test", "a.multi.test")}


async def test_implicit_mx_and_ipv6_after_ipv4(tmp_path: Path) -> None:
    assert await hops(router(tmp_path), "implicit.test") == [("implicit.test", "192.0.2.9", 25)]
    assert await hops(router(tmp_path), "v6.test") == [
        ("mx.v6.test", "192.0.2.6", 25),
        ("mx.v6.test", "2001:db8::6", 25),
    ]


@pytest.mark.parametrize(
    ("domain", "code", "enhanced"),
    [
        ("null.test", 556, "5.1.10"),  # RFC 7505
        ("missing.test", 550, "5.1.2"),  # NXDOMAIN
        ("tempfail.test", 451, "4.4.3"),  # SERVFAIL: try later
        ("noaddr.test", 550, "5.4.4"),  # no MX, and no address either
    ],
)
async def test_unroutable(tmp_path: Path, domain: str, code: int, enhanced: str) -> None:
    r = router(tmp_path)
    with pytest.raises(RouteError) as caught:
        await r.plan(r.route(domain))
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (code, enhanced)


async def test_a_host_that_does_not_resolve_is_skipped_and_a_dns_failure_defers(
    tmp_path: Path,
) -> None:
    r = router(tmp_path)
    with pytest.raises(RouteError) as caught:
        await r.plan(r.route("broken.test"))  # gone: NXDOMAIN, flaky: SERVFAIL
    assert caught.value.reply.code == 451


async def test_configured_routes_smart_host_domain_and_suffix(tmp_path: Path) -> None:
    r = router(
        tmp_path,
        RouteConfig(domain="*", host="smart.test", port=587, starttls="required"),
        RouteConfig(domain="multi.test", host="192.0.2.50"),
        RouteConfig(domain=".sub.test", port=2525),
    )
    smart = r.route("elsewhere.test")
    assert (smart.key, smart.port, smart.starttls) == ("smart.test:587", 587, TlsPolicy.REQUIRED)
    assert await hops(r, "elsewhere.test") == [("smart.test", "192.0.2.7", 587)]
    assert await hops(r, "multi.test") == [("192.0.2.50", "192.0.2.50", 25)]
    deep = r.route("a.b.sub.test")
    assert (deep.key, deep.port, deep.config and deep.config.domain) == (
        "a.b.sub.test", 2525, ".sub.test",
    )  # fmt: skip


async def test_hosts_from_a_plugin_replace_the_lookup(tmp_path: Path) -> None:
    r = router(tmp_path)
    planned = await r.plan(r.route("null.test"), [MXHost("192.0.2.77", port=2500)])
    assert planned.hops == (Hop("192.0.2.77", "192.0.2.77", 2500),)


async def test_address_literal_domain(tmp_path: Path) -> None:
    assert await hops(router(tmp_path), "[192.0.2.8]") == [("192.0.2.8", "192.0.2.8", 25)]


async def test_the_smart_host_is_for_non_local_mail_only(tmp_path: Path) -> None:
    # As Postfix's relayhost: `*` never takes [server] local_domains (here localhost and
    # example.test), while a route the operator wrote for a local domain still applies.
    r = router(
        tmp_path,
        RouteConfig(domain="*", host="smart.test"),
        RouteConfig(domain="localhost", host="192.0.2.60"),
    )
    for local in ("example.test", "EXAMPLE.test"):
        assert r.route(local).config is None
    assert r.route("sub.example.test").config is not None  # not itself a local domain
    assert r.route("elsewhere.test").key == "smart.test:25"
    assert r.route("localhost").key == "192.0.2.60:25"
