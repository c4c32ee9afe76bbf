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

Attribution: the sampler thread (``_sampler``), when it saw plugin code running in the step;
otherwise the task's ``current_runner``, whose calls time each step of plugin code they run on
the loop, names the call that took longer than the threshold (in a chain, the one that did, not
the last one). A slow step with neither is reported without a plugin: being active when the
loop was slow for other reasons is no fault, and a naming is a strike.

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

from ._health import PluginHealth
from ._runner import current_runner
from ._sampler import Sampler

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

    __slots__ = ("_deadline", "report", "sampled", "threshold")

    def __init__(
        self, threshold: float, report: Callable[[SlowStep], None] = log_slow_step
    ) -> None:
        if threshold <= 0:
            raise ValueError("the watchdog threshold must be positive")
        self.threshold = threshold
        self.report = report
        self._deadline = _NEVER
        # (the step's deadline, plugin, hook) the sampler thread saw running in a slow step.
        self.sampled: tuple[float, str, str | None] | None = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._deadline = perf_counter() + self.threshold

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if perf_counter() > self._deadline:
            self._slow(task, perf_counter())
        # Installed in the middle of a step, the instrument sees an "after" with no "before".
        self._deadline = _NEVER

    def _slow(self, task: trio.lowlevel.Task, now: float) -> None:
        started = self._deadline - self.threshold
        plugin: str | None = None
        hook: str | None = None
        sampled = self.sampled
        runner = task.context.get(current_runner)
        if sampled is not None and sampled[0] == self._deadline:
            _, plugin, hook = sampled  # seen running by the sampler thread: the best witness
        elif runner is not None and runner.blamed is not None and runner.blamed_at >= started:
            # A call that held the loop too long: the runner times every step of plugin code
            # on the loop. Nothing else is named: a plugin call merely running or finished
            # in a step slowed by something else (a loaded machine, the server's own work) is
            # not the cause, and each naming is a strike against the plugin.
            plugin, hook = runner.blamed.plugin.name, runner.blamed.hook
        try:
            self.report(SlowStep(now - started, task.name, plugin, hook))
        except Exception:
            log.exception("the loop watchdog's report callback failed")


@contextmanager
def watch_loop(
    threshold: float,
    report: Callable[[SlowStep], None] = log_slow_step,
    health: PluginHealth | None = None,
) -> Iterator[LoopWatchdog]:
    """Watch the current run loop for the body of the ``with`` (``[plugins] watchdog_ms``/1000).

    With ``health``: a sampler thread names the plugin code running in a slow step and busy
    plugin threads, and each report naming a plugin is a strike against it (``[plugins]
    watchdog_strikes`` of them and it moves: ``PluginHealth.strike``)."""
    if health is not None:
        report = _striking(report, health)
    watchdog = LoopWatchdog(threshold, report)
    sampler = Sampler(watchdog, health, report, interval=threshold) if health else None
    trio.lowlevel.add_instrument(watchdog)
    if sampler is not None:
        sampler.start()
    try:
        yield watchdog
    finally:
        if sampler is not None:
            sampler.stop()
        trio.lowlevel.remove_instrument(watchdog)


def _striking(
    report: Callable[[SlowStep], None], health: PluginHealth
) -> Callable[[SlowStep], None]:
    def strike(step: SlowStep) -> None:
        report(step)
        if step.plugin is not None:
            what = "a thread of it is busy" if step.task.startswith("thread ") else "it blocked"
            health.strike(step.plugin, f"{what} {step.duration * 1000:.0f} ms (hook {step.hook})")

    return strike
