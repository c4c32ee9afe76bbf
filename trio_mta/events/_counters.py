"""Counters the SMTP side bumps on every connection and transaction, watched or not.

They feed ``/metrics`` without any event being built: a few integer additions per transaction
are the whole cost of metrics on an unwatched daemon. Keys are bounded: listener names, close
reasons reduced to their first word, outcomes, and replies by SMTP stage and code (``server``'s
``CountedConnection`` counts every reply it sends).
"""

from __future__ import annotations


class Counters:
    __slots__ = (
        "accepted_bytes",
        "closed",
        "connections",
        "open",
        "replies",
        "sandbox",
        "sandbox_wait_seconds",
        "transactions",
    )

    def __init__(self) -> None:
        self.connections: dict[str, int] = {}  # by listener
        self.open = 0
        self.closed: dict[str, int] = {}  # by the first word of the close reason
        self.transactions: dict[str, int] = {}  # by outcome
        self.replies: dict[tuple[str, int], int] = {}  # (stage, code) -> replies sent
        self.accepted_bytes = 0
        self.sandbox: dict[str, int] = {}  # sandbox worker events by action (spawn, kill, wait...)
        self.sandbox_wait_seconds = 0.0

    def connection_opened(self, listener: str) -> None:
        self.connections[listener] = self.connections.get(listener, 0) + 1
        self.open += 1

    def connection_closed(self, reason: str) -> None:
        word = reason.split(" ", 1)[0] or "unknown"
        self.closed[word] = self.closed.get(word, 0) + 1
        self.open -= 1

    def transaction_ended(self, outcome: str, size: int) -> None:
        self.transactions[outcome] = self.transactions.get(outcome, 0) + 1
        if outcome == "accepted":
            self.accepted_bytes += size

    def reply(self, stage: str, code: int) -> None:
        key = (stage, code)
        self.replies[key] = self.replies.get(key, 0) + 1

    def sandbox_event(self, action: str, waited: float) -> None:
        self.sandbox[action] = self.sandbox.get(action, 0) + 1
        self.sandbox_wait_seconds += waited
