"""The per-destination rate limit: ``RateLimits`` on its own, then the queue under
``autojump_clock`` spreading one destination's messages while another's go at once."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio

from tests.queue.kit import FakeDeliverer, connection, make_service, started, until_empty
from trio_mta.config import Config, ConfigError, load_config
from trio_mta.queue._rate import RateLimits


async def test_no_rate_is_no_limit() -> None:
    limits = RateLimits(0.0, 5)
    assert [limits.reserve("a") for _ in range(3)] == [-math.inf] * 3
    assert len(limits) == 0


async def test_a_burst_then_one_slot_per_interval(autojump_clock: trio.testing.MockClock) -> None:
    limits = RateLimits(4.0, burst=3)  # one every 0.25 s, three at once after a quiet spell
    t0 = trio.current_time()
    slots = [max(limits.reserve("dest"), t0) - t0 for _ in range(6)]
    assert slots == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75])
    assert limits.reserve("other") <= t0  # a destination of its own
    await trio.sleep(10)  # quiet: the bucket is full again
    t1 = trio.current_time()
    slots = [max(limits.reserve("dest"), t1) - t1 for _ in range(4)]
    assert slots == pytest.approx([0, 0, 0, 0.25])


async def test_idle_destinations_are_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    limits = RateLimits(10.0, burst=1)
    for i in range(100):  # a sweep at 64 finds all of them busy: the next is at 128
        limits.reserve(f"d{i}.test")
    await trio.sleep(1)
    for i in range(29):
        limits.reserve(f"e{i}.test")  # at 128 the idle d* ones go
    assert len(limits) == 29


async def test_messages_to_one_destination_are_spread_at_the_rate(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(
        nursery,
        make_service(tmp_path, fake, destination_rate=2.0, destination_burst=2, per_destination=20),
    )
    t0 = trio.current_time()
    for i in range(8):
        await service.submit(connection("a@sender.test", [f"ok{i}@dest.test"]))
        await service.submit(connection("a@sender.test", [f"ok{i}@other.test"]))
    await until_empty(service)
    dest = sorted(c.time - t0 for c in fake.calls if c.key == "dest.test")
    other = sorted(c.time - t0 for c in fake.calls if c.key == "other.test")
    # Two at once (the burst), then one every half second; other.test has a bucket of its
    # own, so its schedule is the same, not after dest.test's.
    assert dest == pytest.approx([0, 0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    assert other == dest
    assert service.stats.delivered == 16


async def test_another_destination_is_not_held_up(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(
        nursery, make_service(tmp_path, fake, destination_rate=1.0, destination_burst=1)
    )
    t0 = trio.current_time()
    for i in range(5):
        await service.submit(connection("a@sender.test", [f"ok{i}@dest.test"]))
    await service.submit(connection("a@sender.test", ["ok@other.test"]))
    await until_empty(service)
    dest = sorted(c.time - t0 for c in fake.calls if c.key == "dest.test")
    [other] = [c.time - t0 for c in fake.calls if c.key == "other.test"]
    assert dest == pytest.approx([0, 1, 2, 3, 4])
    assert other == pytest.approx(0)  # not behind dest.test's queue


async def test_waiting_for_the_rate_does_not_time_the_attempt_out(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(
        nursery,
        make_service(
            tmp_path, fake, destination_rate=1.0, destination_burst=1, attempt_timeout=2.0
        ),
    )
    for i in range(6):
        await service.submit(connection("a@sender.test", [f"ok{i}@dest.test"]))
    await until_empty(service)
    assert service.stats.delivered == 6
    assert service.stats.deferred == 0


def load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "trio-mta.toml").write_text(text)
    return load_config(tmp_path)


def test_config_keys(tmp_path: Path) -> None:
    config = load(tmp_path, "[queue]\ndestination_rate = 2.5\ndestination_burst = 3\n")
    assert (config.queue.destination_rate, config.queue.destination_burst) == (2.5, 3)
    assert load(tmp_path, "[queue]\ndestination_rate = 2\n").queue.destination_rate == 2
    assert load(tmp_path, "").queue.destination_rate == 0
    with pytest.raises(ConfigError):
        load(tmp_path, "[queue]\ndestination_rate = -1\n")
    with pytest.raises(ConfigError):
        load(tmp_path, "[queue]\ndestination_burst = 0\n")
