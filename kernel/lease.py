"""Leases: one holder at a time of a named role, taken over when the holder stops renewing.

The rules engine holds one: its windows, hysteresis and correlations need every reading of a
device (and of its neighbours) in order, in one place, so one `cityops rules` process evaluates
while the others stand by and take over within the lease's time to live when it dies.

A holder judges whether it still holds the lease by its own monotonic clock, counting from
when it sent the renewal that succeeded and giving up a margin before the server would let it
expire: a holder that cannot renew (Redis gone, the process frozen) stops acting before anyone
else can start.
"""

from __future__ import annotations

import time
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kernel.errors import StoreError

# Renew and release only our own lease: compare the holder, then act, atomically.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease(Protocol):
    """A named role held by one owner at a time."""

    @property
    def owner(self) -> str: ...

    @property
    def ttl_s(self) -> float: ...

    async def acquire(self) -> bool:
        """Take the lease if it is free, or renew it if we hold it; whether we hold it now.
        Raises StoreError when the lease store cannot be reached."""
        ...

    def held(self) -> bool:
        """Whether we may still act: a renewal succeeded within the time to live, less a margin."""
        ...

    async def holder(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        ...

    async def release(self) -> None:
        """Give the lease up now (if we hold it), so that a standby takes over at once."""
        ...


class _Deadline:
    """When our hold runs out by our own clock: the time to live from the renewal's send time,
    less a margin of a fifth of it (clock rate differences, a slow reply)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.until = 0.0

    def renewed(self, sent_at: float) -> None:
        self.until = sent_at + self.ttl_s * 0.8

    def held(self) -> bool:
        return time.monotonic() < self.until


class MemoryLeases:
    """Leases of one process (the embedded default: one process, no Redis)."""

    def __init__(self) -> None:
        self._holders: dict[str, tuple[str, float]] = {}

    def lease(self, name: str, owner: str, ttl_s: float) -> MemoryLease:
        return MemoryLease(self, name, owner, ttl_s)


class MemoryLease:
    def __init__(self, leases: MemoryLeases, name: str, owner: str, ttl_s: float) -> None:
        self._leases = leases
        self._name = name
        self._owner = owner
        self._deadline = _Deadline(ttl_s)

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def ttl_s(self) -> float:
        return self._deadline.ttl_s

    async def acquire(self) -> bool:
        now = time.monotonic()
        current = self._leases._holders.get(self._name)
        if current is not None and current[0] != self._owner and current[1] > now:
            return False
        self._leases._holders[self._name] = (self._owner, now + self.ttl_s)
        self._deadline.renewed(now)
        return True

    def held(self) -> bool:
        return self._deadline.held()

    async def holder(self) -> str | None:
        current = self._leases._holders.get(self._name)
        if current is None or current[1] <= time.monotonic():
            return None
        return current[0]

    async def release(self) -> None:
        current = self._leases._holders.get(self._name)
        if current is not None and current[0] == self._owner:
            del self._leases._holders[self._name]
        self._deadline.until = 0.0


class RedisLease:
    """A lease in Redis: `SET key owner NX PX ttl` to take, compare-and-expire to renew."""

    def __init__(self, client: Redis, key: str, owner: str, ttl_s: float) -> None:
        self._client = client
        self._key = key
        self._owner = owner
        self._deadline = _Deadline(ttl_s)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def ttl_s(self) -> float:
        return self._deadline.ttl_s

    async def acquire(self) -> bool:
        ttl_ms = int(self.ttl_s * 1000)
        sent_at = time.monotonic()
        try:
            if await self._client.set(self._key, self._owner, nx=True, px=ttl_ms):
                ok = True
            else:
                ok = bool(await self._renew(keys=[self._key], args=[self._owner, ttl_ms]))
        except (RedisError, OSError) as exc:
            raise StoreError(f"lease {self._key}: {exc}") from exc
        if ok:
            self._deadline.renewed(sent_at)
        else:
            self._deadline.until = 0.0
        return ok

    def held(self) -> bool:
        return self._deadline.held()

    async def holder(self) -> str | None:
        try:
            raw = await self._client.get(self._key)
        except (RedisError, OSError) as exc:
            raise StoreError(f"lease {self._key}: {exc}") from exc
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def release(self) -> None:
        self._deadline.until = 0.0
        try:
            await self._release(keys=[self._key], args=[self._owner])
        except (RedisError, OSError):
            return  # it expires by itself: a standby waits the time to live
