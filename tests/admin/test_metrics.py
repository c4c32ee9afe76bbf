"""/metrics: Prometheus text that prometheus-client's own parser reads back, with the counts of
what the test did."""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.smtp import LineClient
from trio_mta.admin import Metrics
from trio_mta.events import (
    Delivered,
    DeliveryDeferred,
    EventBus,
    LoopBlocked,
    PluginCalled,
)

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
    assert m[("trio_mta_replies_total", (("class", "2xx"), ("command", "rcpt")))] == 3
    assert m[("trio_mta_replies_total", (("class", "5xx"), ("command", "rcpt")))] == 1
    assert m[("trio_mta_replies_total", (("class", "2xx"), ("command", "data")))] == 2
    assert m[("trio_mta_replies_total", (("class", "2xx"), ("command", "helo")))] == 3
    assert m[("trio_mta_accepted_message_bytes_total", ())] > 0
    rcpt = (("hook", "rcpt"), ("plugin", "rcpt_to_host_list"))
    assert m[("trio_mta_plugin_duration_seconds_count", rcpt)] == 4
    assert m[("trio_mta_plugin_duration_seconds_bucket", labels(*rcpt, ("le", "+Inf")))] == 4
    queue = (("hook", "queue"), ("plugin", "queue_discard"))
    assert m[("trio_mta_plugin_duration_seconds_count", queue)] == 2
    assert m[("trio_mta_queue_size", ())] == 0
    assert m[("trio_mta_event_subscribers", ())] == 0


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
            m = parse((await d.get("/metrics"))[1].decode())
    assert m[("trio_mta_events_dropped_total", ())] == d.bus.dropped > 0
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
