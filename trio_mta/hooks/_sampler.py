"""The loop watchdog's sampler thread: whose code is running, seen from outside the loop.

Theory of operation
-------------------
The instrument (``_watchdog.LoopWatchdog``) learns that a step was slow only when it ends, and
a plugin's own record of which call ran can be wrong (several plugins in one chain, in one
step). A Python thread can look at another's stack while it runs: every ``interval`` seconds
this thread takes ``sys._current_frames()`` and

* if the loop's current step has run past the threshold (the instrument's ``_deadline`` is
  behind the clock), maps the loop thread's frames to the plugin file they are in and stores
  the answer on the instrument, tagged with that step's deadline (the step's identity);
* for every other thread, reads its CPU clock (``pthread_getcpuclockid``): one that used more
  than half of the interval, in a plugin's code (or started by a plugin call, per
  ``PluginHealth.thread_owners``), is a busy plugin thread. It holds the GIL the loop needs;
  it is reported (from the loop, through the Trio token) at most once a second per thread.

The sampler only reads: frames are walked while it holds the GIL, so they cannot change under
it. Its cost is one wake-up per interval and a clock read per thread.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._health import PluginHealth
    from ._watchdog import LoopWatchdog, SlowStep

log = logging.getLogger("trio_mta.watchdog")

_BUSY_SHARE = 0.5  # of the interval's CPU time: a thread above it is busy
_REPORT_EVERY = 1.0  # seconds between two reports of one busy thread


class Sampler:
    def __init__(
        self,
        watchdog: LoopWatchdog,
        health: PluginHealth,
        report: Callable[[SlowStep], None],
        *,
        interval: float,
    ) -> None:
        self.watchdog = watchdog
        self.health = health
        self.report = report
        self.interval = interval
        self._token = trio.lowlevel.current_trio_token()
        self._loop_ident = threading.get_ident()
        self._stop = threading.Event()
        self._cpu: dict[int, float] = {}
        self._reported: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="trio-mta watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # a sampler that dies would leave the loop unwatched
                log.exception("the watchdog's sampler failed")

    def tick(self) -> None:
        frames = sys._current_frames()  # the documented way to see other stacks
        me = threading.get_ident()
        busy = self._busy_threads(frames, me)
        watchdog = self.watchdog
        deadline = watchdog._deadline  # read-only, the step's identity
        if time.perf_counter() > deadline:
            who = self.health.attribute(frames.get(self._loop_ident))
            if who is None and busy:
                who = busy[0][1]  # the loop waits for the GIL a plugin thread holds
            if who is not None:
                watchdog.sampled = (deadline, who[0], who[1])

    def _busy_threads(
        self, frames: dict[int, FrameType], me: int
    ) -> list[tuple[int, tuple[str, str | None]]]:
        from ._watchdog import SlowStep  # a cycle at import time otherwise

        health = self.health
        owners = health.thread_owners
        now = time.perf_counter()
        busy: list[tuple[int, tuple[str, str | None]]] = []
        seen = set(frames)
        for ident, frame in frames.items():
            if ident in (me, self._loop_ident):
                continue
            try:
                cpu = time.clock_gettime(time.pthread_getcpuclockid(ident))
            except (OSError, OverflowError):  # ended meanwhile
                continue
            last = self._cpu.get(ident)
            self._cpu[ident] = cpu
            if last is None or cpu - last < _BUSY_SHARE * self.interval:
                continue
            who = health.attribute(frame) or owners.get(ident)
            if who is None:
                continue
            busy.append((ident, who))
            reported = self._reported.get(ident)
            if reported is None or now - reported >= _REPORT_EVERY:
                self._reported[ident] = now
                name = _thread_name(ident)
                step = SlowStep(cpu - last, f"thread {name}", who[0], who[1])
                self._token.run_sync_soon(self.report, step)
        for table in (self._cpu, self._reported, owners):
            # list(): the loop thread adds owners meanwhile; pop: it may have removed one too.
            for gone in [i for i in list(table) if i not in seen]:
                table.pop(gone, None)
        return busy


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return str(ident)
