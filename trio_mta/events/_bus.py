"""The event bus: publishers never wait, subscribers that fall behind lose events, and know it.

Theory of operation
-------------------
One ring of ``size`` slots holds the most recent events; ``publish`` writes the next slot and
bumps a sequence number. That is the whole hot path: one list store, one integer store, a truth
test of the taps and of the parking lot (O(1), no allocation, never a checkpoint), so SMTP never
waits for a watcher.

Each subscriber is a cursor into the ring: its bounded channel is the window of events it has
not read yet, which can be at most ``size`` long. A subscriber that stays behind by more than
that finds the ring has moved past its cursor: it skips to the oldest event still held and first
receives a ``Gap`` carrying the number it lost (which also feeds ``bus.dropped``). Others are not
affected. Waiting subscribers park on one ``ParkingLot``; ``publish`` wakes them only if someone
is parked, so a batch of events costs one wake-up, not one per event.

``defer`` publishes without building: the slot holds the event's kind, a function computing
its field values and that function's arguments; the first reader that wants the kind computes
the values (once, for every reader), and a reader that only forwards JSON encodes them without
an object (``take_raw``). Subscribers may name the kinds they want, and never cause the others
to be computed. Measured under load, building events on the SMTP path cost several times what
the same work costs in a reader's batch.

The ring doubles as the replay buffer: a subscriber may start up to ``retain`` events back.

``active`` is what publishers test before building an event at all: True only while a
subscriber is connected, so an unwatched daemon builds no events. Two exceptions keep replay
and metrics useful at a cost of one event per transaction and nothing else: with ``retain``,
``transaction.end`` is published even unwatched (a watcher that connects later can replay the
last transactions); rare events (watchdog, delivery) are always published. ``counters`` are the
plain integers the SMTP side bumps either way, for /metrics. Publishers of expensive detail
(one event per plugin call) follow ``detail`` through ``on_detail``: True while at least one
subscriber wants that detail (``trio-mta watch`` by default does not).

Taps are synchronous callbacks run on every event (metrics); they must be quick. A tap that
raises is logged and kept: the publisher is an SMTP session, not the place for a metrics bug.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

import trio

from ._counters import Counters
from ._types import Event, Gap

log = logging.getLogger("trio_mta.events")

Clock = Callable[[], float]
Tap = Callable[[Event], None]
# A deferred event in the ring: its kind, the function that computes its field values (a tuple
# in the class's declaration order), and that function's arguments. Once computed the slot
# holds (kind, values); once a reader asks for the object, the Event itself.
Deferred = tuple[type[Event], Callable[..., tuple[object, ...]], tuple[object, ...]]
Computed = tuple[type[Event], tuple[object, ...]]
RawItem = Event | Computed


class EventBus:
    """Args:
    clock: wall-clock seconds for event timestamps (``time.time``; tests inject their own).
    retain: how many recent events a new subscriber may ask to replay (0: no replay).
    buffer: how far a subscriber may fall behind before it loses events.
    """

    def __init__(self, *, clock: Clock = time.time, retain: int = 0, buffer: int = 1024) -> None:
        if retain < 0 or buffer < 1:
            raise ValueError("retain must be >= 0 and buffer >= 1")
        self.clock = clock
        self.retain = retain
        self.size = max(retain, buffer)
        self._ring: list[Event | Deferred | Computed | None] = [None] * self.size
        self._seq = 0  # the sequence number the next event gets
        self._skipped = (0, 0)  # a mirror's last run of numbers that carried no event
        self._lot = trio.lowlevel.ParkingLot()
        self._taps: dict[type[Event], list[Tap]] = {}
        self._watchers: list[Callable[[bool], None]] = []
        self.subscribers = 0
        self.detailed = 0  # subscribers that want plugin calls
        self.dropped = 0  # events lost by slow subscribers, all of them together
        self.counters = Counters()
        self.active = False  # a subscriber is connected: build and publish every event
        self.detail = False  # one of them wants plugin calls too

    @property
    def published(self) -> int:
        """Events published so far (the next event's sequence number)."""
        return self._seq

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every tap and subscriber. Synchronous, O(1), never blocks."""
        seq = self._seq
        self._ring[seq % self.size] = event
        self._seq = seq + 1
        taps = self._taps.get(type(event))
        if taps is not None:
            for tap in taps:
                try:
                    tap(event)
                except Exception:
                    log.exception("event tap %r failed", tap)
        if self._lot:
            self._lot.unpark_all()

    def defer(
        self,
        kind: type[Event],
        values: Callable[..., tuple[object, ...]],
        args: tuple[object, ...],
    ) -> None:
        """Publish the ``kind`` event whose field values (in declaration order) ``values(*args)``
        computes, without computing them: that happens when a subscriber that wants the kind
        first reads it, in that subscriber's batch (once, whoever reads first), or never if
        none does before the ring moves past. A watcher that only forwards JSON never even
        builds the object (``take_raw``). On the SMTP path an event costs several times what
        the same work costs in a batch. ``args`` must be immutable values. Events of a kind
        that has taps are built at once."""
        if kind in self._taps:
            self.publish(_event(kind, values(*args)))
            return
        seq = self._seq
        self._ring[seq % self.size] = (kind, values, args)
        self._seq = seq + 1
        if self._lot:
            self._lot.unpark_all()

    def publish_values(self, kind: type[Event], values: tuple[object, ...]) -> None:
        """Publish a ``kind`` event from its field values (declaration order), computed now
        but not built as an object until a reader asks for one. For an event published even
        when nobody watches: its values are plain strings and numbers, where ``defer``'s
        arguments would keep protocol objects alive for as long as the ring holds them."""
        if kind in self._taps:
            self.publish(_event(kind, values))
            return
        seq = self._seq
        self._ring[seq % self.size] = (kind, values)
        self._seq = seq + 1
        if self._lot:
            self._lot.unpark_all()

    def mirror(self, seq: int, kind: type[Event], values: tuple[object, ...]) -> None:
        """Publish, as event number ``seq``, an event another bus published (the watcher
        process mirrors the daemon's bus, so ``seq`` means the same on both sides). Numbers
        skipped since the last one are events left out on the way: their slots are emptied,
        readers pass over them. An older ``seq`` than the last is ignored."""
        if seq < self._seq:
            return
        if seq > self._seq:
            self._skipped = (self._seq, seq)
            ring, size = self._ring, self.size
            for skipped in range(max(self._seq, seq - size), seq):
                ring[skipped % size] = None
        self._ring[seq % self.size] = (kind, values)
        self._seq = seq + 1
        if self._lot:
            self._lot.unpark_all()

    def mirror_gap(self, dropped: int) -> None:
        """The mirrored bus lost ``dropped`` events before they reached this one: every
        subscriber gets a ``Gap`` saying so, in the place of the first one lost (a number
        that will never carry an event; ``mirror`` skips the rest)."""
        self._ring[self._seq % self.size] = Gap(ts=self.clock(), dropped=dropped)
        self._seq += 1
        if self._lot:
            self._lot.unpark_all()

    def add_tap(self, tap: Tap, kinds: Iterable[type[Event]]) -> None:
        """Call ``tap(event)`` for every event of these classes, as it is published."""
        for kind in kinds:
            self._taps.setdefault(kind, []).append(tap)

    def on_detail(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(detail)`` whenever the first subscriber that wants plugin calls
        arrives or the last one leaves."""
        self._watchers.append(callback)

    def subscribe(
        self,
        replay: int = 0,
        *,
        detail: bool = True,
        kinds: frozenset[type[Event]] | None = None,
        at: int | None = None,
    ) -> Subscription:
        """A new subscriber, starting ``replay`` events back (at most ``retain``, at most what
        has been published) from now, or from event number ``at`` (a mirror's subscriber
        whose events started in the mirrored bus a moment ago); ``detail``: it wants plugin
        calls; ``kinds``: the only event classes it receives (None: all; a ``Gap`` always).
        ``replayed`` on the result is how far back it starts. Use it as a context manager:
        leaving it unsubscribes."""
        start = self._seq if at is None else min(at, self._seq)
        back = min(max(replay, 0), self.retain, start)
        subscription = Subscription(self, start - back, detail, kinds)
        subscription.replayed = back
        self.subscribers += 1
        self.active = True
        if detail:
            self.detailed += 1
            self._set_detail()
        return subscription

    def _unsubscribe(self, detail: bool) -> None:
        self.subscribers -= 1
        self.active = self.subscribers > 0
        if detail:
            self.detailed -= 1
            self._set_detail()

    def _set_detail(self) -> None:
        detail = self.detailed > 0
        if detail != self.detail:
            self.detail = detail
            for callback in self._watchers:
                callback(detail)

    def _read(
        self,
        cursor: int,
        limit: int,
        kinds: frozenset[type[Event]] | None = None,
        raw: bool = False,
    ) -> tuple[int, list[tuple[int, RawItem]]]:
        """Events from ``cursor`` on (a Gap first if some were overwritten), ``limit`` ring
        positions at most, only those of ``kinds`` if given; returns the new cursor too.
        ``raw``: a deferred event may come as ``(kind, values)`` rather than built."""
        out: list[tuple[int, RawItem]] = []
        oldest = self._seq - self.size
        if cursor < oldest:
            # Numbers a mirror skipped were never events here: not lost (the last run only).
            start, stop = self._skipped
            lost = oldest - cursor - max(0, min(stop, oldest) - max(start, cursor))
            if lost > 0:
                self.dropped += lost
                out.append((-1, Gap(ts=self.clock(), dropped=lost)))
            cursor = oldest
        end = min(self._seq, cursor + limit)
        ring, size = self._ring, self.size
        for seq in range(cursor, end):
            slot = seq % size
            item = ring[slot]
            if type(item) is tuple:  # deferred: computed now, once, for every reader
                kind = item[0]
                if kinds is not None and kind not in kinds:
                    continue
                if len(item) == 3:
                    item = ring[slot] = (kind, item[1](*item[2]))
                if not raw:
                    item = ring[slot] = _event(kind, item[1])
            elif item is None:  # left out on the way to a mirror
                continue
            elif type(item) is Gap:  # lost on the way to a mirror: every reader is told
                out.append((-1, item))
                continue
            elif kinds is not None and type(item) not in kinds:
                continue
            out.append((seq, item))  # type: ignore[arg-type]  # a Computed or an Event
        return end, out


def _event(kind: type[Event], values: tuple[object, ...]) -> Event:
    fields: dict[str, Any] = dict(zip(kind.FIELDS, values, strict=True))
    return kind(**fields)


def as_event(item: RawItem) -> Event:
    """The event object for an item from ``take_raw`` (built, not stored)."""
    return _event(*item) if type(item) is tuple else item  # type: ignore[return-value]


class Subscription:
    """One subscriber's view of the bus: read with ``receive`` (waits) or ``take`` (does not).

    Each item is ``(seq, event)``; a ``Gap`` has seq -1.
    """

    def __init__(
        self,
        bus: EventBus,
        cursor: int,
        detail: bool = True,
        kinds: frozenset[type[Event]] | None = None,
    ) -> None:
        self.bus = bus
        self.cursor = cursor
        self.detail = detail
        self.kinds = kinds
        self.closed = False
        self.replayed = 0  # events before the start asked for (``subscribe``'s replay)

    def retune(self, *, detail: bool, kinds: frozenset[type[Event]] | None) -> None:
        """Change what this subscriber wants from the next read on (events it skipped are
        not read again)."""
        if detail != self.detail and not self.closed:
            self.bus.detailed += 1 if detail else -1
            self.bus._set_detail()
        self.detail = detail
        self.kinds = kinds

    @property
    def pending(self) -> int:
        """Events published and not read yet (may exceed what the ring still holds)."""
        return self.bus._seq - self.cursor

    def take(self, limit: int = 1024) -> list[tuple[int, Event]]:
        """What is waiting, without waiting (empty if nothing is)."""
        self.cursor, items = self.bus._read(self.cursor, limit, self.kinds)
        return items  # type: ignore[return-value]  # not raw: every item is an Event

    def take_raw(self, limit: int = 1024) -> list[tuple[int, RawItem]]:
        """Like ``take``, but a deferred event may come as ``(kind, values)``: enough to
        encode it (``VALUES_ENCODERS``) without building the object (``as_event`` does)."""
        self.cursor, items = self.bus._read(self.cursor, limit, self.kinds, raw=True)
        return items

    async def receive(self, limit: int = 1024) -> list[tuple[int, Event]]:
        """Waits for something to be published, then reads up to ``limit`` ring positions
        (plus a leading Gap): at least one item unless ``kinds`` filtered them all out.

        Cancellation: safe at any point; nothing is consumed unless returned.
        """
        await self._wait()
        return self.take(limit)

    async def receive_raw(self, limit: int = 1024) -> list[tuple[int, RawItem]]:
        """``receive`` for ``take_raw``."""
        await self._wait()
        return self.take_raw(limit)

    async def _wait(self) -> None:
        bus = self.bus
        if self.cursor < bus._seq:
            await trio.lowlevel.checkpoint()
        while self.cursor >= bus._seq:
            await bus._lot.park()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._unsubscribe(self.detail)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
