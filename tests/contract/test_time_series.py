"""One contract for every TimeSeries: SqliteSeries (embedded) and InfluxSeries (production)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iot_gateway.adapters.series_influx import InfluxSeries
from iot_gateway.adapters.series_sqlite import SqliteSeries
from kernel.model import Position, Reading
from kernel.ports import TimeSeries

_numbers = itertools.count()


@pytest.fixture(params=["sqlite", "influx"])
async def series(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TimeSeries]:
    store: TimeSeries
    if request.param == "sqlite":
        store = SqliteSeries(tmp_path / "series.sqlite")
    else:
        server = request.getfixturevalue("influx_server")
        store = InfluxSeries(server.url, f"contract{next(_numbers)}", batch_size=7)
    yield store
    await store.close()


async def test_reads_back_oldest_first_within_the_window(series: TimeSeries) -> None:
    samples = [Reading("res", "water_level", 1_700_000_000_000 + i * 1000, 20.0 + i / 10) for i in range(20)]
    # write() returns once the samples are stored: a read right after sees them all.
    assert await series.write(list(reversed(samples))) == []
    got = await series.read("res", "water_level", samples[5].ts_ms, samples[14].ts_ms, 100)
    assert got == samples[5:15]
    assert await series.read("res", "water_level", samples[0].ts_ms, samples[-1].ts_ms, 3) == samples[:3]


async def test_the_same_device_and_ts_is_stored_once(series: TimeSeries) -> None:
    reading = Reading("g", "gas", 1_700_000_000_000, 12.5)
    await series.write([reading, reading])
    await series.write([reading])
    assert await series.read("g", "gas", 0, 2_000_000_000_000, 100) == [reading]


async def test_devices_do_not_mix(series: TimeSeries) -> None:
    await series.write([Reading("a", "gas", 1_700_000_000_000, 1.0), Reading("b", "gas", 1_700_000_000_000, 2.0)])
    assert [r.device_id for r in await series.read("a", "gas", 0, 2_000_000_000_000, 10)] == ["a"]


async def test_every_field_round_trips(series: TimeSeries) -> None:
    smoke = Reading("s", "smoke", 1_700_000_000_001, 4.5, 80.0, True)
    calm = Reading("s", "smoke", 1_700_000_000_002, 0.1, None, False)
    fix = Position("truck", 1_700_000_000_003, 20.012345, 110.354321, 38.5, 271.0)
    bare = Position("truck", 1_700_000_000_004, 20.0, 110.0)
    await series.write([smoke, calm, fix, bare])
    assert await series.read("s", "smoke", 0, 2_000_000_000_000, 10) == [smoke, calm]
    assert await series.read("truck", "vehicle", 0, 2_000_000_000_000, 10) == [fix, bare]


async def test_latest_is_the_newest(series: TimeSeries) -> None:
    assert await series.latest("res", "water_level") is None
    await series.write(
        [
            Reading("res", "water_level", t, float(t % 100))
            for t in (1_700_000_000_300, 1_700_000_000_900, 1_700_000_000_100)
        ]
    )
    assert await series.latest("res", "water_level") == Reading("res", "water_level", 1_700_000_000_900, 0.0)


async def test_stats_count_what_was_written(series: TimeSeries) -> None:
    await series.write([Reading("x", "gas", 1_700_000_000_000 + i, 1.0) for i in range(10)])
    stats = series.stats()
    assert stats["written"] == 10
    assert stats["rejected"] == 0
    assert stats["state"] == "up"
