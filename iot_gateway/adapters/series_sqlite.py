"""Time series in SQLite (embedded default), written from one thread of its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kernel.errors import StoreError
from kernel.model import DeviceKind, Position, Reading, Sample

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    device_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value REAL, battery_pct REAL, alarm INTEGER,
    lat REAL, lon REAL, speed_kmh REAL, heading_deg REAL,
    PRIMARY KEY (device_id, ts_ms)
) WITHOUT ROWID
"""
_COLUMNS = "device_id, ts_ms, kind, value, battery_pct, alarm, lat, lon, speed_kmh, heading_deg"


def _row(sample: Sample) -> tuple[Any, ...]:
    if isinstance(sample, Reading):
        alarm = None if sample.alarm is None else int(sample.alarm)
        return (
            sample.device_id,
            sample.ts_ms,
            sample.kind,
            sample.value,
            sample.battery_pct,
            alarm,
            None,
            None,
            None,
            None,
        )
    return (
        sample.device_id,
        sample.ts_ms,
        "vehicle",
        None,
        None,
        None,
        sample.lat,
        sample.lon,
        sample.speed_kmh,
        sample.heading_deg,
    )


def _sample(row: tuple[Any, ...]) -> Sample:
    device_id, ts_ms, kind, value, battery, alarm, lat, lon, speed, heading = row
    if kind == "vehicle":
        return Position(device_id, ts_ms, lat, lon, speed, heading)
    return Reading(device_id, kind, ts_ms, value, battery, None if alarm is None else bool(alarm))


class SqliteSeries:
    """Samples in `samples(device_id, ts_ms)`; a repeated (device, ts) is ignored."""

    def __init__(self, path: Path) -> None:
        self._path = path
        # One thread owns the connection: sqlite3 objects must stay on the thread that made them,
        # and the event loop must never wait on disk.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-series")
        self._conn: sqlite3.Connection | None = None
        self.written = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite time series failed: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._connection()
        with conn:
            conn.executemany(f"INSERT OR IGNORE INTO samples ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self.written += len(rows)

    async def write(self, samples: Sequence[Sample]) -> list[tuple[Sample, str]]:
        # Checked samples always fit the table: SQLite refuses none of them.
        if samples:
            await self._run(self._write, [_row(s) for s in samples])
        return []

    def _read(self, device_id: str, start_ms: int, end_ms: int, limit: int) -> list[Sample]:
        cur = self._connection().execute(
            f"SELECT {_COLUMNS} FROM samples WHERE device_id = ? AND ts_ms BETWEEN ? AND ? ORDER BY ts_ms LIMIT ?",
            (device_id, start_ms, end_ms, limit),
        )
        return [_sample(row) for row in cur.fetchall()]

    async def read(self, device_id: str, kind: DeviceKind, start_ms: int, end_ms: int, limit: int) -> list[Sample]:
        result: list[Sample] = await self._run(self._read, device_id, start_ms, end_ms, limit)
        return result

    def _latest(self, device_id: str) -> Sample | None:
        row = (
            self._connection()
            .execute(
                f"SELECT {_COLUMNS} FROM samples WHERE device_id = ? ORDER BY ts_ms DESC LIMIT 1",
                (device_id,),
            )
            .fetchone()
        )
        return None if row is None else _sample(row)

    async def latest(self, device_id: str, kind: DeviceKind) -> Sample | None:
        result: Sample | None = await self._run(self._latest, device_id)
        return result

    def stats(self) -> dict[str, Any]:
        return {"backend": "sqlite", "state": "up", "written": self.written, "rejected": 0}

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown(wait=True)
