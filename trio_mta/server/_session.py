"""Per-connection state: the plugin-visible ``Connection`` is the session itself, so the driver
and the plugins never hold two copies of the truth."""

from __future__ import annotations

import itertools
import os
import time

from ..hooks import Connection as Session
from ..hooks import Transaction as Transaction

__all__ = ["IdGenerator", "Session", "Transaction"]


class IdGenerator:
    """Unique, sortable ids: seconds since the epoch, a per-process random part, a counter.

    Unique across restarts (the random part) and across processes (pid-independent)."""

    def __init__(self) -> None:
        self._salt = os.urandom(3).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{int(time.time()):x}{self._salt}{next(self._counter):06x}"
