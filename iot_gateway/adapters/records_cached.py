"""The device registry read from memory, written through to the records.

A control room reads devices far more often than it changes them: every console polls them.
Read from the database, each read cost a thread hop and a query, which held an authenticated
`GET /api/devices/{id}` to ~600 requests/s with a p99 over a second (bench/api). Here reads come
from a copy of the whole registry (a city's is a few MiB), kept current three ways:
- writes through this object go to the records first, then to the copy;
- changes made by other processes arrive as `note_change` (the runtime feeds it the bus's
  `device.changed`, which every writer publishes);
- a full reload every `refresh_s` is the safety net for a bus outage, as in the gateway's cache.
A read that misses asks the records (a device registered elsewhere a moment ago) and keeps what
it finds.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Sequence

from kernel.events import DEVICE_CHANGED, DeviceChanged
from kernel.model import Device, DeviceKind
from kernel.ports import Bus, DeviceRegistry

log = logging.getLogger(__name__)


class CachedDevices:
    """A DeviceRegistry whose reads come from memory; call `load` before use."""

    def __init__(self, inner: DeviceRegistry, refresh_s: float = 30.0) -> None:
        self._inner = inner
        self._refresh_s = refresh_s
        self._by_id: dict[str, Device] = {}
        # Ids in order (the records' order), built again only after a change.
        self._sorted: list[str] | None = None
        self._changes_during_reload: list[DeviceChanged] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = 0

    async def load(self) -> None:
        """Read the whole registry (again), keeping changes that arrive while it is read."""
        self._changes_during_reload = []
        try:
            fresh = {d.id: d for d in await self._inner.list(None, 10**9, 0)}
        finally:
            arrived, self._changes_during_reload = self._changes_during_reload, None
        for change in arrived:
            _apply(fresh, change)
        self._by_id, self._sorted = fresh, None
        self.reloads += 1

    def follow(self, bus: Bus) -> None:
        """Keep current: changes from the bus at once, and the periodic reload."""
        self._tasks = [
            asyncio.create_task(self._follow(bus), name="device-cache-changes"),
            asyncio.create_task(self._refresh(), name="device-cache-refresh"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _follow(self, bus: Bus) -> None:
        sub = bus.live([DEVICE_CHANGED])
        try:
            async for event in sub:
                if isinstance(event, DeviceChanged):
                    self.note_change(event)
        finally:
            await sub.close()

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s * random.uniform(0.9, 1.1))
            try:
                await self.load()
            except Exception:
                log.exception("cannot reload the device registry; keeping the cached one")

    def note_change(self, change: DeviceChanged) -> None:
        """A device was registered, changed or removed (by any process)."""
        if self._changes_during_reload is not None:
            self._changes_during_reload.append(change)
        _apply(self._by_id, change)
        self._sorted = None

    # --- DeviceRegistry --------------------------------------------------------------------

    async def add(self, device: Device) -> None:
        await self._inner.add(device)
        self.note_change(DeviceChanged(device.id, "registered", 0, device))

    async def add_many(self, devices: Sequence[Device]) -> None:
        await self._inner.add_many(devices)
        for device in devices:
            self.note_change(DeviceChanged(device.id, "registered", 0, device))

    async def upsert(self, device: Device) -> None:
        await self._inner.upsert(device)
        self.note_change(DeviceChanged(device.id, "changed", 0, device))

    async def upsert_many(self, batch: Sequence[Device]) -> None:
        await self._inner.upsert_many(batch)
        for device in batch:
            self.note_change(DeviceChanged(device.id, "changed", 0, device))

    async def get(self, device_id: str) -> Device | None:
        device = self._by_id.get(device_id)
        if device is None:
            device = await self._inner.get(device_id)
            if device is not None:
                self.note_change(DeviceChanged(device.id, "registered", 0, device))
        return device

    async def list(self, kind: str | None = None, limit: int = 1000, offset: int = 0) -> builtins.list[Device]:
        if self._sorted is None:
            self._sorted = sorted(self._by_id)
        by_id = self._by_id
        found = (by_id[i] for i in self._sorted)
        if kind is not None:
            found = (d for d in found if d.kind == kind)
        out = []
        for index, device in enumerate(found):
            if index >= offset + limit:
                break
            if index >= offset:
                out.append(device)
        return out

    async def kinds(self) -> dict[str, DeviceKind]:
        return {device_id: device.kind for device_id, device in self._by_id.items()}

    async def count(self) -> int:
        return len(self._by_id)

    async def remove(self, device_id: str) -> bool:
        gone = await self._inner.remove(device_id)
        self.note_change(DeviceChanged(device_id, "removed", 0))
        return gone


def _apply(by_id: dict[str, Device], change: DeviceChanged) -> None:
    if change.change == "removed" or change.device is None:
        by_id.pop(change.device_id, None)
    else:
        by_id[change.device_id] = change.device
