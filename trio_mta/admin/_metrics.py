"""``GET /metrics``: Prometheus text built by prometheus-client.

Theory of operation: the counts live in plain integers and dicts, and ``Metrics`` is a
prometheus-client custom collector that turns them into metric families only when scraped. So
counting costs an integer addition, not a prometheus-client lock, and there is no global
state: each app has its own ``CollectorRegistry`` holding its own ``Metrics``. SMTP counts come
from the bus's ``counters`` (bumped whether or not anyone watches, without building events);
plugin, watchdog and delivery counts from the events themselves (``on_event`` is a bus tap).

Label values are bounded: connection close reasons are reduced to their first word, replies are
counted by stage (a fixed set, see ``server._counted``) and code (three digits), plugins and hooks
are the configured ones.

Process metrics (CPU, memory, open files, start time: ``process_*``) and the Python platform
(``python_info``) come from prometheus-client's own collectors, registered in this app's registry;
``trio_mta_build_info`` carries the version and ``trio_mta_uptime_seconds`` the time since start.

Plugin durations come from ``plugin.call`` events, which exist only while plugin observation is
on. To keep the histograms consistent they are counted only with ``[admin] plugin_metrics``
(then observation is always on); otherwise the plugin series stay empty.

The queue feeds ``queue_size`` (a callable, set when the queue starts) and delivery events.
"""

from __future__ import annotations

