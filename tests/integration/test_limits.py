"""Admission limits at accept time: per client IP and in total (421 4.7.0 before any banner)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.helpers import replies
from tests.helpers.config import make_config
from tests.helpers.maildir import bodies_in
from tests.helpers.smtp import LineClient

from .conftest import RunningMTA, StartMTA

CAP = 10  # seconds, real time
OTHER_IP = "127.0.0.2"  # still loopback: a second "client address" on one machine


async def _deliver(client: LineClient, marker: str) -> None:
    body = f"Subject: {marker}\r\n\r\n{marker}\r\n".encode()
    final = await client.transaction("a@example.org", ["b@example.test"], body)
    assert final.code == 250, str(final)


async def _refused(mta: RunningMTA, *, local_ip: str | None = None) -> None:
    client = await mta.connect(local_ip=local_ip)
    assert await client.read_to_eof() == replies.TOO_MANY_CONNECTIONS


async def _quit(client: LineClient) -> None:
    await client.command("QUIT", 221)
    await client.expect_eof()


async def test_third_connection_from_one_ip_is_refused(start_mta: StartMTA, var_dir: Path) -> None:
    # No exemptions: by default loopback clients are not held to the per-IP limit.
    limits: dict[str, Any] = {"max_connections_per_ip": 2, "exempt_networks": ()}
    mta = await start_mta(make_config(var_dir, limits=limits))
    with trio.fail_after(CAP):
        first = await mta.greeted()
        second = await mta.greeted()
        await _refused(mta)
        await _refused(mta)
        # Another address is counted on its own.
        other = await mta.greeted(local_ip=OTHER_IP)
        await _refused(mta, local_ip=None)
        # The admitted ones are untouched by the refusals.
        await _deliver(first, "first")
        await _deliver(second, "second")
        await _deliver(other, "other")
        assert mta.server.statistics() == {"connections": 3, "clients": 2}
        # A slot freed is a slot available again.
        await _quit(first)
        third = await mta.greeted()
        await _deliver(third, "third")
        await _refused(mta)
    assert len(bodies_in(mta.var_dir, "example.test", "b")) == 4


async def test_connection_over_the_total_limit_is_refused(
    start_mta: StartMTA, var_dir: Path
) -> None:
    mta = await start_mta(
        make_config(var_dir, limits={"max_connections": 2, "max_connections_per_ip": 50})
    )
    with trio.fail_after(CAP):
        first = await mta.greeted()
        second = await mta.greeted(local_ip=OTHER_IP)
        await _refused(mta)
        await _refused(mta, local_ip=OTHER_IP)
        await _deliver(first, "first")
        await _deliver(second, "second")
        await _quit(second)
        third = await mta.greeted(local_ip=OTHER_IP)
        await _deliver(third, "third")
        await _refused(mta)
        assert mta.server.statistics() == {"connections": 2, "clients": 2}
    assert len(bodies_in(mta.var_dir, "example.test", "b")) == 3


async def test_a_connection_refused_at_the_limit_is_logged(
    start_mta: StartMTA, var_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limits: dict[str, Any] = {"max_connections_per_ip": 1, "exempt_networks": ()}
    mta = await start_mta(make_config(var_dir, limits=limits))
    with trio.fail_after(CAP):
        first = await mta.greeted(local_ip=OTHER_IP)
        await _refused(mta, local_ip=OTHER_IP)
        await _quit(first)
    [line] = [r.getMessage() for r in caplog.records if r.name == "trio_mta.reject"]
    assert line == (
        "NOQUEUE: reject: CONNECT from [127.0.0.2]: 421 4.7.0 Too many connections, try again"
        " later; plugin=core conn=-"
    )


async def test_sixty_loopback_connections_are_all_admitted_by_default(
    start_mta: StartMTA, var_dir: Path
) -> None:
    # A local application load-testing its mail server is not a stranger (Postfix exempts
    # $mynetworks): 60 > max_connections_per_ip = 50, and nobody gets 421.
    mta = await start_mta(make_config(var_dir))
    assert mta.config.limits.max_connections_per_ip == 50
    greeted: list[LineClient] = []

    async def one() -> None:
        greeted.append(await mta.greeted())

    with trio.fail_after(CAP):
        async with trio.open_nursery() as nursery:
            for _ in range(60):
                nursery.start_soon(one)
        assert len(greeted) == 60
        assert mta.server.statistics() == {"connections": 60, "clients": 1}
        await _deliver(greeted[-1], "sixtieth")
        for client in greeted:
            await _quit(client)


async def test_addresses_outside_the_exemptions_are_still_limited(
    start_mta: StartMTA, var_dir: Path
) -> None:
    limits: dict[str, Any] = {"max_connections_per_ip": 2, "exempt_networks": ["127.0.0.1/32"]}
    mta = await start_mta(make_config(var_dir, limits=limits))
    with trio.fail_after(CAP):
        others = [await mta.greeted(local_ip=OTHER_IP) for _ in range(2)]
        await _refused(mta, local_ip=OTHER_IP)
        exempt = [await mta.greeted() for _ in range(5)]
        await _deliver(exempt[-1], "exempt")
        await _deliver(others[0], "other")
        await _refused(mta, local_ip=OTHER_IP)
        for client in [*others, *exempt]:
            await _quit(client)
    assert len(bodies_in(mta.var_dir, "example.test", "b")) == 2


async def test_counts_return_to_zero_after_clients_leave(mta: RunningMTA) -> None:
    with trio.fail_after(CAP):
        clients = [await mta.greeted() for _ in range(5)]
        assert mta.server.statistics() == {"connections": 5, "clients": 1}
        for client in clients[:3]:
            await _quit(client)
        for client in clients[3:]:
            # A hang-up without QUIT. The server releases the slot in the same step as it
            # closes the socket, so once we see its close the counts are final.
            stream = client.stream
            assert isinstance(stream, trio.SocketStream)
            await stream.send_eof()
            await client.expect_eof()
        assert mta.server.statistics() == {"connections": 0, "clients": 0}
        assert mta.server.per_ip == {}
