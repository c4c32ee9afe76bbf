"""Loading the mail-auth plugins as the server does, with a resolver of the test's choosing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.plugins.plugin_kit import begin, connection, message, verdict
from trio_mta import hooks
from trio_mta.protocol import Address, Reply

SOFT = Address("x", "soft.test")  # SPF softfail for 127.0.0.1: accepted

__all__ = ["begin", "connection", "message", "plugins", "receive", "verdict"]


def plugins(
    names: Sequence[str],
    resolver: hooks.Resolver | None,
    configs: Mapping[str, Mapping[str, object]] | None = None,
    *,
    var_dir: Path = Path("/nonexistent"),
    config_dir: Path | None = None,
    default_timeout: float = 5.0,
) -> hooks.HookRunner:
    env = hooks.PluginEnv(
        hostname="mx.example.test",
        var_dir=var_dir,
        local_domains=("example.test",),
        config_dir=config_dir,
        resolver=resolver,
    )
    configs = {name: dict((configs or {}).get(name, {})) for name in names}
    return hooks.HookRunner(
        hooks.load_plugins(names, configs=configs, env=env, default_timeout=default_timeout)
    )


async def receive(
    run: hooks.HookRunner,
    data: bytes,
    *,
    ip: str = "127.0.0.1",
    helo: str = "helo.test",
    sender: Address | None = SOFT,
    **conn_fields: object,
) -> tuple[hooks.Connection, Reply | None, Reply | None]:
    """MAIL then DATA as the server runs them: (conn, MAIL reply, data_post reply)."""
    conn = connection(ip, helo=helo, **conn_fields)
    begin(conn, sender)
    mail = (await verdict(run, "mail", conn, sender, conn.transaction.mail_params))[1]  # type: ignore[union-attr]
    if mail is not None:
        return conn, mail, None
    assert conn.transaction is not None
    conn.transaction.message = message(data)
    return conn, None, (await verdict(run, "data_post", conn))[1]
