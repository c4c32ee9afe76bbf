"""``DNSResolver`` against a real dnsmasq: MX order, Null MX, NODATA, NXDOMAIN, TCP fallback."""

from __future__ import annotations

import pytest
import trio

from tests.integration_queue.conftest import Dnsmasq, free_port
from trio_mta.resolver import MX, DNSError, DNSResolver, NXDomain

CAP = 10


def resolver(dnsmasq: Dnsmasq) -> DNSResolver:
    return DNSResolver([("127.0.0.1", dnsmasq.port)], try_interval=1.0)


async def test_mx_records_sorted_by_preference(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(CAP):
        records = await resolver(dnsmasq).mx("pref.test")
    assert records == [MX(10, "mx1.pref.test"), MX(20, "mx2.pref.test")]


async def test_null_mx(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(CAP):
        [record] = await resolver(dnsmasq).mx("nullmx.test")
    assert record.is_null
    assert record.preference == 0


async def test_addresses_nodata_and_nxdomain(dnsmasq: Dnsmasq) -> None:
    r = resolver(dnsmasq)
    with trio.fail_after(CAP):
        assert await r.a("mx1.pref.test") == ["127.0.0.2"]
        assert await r.aaaa("mx1.pref.test") == []  # the name exists: NODATA, not an error
        assert await r.mx("implicit.test") == []
        with pytest.raises(NXDomain):
            await r.a("missing.test")
        with pytest.raises(NXDomain):
            await r.mx("missing.test")


async def test_a_truncated_answer_is_asked_again_over_tcp(dnsmasq: Dnsmasq) -> None:
    with trio.fail_after(CAP):
        [long] = await resolver(dnsmasq).txt("long.test")
        assert await resolver(dnsmasq).txt("spf.test") == ["v=spf1 -all"]
    assert long == "x" * 1600  # far beyond one 512-octet UDP answer


async def test_a_silent_nameserver_is_a_temporary_failure() -> None:
    dark = ("127.0.0.1", free_port("127.0.0.1"))  # nobody answers there
    r = DNSResolver([dark], try_interval=0.2, tries=2)
    with trio.fail_after(CAP), pytest.raises(DNSError) as caught:
        await r.mx("pref.test")
    assert not isinstance(caught.value, NXDomain)


async def test_the_next_nameserver_answers_when_the_first_is_silent(dnsmasq: Dnsmasq) -> None:
    dark = ("127.0.0.1", free_port("127.0.0.1"))
    r = DNSResolver([dark, ("127.0.0.1", dnsmasq.port)], try_interval=0.2)
    with trio.fail_after(CAP):
        assert await r.a("implicit.test") == ["127.0.0.6"]


@pytest.mark.parametrize(
    "name", ["\ufffd(.example", "a" * 64 + ".example", "a..example", "x." * 130 + "example"]
)
async def test_a_name_that_cannot_exist_is_nxdomain_without_asking(name: str) -> None:
    # A server that never answers: only an answer given without asking can come back in time.
    dark = ("127.0.0.1", free_port("127.0.0.1"))
    r = DNSResolver([dark], try_interval=5.0)
    with trio.fail_after(1):
        for lookup in (r.mx, r.a, r.aaaa, r.txt):
            with pytest.raises(NXDomain):
                await lookup(name)
