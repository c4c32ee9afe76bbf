"""The plugin table of `trio-mta plugins` (Haraka's -o): hooks in session order, entries in call
order, the worst breaker state per plugin."""

from __future__ import annotations

from trio_mta import hooks
from trio_mta.ops import plugin_table, plugin_table_text


def test_hooks_in_session_order_and_worst_breaker_per_plugin() -> None:
    plugins = hooks.load_plugins(
        ["rcpt_to_host_list", "queue_maildir"], configs={}, env=hooks.PluginEnv()
    )
    offline = plugin_table(plugins)
    assert offline["order"] == ["rcpt_to_host_list", "queue_maildir"]
    assert [h["hook"] for h in offline["hooks"]] == ["rcpt", "queue"]
    assert {p["name"]: p["breaker"] for p in offline["plugins"]} == {
        "rcpt_to_host_list": "n/a",
        "queue_maildir": "n/a",
    }
    health = [
        {"plugin": "rcpt_to_host_list", "hook": "rcpt", "breaker": "open", "calls": 9,
         "failures": 5, "p95_ms": 30000.0},
        {"plugin": "queue_maildir", "hook": "queue", "breaker": "half_open", "calls": 3,
         "failures": 1, "p95_ms": 2.5},
    ]  # fmt: skip
    live = plugin_table(plugins, health)
    assert {p["name"]: p["breaker"] for p in live["plugins"]} == {
        "rcpt_to_host_list": "open",
        "queue_maildir": "half_open",
    }
    text = plugin_table_text(live, live=True)
    assert text.splitlines()[0].startswith("plugins, in order: rcpt_to_host_list, queue_maildir")
    assert (
        "  rcpt   rcpt_to_host_list (30s, async, breaker open, 9 calls, 5 failed, p95 30000 ms)"
        in (text.splitlines())
    )
