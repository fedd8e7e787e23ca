"""bench/cameras: the camera index and catalog, each beside a baseline measured in the same run.

- nearest-5 over 10,000 cameras (KD-tree index) beside a brute-force loop over the same cameras
  computing every great-circle distance and keeping the 5 smallest: p50 and p99 of each, and the
  speed-up; also nearest-5 *online* cameras with 10% of them offline.
- importing 10,000 cameras (CSV parsed, validated, stored, indexed, announced on the bus) into the
  embedded default's SQLite, beside a bare `executemany` INSERT of the same rows into a fresh
  SQLite file (what storing them at least costs).

    python -m bench.cameras [--cameras 10000] [--queries 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from kernel.bus import MemoryBus
from kernel.clock import SystemClock
from kernel.db import database_url, make_engine
from video_index.adapters.cameras_sql import SqlCameras
from video_index.catalog import CameraCatalog
from video_index.domain.cameras import parse_csv
from video_index.domain.spatial import CameraIndex, haversine_m

HAIKOU = (20.02, 110.33)


def _positions(n: int, rnd: random.Random) -> list[tuple[str, float, float]]:
    return [
        (f"cam-{i:05d}", HAIKOU[0] + rnd.uniform(-0.15, 0.15), HAIKOU[1] + rnd.uniform(-0.2, 0.2)) for i in range(n)
    ]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_nearest(n: int, queries: int) -> None:
    rnd = random.Random(7)
    cams = _positions(n, rnd)
    index = CameraIndex()
    index.put_many((c, lat, lon, "offline" if rnd.random() < 0.1 else "online") for c, lat, lon in cams)
    points = [(HAIKOU[0] + rnd.uniform(-0.15, 0.15), HAIKOU[1] + rnd.uniform(-0.2, 0.2)) for _ in range(queries)]
    index.nearest(*points[0], 5)  # builds the tree once, as the first query after a load does
    timed: list[float] = []
    for lat, lon in points:
        start = time.perf_counter()
        index.nearest(lat, lon, 5)
        timed.append(time.perf_counter() - start)
    online: list[float] = []
    for lat, lon in points:
        start = time.perf_counter()
        index.nearest(lat, lon, 5, statuses=["online"])
        online.append(time.perf_counter() - start)
    brute: list[float] = []
    for lat, lon in points[: max(50, queries // 20)]:
        start = time.perf_counter()
        heapq.nsmallest(5, ((haversine_m(lat, lon, c_lat, c_lon), c) for c, c_lat, c_lon in cams))
        brute.append(time.perf_counter() - start)
    lat, lon = points[-1]
    expected = [c for _, c in heapq.nsmallest(5, ((haversine_m(lat, lon, a, b), c) for c, a, b in cams))]
    assert [c for c, _ in index.nearest(lat, lon, 5)] == expected, "the index agrees with brute force"
    us = 1e6

    def row(name: str, samples: list[float]) -> None:
        print(f"  {name:<34} p50 {_pct(samples, 0.5) * us:9.1f} us   p99 {_pct(samples, 0.99) * us:9.1f} us")

    print(f"== bench/cameras nearest-5: {n:,} cameras, {queries:,} queries ==")
    row("brute force (every distance)", brute)
    row("index nearest-5", timed)
    row("index nearest-5 online (10% off)", online)
    print(f"  speed-up at p99 (brute / index)    {_pct(brute, 0.99) / _pct(timed, 0.99):9.0f}x")


def _csv(n: int) -> str:
    rnd = random.Random(11)
    lines = ["id,name,department,lat,lon,stream_url,tags"]
    for camera_id, lat, lon in _positions(n, rnd):
        lines.append(
            f"{camera_id},摄像机 {camera_id},公安,{lat:.6f},{lon:.6f},rtsp://u:p@10.2.{rnd.randrange(250)}.1/1,背街"
        )
    return "\n".join(lines) + "\n"


async def _import(text: str, data: Path) -> float:
    engine = make_engine(database_url(None, data))
    from command_center.schema import migrate

    await asyncio.to_thread(migrate, engine)
    bus = MemoryBus()
    catalog = CameraCatalog(SqlCameras(engine), bus, SystemClock())
    start = time.perf_counter()
    done = await catalog.import_cameras(parse_csv(text))
    took = time.perf_counter() - start
    assert done.imported == text.count("\n") - 1
    catalog.nearest(*HAIKOU, 5)
    await bus.close()
    engine.dispose()
    return took


def _bare_insert(text: str, path: Path) -> float:
    rows = [line.split(",") for line in text.splitlines()[1:]]
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE c (id TEXT PRIMARY KEY, name TEXT, dept TEXT, lat REAL, lon REAL, url TEXT, tags TEXT)")
    start = time.perf_counter()
    with conn:
        conn.executemany("INSERT INTO c VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    took = time.perf_counter() - start
    conn.close()
    return took


def bench_import(n: int, rounds: int = 3) -> None:
    text = _csv(n)
    ours, bare = [], []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / f"data{r}").mkdir()
            ours.append(asyncio.run(_import(text, Path(tmp) / f"data{r}")))
            bare.append(_bare_insert(text, Path(tmp) / "bare.sqlite"))
    print(f"== bench/cameras import: {n:,} cameras from CSV, embedded default (SQLite), {rounds} rounds ==")
    print(f"  bare executemany INSERT            median {statistics.median(bare):6.3f} s")
    print(
        f"  parse + validate + store + index   median {statistics.median(ours):6.3f} s"
        f"  (min {min(ours):.3f}, max {max(ours):.3f})"
    )
    print(f"  ratio bare / ours                  {statistics.median(bare) / statistics.median(ours):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cameras", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=5000)
    args = parser.parse_args()
    bench_nearest(args.cameras, args.queries)
    bench_import(args.cameras)


if __name__ == "__main__":
    main()
