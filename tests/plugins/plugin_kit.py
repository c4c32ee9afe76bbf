"""Helpers for the built-in plugin tests: load plugins as the server does, build contexts."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, Reply

SHIPPED_CONF = Path(__file__).resolve().parents[2] / "conf" / "plugins"
ALICE = Address("alice", "example.org")
ENV = hooks.PluginEnv(
    hostname="mx.example.test", var_dir=Path("/nonexistent"), local_domains=("example.test",)
)


def load(
    name: str,
    config: Mapping[str, object] | None = None,
    *,
    before: Sequence[str] = (),
    directories: Sequence[Path] = (),
    configs: Mapping[str, Mapping[str, object]] | None = None,
) -> hooks.PluginSet:
    """``name`` with ``config``, after the plugins in ``before`` (found in ``directories``)."""
    all_configs = {**(configs or {}), name: config or {}}
    return hooks.load_plugins(
        [*before, name], directories=directories, configs=all_configs, env=ENV
    )


def runner(
    name: str,
    config: Mapping[str, object] | None = None,
    *,
    before: Sequence[str] = (),
    directories: Sequence[Path] = (),
    configs: Mapping[str, Mapping[str, object]] | None = None,
) -> hooks.HookRunner:
    return hooks.HookRunner(
        load(name, config, before=before, directories=directories, configs=configs)
    )


def config_error(name: str, config: Mapping[str, object]) -> str:
    """Load ``name`` expecting its ``setup`` to refuse ``config``; return the message."""
    with pytest.raises(hooks.PluginLoadError, match="configuration refused") as info:
        load(name, config)
    return str(info.value)


def shipped_config(name: str) -> dict[str, object]:
    with open(SHIPPED_CONF / f"{name}.toml", "rb") as f:
        return tomllib.load(f)


def state(value: object) -> object:
    """A plugin's configured state as plain data, to compare two loads of one plugin."""
    if isinstance(value, hooks.Plugin):
        skip = {"name", "config", "env", "log"}
        return {k: state(v) for k, v in vars(value).items() if k not in skip}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return {k: state(v) for k, v in vars(value).items()}
    return value


def connection(ip: str = "192.0.2.10", **kwargs: object) -> hooks.Connection:
    return hooks.Connection(
        id="c1",
        listener="mx",
        client_ip=ip,
        client_port=40000,
        local_ip="192.0.2.1",
        local_port=25,
        started=0.0,
        **kwargs,  # type: ignore[arg-type]  # the optional fields, by name
    )


def begin(
    conn: hooks.Connection,
    sender: Address | None = ALICE,
    params: MailParams | None = None,
) -> hooks.Transaction:
    """Start a transaction on ``conn`` as the server does just before the ``mail`` hook."""
    conn.transaction = hooks.Transaction(
        id="t1", sender=sender, mail_params=params or MailParams(), started=0.0
    )
    return conn.transaction


def message(data: bytes, *, chunk: int = 0) -> hooks.Message:
    """A received message, written in pieces of ``chunk`` octets (all at once if 0)."""
    msg = hooks.Message()
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        msg.write(data[i : i + step])
    return msg


async def verdict(
    run: hooks.HookRunner, hook: str, conn: hooks.Connection, *args: object
) -> tuple[hooks.Result, Reply | None]:
    """The chain's result, and the reply it turns into (None for CONT)."""
    result, _ = await run.run(hook, conn, *args)
    if result.action is hooks.Action.CONT:
        return result, None
    return result, hooks.reply_for(hook, result)
