"""Ports: the interfaces every backend implements (one contract test suite per port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kernel.model import DeadLetter, Device, DeviceKind, DeviceStatus, Sample


@dataclass(frozen=True, slots=True)
class LiveEntry:
    """What live state knows of one device: its newest sample and its last status."""

    sample: Sample | None
    status: DeviceStatus | None


class Subscription(Protocol):
    """An async stream of events from one bus topic."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """Fan-out of events between areas (in-process, or Redis in production)."""

    async def publish(self, topic: str, event: Any) -> None: ...

    def subscribe(self, topic: str) -> Subscription: ...

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
    """Registered devices (records)."""

    def add(self, device: Device) -> None:
        """Register a device; raises DuplicateError if the id is taken."""
        ...

    def add_many(self, devices: Sequence[Device]) -> None: ...

    def upsert(self, device: Device) -> None: ...

    def upsert_many(self, batch: Sequence[Device]) -> None: ...

    def get(self, device_id: str) -> Device | None: ...

    def list(self, kind: str | None = None, limit: int = 1000, offset: int = 0) -> list[Device]: ...

    def kinds(self) -> dict[str, DeviceKind]:
        """Every device id with its kind: what the gateway checks each message against."""
        ...

    def count(self) -> int: ...


class DeadLetterStore(Protocol):
    """Refused messages, with why. Counts by reason are exact and outlive the retention of rows."""

    def add_many(self, letters: Sequence[DeadLetter]) -> None:
        """Keep the letters and count their refused items by reason, in one transaction."""
        ...

    def counts(self) -> dict[str, int]: ...

    def recent(self, limit: int = 100, reason: str | None = None) -> list[DeadLetter]: ...

    def prune(self, max_rows: int, older_than_ms: int) -> int:
        """Delete letters received before `older_than_ms` and all but the newest `max_rows`; how many went."""
        ...
