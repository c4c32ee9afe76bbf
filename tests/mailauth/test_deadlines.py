"""A DNS server that never answers: the plugins hit their deadlines and the mail goes on."""

from __future__ import annotations

import threading
from pathlib import Path

import dkim
import trio

from tests.mailauth.conftest import Keys, SilentDNS
from tests.mailauth.kit import plugins, receive
from tests.mailauth.test_dkim import sign
from trio_mta import hooks

CHAIN = ["spf", "dkim_verify", "arc", "dmarc", "auth_results"]


async def test_silent_dns_hits_the_deadlines_and_mail_goes_on(
    silent_dns: SilentDNS, keys: Keys, tmp_path: Path
) -> None:
    _, signed = await sign(tmp_path, keys)
    signed = b"Authentication-Results: mx.example.test; arc=none\r\n" + signed
    seal = dkim.arc_sign(signed, b"arc", b"forwarder.test", keys.rsa, b"mx.example.test")
    signed = b"".join(seal) + signed
    resolver = hooks.DNSResolver([("127.0.0.1", silent_dns.port)], try_interval=5.0)
    run = plugins(CHAIN, resolver, var_dir=tmp_path, default_timeout=0.3)
    start = trio.current_time()
    with trio.fail_after(5):
        conn, mail, reply = await receive(run, signed, ip="192.0.2.9")
    elapsed = trio.current_time() - start
    assert mail is None
    assert reply is None
    # spf (MAIL), dkim_verify, arc and dmarc (data_post) each waited 0.3 s, not 10 s.
    assert 1.2 <= elapsed < 2.5
    assert silent_dns.queries >= 4
    assert conn.transaction is not None
    notes = conn.transaction.notes
    assert "spf" not in notes
    assert "dkim" not in notes
    assert "arc" not in notes
    [header] = [v for n, v in conn.transaction.added_headers if n == "Authentication-Results"]
    assert header == "mx.example.test; none"


class Stuck:
    """A resolver whose lookups never finish."""

    async def txt(self, name: str) -> list[str]:
        await trio.sleep_forever()
        raise AssertionError

    a = aaaa = ptr = txt

    async def mx(self, name: str) -> list[hooks.MX]:
        await trio.sleep_forever()
        raise AssertionError


async def test_an_abandoned_thread_stops_at_its_next_lookup() -> None:
    seen: list[str] = []
    finished = threading.Event()

    def work(dns: hooks.SyncDNS) -> None:
        try:
            for name in ("first.test", "second.test"):
                try:
                    dns.txt(name)
                except hooks.Abandoned:
                    seen.append(f"abandoned at {name}")
                    raise
        finally:
            finished.set()

    with trio.move_on_after(0.2) as scope:
        await hooks.run_with_dns(work, Stuck())
    assert scope.cancelled_caught
    await trio.to_thread.run_sync(finished.wait, 2.0)
    assert seen == ["abandoned at first.test"]


async def test_lookups_go_through_the_given_resolver() -> None:
    resolver = hooks.StaticResolver(txt={"a.test": ["hello"]})
    answer = await hooks.run_with_dns(lambda dns: dns.txt("a.test"), resolver)
    assert answer == ["hello"]
    assert resolver.queries == [("TXT", "a.test")]
