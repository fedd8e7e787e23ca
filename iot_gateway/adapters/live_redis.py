"""Live state in Redis: one hash per device, written in pipelines, newest timestamp wins."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from kernel.errors import StoreError
from kernel.model import DeviceStatus, Sample, sample_from_dict, sample_to_dict
from kernel.ports import LiveEntry

# Compare-and-set in one round trip, so two gateway processes cannot put an older sample back.
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], ARGV[3])
local new = tonumber(ARGV[1])
if (not cur) or tonumber(cur) < new or (ARGV[5] == '1' and tonumber(cur) == new) then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[1], ARGV[4], ARGV[2])
  return 1
end
return 0
"""


class RedisLive:
    """Live state kept in Redis under `{prefix}{device_id}`."""

    def __init__(self, url: str, prefix: str = "cityops:live:") -> None:
        self._redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._script: Any = self._redis.register_script(_SET_IF_NEWER)

    async def apply(self, samples: Sequence[Sample]) -> None:
        # One entry per device is enough: only the newest of the batch can win.
        newest: dict[str, Sample] = {}
        for sample in samples:
            held = newest.get(sample.device_id)
            if held is None or held.ts_ms < sample.ts_ms:
                newest[sample.device_id] = sample
        if not newest:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for device_id, sample in newest.items():
                    await self._script(
                        keys=[self._prefix + device_id],
                        args=[sample.ts_ms, json.dumps(sample_to_dict(sample)), "ts", "sample", "0"],
                        client=pipe,
                    )
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"redis live state write failed: {exc}") from exc

    async def set_status(self, status: DeviceStatus) -> None:
        try:
            await self._script(
                keys=[self._prefix + status.device_id],
                # A later message with the same millisecond wins, as the broker delivered it last.
                args=[status.at_ms, status.status, "status_at", "status", "1"],
            )
        except RedisError as exc:
            raise StoreError(f"redis live state write failed: {exc}") from exc

    async def get(self, device_id: str) -> LiveEntry:
        try:
            raw = cast(dict[str, str], await self._redis.hgetall(self._prefix + device_id))
        except RedisError as exc:
            raise StoreError(f"redis live state read failed: {exc}") from exc
        sample = sample_from_dict(json.loads(raw["sample"])) if "sample" in raw else None
        status = None
        if "status" in raw:
            status = DeviceStatus(device_id, raw["status"], int(raw["status_at"]))  # type: ignore[arg-type]
        return LiveEntry(sample, status)

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise StoreError(f"redis unreachable: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
