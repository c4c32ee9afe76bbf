"""/metrics: Prometheus text that prometheus-client's own parser reads back, with the counts of
what the test did."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

import trio_mta
from tests.helpers.smtp import LineClient
from trio_mta.admin import Metrics
from trio_mta.events import (
    Counters,
    Delivered,
    DeliveryDeferred,
    EventBus,
    LoopBlocked,
    PluginCalled,
)
from trio_mta.protocol import NEED_DATA, reply
from trio_mta.server import CountedConnection

from .kit import Daemon, admin_config, eventually, running, stalled_watcher, watching

CAP = 20
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def labels(*pairs: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs))


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_parse_and_count_what_happened(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", plugin_metrics=True)
    with trio.fail_after(CAP):
        async with running(config) as d:
            await d.send()
            await d.send()
            client = await d.greeted()
            await client.command("MAIL FROM:<a@example.org>", 250)
            await client.command("RCPT TO:<x@elsewhere.example>", 550)
            await client.command("RCPT TO:<bob@example.test>", 250)
            await client.command("RSET", 250)
            await client.command("MAIL FROM:<broken", 553)
            await client.command("FROB", 500)
            await client.command("NOOP", 250)
            await client.command("QUIT", 221)
            await client.stream.aclose()
            open_one = LineClient(await trio.open_tcp_stream(d.smtp.host, d.smtp.port))
            await open_one.expect(220)
            status, body = await d.get("/metrics")
    assert status == 200
    m = parse(body.decode())
    assert m[("trio_mta_connections_total", (("listener", "mx"),))] == 4
    assert m[("trio_mta_connections_open", ())] == 1
    assert m[("trio_mta_connections_closed_total", (("reason", "quit"),))] == 3
    assert m[("trio_mta_transactions_total", (("outcome", "accepted"),))] == 2
    assert m[("trio_mta_transactions_total", (("outcome", "reset"),))] == 1
    replies = {
        (dict(key)["stage"], dict(key)["code"]): value
        for (name, key), value in m.items()
        if name == "trio_mta_replies_total"
    }
    # Every reply sent, by stage and exact code: the banner, each command's, DATA's 354 too.
    assert replies == {
        ("connect", "220"): 4,
        ("helo", "250"): 3,
        ("mail", "250"): 3,
        ("mail", "553"): 1,
        ("rcpt", "250"): 3,
        ("rcpt", "550"): 1,
        ("data", "354"): 2,
        ("data", "250"): 2,
        ("rset", "250"): 1,
        ("noop", "250"): 1,
        ("unknown", "500"): 1,
        ("quit", "221"): 3,
    }
    assert m[("trio_mta_accepted_message_bytes_total", ())] > 0
    rcpt = (("hook", "rcpt"), ("plugin", "rcpt_to_host_list"))
    assert m[("trio_mta_plugin_duration_seconds_count", rcpt)] == 4
    assert m[("trio_mta_plugin_duration_seconds_bucket", labels(*rcpt, ("le", "+Inf")))] == 4
    queue = (("hook", "queue"), ("plugin", "queue_discard"))
    assert m[("trio_mta_plugin_duration_seconds_count", queue)] == 2
    assert m[("trio_mta_queue_size", ())] == 0
    assert m[("trio_mta_event_subscribers", ())] == 0
    # The process, the version and the uptime.
    assert m[("trio_mta_build_info", (("python", platform.python_version()),
                                      ("version", trio_mta.__version__)))] == 1  # fmt: skip
    assert 0 <= m[("trio_mta_uptime_seconds", ())] < CAP
    assert m[("trio_mta_start_time_seconds", ())] <= time.time()
    assert m[("process_resident_memory_bytes", ())] > 0
    assert m[("process_cpu_seconds_total", ())] > 0
    assert m[("process_open_fds", ())] > 0
    assert ("python_info", ()) not in m  # it has labels
    assert any(name == "python_info" for name, _ in m)


def test_every_reply_is_counted_by_the_stage_it_answers() -> None:
    counters = Counters()
    conn = CountedConnection(counters)
    conn.send(reply(220, None, "banner"))
    conn.receive_data(b"EHLO a.example\r\nMAIL FROM:<a@b.example>\r\nVRFY x\r\nAUTH PLAIN\r\n")
    for code in (250, 250, 252, 503):
        event = conn.next_event()
        assert event is not NEED_DATA
        conn.send(reply(code, None, "x"))
    conn.send(reply(421, "4.4.2", "timeout"))  # nothing owed: the session's own reply
    assert counters.replies == {
        ("connect", 220): 1,
        ("helo", 250): 1,
        ("mail", 250): 1,
        ("vrfy", 252): 1,
        ("auth", 503): 1,
        ("session", 421): 1,
    }


async def test_bus_drops_are_counted(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", buffer=16, replay=0)
    with trio.fail_after(CAP):
        async with running(config) as d:
            async with stalled_watcher(*d.admin, "/events") as ws:
                for _ in range(100):
                    await d.send()
                while '"type":"gap"' not in await ws.get_message():  # it reads again
                    pass
                await eventually(lambda: d.bus.dropped > 0)
            # The watcher process reports its losses in batches, so more may arrive after the
            # scrape: the metric is the daemon's count at some moment between the two reads.
            before = d.bus.dropped
            m = parse((await d.get("/metrics"))[1].decode())
            after = d.bus.dropped
    assert 0 < before <= m[("trio_mta_events_dropped_total", ())] <= after
    assert m[("trio_mta_events_published_total", ())] >= 100 * 8


async def test_the_watchers_gauge_counts_watchers_not_subscriptions(tmp_path: Path) -> None:
    async def watchers(d: Daemon) -> float:
        return parse((await d.get("/metrics"))[1].decode())[("trio_mta_event_subscribers", ())]

    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            async with watching(d.url()), watching(d.url("type=transaction.end")):
                assert await watchers(d) == 2
            await eventually(lambda: d.bus.subscribers == 0)
            assert await watchers(d) == 0


def test_plugin_watchdog_and_delivery_events_feed_their_metrics() -> None:
    bus = EventBus()
    metrics = Metrics(bus, plugin_metrics=True)
    metrics.queue_size = lambda: 7
    bus.publish(
        PluginCalled(
            ts=0, ip=None, plugin="p", hook="mail", result="denysoft", duration=2.0, timed_out=True
        )
    )
    bus.publish(
        PluginCalled(
            ts=0,
            ip=None,
            plugin="p",
            hook="mail",
            result="denysoft",
            duration=0.001,
            error="RuntimeError('x')",
        )
    )
    bus.publish(LoopBlocked(ts=0, duration=0.2, task="t", plugin="slow", hook="rcpt"))
    common = {"ts": 0.0, "recipients": ("a@b",), "domain": "b", "attempt": 1, "mx_host": "mx"}
    bus.publish(DeliveryDeferred(**common, code=451, reply="later", until=60.0))  # type: ignore[arg-type]  # test data
    bus.publish(Delivered(**common, code=250, reply="ok"))  # type: ignore[arg-type]  # test data
    m = parse(metrics.render().decode())
    key = (("hook", "mail"), ("plugin", "p"))
    assert m[("trio_mta_plugin_timeouts_total", key)] == 1
    assert m[("trio_mta_plugin_errors_total", key)] == 1
    assert m[("trio_mta_plugin_duration_seconds_count", key)] == 2
    assert m[("trio_mta_plugin_duration_seconds_bucket", labels(*key, ("le", "1.0")))] == 1
    assert m[("trio_mta_plugin_duration_seconds_sum", key)] == 2.001
    assert m[("trio_mta_loop_blocked_total", (("plugin", "slow"),))] == 1
    assert m[("trio_mta_deliveries_total", (("outcome", "deferred"),))] == 1
    assert m[("trio_mta_deliveries_total", (("outcome", "delivered"),))] == 1
    assert m[("trio_mta_queue_size", ())] == 7
    # Without plugin_metrics, plugin calls (published while someone watches) are not counted.
    quiet = Metrics(bus2 := EventBus())
    bus2.publish(PluginCalled(ts=0, ip=None, plugin="p", hook="mail", result="ok", duration=1))
    assert ("trio_mta_plugin_duration_seconds_count", key) not in parse(quiet.render().decode())


def test_sandbox_worker_events_feed_their_metrics() -> None:
    from trio_mta.events import SandboxWorker
    from trio_mta.hooks._sandbox import bus_reporter

    bus = EventBus()
    report = bus_reporter(bus)
    with bus.subscribe() as sub:
        report(101, "spawn", "pool start", 0.0)
        report(101, "kill", "call 7 ran past its deadline", 0.0)
        report(102, "wait", "no worker was free", 0.25)
        report(102, "wait", "no worker was free", 0.5)
        events = [e for _, e in sub.take()]
    assert [e.action for e in events if isinstance(e, SandboxWorker)] == [
        "spawn",
        "kill",
        "wait",
        "wait",
    ]
    m = parse(Metrics(bus).render().decode())
    assert m[("trio_mta_sandbox_workers_total", labels(("action", "spawn")))] == 1
    assert m[("trio_mta_sandbox_workers_total", labels(("action", "kill")))] == 1
    assert m[("trio_mta_sandbox_workers_total", labels(("action", "wait")))] == 2
    assert m[("trio_mta_sandbox_wait_seconds_total", ())] == 0.75
