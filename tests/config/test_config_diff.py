"""compare_configs: every changed setting is named, as applied by a reload or needing a restart."""

from __future__ import annotations

from pathlib import Path

import attrs

from trio_mta.config import (
    Config,
    ConfigChanges,
    ListenerConfig,
    ListenerKind,
    RouteConfig,
    compare_configs,
)


def test_nothing_changed() -> None:
    assert compare_configs(Config(), Config()) == ConfigChanges()
    assert compare_configs(Config(), Config()).empty


def test_sections_are_sorted_into_applied_and_restart() -> None:
    old = Config()
    new = attrs.evolve(
        old,
        limits=attrs.evolve(old.limits, max_connections=5),
        timeouts=attrs.evolve(old.timeouts, command=60.0),
        plugins=attrs.evolve(old.plugins, order=("queue_maildir",), sandbox_workers=4),
        log=attrs.evolve(old.log, level="DEBUG", transaction_log=False),
        tls=attrs.evolve(old.tls, ciphers="HIGH"),
        server=attrs.evolve(old.server, hostname="mx.example.test"),
        plugin_configs={"queue_maildir": {"fsync": False}},
    )
    changes = compare_configs(old, new)
    assert changes.applied == (
        "[log] level",
        "[plugins] order",
        "[tls] ciphers",
        "plugins/queue_maildir.toml",
    )
    assert changes.restart == (
        "[server] hostname",
        "[timeouts] command",
        "[limits] max_connections",
        "[log] transaction_log",
        "[plugins] sandbox_workers",
    )


def test_listeners_and_routes_are_named() -> None:
    old = Config()
    mx, _submission, smtps = old.listeners
    new = attrs.evolve(
        old,
        listeners=(attrs.evolve(mx, port=25), smtps, ListenerConfig(
            name="lmtp", host="127.0.0.1", port=24, kind=ListenerKind.SUBMISSION
        )),
        routes=(RouteConfig(domain="*", host="smarthost.example"),),
    )  # fmt: skip
    assert compare_configs(old, new).restart == (
        "[[listener]] 'lmtp'",
        "[[listener]] 'mx'",
        "[[listener]] 'submission'",
        "[[route]] '*'",
    )


def test_command_line_settings_are_not_compared() -> None:
    old = Config()
    new = attrs.evolve(
        old,
        server=attrs.evolve(old.server, var_dir=Path("/elsewhere")),
        listeners=old.listeners[:1],
    )
    assert compare_configs(old, new, pinned={"server.var_dir", "listeners"}).empty
    assert compare_configs(old, new).restart == (
        "[server] var_dir",
        "[[listener]] 'smtps'",
        "[[listener]] 'submission'",
    )


def test_turning_tls_off_needs_a_restart() -> None:
    old = Config()
    new = attrs.evolve(old, tls=attrs.evolve(old.tls, generate_self_signed=False))
    changes = compare_configs(old, new)
    assert changes == ConfigChanges((), ("[tls] (TLS turned on or off)",))
