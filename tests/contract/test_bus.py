"""The Bus contract (MemoryBus is the implementation so far)."""

from __future__ import annotations

import asyncio

from kernel.bus import MemoryBus


async def _take(sub: object, n: int) -> list[object]:
    out: list[object] = []
    async for event in sub:  # type: ignore[attr-defined]
        out.append(event)
        if len(out) == n:
            break
    return out


async def test_every_subscriber_of_a_topic_gets_every_event_in_order() -> None:
    bus = MemoryBus()
    a, b, other = bus.subscribe("reading"), bus.subscribe("reading"), bus.subscribe("incident")
    for i in range(5):
        await bus.publish("reading", i)
    assert await asyncio.wait_for(_take(a, 5), 2) == [0, 1, 2, 3, 4]
    assert await asyncio.wait_for(_take(b, 5), 2) == [0, 1, 2, 3, 4]
    assert other.queue.empty()
    await bus.close()


async def test_a_slow_subscriber_loses_its_oldest_and_slows_no_one() -> None:
    bus = MemoryBus(queue_size=3)
    slow, fast = bus.subscribe("reading"), bus.subscribe("reading")
    got: list[object] = []

    async def drain() -> None:
        async for event in fast:
            got.append(event)

    task = asyncio.create_task(drain())
    for i in range(10):
        await bus.publish("reading", i)
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert got == list(range(10))
    assert await asyncio.wait_for(_take(slow, 3), 2) == [7, 8, 9]
    assert slow.dropped == 7
    await bus.close()
    await asyncio.wait_for(task, 2)


async def test_closed_subscription_ends_its_iteration() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("x")
    task = asyncio.create_task(_take(sub, 1))
    await asyncio.sleep(0)
    await sub.close()
    assert await asyncio.wait_for(task, 2) == []
    await bus.publish("x", 1)  # nobody is left; nothing breaks
