"""Batch processors for ``hooks.BatchProcess`` tests, importable in the child process.

The child loads this module (``tests.helpers.batchprocs``) from its file under the same name,
so the exception classes below pickle by reference both ways. Nothing here may import trio: the
child should start in a few tens of milliseconds.

``Scripted`` runs a small script per job. With a ``gate`` port it first connects to the test
(once per child), announces each batch by its size (4 bytes, big-endian) and waits for one byte
before doing the batch's work: the test decides when a batch ends, so what joins a batch is
deterministic.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

# A job is (action, value): ("echo", v) answers (v, payload, batch size); ("fail", text) answers
# JobFailed(text) for that job only; ("raise", text) makes the whole batch raise BatchFailed;
# ("odd", text) answers an OddError, which pickles but does not unpickle.
Job = tuple[str, Any]
Echoed = tuple[Any, bytes, int]


class JobFailed(Exception):
    """Returned (not raised) for one job."""


class BatchFailed(Exception):
    """Raised by the processor: every job of the batch hears it."""


class OddError(Exception):
    """Pickles (as ``OddError(message)``) but cannot be rebuilt from that: two arguments."""

    def __init__(self, text: str, code: int) -> None:
        super().__init__(f"{text} ({code})")


class Scripted:
    def __init__(self, gate: int | None = None) -> None:
        self.gate_port = gate
        self.gate: socket.socket | None = None

    def _wait_at_gate(self, size: int) -> None:
        if self.gate_port is None:
            return
        if self.gate is None:
            self.gate = socket.create_connection(("127.0.0.1", self.gate_port))
        self.gate.sendall(size.to_bytes(4, "big"))
        if not self.gate.recv(1):
            raise BatchFailed("the gate closed")

    def __call__(self, batch: Sequence[tuple[Job, bytes]]) -> list[Echoed | BaseException]:
        self._wait_at_gate(len(batch))
        out: list[Echoed | BaseException] = []
        for (action, value), payload in batch:
            if action == "echo":
                out.append((value, payload, len(batch)))
            elif action == "fail":
                out.append(JobFailed(value))
            elif action == "raise":
                raise BatchFailed(value)
            elif action == "odd":
                out.append(OddError(value, 2))
            else:
                out.append(ValueError(f"unknown action {action!r}"))
        return out


def broken(reason: str) -> Any:
    """A factory that cannot build its processor."""
    raise RuntimeError(f"cannot start: {reason}")
