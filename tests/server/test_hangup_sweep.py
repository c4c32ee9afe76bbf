"""``HangupSweep``: a hang-up watch only for connections blocked in a plugin call longer than
the grace, each at its own ``since + grace``; virtual time (``autojump_clock``).

The sweep runs under a step budget (an Instrument counting its task's steps): a sweep that
loops without sleeping would otherwise hang the run (the clock only jumps when every task
sleeps), so the budget cancels the test instead and it fails."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_mta.server._hangup import GRACE, HangupSweep

BUDGET = 200  # steps of the sweep task per test; a test here needs a few dozen at most


class FakeConn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.watched: list[float] = []

    def watch_hangup(self) -> None:
        self.watched.append(trio.current_time())

    def __repr__(self) -> str:
        return f"FakeConn({self.name})"


class StepBudget(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task, scope: trio.CancelScope) -> None:
        self.task = task
        self.scope = scope
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self.steps > BUDGET:
                self.scope.cancel()


class Running:
    def __init__(self, sweep: HangupSweep, budget: StepBudget) -> None:
        self.sweep = sweep
        self.budget = budget


@asynccontextmanager
async def running_sweep(grace: float = GRACE) -> AsyncIterator[Running]:
    sweep = HangupSweep(grace)

    async def run(*, task_status: trio.TaskStatus[trio.lowlevel.Task]) -> None:
        task_status.started(trio.lowlevel.current_task())
        await sweep.run()

    with trio.CancelScope() as guard:
        async with trio.open_nursery() as nursery:
            task = await nursery.start(run)
            budget = StepBudget(task, guard)
            trio.lowlevel.add_instrument(budget)
            try:
                yield Running(sweep, budget)
            finally:
                trio.lowlevel.remove_instrument(budget)
                nursery.cancel_scope.cancel()
    assert not guard.cancelled_caught, f"the sweep took over {BUDGET} steps: a busy loop"


def close_to(t: float) -> object:
    # The MockClock lands on a deadline to within a rounding error of the sum.
    return pytest.approx(t, abs=1e-9)


async def test_a_connection_unblocked_within_the_grace_is_never_watched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConn("quick")
    async with running_sweep() as running:
        await trio.sleep(1.0)
        running.sweep.blocked(conn)
        await trio.sleep(GRACE * 0.9)
        running.sweep.unblocked(conn)
        await trio.sleep(100 * GRACE)
    assert conn.watched == []


async def test_a_connection_blocked_longer_is_watched_once_at_since_plus_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConn("slow")
    async with running_sweep() as running:
        await trio.sleep(1.0)
        running.sweep.blocked(conn)
        await trio.sleep(100 * GRACE)  # still blocked all along: one watch is enough
        assert conn.watched == [close_to(1.0 + GRACE)]
        running.sweep.unblocked(conn)
        # A later plugin call that blocks as long is watched again, from its own start.
        await trio.sleep(1.0)
        again = trio.current_time()
        running.sweep.blocked(conn)
        await trio.sleep(2 * GRACE)
        running.sweep.unblocked(conn)
        await trio.sleep(10 * GRACE)
    assert conn.watched == [close_to(1.0 + GRACE), close_to(again + GRACE)]


async def test_connections_blocked_at_different_times_are_each_watched_at_their_own_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Block times chosen among them so that (t + 0.2) - 0.2 < t in floating point (0.5, 3.9):
    # a due test written ``since > now - grace`` found them not yet due at their deadline and
    # the sweep spun without sleeping.
    starts = {"a": 0.5, "b": 0.55, "c": 0.55, "d": 0.6, "e": 0.9, "f": 3.9}
    conns = {name: FakeConn(name) for name in [*starts, "left early"]}
    async with running_sweep() as running:
        sweep = running.sweep
        for name, at in starts.items():
            await trio.sleep_until(at)
            sweep.blocked(conns[name])
            if name == "a":  # blocked just after "a", gone before its grace is up
                sweep.blocked(conns["left early"])
            if name == "d":
                sweep.unblocked(conns["left early"])
        await trio.sleep(10.0)
    for name, at in starts.items():
        assert conns[name].watched == [close_to(at + GRACE)], name
    assert conns["left early"].watched == []


async def test_the_sweep_sleeps_without_a_deadline_when_nothing_is_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = FakeConn("c")
    async with running_sweep() as running:
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        # Nothing blocked: no timer at all (no polling), and time does not move on its own.
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline == math.inf
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == start

        running.sweep.blocked(conn)
        await trio.testing.wait_all_tasks_blocked()
        # One timer: the blocked connection's deadline.
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline == close_to(GRACE)
        await trio.sleep(10 * GRACE)
        assert conn.watched == [close_to(start + GRACE)]

        # Watched: nothing else to wait for, so no timer again; an hour passes in few steps.
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline == math.inf
        steps = running.budget.steps
        await trio.sleep(3600)
        assert running.budget.steps == steps
