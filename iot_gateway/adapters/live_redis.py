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
from kernel.redis_client import redis_client

# Compare-and-set in one round trip, so two gateway processes cannot put an older sample back.
# ARGV: time field, value field, tie wins ('1' or '0'), then a (time, value) pair per key.
_SET_IF_NEWER = """
local time_field, value_field, tie = ARGV[1], ARGV[2], ARGV[3] == '1'
local written = 0
for i, key in ipairs(KEYS) do
  local new = tonumber(ARGV[2 + 2 * i])
  local cur = redis.call('HGET', key, time_field)
  if (not cur) or tonumber(cur) < new or (tie and tonumber(cur) == new) then
    redis.call('HSET', key, time_field, ARGV[2 + 2 * i], value_field, ARGV[3 + 2 * i])
    written = written + 1
  end
end
return written
"""
# Keys per script call: large enough that a batch costs a few round trips, small enough that
# one call never holds Redis for long.
_CHUNK = 1000


class RedisLive:
    """Live state kept in Redis under `{prefix}{device_id}`."""

    def __init__(self, url: str, prefix: str = "cityops:live:") -> None:
        self._redis: aioredis.Redis = redis_client(url, decode_responses=True)
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
        items = list(newest.items())
        try:
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                args: list[str | int] = ["ts", "sample", "0"]
                for _device_id, sample in chunk:
                    args.append(sample.ts_ms)
                    args.append(json.dumps(sample_to_dict(sample)))
                await self._script(keys=[self._prefix + device_id for device_id, _ in chunk], args=args)
        except RedisError as exc:
            raise StoreError(f"redis live state write failed: {exc}") from exc

    async def set_status(self, status: DeviceStatus) -> None:
        try:
            await self._script(
                keys=[self._prefix + status.device_id],
                # A later message with the same millisecond wins, as the broker delivered it last.
                args=["status_at", "status", "1", status.at_ms, status.status],
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
