"""When messages are due: the retry schedule, and the heap the scheduler sleeps on.

Theory of operation
-------------------
``Scheduler`` keeps a heap of ``(due, seq, id)`` in trio time and a map id → the due time in
force; rescheduling an id pushes a new heap item and the stale one is skipped when it surfaces
(lazy deletion keeps every operation O(log n)). ``run`` pops every item whose time has come and
sends its id into a bounded channel: when the consumers are busy (the active window is full)
the send blocks, so nothing is taken off the heap that cannot be worked on. Between batches it
sleeps until the earliest due time, or until ``add`` moves the earliest time earlier (new mail,
a flush) and sets the wake-up event: it never polls.

An id is in at most one of three places: the heap (waiting), the channel or a worker (active),
or nowhere (held, or gone). ``add`` for an active id is refused; the worker reschedules it when
its attempt ends.
"""

from __future__ import annotations

import heapq
import itertools
import math

import trio


def retry_delay(attempts: int, *, first: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: ``first``, doubling each
    time, never more than ``maximum``."""
    if attempts < 1:
        return 0.0
    return min(first * 2.0 ** min(attempts - 1, 60), maximum)


class Scheduler:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._seq = itertools.count()
        self._wake = trio.Event()
        self.active: set[str] = set()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, id: str) -> bool:
        return id in self._due

    def due(self, id: str) -> float | None:
        return self._due.get(id)

    def add(self, id: str, due: float) -> bool:
        """Schedule (or reschedule) ``id`` at trio time ``due``. False if it is active."""
        if id in self.active:
            return False
        earliest = self._heap[0][0] if self._heap else math.inf
        self._due[id] = due
        heapq.heappush(self._heap, (due, next(self._seq), id))
        if due < earliest:
            self._wake.set()
        return True

    def discard(self, id: str) -> None:
        """Forget ``id`` if it is waiting (its heap item is skipped later)."""
        self._due.pop(id, None)

    def done(self, id: str) -> None:
        """A worker finished with ``id`` (it may have been added back meanwhile: no)."""
        self.active.discard(id)

    def ids_waiting(self) -> list[str]:
        return list(self._due)

    def _pop_due(self, now: float) -> str | None:
        while self._heap and self._heap[0][0] <= now:
            due, _, id = heapq.heappop(self._heap)
            if self._due.get(id) == due:
                del self._due[id]
                return id
        return None

    def _next_time(self) -> float:
        while self._heap:
            due, _, id = self._heap[0]
            if self._due.get(id) == due:
                return due
            heapq.heappop(self._heap)  # stale
        return math.inf

    async def run(self, out: trio.MemorySendChannel[str]) -> None:
        """Feed due ids into ``out`` forever (see the module comment)."""
        while True:
            self._wake = trio.Event()
            while (id := self._pop_due(trio.current_time())) is not None:
                self.active.add(id)
                await out.send(id)
            with trio.move_on_at(self._next_time()):
                await self._wake.wait()
