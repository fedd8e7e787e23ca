"""The in-process event bus (embedded default).

Each subscriber has its own bounded queue; a subscriber that falls behind loses its oldest
events (counted) instead of slowing the publisher or the other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)


_CLOSED = object()


class MemorySubscription:
    """One subscriber's queue."""

    def __init__(self, bus: MemoryBus, topic: str, maxsize: int) -> None:
        self._bus = bus
        self.topic = topic
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self.closed = False

    def offer(self, event: Any) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            event = await self.queue.get()
            if event is _CLOSED:
                return
            yield event

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._bus._unsubscribe(self)
        # The sentinel ends a waiting iteration; it may push out one event nobody will read.
        self.offer(_CLOSED)


class MemoryBus:
    """In-process fan-out by topic."""

    def __init__(self, queue_size: int = 10_000) -> None:
        self._subs: dict[str, list[MemorySubscription]] = {}
        self._queue_size = queue_size

    async def publish(self, topic: str, event: Any) -> None:
        for sub in self._subs.get(topic, ()):
            sub.offer(event)

    def subscribe(self, topic: str) -> MemorySubscription:
        sub = MemorySubscription(self, topic, self._queue_size)
        self._subs.setdefault(topic, []).append(sub)
        return sub

    def _unsubscribe(self, sub: MemorySubscription) -> None:
        subs = self._subs.get(sub.topic, [])
        if sub in subs:
            subs.remove(sub)

    async def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.close()
