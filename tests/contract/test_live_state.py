"""One contract for every LiveState: MemoryLive (embedded) and RedisLive (production)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from iot_gateway.adapters.live_memory import MemoryLive
from iot_gateway.adapters.live_redis import RedisLive
from kernel.model import DeviceStatus, Position, Reading
from kernel.ports import LiveState


@pytest.fixture(params=["memory", "redis"])
async def live(request: pytest.FixtureRequest) -> AsyncIterator[LiveState]:
    store: LiveState = MemoryLive() if request.param == "memory" else RedisLive(request.getfixturevalue("redis_url"))
    yield store
    await store.close()


async def test_unknown_device_has_nothing(live: LiveState) -> None:
    entry = await live.get("nobody")
    assert entry.sample is None
    assert entry.status is None


async def test_newest_sample_wins_whatever_the_arrival_order(live: LiveState) -> None:
    await live.apply([Reading("g", "gas", 2000, 5.0), Reading("g", "gas", 1000, 9.0)])
    await live.apply([Reading("g", "gas", 1500, 7.0)])
    assert (await live.get("g")).sample == Reading("g", "gas", 2000, 5.0)
    await live.apply([Reading("g", "gas", 3000, 1.0, battery_pct=50.0)])
    assert (await live.get("g")).sample == Reading("g", "gas", 3000, 1.0, battery_pct=50.0)


async def test_positions_and_readings_round_trip(live: LiveState) -> None:
    pos = Position("truck", 10, 20.01, 110.3, 40.0, 91.5)
    smoke = Reading("s", "smoke", 11, 3.0, None, True)
    await live.apply([pos, smoke])
    assert (await live.get("truck")).sample == pos
    assert (await live.get("s")).sample == smoke


async def test_status_is_kept_beside_the_sample(live: LiveState) -> None:
    await live.apply([Reading("g", "gas", 5, 1.0)])
    await live.set_status(DeviceStatus("g", "online", 100))
    await live.set_status(DeviceStatus("g", "offline", 100))
    await live.set_status(DeviceStatus("g", "online", 50))
    entry = await live.get("g")
    assert entry.status == DeviceStatus("g", "offline", 100)
    assert entry.sample == Reading("g", "gas", 5, 1.0)


async def test_ping_answers(live: LiveState) -> None:
    await live.ping()
