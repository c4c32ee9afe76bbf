"""What the SMTP side publishes beyond the plain transaction: AUTH (never a secret), TLS, the
loop watchdog, and what an unwatched daemon still counts."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path

import attrs
import trio
import trio.testing

from tests.admin.kit import admin_config, running, watching
from tests.auth.kit import USERS, auth_config, plain, start
from tests.helpers.smtp import LineClient
from trio_mta.config import Config
from trio_mta.events import AuthAttempted, EventBus, LoopBlocked, event_json
from trio_mta.hooks import watch_loop
from trio_mta.server import slow_step_reporter

CAP = 20
ALICE = "alice@example.test"


async def test_auth_events_name_the_user_only_on_success_and_never_a_secret(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    bus = EventBus()
    with trio.fail_after(1000), bus.subscribe() as sub:
        h = await start(nursery, auth_config(tmp_path), tls="TLSv1.3", bus=bus)
        await h.ehlo()
        await h.client.command(f"AUTH PLAIN {plain('bob', 'not-his-password')}", 535, "5.7.8")
        await h.client.command("AUTH LOGIN", 334)
        await h.client.command(plain("x", "y")[:8], 334)  # the username step
        await h.client.command("*", 501)  # cancelled
        await h.client.command(f"AUTH PLAIN {plain(ALICE, USERS[ALICE])}", 235, "2.7.0")
        await h.client.command("QUIT", 221)
        await h.finished.wait()
        events = [e for _, e in sub.take()]
    auth = [e for e in events if isinstance(e, AuthAttempted)]
    assert [(e.mechanism, e.success, e.code, e.user) for e in auth] == [
        ("PLAIN", False, 535, None),
        ("LOGIN", False, 501, None),
        ("PLAIN", True, 235, ALICE),
    ]
    wire = "".join(event_json(e) for e in events)
    for secret in ("not-his-password", USERS[ALICE], plain(ALICE, USERS[ALICE]), "bob"):
        assert secret not in wire
    # Every reply is counted by stage and code, the challenges (334) too.
    assert bus.counters.replies[("auth", 235)] == 1
    assert bus.counters.replies[("auth", 535)] == 1
    assert bus.counters.replies[("auth", 501)] == 1
    assert bus.counters.replies[("auth", 334)] == 2
    assert bus.counters.replies[("connect", 220)] == 1
    assert bus.counters.replies[("quit", 221)] == 1


async def test_starttls_is_an_event(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var")
    config = attrs.evolve(config, tls=attrs.evolve(config.tls, generate_self_signed=True))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with trio.fail_after(CAP):
        async with running(config) as d, watching(d.url("type=connection")) as w:
            stream = await trio.open_tcp_stream(d.smtp.host, d.smtp.port)
            client = LineClient(stream)
            await client.expect(220)
            await client.command("EHLO client.example", 250)
            await client.command("STARTTLS", 220)
            tls = trio.SSLStream(stream, context, server_hostname="localhost")
            await tls.do_handshake()
            client = LineClient(tls)
            await client.command("EHLO client.example", 250)
            await client.command("QUIT", 221)
            events = await w.until("connection.close")
    assert [e["type"] for e in events] == ["connection.open", "connection.tls", "connection.close"]
    assert events[1]["version"] == "TLSv1.3"
    assert events[1]["cipher"]


async def test_the_loop_watchdog_publishes_what_blocked_the_loop() -> None:
    bus = EventBus()
    with bus.subscribe() as sub, watch_loop(0.01, slow_step_reporter(bus)):
        await trio.lowlevel.checkpoint()  # the watchdog times steps from their start
        time.sleep(0.05)  # noqa: ASYNC251  # blocking the loop is the point
        await trio.lowlevel.checkpoint()
        [(_, event)] = sub.take()
    assert isinstance(event, LoopBlocked)
    assert event.duration >= 0.05
    assert event.plugin is None
    assert json.loads(event_json(event))["type"] == "plugin.watchdog"


def quiet_watchdog(config: Config) -> Config:
    """The loop watchdog publishes whatever blocks the loop, watched or not (rare events): on
    a loaded test machine a 50 ms step happens, and is not what these counts are about."""
    return attrs.evolve(config, plugins=attrs.evolve(config.plugins, watchdog_ms=60_000.0))


async def test_an_unwatched_daemon_builds_no_event_but_counts(tmp_path: Path) -> None:
    config = quiet_watchdog(admin_config(tmp_path / "var", replay=0))
    with trio.fail_after(CAP):
        async with running(config) as d:
            await d.send()
            await d.send()
            assert d.bus.published == 0  # nothing built, nothing kept
            counters = d.bus.counters
            assert counters.transactions == {"accepted": 2}
            assert counters.connections == {"mx": 2}
            assert counters.open == 0
            assert counters.replies[("rcpt", 250)] == 2
        async with running(quiet_watchdog(admin_config(tmp_path / "var2", replay=5))) as d:
            await d.send()
            assert d.bus.published == 1  # only transaction.end, kept for replay
