"""The per-address failure counter behind the AUTH tarpit (explicit times, no clock)."""

from __future__ import annotations

import pytest

from trio_mta.config import AuthConfig, Limits
from trio_mta.protocol import Address
from trio_mta.server import _auth
from trio_mta.server._auth import AuthFailures, owns
from trio_mta.server._exempt import Exemptions

CONFIG = AuthConfig(max_failures=5, failure_window=100.0, failure_delay=1.0, max_failure_delay=8.0)


def test_delays_grow_from_zero_doubling_to_the_cap() -> None:
    failures = AuthFailures(CONFIG)
    assert [failures.delay(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 8, 8, 8]
    assert failures.delay(10_000) == 8  # no overflow for absurd counts


def test_counts_per_address_and_blocks_at_the_limit() -> None:
    failures = AuthFailures(CONFIG)
    assert [failures.record("192.0.2.1", t) for t in range(5)] == [1, 2, 3, 4, 5]
    assert failures.blocked("192.0.2.1", 5.0)
    assert not failures.blocked("192.0.2.2", 5.0)
    assert failures.count("192.0.2.2", 5.0) == 0


def test_exempt_networks_are_never_counted_delayed_or_blocked() -> None:
    loopback = Exemptions(Limits().exempt_networks)
    failures = AuthFailures(CONFIG, exempt=loopback)
    for ip in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert [failures.record(ip, float(t)) for t in range(20)] == [0] * 20
        assert not failures.blocked(ip, 20.0)
        assert failures.delay(failures.count(ip, 20.0)) == 0
    # Anyone else is still tarpitted.
    assert [failures.record("192.0.2.1", t) for t in range(5)] == [1, 2, 3, 4, 5]
    assert failures.blocked("192.0.2.1", 5.0)
    only_one = AuthFailures(CONFIG, exempt=Exemptions(["127.0.0.1/32"]))
    assert [only_one.record("127.0.0.2", t) for t in range(5)] == [1, 2, 3, 4, 5]
    assert only_one.blocked("127.0.0.2", 5.0)
    assert not only_one.blocked("127.0.0.1", 5.0)


def test_the_window_runs_from_the_last_failure() -> None:
    failures = AuthFailures(CONFIG)
    failures.record("192.0.2.1", 0.0)
    failures.record("192.0.2.1", 90.0)
    assert failures.count("192.0.2.1", 189.9) == 2  # 99.9 s after the last one
    assert failures.count("192.0.2.1", 190.0) == 0
    assert failures.record("192.0.2.1", 190.0) == 1  # a fresh start


def test_ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() -> None:
    failures = AuthFailures(CONFIG)
    failures.record("2001:db8:1:2::1", 0.0)
    failures.record("2001:db8:1:2:ffff::9", 0.0)
    assert failures.count("2001:db8:1:2::77", 0.0) == 2
    assert failures.count("2001:db8:1:3::1", 0.0) == 0
    failures.record("::ffff:192.0.2.7", 0.0)
    assert failures.count("192.0.2.7", 0.0) == 1


def test_old_entries_are_dropped_and_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    failures = AuthFailures(CONFIG)
    for i in range(10):
        failures.record(f"192.0.2.{i}", float(i))
    failures.record("198.51.100.1", 105.0)  # 0..5 have expired by now
    assert failures.tracked == 5
    monkeypatch.setattr(_auth, "MAX_TRACKED", 3)
    failures.record("198.51.100.2", 106.0)
    assert failures.tracked == 3  # the oldest go first
    assert failures.count("198.51.100.2", 106.0) == 1
    assert failures.count("192.0.2.6", 106.0) == 0


@pytest.mark.parametrize(
    ("login", "sender", "allowed"),
    [
        ("alice@example.test", "alice@example.test", True),
        ("alice@example.test", "alice@EXAMPLE.Test", True),  # the domain is case-insensitive
        ("alice@Example.Test", "alice@example.test", True),
        ("alice@example.test", "Alice@example.test", False),  # the local part is not
        ("alice@example.test", "alice@other.example", False),
        ("alice@example.test", "bob@example.test", False),
        ("alice", "alice@example.test", True),  # a bare login: any local domain
        ("alice", "alice@localhost", True),
        ("alice", "alice@other.example", False),
        ("alice", "bob@example.test", False),
        ("alice", "alice@[127.0.0.1]", False),
    ],
)
def test_sender_ownership(login: str, sender: str, allowed: bool) -> None:
    local, _, domain = sender.rpartition("@")
    assert owns(login, Address(local, domain), ("localhost", "example.test")) is allowed


def test_sender_ownership_of_a_quoted_local_part() -> None:
    assert owns("a.b@example.test", Address('"a.b"', "example.test"), ())
