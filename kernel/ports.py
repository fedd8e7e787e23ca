"""Ports: the interfaces every backend implements (one contract test suite per port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kernel.events import Event
from kernel.lease import Lease
from kernel.model import DeadLetter, Device, DeviceKind, DeviceStatus, Sample


@dataclass(frozen=True, slots=True)
class LiveEntry:
    """What live state knows of one device: its newest sample and its last status."""

    sample: Sample | None
    status: DeviceStatus | None


@dataclass(frozen=True, slots=True)
class Delivered:
    """One entry of a work stream handed to one consumer: acknowledge it once processed.

    An entry holds up to `ENTRY_EVENTS` events of one topic, in the order they were published.
    `redelivered` is True when it was handed out before (to this consumer before a restart, or
    to a consumer that died and whose entry was taken over): its events may have had effects.
    """

    topic: str
    id: str
    events: tuple[Event, ...]
    redelivered: bool = False


class WorkConsumer(Protocol):
    """One member of a consumer group on work streams: at-least-once, acknowledged after processing."""

    @property
    def name(self) -> str: ...

    async def read(self, count: int = 10, block_s: float = 1.0) -> list[Delivered]:
        """Up to `count` entries, waiting up to `block_s` when there are none.

        First what this consumer was given before and never acknowledged (after a restart
        under the same name), then entries other consumers of the group left unacknowledged
        for longer than the claim idle time (they died), then new entries.
        """
        ...

    async def ack(self, delivered: Sequence[Delivered]) -> None: ...

    async def close(self) -> None:
        """Stop; what was read and not acknowledged stays pending for the group."""
        ...


class LiveSubscription(Protocol):
    """Live fan-out to one subscriber: the latest event per entity.

    A subscriber that reads slowly misses intermediate events of an entity (they are replaced
    by newer ones while waiting, counted in `replaced`), never the latest one, and never slows
    the publisher or other subscribers.
    """

    replaced: int

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def take(self, max_events: int = 1000, timeout_s: float | None = None) -> list[Event]:
        """What is waiting (up to `max_events`), waiting up to `timeout_s` for the first; [] on timeout."""
        ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """Events between areas: work streams for consumers that must see every event, live fan-out
    for displays that need each entity's latest value. Every published event goes to both."""

    async def publish(self, event: Event) -> None: ...

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish a batch (topics may be mixed); each topic keeps the batch's order."""
        ...

    def consumer(
        self, group: str, name: str, topics: Sequence[str], *, claim_idle_s: float | None = None
    ) -> WorkConsumer:
        """A consumer in `group` (created on first use, from the oldest event the streams hold)."""
        ...

    def live(self, topics: Sequence[str], *, snapshot: bool = False) -> LiveSubscription:
        """Latest events per entity from now on (with `snapshot`, first every entity's current one)."""
        ...

    async def latest(self, topic: str) -> dict[str, Event]:
        """The latest event of every entity of a topic, by key."""
        ...

    async def stats(self) -> dict[str, Any]:
        """Per topic: stream length, and per group: pending, lag and what trimming took unread."""
        ...

    def lease(self, name: str, owner: str, ttl_s: float) -> Lease:
        """A lease on a role among the processes sharing this bus (one holder at a time)."""
        ...

    async def members(self, group: str, name: str, ttl_s: float) -> list[str]:
        """Say `name` is alive in `group` (for `ttl_s`), and list the group's live members, sorted:
        processes that share work (the camera probers) each take their part of it by this list."""
        ...

    async def leave(self, group: str, name: str) -> None:
        """Leave the group now (the others take over this one's part at their next look)."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class LiveState(Protocol):
    """Latest value per device. Keeps the newest sample by timestamp, whatever the arrival order."""

    async def apply(self, samples: Sequence[Sample]) -> None: ...

    async def set_status(self, status: DeviceStatus) -> None: ...

    async def get(self, device_id: str) -> LiveEntry: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class TimeSeries(Protocol):
    """History of samples. Writing a sample twice (same device and ts) stores it once."""

    async def write(self, samples: Sequence[Sample]) -> list[tuple[Sample, str]]:
        """Store the samples; return only once they are stored.

        Returns the samples the store refused as malformed, each with why (they will never
        be stored, so the caller keeps them as dead letters). Raises StoreError when the
        store cannot be reached or refuses us (credentials): nothing is stored for sure
        then, and the caller writes the same samples again later.
        """
        ...

    async def read(self, device_id: str, kind: DeviceKind, start_ms: int, end_ms: int, limit: int) -> list[Sample]: ...

    async def latest(self, device_id: str, kind: DeviceKind) -> Sample | None: ...

    def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class DeviceRegistry(Protocol):
    """Registered devices (records). Async: callers on the event loop never block on the database."""

    async def add(self, device: Device) -> None:
        """Register a device; raises DuplicateError if the id is taken."""
        ...

    async def add_many(self, devices: Sequence[Device]) -> None: ...

    async def upsert(self, device: Device) -> None: ...

    async def upsert_many(self, batch: Sequence[Device]) -> None: ...

    async def get(self, device_id: str) -> Device | None: ...

    async def list(self, kind: str | None = None, limit: int = 1000, offset: int = 0) -> list[Device]: ...

    async def kinds(self) -> dict[str, DeviceKind]:
        """Every device id with its kind: what the gateway checks each message against."""
        ...

    async def count(self) -> int: ...

    async def remove(self, device_id: str) -> bool:
        """Unregister a device; False if there was none."""
        ...


class DeadLetterStore(Protocol):
    """Refused messages, with why. Counts by reason are exact and outlive the retention of rows."""

    async def add_many(self, letters: Sequence[DeadLetter]) -> None:
        """Keep the letters and count their refused items by reason, in one transaction."""
        ...

    async def counts(self) -> dict[str, int]: ...

    async def recent(self, limit: int = 100, reason: str | None = None) -> list[DeadLetter]: ...

    async def prune(self, max_rows: int, older_than_ms: int) -> int:
        """Delete letters received before `older_than_ms` and all but the newest `max_rows`; how many went."""
        ...
