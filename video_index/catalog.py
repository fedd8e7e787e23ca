"""The camera catalog service: records, the spatial index, and camera events on the bus.

Every process that answers camera questions (the API, the rules that attach cameras to
incidents, the prober) keeps its own index, loaded from the records at start and kept current
from the bus: `camera.changed` when a camera is added, moved or removed (by any process), and
`camera.status` when the watch judges it anew. So a camera added through one API process is
found by the others, and the prober starts watching it, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kernel.clock import Clock
from kernel.events import CAMERA_CHANGED, CAMERA_STATUS, CameraChanged, CameraStatusChanged
from kernel.ports import Bus, LiveSubscription

from .adapters.cameras_sql import SqlCameras
from .domain.cameras import Camera, ImportResult, Rejected
from .domain.spatial import CameraIndex

log = logging.getLogger(__name__)

IMPORT_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Imported:
    imported: int
    added: int
    updated: int
    rejected: list[Rejected]


class CameraCatalog:
    def __init__(self, store: SqlCameras, bus: Bus, clock: Clock) -> None:
        self.store = store
        self._bus = bus
        self._clock = clock
        self.index = CameraIndex()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[CameraChanged], None]] = []

    async def start(self) -> None:
        """Load the index, then follow the bus. Subscribed before loading, so nothing between
        the two is missed (an event for a camera already loaded is applied twice, harmlessly)."""
        subscription = self._bus.live([CAMERA_CHANGED, CAMERA_STATUS])
        loaded = await self.store.all()
        self.index.put_many((c.id, c.lat, c.lon, c.status) for c in loaded)
        self._task = asyncio.create_task(self._follow(subscription), name="camera-index")
        log.info("camera catalog: %d cameras in the index", len(self.index))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            _done, stuck = await asyncio.wait([self._task], timeout=10)
            if stuck:
                log.error("camera index: its bus subscription did not stop")
            self._task = None

    def on_change(self, listener: Callable[[CameraChanged], None]) -> None:
        """Be told of every catalog change (the prober's schedule follows it)."""
        self._listeners.append(listener)

    async def _follow(self, sub: LiveSubscription) -> None:
        try:
            async for event in sub:
                if isinstance(event, CameraChanged):
                    self._apply(event)
                elif isinstance(event, CameraStatusChanged):
                    self.index.set_status(event.camera_id, event.status)
        finally:
            await sub.close()

    def _apply(self, event: CameraChanged) -> None:
        if event.change == "removed":
            self.index.remove(event.camera_id)
        elif event.lat is not None and event.lon is not None:
            self.index.put(event.camera_id, event.lat, event.lon, event.status)
        for listener in self._listeners:
            listener(event)

    async def _announce(self, added: Sequence[Camera], updated: Sequence[Camera]) -> None:
        now = self._clock.now_ms()
        events = [
            *(CameraChanged(c.id, "added", now, c.lat, c.lon, c.status, c.department) for c in added),
            *(CameraChanged(c.id, "changed", now, c.lat, c.lon, c.status, c.department) for c in updated),
        ]
        for event in events:
            self._apply(event)  # this process's index at once, before the answer goes out
        for start in range(0, len(events), 1000):
            await self._bus.publish_many(events[start : start + 1000])

    async def save(self, camera: Camera) -> tuple[Camera, bool]:
        """Add or change one camera; (it as stored, whether it is new)."""
        added, updated = await self.store.upsert_many([camera], self._clock.now_ms())
        await self._announce(added, updated)
        return (added or updated)[0], bool(added)

    async def import_cameras(self, parsed: ImportResult, progress: Callable[[int], None] | None = None) -> Imported:
        """Store the good lines of an import in chunks (progress told after each); bad lines are
        already in `parsed.rejected` with their line and reason."""
        added = updated = 0
        for start in range(0, len(parsed.cameras), IMPORT_CHUNK):
            chunk = parsed.cameras[start : start + IMPORT_CHUNK]
            new, known = await self.store.upsert_many(chunk, self._clock.now_ms())
            await self._announce(new, known)
            added += len(new)
            updated += len(known)
            if progress is not None:
                progress(len(chunk))
        return Imported(added + updated, added, updated, parsed.rejected)

    async def remove(self, camera_id: str) -> bool:
        if not await self.store.remove(camera_id):
            return False
        event = CameraChanged(camera_id, "removed", self._clock.now_ms())
        self._apply(event)
        await self._bus.publish(event)
        return True

    def nearest(
        self, lat: float, lon: float, k: int, *, statuses: Sequence[str] | None = None, max_m: float | None = None
    ) -> list[tuple[str, float]]:
        return self.index.nearest(lat, lon, k, statuses=statuses, max_m=max_m)
