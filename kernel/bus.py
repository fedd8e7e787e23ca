"""The in-process event bus (embedded default); `RedisBus` is the same contract across processes.

Work streams: each topic is a list of entries (up to `ENTRY_EVENTS` events each) that consumer
groups read with a cursor, holding what they read as pending until acknowledged; an entry left
pending longer than the claim idle time is handed to another consumer of the group.
Entries every group has acknowledged are dropped at once (in one process there is no later
group to keep them for, beyond what a group made later than the stream finds). Stream length is
bounded by `stream_max_entries`: past it the oldest entries are dropped, and a
group that had not read them counts them in `trimmed_unacked` (shown in health). That is the
stated policy: the bus never blocks the gateway because a consumer is down; the bound is sized
for hours of the whole city, and health shows a group falling that far behind.

Live fan-out: each subscriber has a dict keyed by (topic, entity) holding only the latest event
not yet taken, so a slow subscriber skips intermediate values and keeps the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from kernel.events import Event
from kernel.lease import MemoryLease, MemoryLeases
from kernel.ports import Delivered

# Events per work-stream entry: big batches travel as few entries, and a consumer acknowledges
# an entry at a time. Redis uses the same size so that both keep the same bound.
ENTRY_EVENTS: Final = 200
DEFAULT_STREAM_MAX_ENTRIES: Final = 10_000
DEFAULT_CLAIM_IDLE_S: Final = 30.0


def chunks(events: Sequence[Event]) -> Iterable[tuple[str, Sequence[Event]]]:
    """Split a mixed batch into runs of one topic of at most ENTRY_EVENTS, keeping order per topic."""
    by_topic: dict[str, list[Event]] = {}
    for event in events:
        by_topic.setdefault(event.TOPIC, []).append(event)
    for topic, items in by_topic.items():
        for start in range(0, len(items), ENTRY_EVENTS):
            yield topic, items[start : start + ENTRY_EVENTS]


@dataclass(slots=True)
class _Pending:
    consumer: str
    since: float
    deliveries: int = 1


@dataclass(slots=True)
class _Group:
    cursor: int  # the next entry number to hand out
    pending: dict[int, _Pending] = field(default_factory=dict)
    trimmed_unacked: int = 0


@dataclass(slots=True)
class _Stream:
    entries: dict[int, tuple[Event, ...]] = field(default_factory=dict)
    next_number: int = 1
    groups: dict[str, _Group] = field(default_factory=dict)

    @property
    def first_number(self) -> int:
        return next(iter(self.entries), self.next_number)


class LatestMailbox:
    """One subscriber's latest-per-entity mailbox (the live fan-out of both buses)."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], Event] = {}
        self._ready = asyncio.Event()
        self.replaced = 0
        self.closed = False

    def offer(self, event: Event) -> None:
        key = (event.TOPIC, event.key)
        waiting = self._waiting
        if key in waiting:
            self.replaced += 1
            # Keeps its place in line: an entity that changes often cannot starve the others.
        waiting[key] = event
        self._ready.set()

    async def take(self, max_events: int = 1000, timeout_s: float | None = None) -> list[Event]:
        if not self._waiting and not self.closed:
            self._ready.clear()
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation
                # that comes as the wait ends, and a consumer loop then never stops (seen at shutdown).
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return []
        waiting = self._waiting
        keys = list(itertools.islice(waiting, max_events))
        return [waiting.pop(k) for k in keys]

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self.closed or self._waiting:
            for event in await self.take():
                yield event


class MemoryLiveSubscription(LatestMailbox):
    """A live subscription in this process: the bus offers it each event of its topics."""

    def __init__(self, bus: MemoryBus, topics: Sequence[str]) -> None:
        super().__init__()
        self._bus = bus
        self.topics = frozenset(topics)

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._live_subs.discard(self)
            self._ready.set()


class MemoryConsumer:
    """A consumer of an in-process consumer group."""

    def __init__(self, bus: MemoryBus, group: str, name: str, topics: Sequence[str], claim_idle_s: float) -> None:
        self._bus = bus
        self._group = group
        self._name = name
        self._topics = tuple(topics)
        self._claim_idle_s = claim_idle_s
        self._own_history_done = False
        self._last_claim = 0.0
        self.closed = False
        for topic in self._topics:
            stream = bus._stream(topic)
            # A new group starts at the oldest entry the stream still holds.
            stream.groups.setdefault(group, _Group(cursor=stream.first_number))

    @property
    def name(self) -> str:
        return self._name

    def _groups(self) -> Iterable[tuple[str, _Stream, _Group]]:
        for topic in self._topics:
            stream = self._bus._stream(topic)
            yield topic, stream, stream.groups[self._group]

    async def read(self, count: int = 10, block_s: float = 1.0) -> list[Delivered]:
        deadline = time.monotonic() + block_s
        while True:
            out = self._collect(count)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0 or self.closed:
                return out
            waker = self._bus._published
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, max(self._claim_idle_s / 2, 0.01))):
                    await waker.wait()

    def _collect(self, count: int) -> list[Delivered]:
        out: list[Delivered] = []
        now = time.monotonic()
        if not self._own_history_done:
            self._own_history_done = True
            for topic, stream, group in self._groups():
                for number, pending in sorted(group.pending.items()):
                    if pending.consumer == self._name and len(out) < count:
                        pending.since, pending.deliveries = now, pending.deliveries + 1
                        out.append(Delivered(topic, str(number), stream.entries[number], True))
            if out:
                return out
        if now - self._last_claim >= self._claim_idle_s / 2:
            self._last_claim = now
            for topic, stream, group in self._groups():
                for number, pending in sorted(group.pending.items()):
                    if len(out) >= count:
                        break
                    if pending.consumer != self._name and now - pending.since >= self._claim_idle_s:
                        pending.consumer, pending.since, pending.deliveries = self._name, now, pending.deliveries + 1
                        out.append(Delivered(topic, str(number), stream.entries[number], True))
            if out:
                return out
        for topic, stream, group in self._groups():
            while len(out) < count and group.cursor < stream.next_number:
                number = group.cursor
                group.cursor += 1
                group.pending[number] = _Pending(self._name, now)
                out.append(Delivered(topic, str(number), stream.entries[number]))
        return out

    async def ack(self, delivered: Sequence[Delivered]) -> None:
        for item in delivered:
            stream = self._bus._streams.get(item.topic)
            if stream is not None and self._group in stream.groups:
                stream.groups[self._group].pending.pop(int(item.id), None)

    async def close(self) -> None:
        self.closed = True


