"""bench/bus: events per second through each bus beside the raw library, same events, same run.

A producer task publishes N typed readings in batches while a consumer task of one consumer
group reads, decodes and acknowledges them; the figure is N over the time from the first
publish to the last acknowledgement. Rounds alternate raw and ours; the median is printed.

- in-process: `MemoryBus` (publish_many, consumer read, ack; live fan-out kept too) against a
  bare `asyncio.Queue` carrying the same event objects one by one;
- Redis (a throwaway redis-server on a free loopback port): `RedisBus` (one pipeline per batch:
  XADD of 200-event entries with exact MAXLEN, HSET of each entity's latest and PUBLISH for the
  live fan-out; XREADGROUP, decode into typed events, XACK) against two consumers written by hand
  with redis-py, both decoding into the same typed events: one XADD per event (the plain way),
  and orjson batches of 200 events per XADD (the bus's own wire layout, without the live fan-out).

    python -m bench.bus [--n 200000] [--batch 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from kernel.bus import ENTRY_EVENTS, MemoryBus
from kernel.bus_redis import RedisBus
from kernel.events import READING
from kernel.model import Reading
from tests import servers

Run = Callable[[list[Reading], int], Awaitable[float]]


def make_events(n: int) -> list[Reading]:
    base = int(time.time() * 1000) - 86_400_000
    return [Reading(f"gas-{i % 5000:05d}", "gas", base + i, float(i % 100), 90.0, None) for i in range(n)]


async def raw_queue(events: list[Reading], batch: int) -> float:
    queue: asyncio.Queue[Reading] = asyncio.Queue()
    start = time.perf_counter()

    async def produce() -> None:
        for i in range(0, len(events), batch):
            for event in events[i : i + batch]:
                queue.put_nowait(event)
            await asyncio.sleep(0)

    async def consume() -> None:
        for _ in range(len(events)):
            await queue.get()

    await asyncio.gather(produce(), consume())
    return len(events) / (time.perf_counter() - start)


async def memory_bus(events: list[Reading], batch: int) -> float:
    bus = MemoryBus(stream_max_entries=len(events) // ENTRY_EVENTS + 10)
    consumer = bus.consumer("bench", "c1", [READING])
    start = time.perf_counter()

    async def produce() -> None:
        for i in range(0, len(events), batch):
            await bus.publish_many(events[i : i + batch])
            await asyncio.sleep(0)

    async def consume() -> None:
        got = 0
        while got < len(events):
            items = await consumer.read(count=50, block_s=1.0)
            got += sum(len(item.events) for item in items)
            await consumer.ack(items)

    await asyncio.gather(produce(), consume())
    rate = len(events) / (time.perf_counter() - start)
    await bus.close()
    return rate


def redis_runs(url: str) -> dict[str, Run]:
    async def fresh() -> aioredis.Redis:
        client = aioredis.Redis.from_url(url)
        await client.flushall()
        return client

    async def raw_batched(events: list[Reading], batch: int) -> float:
        client = await fresh()
        await client.xgroup_create("raw", "bench", id="0", mkstream=True)
        start = time.perf_counter()

        async def produce() -> None:
            for i in range(0, len(events), batch):
                pipe = client.pipeline(transaction=False)
                chunk = events[i : i + batch]
                for j in range(0, len(chunk), ENTRY_EVENTS):
                    raw = orjson.dumps({"v": 1, "topic": "reading", "events": chunk[j : j + ENTRY_EVENTS]})
                    pipe.xadd("raw", {b"e": raw})
                await pipe.execute()

        async def consume() -> None:
            got = 0
            while got < len(events):
                reply: Any = await client.xreadgroup("bench", "c1", {"raw": ">"}, count=50, block=1000)
                for _key, entries in reply or ():
                    ids = []
                    for entry_id, fields in entries:
                        # Typed, as the bus delivers them.
                        got += len([Reading(**item) for item in orjson.loads(fields[b"e"])["events"]])
                        ids.append(entry_id)
                    await client.xack("raw", "bench", *ids)

        await asyncio.gather(produce(), consume())
        rate = len(events) / (time.perf_counter() - start)
        await client.aclose()
        return rate

    async def raw_per_event(events: list[Reading], batch: int) -> float:
        client = await fresh()
        await client.xgroup_create("raw", "bench", id="0", mkstream=True)
        start = time.perf_counter()

        async def produce() -> None:
            for i in range(0, len(events), batch):
                pipe = client.pipeline(transaction=False)
                for event in events[i : i + batch]:
                    pipe.xadd("raw", {b"e": orjson.dumps(event)})
                await pipe.execute()

        async def consume() -> None:
            got = 0
            while got < len(events):
                reply: Any = await client.xreadgroup("bench", "c1", {"raw": ">"}, count=1000, block=1000)
                for _key, entries in reply or ():
                    for _id, fields in entries:
                        Reading(**orjson.loads(fields[b"e"]))
                    got += len(entries)
                    await client.xack("raw", "bench", *[entry_id for entry_id, _ in entries])

        await asyncio.gather(produce(), consume())
        rate = len(events) / (time.perf_counter() - start)
        await client.aclose()
        return rate

    async def redis_bus(events: list[Reading], batch: int) -> float:
        await (await fresh()).aclose()  # flushed; the bus has its own client
        bus = RedisBus(url, stream_max_entries=len(events) // ENTRY_EVENTS + 10)
        consumer = bus.consumer("bench", "c1", [READING])
        await consumer.read(count=1, block_s=0.01)  # the group exists before the first event
        start = time.perf_counter()

        async def produce() -> None:
            for i in range(0, len(events), batch):
                await bus.publish_many(events[i : i + batch])

        async def consume() -> None:
            got = 0
            while got < len(events):
                items = await consumer.read(count=50, block_s=1.0)
                got += sum(len(item.events) for item in items)
                await consumer.ack(items)

        await asyncio.gather(produce(), consume())
        rate = len(events) / (time.perf_counter() - start)
        await bus.close()
        return rate

    return {"raw_batched": raw_batched, "raw_per_event": raw_per_event, "redis_bus": redis_bus}


async def rounds(runs: dict[str, Run], events: list[Reading], batch: int, n_rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(n_rounds):
        for name, run in runs.items():  # alternating: noise hits each about equally
            out[name].append(await run(events, batch))
    return out


def line(label: str, rates: list[float]) -> str:
    return f"  {label:<34}{statistics.median(rates):>10,.0f} events/s  (min {min(rates):,.0f}, max {max(rates):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="events per publish_many (the gateway's batches)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    events = make_events(args.n)
    print(f"== bench/bus: {args.n:,} readings, batches of {args.batch}, {args.rounds} rounds (median) ==")
    memory = asyncio.run(rounds({"queue": raw_queue, "bus": memory_bus}, events, args.batch, args.rounds))
    print("in-process")
    print(line("bare asyncio.Queue", memory["queue"]))
    print(line("MemoryBus (work stream + live)", memory["bus"]))
    ratio = statistics.median(memory["bus"]) / statistics.median(memory["queue"])
    print(f"  ratio MemoryBus / asyncio.Queue   {ratio:>10.2f}")
    with tempfile.TemporaryDirectory() as work:
        server = servers.redis(Path(work))
        try:
            red = asyncio.run(rounds(redis_runs(server.url), events, args.batch, args.rounds))
        finally:
            server.stop()
    print("Redis 7 (XADD + XREADGROUP + XACK)")
    print(line("redis-py by hand, an entry per event", red["raw_per_event"]))
    print(line("redis-py by hand, 200-event entries", red["raw_batched"]))
    print(line("RedisBus (work stream + live)", red["redis_bus"]))
    bus = statistics.median(red["redis_bus"])
    print(f"  ratio RedisBus / by hand (per event) {bus / statistics.median(red['raw_per_event']):>7.2f}")
    print(f"  ratio RedisBus / by hand (batched)   {bus / statistics.median(red['raw_batched']):>7.2f}")


if __name__ == "__main__":
    main()
