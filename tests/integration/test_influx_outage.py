"""InfluxDB going away: writes wait in a bounded buffer and retry; overflow is counted, never silent."""

from __future__ import annotations

from pathlib import Path

from iot_gateway.adapters.series_influx import InfluxSeries
from kernel.model import Reading
from tests import servers
from tests.helpers import eventually


async def test_writes_survive_an_outage_and_overflow_is_counted(server_dir: Path, tmp_path: Path) -> None:
    server = servers.influxdb(tmp_path)
    series = InfluxSeries(server.url, "outage", buffer_max=100, batch_size=10)
    try:
        await series.write([Reading("g", "gas", 1_700_000_000_000 + i, 1.0) for i in range(20)])
        await series.flush()
        assert series.stats()["written"] == 20
        server.stop()

        await series.write([Reading("g", "gas", 1_700_000_001_000 + i, 2.0) for i in range(130)])

        async def down() -> bool:
            return bool(series.stats()["state"] == "down")

        await eventually(down)
        stats = series.stats()
        assert stats["dropped"] == 30
        assert stats["buffered"] == 100
        assert stats["last_error"]

        server.start()  # same port, same data directory
        await series.flush()
        stored = await series.read("g", "gas", 0, 2_000_000_000_000, 1000)
        # The first 20, then the newest 100 of the 130 written while InfluxDB was down.
        assert [r.ts_ms for r in stored] == [1_700_000_000_000 + i for i in range(20)] + [
            1_700_000_001_000 + i for i in range(30, 130)
        ]
        assert series.stats()["state"] == "up"
        assert series.stats()["written"] == 120
    finally:
        await series.close(timeout_s=5)
        server.stop()


async def test_close_during_an_outage_gives_up_in_time_and_counts_what_it_drops(tmp_path: Path) -> None:
    server = servers.influxdb(tmp_path)
    series = InfluxSeries(server.url, "outage2", batch_size=10)
    server.stop()
    await series.write([Reading("g", "gas", 1_700_000_000_000 + i, 1.0) for i in range(25)])
    await series.close(timeout_s=0.5)
    assert series.stats()["dropped"] == 25
    assert series.stats()["written"] == 0
