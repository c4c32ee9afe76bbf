"""The per-destination rate limit: when the next message to a destination may go.

Theory of operation
-------------------
A token bucket kept as one number per destination, the "theoretical arrival time" of the
generic cell rate algorithm (GCRA): with ``interval = 1 / rate`` and room for ``burst``
messages, ``reserve(key)`` hands out the earliest trio time at which one more message may go
(``max(tat, now) - (burst - 1) * interval``) and moves ``tat`` on by one interval. Reservations
are made in the order the workers ask, so each gets its own slot; the worker then sleeps until
its time (``trio.sleep_until``): nothing polls, nothing wakes early. Each call is O(1) (the
sweep of idle destinations runs when the map has doubled since the last one, so it is O(1)
amortised). A reservation that is not used (the worker was cancelled) is simply lost: the
destination gets one message fewer in that second, never one more.

``rate`` 0 means no limit: ``reserve`` answers ``-inf`` and keeps nothing.
"""

from __future__ import annotations

import math

import trio


class RateLimits:
    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.tolerance = (max(burst, 1) - 1) * self.interval
        self._tat: dict[str, float] = {}
        self._sweep_at = 64

    def __len__(self) -> int:
        return len(self._tat)

    def reserve(self, key: str) -> float:
        """The trio time at which the next message to ``key`` may go (may be in the past)."""
        if not self.interval:
            return -math.inf
        now = trio.current_time()
        if len(self._tat) >= self._sweep_at:
            self._sweep(now)
        tat = max(self._tat.get(key, now), now)
        self._tat[key] = tat + self.interval
        return tat - self.tolerance

    def _sweep(self, now: float) -> None:
        """Forget destinations whose bucket is full again (they would start afresh anyway)."""
        self._tat = {k: t for k, t in self._tat.items() if t > now}
        self._sweep_at = max(64, 2 * len(self._tat))
