"""One contract for the records ports on SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from command_center.schema import migrate
from iot_gateway.adapters.records_cached import CachedDevices
from iot_gateway.adapters.records_sql import SqlDeadLetters, SqlDevices
from kernel.bus import MemoryBus
from kernel.db import database_url, make_engine
from kernel.errors import DuplicateError
from kernel.events import DeviceChanged
from kernel.model import DeadLetter, Device
from kernel.ports import DeviceRegistry


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    configured = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    eng = make_engine(database_url(configured, tmp_path))
    assert eng.dialect.name == request.param
    yield eng
    eng.dispose()


@pytest.fixture(params=["records", "cached"])
async def devices(request: pytest.FixtureRequest, engine: Engine) -> DeviceRegistry:
    """The records themselves, and the registry the API reads (memory, written through)."""
    migrate(engine)
    if request.param == "records":
        return SqlDevices(engine)
    cached = CachedDevices(SqlDevices(engine))
    await cached.load()
    return cached


GAUGE = Device(
    "res-1",
    "water_level",
    "铁炉水库水位",
    19.93,
    110.25,
    "g-1",
    {"warning_level_m": 25.5, "danger_level_m": 26.8},
)


async def test_add_get_and_list(devices: DeviceRegistry) -> None:
    truck = Device("veh-1", "vehicle", "危化品运输车", 20.0, 110.3, None, {"plate": "琼A·1", "category": "hazmat"})
    await devices.add(GAUGE)
    await devices.add(truck)
    assert await devices.get("res-1") == GAUGE
    assert await devices.get("nope") is None
    assert await devices.list() == [GAUGE, truck]
    assert await devices.list(kind="vehicle") == [truck]
    assert await devices.list(limit=1, offset=1) == [truck]
    assert await devices.kinds() == {"res-1": "water_level", "veh-1": "vehicle"}
    assert await devices.count() == 2


async def test_a_taken_id_is_refused(devices: DeviceRegistry) -> None:
    await devices.add(GAUGE)
    with pytest.raises(DuplicateError):
        await devices.add(GAUGE)
    with pytest.raises(DuplicateError):
        await devices.add_many([Device("new", "gas", "n", 0, 0), GAUGE])
    assert await devices.count() == 1  # the batch is all or nothing


async def test_upsert_changes_in_place(devices: DeviceRegistry) -> None:
    await devices.upsert(GAUGE)
    moved = Device("res-1", "water_level", "renamed", 1.0, 2.0, None, {"warning_level_m": 1, "danger_level_m": 2})
    await devices.upsert(moved)
    assert await devices.get("res-1") == moved
    assert await devices.count() == 1


async def test_add_many(devices: DeviceRegistry) -> None:
    await devices.add_many([Device(f"gas-{i}", "gas", f"g{i}", 20.0, 110.0) for i in range(500)])
    assert await devices.count() == 500


async def test_dead_letters_keep_payload_and_count_by_reason(engine: Engine) -> None:
    migrate(engine)
    store = SqlDeadLetters(engine)
    binary = bytes(range(256))
    await store.add_many(
        [
            DeadLetter("city/sensors/gas/x", binary, "unknown_device", "device 'x' is not registered", 1),
            DeadLetter("city/sensors/gas/y", b"{", "bad_json", "payload is not JSON", 2),
            DeadLetter("city/sensors/gas/z", b"{", "bad_json", "payload is not JSON", 3),
        ]
    )
    assert await store.counts() == {"unknown_device": 1, "bad_json": 2}
    newest = await store.recent(limit=10)
    assert [d.received_at_ms for d in newest] == [3, 2, 1]
    assert newest[-1].payload == binary
    assert [d.topic for d in await store.recent(reason="unknown_device")] == ["city/sensors/gas/x"]


async def test_remove(devices: DeviceRegistry) -> None:
    await devices.add(GAUGE)
    assert await devices.remove("res-1") is True
    assert await devices.get("res-1") is None
    assert await devices.remove("res-1") is False


async def test_the_cached_registry_learns_of_devices_other_processes_register(engine: Engine) -> None:
    """Another process writes the records; this one's copy learns it by a read that misses, by the
    bus's device.changed, and by its periodic reload, never serving a stale answer past those."""
    migrate(engine)
    elsewhere = SqlDevices(engine)
    cached = CachedDevices(SqlDevices(engine), refresh_s=0.2)
    await cached.load()
    truck = Device("veh-1", "vehicle", "危化品运输车", 20.0, 110.3)
    await elsewhere.add(GAUGE)
    assert await cached.list() == []  # not yet: nothing told this copy
    assert await cached.get("res-1") == GAUGE  # a miss asks the records, and keeps the answer
    assert await cached.list() == [GAUGE]
    assert await cached.kinds() == {"res-1": "water_level"}

    bus = MemoryBus()
    cached.follow(bus)
    try:
        await asyncio.sleep(0.05)  # the follower subscribes
        await elsewhere.add(truck)
        await bus.publish(DeviceChanged("veh-1", "registered", 1, truck))
        for _ in range(100):
            if await cached.count() == 2:
                break
            await asyncio.sleep(0.01)
        assert await cached.list(kind="vehicle") == [truck]
        # A removal nobody announced (the bus was down): the periodic reload still finds it.
        assert await elsewhere.remove("res-1")
        reloads = cached.reloads
        for _ in range(200):
            if cached.reloads > reloads + 1:
                break
            await asyncio.sleep(0.01)
        assert await cached.list() == [truck]
        assert await cached.get("res-1") is None
    finally:
        await cached.stop()
        await bus.close()
