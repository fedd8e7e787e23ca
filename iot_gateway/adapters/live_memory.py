"""Live state in memory (embedded default)."""

from __future__ import annotations

from collections.abc import Sequence

from kernel.model import DeviceStatus, Sample
from kernel.ports import LiveEntry


class MemoryLive:
    """Newest sample and last status per device, in dicts."""

    def __init__(self) -> None:
        self._samples: dict[str, Sample] = {}
        self._status: dict[str, DeviceStatus] = {}

    async def apply(self, samples: Sequence[Sample]) -> None:
        for sample in samples:
            current = self._samples.get(sample.device_id)
            if current is None or current.ts_ms < sample.ts_ms:
                self._samples[sample.device_id] = sample

    async def set_status(self, status: DeviceStatus) -> None:
        current = self._status.get(status.device_id)
        if current is None or current.at_ms <= status.at_ms:
            self._status[status.device_id] = status

    async def get(self, device_id: str) -> LiveEntry:
        return LiveEntry(self._samples.get(device_id), self._status.get(device_id))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
