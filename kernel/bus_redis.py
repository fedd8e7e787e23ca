"""The event bus over Redis, for processes split across machines (same contract as MemoryBus).

Per topic:
- work stream `{prefix}stream:{topic}`: one entry per run of up to ENTRY_EVENTS events (field
  `e`: the encoded batch), read by consumer groups with XREADGROUP, acknowledged with XACK,
  taken over from dead consumers with XAUTOCLAIM. XADD trims to `stream_max_entries` exactly
  (the policy of kernel/bus.py); a group whose unread entries were trimmed shows
  `behind_trim` in stats (more entries were trimmed than the group has read).
- live fan-out: the encoded batch is PUBLISHed on `{prefix}live:{topic}`, and each entity's
  latest event is kept in the hash `{prefix}latest:{topic}`. A subscriber's own task drains
  the channel into its latest-per-entity mailbox, so a slow reader never makes Redis hold a
  backlog for it; when the connection drops (the channel lost messages), the subscriber reads
  the hash again, so it may miss intermediate values but never an entity's latest one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from kernel.bus import DEFAULT_CLAIM_IDLE_S, DEFAULT_STREAM_MAX_ENTRIES, LatestMailbox, chunks
from kernel.errors import StoreError
from kernel.events import SCHEMA_VERSION, TOPICS, Event, EventDecodeError, decode, decode_one, encode_each, join
from kernel.lease import RedisLease
from kernel.ports import Delivered
from kernel.redis_client import redis_client

log = logging.getLogger(__name__)

_FIELD = b"e"
# A blocking read never waits longer than this, so that a dead connection is noticed.
_MAX_BLOCK_S = 10.0


class RedisLiveSubscription(LatestMailbox):
    """Latest-per-entity mailbox fed from Redis pub/sub, with a re-read of the latest hash on reconnect."""

    def __init__(self, bus: RedisBus, topics: Sequence[str], snapshot: bool) -> None:
        super().__init__()
        self._bus = bus
        self._topics = tuple(topics)
        self._channels = [bus.channel(t) for t in self._topics]
        self._resync_first = snapshot
        self.resyncs = 0
        self.subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._pump(), name="bus-live")

    def _offer_raw(self, raw: bytes) -> None:
        try:
            _topic, events = decode(raw)
        except EventDecodeError as exc:
            self._bus.undecodable += 1
            log.warning("live fan-out: skipped a message that is not an event batch (%s)", exc)
            return
        for event in events:
            self.offer(event)

    async def _resync(self) -> None:
        for topic in self._topics:
            for event in (await self._bus.latest(topic)).values():
                self.offer(event)
        self.resyncs += 1

    async def _pump(self) -> None:
        attempt = 0
        resync = self._resync_first
        while not self.closed:
            pubsub = self._bus.redis.pubsub()
            try:
                await pubsub.subscribe(*self._channels)
                if resync:
                    await self._resync()
                # Any connection lost from here on may have lost messages: read the hash again.
                resync = True
                confirmations = 0
                self.subscribed.set()
                attempt = 0
                while not self.closed:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "message":
                        self._offer_raw(message["data"])
                    elif message["type"] == "subscribe":
                        confirmations += 1
                        if confirmations > len(self._channels):
                            # redis-py reconnected and subscribed again by itself: we were away.
                            await self._resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the pump never dies: it backs off and resubscribes
                delay = min(0.1 * 2**attempt, 5.0) * random.uniform(0.8, 1.2)
                attempt += 1
                log.warning("live fan-out lost Redis (%s); again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._ready.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._bus._subs.discard(self)


class RedisConsumer:
    """One consumer of a Redis Streams consumer group."""

    def __init__(self, bus: RedisBus, group: str, name: str, topics: Sequence[str], claim_idle_s: float) -> None:
        self._bus = bus
        self._group = group
        self._name = name
        self._topics = tuple(topics)
        self._keys = {bus.stream(t): t for t in self._topics}
        self._claim_idle_ms = max(1, int(claim_idle_s * 1000))
        self._groups_made = False
        # Own pending entries to re-read after a restart: the id to continue from, per stream.
        self._history: dict[str, str] = {key: "0" for key in self._keys}
        self._claim_from: dict[str, str] = {key: "0-0" for key in self._keys}
        self._last_claim = 0.0
        self.lost = 0
        self.closed = False

    @property
    def name(self) -> str:
        return self._name

    async def _make_groups(self) -> None:
        for key in self._keys:
            try:
                await self._bus.redis.xgroup_create(key, self._group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_made = True

    async def read(self, count: int = 10, block_s: float = 1.0) -> list[Delivered]:
        try:
            if not self._groups_made:
                await self._make_groups()
            return await self._read(count, block_s)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without persistence): start over
                self._groups_made = False
                log.warning("consumer group %s was gone from Redis; making it again", self._group)
                return []
            raise StoreError(f"Redis bus: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc

    async def _read(self, count: int, block_s: float) -> list[Delivered]:
        redis = self._bus.redis
        out: list[Delivered] = []
        if self._history:
            streams: dict[bytes | str | memoryview, int | bytes | str | memoryview] = dict(self._history.items())
            reply = await redis.xreadgroup(self._group, self._name, streams, count=count)
            for key, entries in self._by_stream(reply):
                if len(entries) < count:
                    self._history.pop(key, None)
                elif entries:
                    self._history[key] = entries[-1][0].decode()
                out.extend(await self._delivered(key, entries, redelivered=True))
            if not reply:
                self._history.clear()
            if out:
                return out
        now = time.monotonic()
        if now - self._last_claim >= self._claim_idle_ms / 2000:
            self._last_claim = now
            for key in self._keys:
                next_id, entries, deleted = await redis.xautoclaim(
                    key, self._group, self._name, self._claim_idle_ms, start_id=self._claim_from[key], count=count
                )
                self._claim_from[key] = next_id.decode() if isinstance(next_id, bytes) else str(next_id)
                if deleted:
                    self.lost += len(deleted)
                    log.warning(
                        "%d entries of %s were trimmed before group %s processed them", len(deleted), key, self._group
                    )
                out.extend(await self._delivered(key, entries, redelivered=True))
            if out:
                return out
        block_ms = max(1, int(min(block_s, _MAX_BLOCK_S) * 1000))
        reply = await redis.xreadgroup(
            self._group, self._name, {key: ">" for key in self._keys}, count=count, block=block_ms
        )
        for key, entries in self._by_stream(reply):
            out.extend(await self._delivered(key, entries, redelivered=False))
        return out

    @staticmethod
    def _by_stream(reply: Any) -> list[tuple[str, list[tuple[bytes, dict[bytes, bytes] | None]]]]:
        # RESP2 shape: [[stream, [(id, fields), ...]], ...]
        return [(key.decode() if isinstance(key, bytes) else key, entries) for key, entries in reply or ()]

    async def _delivered(
        self, key: str, entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]], *, redelivered: bool
    ) -> list[Delivered]:
        topic = self._keys[key]
        out: list[Delivered] = []
        dead: list[bytes] = []
        for entry_id, fields in entries:
            raw = fields.get(_FIELD) if fields else None
            if raw is None:  # trimmed while pending: nothing left to hand over
                self.lost += 1
                dead.append(entry_id)
                continue
            try:
                _topic, events = decode(raw)
            except EventDecodeError as exc:
                # Never hand it out again and again: log it, count it, acknowledge it.
                self._bus.undecodable += 1
                log.error("skipping entry %s of %s, not an event batch: %s", entry_id, key, exc)
                dead.append(entry_id)
                continue
            out.append(Delivered(topic, entry_id.decode(), tuple(events), redelivered))
        if dead:
            await self._bus.redis.xack(key, self._group, *dead)
        return out

    async def ack(self, delivered: Sequence[Delivered]) -> None:
        if not delivered:
            return
        by_key: dict[str, list[str]] = {}
        for item in delivered:
            by_key.setdefault(self._bus.stream(item.topic), []).append(item.id)
        try:
            pipe = self._bus.redis.pipeline(transaction=False)
            for key, ids in by_key.items():
                pipe.xack(key, self._group, *ids)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc

    async def close(self) -> None:
        self.closed = True


class RedisBus:
    """Work streams and live fan-out on Redis."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "cityops:",
        stream_max_entries: int = DEFAULT_STREAM_MAX_ENTRIES,
        claim_idle_s: float = DEFAULT_CLAIM_IDLE_S,
    ) -> None:
        # Blocking reads hold a connection for up to _MAX_BLOCK_S; the timeout must be longer.
        self.redis: aioredis.Redis = redis_client(
            url, socket_connect_timeout=5, socket_timeout=_MAX_BLOCK_S + 20, health_check_interval=30
        )
        self._prefix = prefix
        self._max_entries = stream_max_entries
        self._claim_idle_s = claim_idle_s
        self._subs: set[RedisLiveSubscription] = set()
        self.undecodable = 0

    def stream(self, topic: str) -> str:
        return f"{self._prefix}bus:stream:{topic}"

    def lease(self, name: str, owner: str, ttl_s: float) -> RedisLease:
        return RedisLease(self.redis, f"{self._prefix}lease:{name}", owner, ttl_s)

    async def members(self, group: str, name: str, ttl_s: float) -> list[str]:
        # A sorted set of members scored by when each last said it was alive, by Redis's clock
        # (one clock for everyone): the ones silent past the time to live are dropped.
        key = f"{self._prefix}members:{group}"
        try:
            seconds, micros = await self.redis.time()
            now = seconds + micros / 1e6
            pipe = self.redis.pipeline(transaction=True)
            pipe.zadd(key, {name: now})
            pipe.zremrangebyscore(key, "-inf", now - ttl_s)
            pipe.zrange(key, 0, -1)
            pipe.expire(key, max(1, int(ttl_s * 10)))
            _added, _dropped, names, _ttl = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc
        return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names)

    async def leave(self, group: str, name: str) -> None:
        try:
            await self.redis.zrem(f"{self._prefix}members:{group}", name)
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc

    def channel(self, topic: str) -> str:
        return f"{self._prefix}bus:live:{topic}"

    def latest_key(self, topic: str) -> str:
        # The schema version is in the name: values are bare events, and a new version starts afresh.
        return f"{self._prefix}bus:latest:v{SCHEMA_VERSION}:{topic}"

    async def publish(self, event: Event) -> None:
        await self.publish_many((event,))

    async def publish_many(self, events: Sequence[Event]) -> None:
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for topic, run in chunks(events):
            # Each event is encoded once: the batch is joined from the same bytes the hash keeps.
            encoded = encode_each(run)
            raw = join(topic, encoded)
            pipe.xadd(self.stream(topic), {_FIELD: raw}, maxlen=self._max_entries, approximate=False)
            latest = {event.key: value for event, value in zip(run, encoded, strict=True)}
            pipe.hset(self.latest_key(topic), mapping=latest)  # type: ignore[arg-type]
            pipe.publish(self.channel(topic), raw)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc

    def consumer(
        self, group: str, name: str, topics: Sequence[str], *, claim_idle_s: float | None = None
    ) -> RedisConsumer:
        return RedisConsumer(self, group, name, topics, claim_idle_s or self._claim_idle_s)

    def live(self, topics: Sequence[str], *, snapshot: bool = False) -> RedisLiveSubscription:
        sub = RedisLiveSubscription(self, topics, snapshot)
        self._subs.add(sub)
        return sub

    async def latest(self, topic: str) -> dict[str, Event]:
        try:
            raw = await self.redis.hgetall(self.latest_key(topic))
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc
        out: dict[str, Event] = {}
        for key, value in raw.items():
            try:
                event = decode_one(topic, value)
            except EventDecodeError as exc:
                self.undecodable += 1
                log.warning("latest %s of %s is not an event (%s)", key, topic, exc)
                continue
            out[key.decode() if isinstance(key, bytes) else key] = event
        return out

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            for topic in TOPICS:
                key = self.stream(topic)
                if not await self.redis.exists(key):
                    continue
                info = await self.redis.xinfo_stream(key)
                # We never XDEL, so what was added and is no longer there was trimmed; a group
                # that had read fewer entries than that lost some unread.
                trimmed = int(info["entries-added"]) - int(info["length"])
                groups = {}
                for group in await self.redis.xinfo_groups(key):
                    name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
                    groups[name] = {
                        "pending": group["pending"],
                        "lag": group.get("lag"),
                        "behind_trim": trimmed > int(group.get("entries-read") or 0),
                    }
                out[topic] = {"entries": info["length"], "groups": groups}
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc
        return out

    async def ping(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis bus: {exc}") from exc

    async def close(self) -> None:
        for sub in list(self._subs):
            await sub.close()
        await self.redis.aclose()
