"""Running a queue plugin the way the server does: loaded by name, called through HookRunner."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import attrs

from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams, Reply

HOST = "127.0.0.1"
# Dots at line starts (stuffing), a lone-dot line, an 8-bit byte, chunk-sized pieces.
BODY = (
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: forward me\r\n\r\n"
    b".leading dot\r\n..two\r\n.\r\nnot the end\r\ncaf\xc3\xa9\r\n"
)
TRACE = b"Received: from client.test ([127.0.0.1]) by mx.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n"


@attrs.frozen
class Outcome:
    result: hooks.Result
    reply: Reply  # what our client would be told

    @property
    def action(self) -> hooks.Action:
        return self.result.action


def make_connection(
    recipients: list[str], *, sender: str | None = "alice@example.com", body: bytes = BODY
) -> hooks.Connection:
    conn = hooks.Connection("C1", "mx", HOST, 40000, HOST, 25, 0.0, helo="client.test")
    params = MailParams(body="8BITMIME", raw=(("BODY", "8BITMIME"),))
    txn = hooks.Transaction("TXN1", address(sender) if sender else None, params, 0.0)
    txn.recipients = [(address(r), RcptParams()) for r in recipients]
    message = hooks.Message()
    for i in range(0, len(body), 7):  # many small chunks, as the wire delivers them
        message.write(body[i : i + 7])
    txn.message = message
    txn.trace_header = TRACE
    txn.add_header("X-Added", "by a plugin")
    conn.transaction = txn
    return conn


def address(text: str) -> Address:
    local, _, domain = text.rpartition("@")
    return Address(local, domain)


def load(name: str, config: Mapping[str, object], **env: object) -> hooks.HookRunner:
    plugin_env = hooks.PluginEnv(hostname="mx.test", var_dir=Path("var"), **env)  # type: ignore[arg-type]
    plugins = hooks.load_plugins([name], configs={name: config}, env=plugin_env)
    return hooks.HookRunner(plugins)


async def run_queue(
    runner: hooks.HookRunner, conn: hooks.Connection, hook: str = "queue"
) -> Outcome:
    result, _ = await runner.run(hook, conn)
    return Outcome(result, hooks.reply_for(hook, result))


def final_message(conn: hooks.Connection) -> bytes:
    assert conn.transaction is not None
    return conn.transaction.message_bytes()