import bisect
import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .. import __version__
from ..events import (
    Delivered,
    DeliveryAttempted,
    DeliveryBounced,
    DeliveryDeferred,
    Event,
    EventBus,
    LoopBlocked,
    PluginBreaker,
    PluginCalled,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PLUGIN_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
_DELIVERY: dict[type[Event], str] = {
    DeliveryAttempted: "attempt",
    DeliveryDeferred: "deferred",
    DeliveryBounced: "bounced",
    Delivered: "delivered",
}


def _bump(counts: dict[tuple[str, ...], int], key: tuple[str, ...]) -> None:
    counts[key] = counts.get(key, 0) + 1


class _Histogram:
    __slots__ = ("buckets", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(PLUGIN_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(PLUGIN_BUCKETS, value)] += 1
        self.sum += value


class Metrics:
    """``render()`` is the /metrics body: the bus's counters, plus what ``on_event`` (a bus
    tap) counts from the events that have no counter (plugin calls, watchdog, delivery)."""

    def __init__(self, bus: EventBus, *, plugin_metrics: bool = False) -> None:
        self.bus = bus
        self.plugin_metrics = plugin_metrics
        self.queue_size: Callable[[], int] | None = None  # set by the queue when it runs
        # Set by the admin server: watchers wherever they are served (a watcher process is
        # one subscriber of the bus for all of its watchers).
        self.watchers: Callable[[], int] | None = None
        self.plugin_time: dict[tuple[str, str], _Histogram] = {}
        self.plugin_timeouts: dict[tuple[str, ...], int] = {}
        self.plugin_errors: dict[tuple[str, ...], int] = {}
        self.loop_blocked: dict[tuple[str, ...], int] = {}
        self.breaker_moves: dict[tuple[str, ...], int] = {}
        self.deliveries: dict[tuple[str, ...], int] = {}
        self.started = bus.clock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        # Plugin calls only with plugin metrics on: a tapped kind is built at once on the SMTP
        # path instead of being deferred to the watchers' batches.
        kinds = (PluginCalled,) if plugin_metrics else ()
        bus.add_tap(self.on_event, (*kinds, LoopBlocked, PluginBreaker, *_DELIVERY))

    def on_event(self, event: Event) -> None:
        if isinstance(event, PluginCalled):
            if self.plugin_metrics:
                self._plugin(event)
        elif isinstance(event, LoopBlocked):
            _bump(self.loop_blocked, (event.plugin or "",))
        elif isinstance(event, PluginBreaker):
            _bump(self.breaker_moves, (event.plugin, event.hook, event.state))
        else:
            outcome = _DELIVERY.get(type(event))
            if outcome is not None:
                _bump(self.deliveries, (outcome,))

    def _plugin(self, event: PluginCalled) -> None:
        key = (event.plugin, event.hook)
        histogram = self.plugin_time.get(key)
        if histogram is None:
            histogram = self.plugin_time[key] = _Histogram()
        histogram.observe(event.duration)
        if event.timed_out:
            _bump(self.plugin_timeouts, key)
        if event.error is not None:
            _bump(self.plugin_errors, key)

    def uptime(self) -> float:
        return max(0.0, self.bus.clock() - self.started)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the prometheus-client collector protocol ---------------------------------------------

    def collect(self) -> Iterator[Metric]:
        c = self.bus.counters
        info = GaugeMetricFamily(
            "trio_mta_build_info", "The running version (always 1)", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "trio_mta_start_time_seconds", "When the daemon started (Unix time)", self.started
        )
        yield GaugeMetricFamily(
            "trio_mta_uptime_seconds", "Seconds since the daemon started", self.uptime()
        )  # fmt: skip
        yield _counter("trio_mta_connections", "SMTP connections accepted", ["listener"],
                       {(k,): v for k, v in c.connections.items()})  # fmt: skip
        yield _counter("trio_mta_connections_closed", "SMTP connections closed, by reason",
                       ["reason"], {(k,): v for k, v in c.closed.items()})  # fmt: skip
        yield GaugeMetricFamily("trio_mta_connections_open", "SMTP connections open", c.open)
        yield _counter("trio_mta_transactions", "SMTP transactions ended, by outcome",
                       ["outcome"], {(k,): v for k, v in c.transactions.items()})  # fmt: skip
        replies: dict[tuple[str, ...], int] = {
            (stage, str(code)): count for (stage, code), count in c.replies.items()
        }
        yield _counter("trio_mta_replies", "SMTP replies sent, by stage and code",
                       ["stage", "code"], replies)  # fmt: skip
        yield CounterMetricFamily("trio_mta_accepted_message_bytes",
                                  "Octets of accepted messages", c.accepted_bytes)  # fmt: skip
        histogram = HistogramMetricFamily(
            "trio_mta_plugin_duration_seconds",
            "Plugin call durations (with [admin] plugin_metrics)",
            labels=["plugin", "hook"],
        )
        for (plugin, hook), h in sorted(self.plugin_time.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*PLUGIN_BUCKETS, float("inf")), h.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            histogram.add_metric([plugin, hook], buckets, h.sum)
        yield histogram
        yield _counter("trio_mta_plugin_timeouts", "Plugin calls that timed out",
                       ["plugin", "hook"], self.plugin_timeouts)  # fmt: skip
        yield _counter("trio_mta_plugin_errors", "Plugin calls that raised or returned junk",
                       ["plugin", "hook"], self.plugin_errors)  # fmt: skip
        yield _counter("trio_mta_loop_blocked", "Task steps that held the event loop too long",
                       ["plugin"], self.loop_blocked)  # fmt: skip
        yield _counter("trio_mta_plugin_breaker_transitions",
                       "Circuit breaker moves of plugin hooks, by the state entered",
                       ["plugin", "hook", "state"], self.breaker_moves)  # fmt: skip
        yield _counter("trio_mta_deliveries", "Delivery attempts and their outcomes",
                       ["outcome"], self.deliveries)  # fmt: skip
        yield _counter("trio_mta_sandbox_workers", "Sandbox worker events, by action",
                       ["action"], {(k,): v for k, v in c.sandbox.items()})  # fmt: skip
        yield CounterMetricFamily("trio_mta_sandbox_wait_seconds",
                                  "Seconds sandboxed calls waited for a free worker",
                                  c.sandbox_wait_seconds)  # fmt: skip
        size = self.queue_size() if self.queue_size is not None else 0
        yield GaugeMetricFamily("trio_mta_queue_size", "Messages in the queue", size)
        bus = self.bus
        yield CounterMetricFamily("trio_mta_events_published", "Events published", bus.published)
        yield CounterMetricFamily(
            "trio_mta_events_dropped", "Events lost by watchers that fell behind", bus.dropped
        )
        watchers = self.watchers() if self.watchers is not None else bus.subscribers
        yield GaugeMetricFamily("trio_mta_event_subscribers", "Watchers connected", watchers)


def _counter(
    name: str, doc: str, labels: list[str], counts: dict[tuple[str, ...], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(counts.items()):
        family.add_metric(list(key), value)
    return family
