"""The wall hub's coalescing on its own (the in-process bus, no server)."""

from __future__ import annotations

import asyncio
import time

import orjson

from command_center.wall import WallClient, WallHub
from kernel.bus import MemoryBus
from kernel.model import Reading


def level(value: float, n: int) -> Reading:
    return Reading(device_id="res-1", kind="water_level", ts_ms=1_700_000_000_000 + n, value=value)


async def latest_value(client: WallClient) -> float:
    items = await client.take(timeout_s=0.1)
    values = [orjson.loads(item.text)["data"]["value"] for item in items]
    assert len(values) == 1, values
    return float(values[0])


async def test_a_held_value_never_overwrites_a_newer_one_sent_straight_away() -> None:
    # The race CI found: a value is held for its entity's turn; the turn comes while the release
    # loop sleeps, a newer value arrives and goes out at once; the release loop must not then
    # send the older held value after it.
    hub = WallHub(MemoryBus(), per_entity_hz=20)  # a turn every 50 ms
    await hub.start()
    try:
        client = hub.connect()
        hub.offer(level(1.0, 1))  # sent
        hub.offer(level(2.0, 2))  # held for the turn
        time.sleep(0.06)  # noqa: ASYNC251 - the turn passes without the loop running, as on a busy loop
        hub.offer(level(3.0, 3))  # newer, and its turn has come: sent straight away
        await asyncio.sleep(0.1)  # the release loop runs
        assert await latest_value(client) == 3.0
    finally:
        await hub.stop()


async def test_a_held_value_goes_out_on_its_turn() -> None:
    hub = WallHub(MemoryBus(), per_entity_hz=20)
    await hub.start()
    try:
        client = hub.connect()
        hub.offer(level(1.0, 1))
        hub.offer(level(2.0, 2))
        hub.offer(level(2.5, 3))
        await asyncio.sleep(0.12)
        assert await latest_value(client) == 2.5
        assert hub.counts["delivered"] == 2, "the first straight away, the newest held one on its turn"
    finally:
        await hub.stop()
