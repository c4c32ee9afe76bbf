"""The loop watchdog: a Trio instrument that names whoever held the event loop too long.

Theory of operation
-------------------
Trio runs one task step at a time; a step that does not reach a checkpoint (a blocking call in
an async plugin hook, a CPU-bound loop) freezes every connection. ``before_task_step`` stores
the step's deadline (start + threshold); ``after_task_step`` compares the clock with it and
resets it. That is the whole common path: two ``perf_counter`` calls, two attribute stores,
one comparison, no allocation beyond the interpreter's float free list. Only a slow step does
more: it reads the runner's context variables from ``task.context`` (the step ran in the
task's context, the instrument does not) and calls ``report``.

Attribution: the task's ``current_runner`` names the hook still running at the end of the
step; failing that, the hook that finished last during the step (a hook that blocks and returns
without a checkpoint finishes in the same step). If several hooks finished within one slow
step, the last one is named. A step with neither is reported without a plugin.

The callback runs inside the scheduler: keep it quick and non-blocking (log, ``publish``).
An exception from it is logged here, since Trio would otherwise disable the instrument.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import perf_counter

import attrs
import trio

from ._runner import current_runner

log = logging.getLogger("trio_mta.watchdog")

_NEVER = math.inf


@attrs.frozen
class SlowStep:
    """One task step that held the event loop for longer than the threshold."""

    duration: float  # seconds
    task: str
    plugin: str | None = None
    hook: str | None = None


def log_slow_step(step: SlowStep) -> None:
    if step.plugin is not None:
        log.warning(
            "event loop blocked for %.0f ms by plugin %s on hook %s (task %s)",
            step.duration * 1000,
            step.plugin,
            step.hook,
            step.task,
        )
    else:
        log.warning("event loop blocked for %.0f ms by task %s", step.duration * 1000, step.task)


class LoopWatchdog(trio.abc.Instrument):
    """Install with ``trio.lowlevel.add_instrument`` (or ``watch_loop``)."""

    __slots__ = ("_deadline", "report", "threshold")

    def __init__(
        self, threshold: float, report: Callable[[SlowStep], None] = log_slow_step
    ) -> None:
        if threshold <= 0:
            raise ValueError("the watchdog threshold must be positive")
        self.threshold = threshold
        self.report = report
        self._deadline = _NEVER

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._deadline = perf_counter() + self.threshold

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if perf_counter() > self._deadline:
            self._slow(task, perf_counter())
        # Installed in the middle of a step, the instrument sees an "after" with no "before".
        self._deadline = _NEVER

    def _slow(self, task: trio.lowlevel.Task, now: float) -> None:
        started = self._deadline - self.threshold
        context = task.context
        plugin = hook = None
        runner = context.get(current_runner)
        if runner is not None:
            entry = runner.active
            if entry is None and runner.last is not None and runner.last_finished >= started:
                entry = runner.last
            if entry is not None:
                plugin, hook = entry.plugin.name, entry.hook
        try:
            self.report(SlowStep(now - started, task.name, plugin, hook))
        except Exception:
            log.exception("the loop watchdog's report callback failed")


@contextmanager
def watch_loop(
    threshold: float, report: Callable[[SlowStep], None] = log_slow_step
) -> Iterator[LoopWatchdog]:
    """Watch the current run loop for the body of the ``with`` (``[plugins] watchdog_ms``/1000)."""
    watchdog = LoopWatchdog(threshold, report)
    trio.lowlevel.add_instrument(watchdog)
    try:
        yield watchdog
    finally:
        trio.lowlevel.remove_instrument(watchdog)
