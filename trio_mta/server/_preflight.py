"""Configurations that start but cannot work: told at start-up and by ``trio-mta check``.

A submission or smtps listener refuses MAIL until the client has authenticated (530 5.7.0). If
nothing can authenticate there, every message gets 530 while the port listens normally: an
operator would only find out from a user's complaint. Saying so once at start-up is cheap.
"""

from __future__ import annotations

from ..config import Config, ListenerKind
from ..hooks import PluginSet


def auth_warnings(config: Config, plugins: PluginSet) -> list[str]:
    """One line per listener that requires AUTH but where no client can ever authenticate."""
    auth_plugins = [e.plugin.name for e in plugins.entries("auth")]
    lines: list[str] = []
    for listener in config.listeners:
        if listener.kind is ListenerKind.MX:
            continue
        where = f"listener {listener.name!r} ({listener.listen}, kind {listener.kind.value})"
        if not auth_plugins:
            why = (
                "no auth plugin is loaded (add auth_flat_file to [plugins] order and create"
                " users with `trio-mta passwd USER`)"
            )
        elif not listener.auth:
            why = "its auth = false"
        elif not config.tls.enabled and not listener.auth_allow_plaintext:
            why = "TLS is off ([tls] has no cert and generate_self_signed = false)"
        else:
            continue
        lines.append(f"{where} requires AUTH before MAIL, but {why}: every MAIL there gets 530")
    return lines