class MemoryBus:
    """Work streams and live fan-out in one process."""

    def __init__(
        self,
        *,
        stream_max_entries: int = DEFAULT_STREAM_MAX_ENTRIES,
        claim_idle_s: float = DEFAULT_CLAIM_IDLE_S,
    ) -> None:
        self._streams: dict[str, _Stream] = {}
        self._latest: dict[str, dict[str, Event]] = {}
        self._live_subs: set[MemoryLiveSubscription] = set()
        self._max_entries = stream_max_entries
        self._claim_idle_s = claim_idle_s
        self._published = asyncio.Event()
        self._leases = MemoryLeases()
        self._members: dict[str, dict[str, float]] = {}

    def lease(self, name: str, owner: str, ttl_s: float) -> MemoryLease:
        return self._leases.lease(name, owner, ttl_s)

    async def members(self, group: str, name: str, ttl_s: float) -> list[str]:
        now = time.monotonic()
        seen = self._members.setdefault(group, {})
        seen[name] = now + ttl_s
        for other in [m for m, until in seen.items() if until <= now]:
            del seen[other]
        return sorted(seen)

    async def leave(self, group: str, name: str) -> None:
        self._members.get(group, {}).pop(name, None)

    def _stream(self, topic: str) -> _Stream:
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = _Stream()
        return stream

    async def publish(self, event: Event) -> None:
        await self.publish_many((event,))

    async def publish_many(self, events: Sequence[Event]) -> None:
        if not events:
            return
        for topic, run in chunks(events):
            stream = self._stream(topic)
            stream.entries[stream.next_number] = tuple(run)
            stream.next_number += 1
            self._trim(stream)
            latest = self._latest.setdefault(topic, {})
            for event in run:
                latest[event.key] = event
        for sub in self._live_subs:
            topics = sub.topics
            for event in events:
                if event.TOPIC in topics:
                    sub.offer(event)
        # Wake every waiting consumer once, then arm the next wake-up.
        self._published.set()
        self._published = asyncio.Event()

    def _trim(self, stream: _Stream) -> None:
        entries = stream.entries
        if stream.groups:
            # In one process every group exists already: what all of them are done with can go,
            # so memory follows the slowest group's lag, not the bound.
            floor = min(min(group.pending, default=group.cursor) for group in stream.groups.values())
            while entries and next(iter(entries)) < floor:
                del entries[next(iter(entries))]
        while len(entries) > self._max_entries:
            number = next(iter(entries))
            size = len(entries.pop(number))
            for group in stream.groups.values():
                if group.cursor <= number:
                    group.trimmed_unacked += size
                    group.cursor = number + 1
                elif group.pending.pop(number, None) is not None:
                    group.trimmed_unacked += size

    def consumer(
        self, group: str, name: str, topics: Sequence[str], *, claim_idle_s: float | None = None
    ) -> MemoryConsumer:
        return MemoryConsumer(self, group, name, topics, claim_idle_s or self._claim_idle_s)

    def live(self, topics: Sequence[str], *, snapshot: bool = False) -> MemoryLiveSubscription:
        sub = MemoryLiveSubscription(self, topics)
        if snapshot:
            for topic in topics:
                for event in self._latest.get(topic, {}).values():
                    sub.offer(event)
        self._live_subs.add(sub)
        return sub

    async def latest(self, topic: str) -> dict[str, Event]:
        return dict(self._latest.get(topic, {}))

    async def stats(self) -> dict[str, Any]:
        return {
            topic: {
                "entries": len(stream.entries),
                "groups": {
                    name: {
                        "pending": len(group.pending),
                        "lag": stream.next_number - group.cursor,
                        "trimmed_unacked": group.trimmed_unacked,
                        "behind_trim": group.trimmed_unacked > 0,
                    }
                    for name, group in stream.groups.items()
                },
            }
            for topic, stream in self._streams.items()
        }

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        for sub in list(self._live_subs):
            await sub.close()
        self._published.set()
