"""InfluxDB refusing or away: `write` returns only once InfluxDB has the lines, raises while it
cannot have them (down, or refusing our credentials), and gives back only what it rejects as
malformed. Nothing is dropped: the caller keeps what was not stored and writes it again."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from iot_gateway.adapters.series_influx import InfluxSeries
from kernel.errors import StoreError
from kernel.model import Reading
from tests import servers


async def test_an_outage_raises_and_the_same_write_lands_once_it_is_back(tmp_path: Path) -> None:
    server = servers.influxdb(tmp_path)
    series = InfluxSeries(server.url, "outage", batch_size=10)
    try:
        first = [Reading("g", "gas", 1_700_000_000_000 + i, 1.0) for i in range(20)]
        assert await series.write(first) == []
        server.stop()
        during = [Reading("g", "gas", 1_700_000_001_000 + i, 2.0) for i in range(130)]
        with pytest.raises(StoreError):
            await series.write(during)
        stats = series.stats()
        assert stats["state"] == "down"
        assert stats["last_error"]

        server.start()  # same port, same data directory
        assert await series.write(during) == []
        stored = await series.read("g", "gas", 0, 2_000_000_000_000, 1000)
        assert [r.ts_ms for r in stored] == [r.ts_ms for r in first + during]
        assert series.stats()["state"] == "up"
    finally:
        await series.close()
        server.stop()


def _write_raw(url: str, db: str, line: bytes) -> None:
    answer = httpx.post(f"{url}/write", params={"db": db, "precision": "ms"}, content=line, timeout=10)
    assert answer.status_code == 204, answer.text


def _influxql(url: str, q: str, auth: tuple[str, str] | None = None) -> None:
    answer = httpx.post(f"{url}/query", params={"q": q}, auth=auth, timeout=10)
    assert answer.status_code == 200, answer.text
    assert "error" not in answer.text, answer.text


async def test_refused_credentials_are_an_outage_never_a_reason_to_drop(tmp_path: Path) -> None:
    server = servers.influxdb(tmp_path, auth=True)
    admin = ("admin", "admin-pass-0123456789")
    _influxql(server.url, f"CREATE USER admin WITH PASSWORD '{admin[1]}' WITH ALL PRIVILEGES")
    _influxql(server.url, 'CREATE DATABASE "guarded"', admin)
    _influxql(server.url, "CREATE USER writer WITH PASSWORD 'Wr1ter-s3cret-pw'", admin)
    url = server.url.replace("http://", "http://writer:Wr1ter-s3cret-pw@")
    series = InfluxSeries(url, "guarded")
    readings = [Reading("g", "gas", 1_700_000_000_000 + i, 1.0) for i in range(5)]
    try:
        # The writer may not write yet (403): kept for the caller, shown as down, password never shown.
        with pytest.raises(StoreError) as refused:
            await series.write(readings)
        assert "Wr1ter-s3cret-pw" not in str(refused.value)
        stats = series.stats()
        assert stats["state"] == "down"
        assert "403" in stats["last_error"]
        assert "Wr1ter-s3cret-pw" not in repr(stats)
        assert stats["rejected"] == 0

        _influxql(server.url, 'GRANT ALL ON "guarded" TO writer', admin)
        assert await series.write(readings) == []
        assert len(await series.read("g", "gas", 0, 2_000_000_000_000, 100)) == 5

        wrong = InfluxSeries(server.url.replace("http://", "http://writer:wrong-password@"), "guarded")
        with pytest.raises(StoreError):
            await wrong.write(readings)
        assert "401" in (wrong.stats()["last_error"] or "")
        assert "wrong-password" not in repr(wrong.stats())
        await wrong.close()
    finally:
        await series.close()
        server.stop()


async def test_only_the_lines_influxdb_rejects_as_malformed_are_given_back(influx_server: servers.Server) -> None:
    series = InfluxSeries(influx_server.url, "conflict", batch_size=64)
    # Someone wrote `value` of measurement gas as text: every float value for gas in that shard now conflicts.
    _influxql(influx_server.url, 'CREATE DATABASE "conflict"')
    _write_raw(influx_server.url, "conflict", b'gas,device_id=x value="t" 1699999999999')
    try:
        mixed = [
            Reading(f"d{i}", "gas" if i in (3, 17, 40) else "smoke", 1_700_000_000_000 + i, 1.0) for i in range(50)
        ]
        refused = await series.write(mixed)
        assert sorted(sample.device_id for sample, _ in refused) == ["d17", "d3", "d40"]
        assert all("conflict" in why for _, why in refused)
        assert series.stats()["rejected"] == 3
        assert series.stats()["state"] == "up"
        smoke = [r for i in range(50) for r in await series.read(f"d{i}", "smoke", 0, 2_000_000_000_000, 10)]
        assert len(smoke) == 47
        # A batch that is wholly malformed is given back whole, without halving it line by line.
        all_gas = [Reading(f"g{i}", "gas", 1_700_000_000_000 + i, 1.0) for i in range(40)]
        assert len(await series.write(all_gas)) == 40
    finally:
        await series.close()
