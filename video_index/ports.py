"""Ports of the video index (one contract suite each, tests/contract/)."""

from __future__ import annotations

from typing import Protocol


class SnapshotStore(Protocol):
    """Each camera's last good frame as a JPEG, with when it was taken.

    Written by the watch (a `cityops prober` process), read by the API (another process): on
    the embedded default a folder, in production Redis."""

    async def put(self, camera_id: str, jpeg: bytes, at_ms: int) -> None: ...

    async def get(self, camera_id: str) -> tuple[bytes, int] | None: ...

    async def remove(self, camera_id: str) -> None: ...

    async def close(self) -> None: ...
