"""The leaky-bucket rate table behind the limit plugin's rates (pure: time is an argument)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins._rate import RateTable, client_key
from tests.protocol.test_properties import SETTINGS


def test_a_burst_up_to_the_limit_passes_then_the_next_is_refused() -> None:
    table = RateTable(3, 60.0)
    assert [table.hit("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert table.hit("b", 0.0)  # keys are independent


def test_the_allowance_refills_at_limit_per_window() -> None:
    table = RateTable(3, 60.0)
    for _ in range(3):
        assert table.hit("a", 0.0)
    assert not table.hit("a", 19.9)  # one slot comes back every 20 s
    assert table.hit("a", 20.0)
    assert not table.hit("a", 20.0)
    assert [table.hit("a", 80.0) for _ in range(4)] == [True, True, True, False]


def test_refused_events_are_not_counted() -> None:
    table = RateTable(1, 10.0)
    assert table.hit("a", 0.0)
    for t in range(1, 10):
        assert not table.hit("a", float(t) * 0.999)
    assert table.hit("a", 10.0)  # hammering did not push the next slot back


def test_retry_after_says_when_the_next_event_passes() -> None:
    table = RateTable(2, 60.0)
    assert table.retry_after("a", 0.0) == 0.0
    table.hit("a", 0.0)
    assert table.retry_after("a", 0.0) == 0.0
    table.hit("a", 0.0)
    assert table.retry_after("a", 0.0) == pytest.approx(30.0)
    assert table.retry_after("a", 10.0) == pytest.approx(20.0)
    assert not table.hit("a", 29.0)
    assert table.hit("a", table.retry_after("a", 29.0) + 29.0)


def test_idle_keys_are_forgotten_after_a_window() -> None:
    table = RateTable(5, 60.0)
    for n in range(1000):
        table.hit(f"10.0.{n // 256}.{n % 256}", float(n) * 0.01)
    assert len(table) == 1000
    table.hit("late", 70.0)
    assert len(table) == 1  # every other bucket had drained: no state left for them


def test_a_flood_of_keys_is_capped_and_the_oldest_forgotten() -> None:
    table = RateTable(1, 60.0, max_keys=100)
    for n in range(1000):
        table.hit(str(n), 0.0)
    assert len(table) == 100
    assert not table.hit("999", 0.0)  # the recent ones are still counted
    assert table.hit("0", 0.0)  # the oldest were forgotten (a flood costs counts, not memory)


@pytest.mark.parametrize(("limit", "window", "keys"), [(0, 1.0, 1), (1, 0.0, 1), (1, 1.0, 0)])
def test_nonsense_parameters_are_refused(limit: int, window: float, keys: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RateTable(limit, window, max_keys=keys)


GAPS = st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), min_size=1, max_size=80)


@SETTINGS
@given(st.integers(1, 10), st.floats(0.5, 100), GAPS)
def test_no_window_ever_passes_more_than_a_burst_plus_a_window_of_refill(
    limit: int, window: float, gaps: list[float]
) -> None:
    table = RateTable(limit, window)
    now, passed = 0.0, []
    for gap in gaps:
        now += gap
        if table.hit("k", now):
            passed.append(now)
    for start in passed:
        inside = [t for t in passed if start <= t < start + window]
        assert len(inside) <= 2 * limit


@SETTINGS
@given(st.integers(1, 10), st.floats(0.5, 100), st.integers(1, 50))
def test_a_client_at_the_sustained_rate_is_never_refused(
    limit: int, window: float, events: int
) -> None:
    table = RateTable(limit, window)
    spacing = window / limit * 1.000001  # float rounding would otherwise land a hair early
    assert all(table.hit("k", n * spacing) for n in range(events))


@pytest.mark.parametrize(
    ("ip", "prefix", "key"),
    [
        ("192.0.2.7", 64, "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", 128, "2001:db8:1:2:bbbb::9/128"),
        ("2001:db8:1:2:bbbb::9", 48, "2001:db8:1::/48"),
        ("::ffff:192.0.2.7", 64, "192.0.2.7"),
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("not an address", 64, "not an address"),
    ],
)
def test_client_keys_group_ipv6_by_prefix(ip: str, prefix: int, key: str) -> None:
    assert client_key(ip, prefix) == key
