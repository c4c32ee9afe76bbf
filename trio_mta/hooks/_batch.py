"""Group commit: one worker thread does the blocking work of many callers, a batch at a time.

Theory of operation
-------------------
Durable storage costs a sync per message when every message is written alone; here callers
``await submit(job)``, the job joins a queue, and a single worker thread takes *everything*
queued, hands the whole batch to ``process`` (which can then sync once for all of it), and
reports every result back to the event loop in one hop. While a batch is on disk the next one
gathers, so the batch grows with the load and the extra wait is bounded by one batch's work.

Invariants: a job's result is delivered exactly once; ``process`` returns one result (or
exception) per job, in order; a caller cancelled while waiting does not stop its job (the work
is not undone, only its answer is dropped). The thread is started lazily and stopped by
``aclose``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import attrs
import trio

J = TypeVar("J")
R = TypeVar("R")

_STOP = object()


@attrs.define
class _Slot(Generic[J, R]):
    job: J
    done: trio.Event = attrs.Factory(trio.Event)
    result: R | None = None
    error: BaseException | None = None


class BatchWorker(Generic[J, R]):
    def __init__(
        self,
        process: Callable[[Sequence[J]], Sequence[R | BaseException]],
        *,
        max_batch: int = 512,
        name: str = "batch-worker",
    ) -> None:
        self.process = process
        self.max_batch = max_batch
        self.name = name
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.batches = 0
        self.jobs = 0

    async def submit(self, job: J) -> R:
        """Run ``job`` in the next batch and return its result (or raise its exception)."""
        if self._thread is None:
            self._start()
        slot: _Slot[J, R] = _Slot(job)
        self._queue.put(slot)
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # set whenever error is None

    def _start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._token is not None
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Slot[J, R]] = [first]  # type: ignore[list-item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            try:
                results = list(self.process([slot.job for slot in batch]))
                if len(results) != len(batch):
                    raise RuntimeError("batch processor returned the wrong number of results")
            except BaseException as exc:  # the whole batch failed: every caller hears it
                results = [exc] * len(batch)
            self.batches += 1
            self.jobs += len(batch)
            try:
                trio.from_thread.run_sync(_deliver, batch, results, trio_token=self._token)
            except trio.RunFinishedError:
                return
            if stop:
                return

    async def aclose(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            await trio.to_thread.run_sync(thread.join)


def _deliver(batch: list[_Slot[J, R]], results: list[R | BaseException]) -> None:
    for slot, result in zip(batch, results, strict=True):
        if isinstance(result, BaseException):
            slot.error = result
        else:
            slot.result = result
        slot.done.set()
