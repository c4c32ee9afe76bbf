"""Helpers for the hook tests: plugin files written into a temporary directory, sessions."""

from __future__ import annotations

import textwrap
from pathlib import Path

from trio_mta.hooks import Connection, HookCall, Transaction
from trio_mta.protocol import Address, MailParams

PREAMBLE = """\
from __future__ import annotations
import os, sys, threading, time
import trio
from trio_mta import hooks
from trio_mta.hooks import CONT, OK, Plugin as Base, deny, denysoft, hook, ok
from trio_mta.protocol import Address
"""


def write_plugin(directory: Path, name: str, body: str) -> Path:
    """``directory/name.py``: the preamble's imports, then ``body`` (dedented)."""
    path = directory / f"{name}.py"
    path.write_text(PREAMBLE + textwrap.dedent(body))
    return path


def new_conn(*, with_txn: bool = False) -> Connection:
    conn = Connection("c1", "mx", "192.0.2.1", 40000, "127.0.0.1", 25, 0.0)
    if with_txn:
        conn.transaction = Transaction(
            id="t1", sender=Address("alice", "example.org"), mail_params=MailParams(), started=0.0
        )
    return conn


class Calls:
    """An ``observe`` callback that keeps what it saw."""

    def __init__(self) -> None:
        self.seen: list[HookCall] = []

    def __call__(self, call: HookCall) -> None:
        self.seen.append(call)


ARGS = {
    "data": "conn",
    "disconnect": "conn",
    "helo": "conn, name",
    "mail": "conn, sender, params",
    "rcpt": "conn, rcpt, params",
    "deny": "conn, denial",
    "capabilities": "conn, caps",
}


def one_hook(hook: str, body: str, *, sync: bool = False, head: str = "") -> str:
    """Source of a plugin with one ``hook_<hook>`` running ``body`` (class attributes: ``head``)."""
    lines = [f"    {line}" for line in textwrap.dedent(head).strip().splitlines()]
    lines.append(f"    {'' if sync else 'async '}def hook_{hook}(self, {ARGS[hook]}):")
    lines += [f"        {line}" for line in textwrap.dedent(body).strip().splitlines()]
    return "class Plugin(Base):\n" + "\n".join(lines) + "\n"
