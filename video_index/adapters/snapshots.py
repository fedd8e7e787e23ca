"""Snapshot stores: a folder (embedded default) and Redis (production)."""

from __future__ import annotations

import asyncio
import os
import struct
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kernel.errors import StoreError
from kernel.redis_client import redis_client

# Camera ids are letters, digits and _ . : - (no slash): safe as file names once ':' is swapped.
_HEADER = struct.Struct(">q")  # when the frame was taken, before the JPEG bytes


def _name(camera_id: str) -> str:
    return camera_id.replace(":", "%3A") + ".jpg"


class FileSnapshots:
    def __init__(self, folder: Path) -> None:
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _put(self, camera_id: str, jpeg: bytes, at_ms: int) -> None:
        path = self._folder / _name(camera_id)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(_HEADER.pack(at_ms) + jpeg)
        os.replace(partial, path)  # a reader sees the old frame or the new one, never half of one

    def _get(self, camera_id: str) -> tuple[bytes, int] | None:
        try:
            raw = (self._folder / _name(camera_id)).read_bytes()
        except FileNotFoundError:
            return None
        (at_ms,) = _HEADER.unpack_from(raw)
        return raw[_HEADER.size :], at_ms

    async def put(self, camera_id: str, jpeg: bytes, at_ms: int) -> None:
        try:
            await asyncio.to_thread(self._put, camera_id, jpeg, at_ms)
        except OSError as exc:
            raise StoreError(f"cannot keep snapshot: {exc}") from exc

    async def get(self, camera_id: str) -> tuple[bytes, int] | None:
        return await asyncio.to_thread(self._get, camera_id)

    async def remove(self, camera_id: str) -> None:
        await asyncio.to_thread((self._folder / _name(camera_id)).unlink, True)

    async def close(self) -> None:
        return None


class RedisSnapshots:
    """One key per camera, expiring after `ttl_s` (a snapshot days old says little)."""

    def __init__(self, url: str, prefix: str = "cityops:", ttl_s: int = 7 * 86_400) -> None:
        self._redis: aioredis.Redis = redis_client(url, socket_connect_timeout=5, socket_timeout=10)
        self._prefix = prefix
        self._ttl_s = ttl_s

    def _key(self, camera_id: str) -> str:
        return f"{self._prefix}snapshot:{camera_id}"

    async def put(self, camera_id: str, jpeg: bytes, at_ms: int) -> None:
        try:
            await self._redis.set(self._key(camera_id), _HEADER.pack(at_ms) + jpeg, ex=self._ttl_s)
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot keep snapshot: {exc}") from exc

    async def get(self, camera_id: str) -> tuple[bytes, int] | None:
        try:
            raw = await self._redis.get(self._key(camera_id))
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot read snapshot: {exc}") from exc
        if not isinstance(raw, bytes):
            return None
        (at_ms,) = _HEADER.unpack_from(raw)
        return raw[_HEADER.size :], at_ms

    async def remove(self, camera_id: str) -> None:
        try:
            await self._redis.delete(self._key(camera_id))
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot remove snapshot: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
