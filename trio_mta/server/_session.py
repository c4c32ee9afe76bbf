"""Per-connection and per-transaction state the driver keeps and the handler sees."""

from __future__ import annotations

import itertools
import os
import time

import attrs

from ..protocol import Address, MailParams, RcptParams


class IdGenerator:
    """Unique, sortable ids: seconds since the epoch, a per-process random part, a counter.

    Unique across restarts (the random part) and across processes (pid-independent)."""

    def __init__(self) -> None:
        self._salt = os.urandom(3).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{int(time.time()):x}{self._salt}{next(self._counter):06x}"


@attrs.define
class Transaction:
    id: str
    sender: Address | None
    mail_params: MailParams
    started: float
    recipients: list[tuple[Address, RcptParams]] = attrs.Factory(list)
    notes: dict[str, object] = attrs.Factory(dict)


@attrs.define
class Session:
    id: str
    listener: str
    client_ip: str
    client_port: int
    local_ip: str
    local_port: int
    started: float
    helo: str | None = None
    extended: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    auth_user: str | None = None
    relaying: bool = False
    transaction: Transaction | None = None
    transactions: int = 0
    notes: dict[str, object] = attrs.Factory(dict)
