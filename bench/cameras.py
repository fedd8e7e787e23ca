"""bench/cameras: the camera index, catalog, watch and live view, each beside a baseline measured
in the same run.

- nearest-5 over 10,000 cameras (KD-tree index) beside a brute-force loop over the same cameras
  computing every great-circle distance and keeping the 5 smallest: p50 and p99 of each, and the
  speed-up; also nearest-5 *online* cameras with 10% of them offline.
- importing 10,000 cameras (CSV parsed, validated, stored, indexed, announced on the bus) into the
  embedded default's SQLite, beside a bare `executemany` INSERT of the same rows into a fresh
  SQLite file (what storing them at least costs).

- a liveness sweep of 10,000 cameras of which 10% are dead (half refuse the connection, half
  accept it and never answer) with the watch's own sweep, beside a bare asyncio loop that only
  connects to each (same concurrency, same timeout);
- full frame checks per second (open, grab frames over 1.5 s, judge, JPEG) in the watch's worker
  processes, beside bare OpenCV threads doing the same open-grab-close on the same streams;
- live view: from the request to the first decoded frame, for MJPEG, HLS and RTSP cameras through
  the API, beside OpenCV reading each stream straight from its source.

    python -m bench.cameras [--cameras 10000] [--queries 5000] [--only nearest,import,sweep,full,live]
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
from typing import Any

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


async def _sweep(n: int, data: Path) -> None:
    import socket

    from tests.servers import accept_and_hang, free_port
    from video_index.adapters.snapshots import FileSnapshots
    from video_index.simulator import CameraSimulator
    from video_index.watch import CameraWatch, WatchOptions

    sim = CameraSimulator(fps=1)
    await sim.start()
    hang_sock, hang_port = accept_and_hang()
    refused = free_port()
    dead = n // 10
    rows = ["id,name,department,lat,lon,stream_url"]
    for i in range(n):
        if i < dead // 2:
            url = f"http://127.0.0.1:{refused}/cam{i}.mjpg"
        elif i < dead:
            url = f"rtsp://127.0.0.1:{hang_port}/cam{i}"
        else:
            url = sim.url(f"ok-{i}")
        rows.append(f"cam-{i:05d},c{i},公安,{20 + i * 1e-5:.6f},110.3,{url}")
    engine = make_engine(database_url(None, data))
    from command_center.schema import migrate

    await asyncio.to_thread(migrate, engine)
    bus = MemoryBus()
    catalog = CameraCatalog(SqlCameras(engine), bus, SystemClock())
    await catalog.import_cameras(parse_csv("\n".join(rows) + "\n"))
    options = WatchOptions(liveness_timeout_s=3.0, liveness_concurrency=500)
    watch = CameraWatch(
        catalog=catalog, bus=bus, snapshots=FileSnapshots(data / "snap"), clock=SystemClock(), options=options
    )
    await watch.load()
    cams = await catalog.store.all()

    async def bare() -> float:
        limit = asyncio.Semaphore(options.liveness_concurrency)
        from urllib.parse import urlsplit

        async def one(url: str) -> None:
            parts = urlsplit(url)
            async with limit:
                try:
                    async with asyncio.timeout(options.liveness_timeout_s):
                        _r, w = await asyncio.open_connection(parts.hostname, parts.port)
                        w.close()
                except (OSError, TimeoutError):
                    pass

        start = time.perf_counter()
        await asyncio.gather(*(one(c.stream_url) for c in cams))
        return time.perf_counter() - start

    print(f"== bench/cameras liveness sweep: {n:,} cameras, {dead:,} dead (half refused, half hanging) ==")
    print(f"  concurrency {options.liveness_concurrency}, timeout {options.liveness_timeout_s:g} s per probe")
    for round_ in range(2):
        base = await bare()
        result = await watch.sweep()
        print(
            f"  round {round_ + 1}: bare connect loop {base:6.2f} s   watch sweep {result.seconds:6.2f} s"
            f"  ({result.up:,} up, {result.down:,} down)   ratio bare/watch {base / result.seconds:5.2f}"
        )
    await watch.stop()
    hang_sock.close()
    await sim.stop()
    await bus.close()
    engine.dispose()
    del socket


def _bare_check(url: str, interval_s: float) -> bool:
    import cv2

    capture = cv2.VideoCapture(
        url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
    )
    try:
        if not capture.isOpened():
            return False
        start = time.monotonic()
        frames = 0
        while True:
            ok, _frame = capture.read()
            if not ok:
                break
            frames += 1
            if time.monotonic() - start >= interval_s and frames >= 2:
                break
        return frames > 0
    finally:
        capture.release()


async def _judged(checker: Any, limit: asyncio.Semaphore, url: str, interval: float) -> bool:
    async with limit:
        result = await checker.check(url, 5, 5, interval)
        return bool(result.error is None)


async def _full(checks: int, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from video_index.adapters.probe import FrameChecker
    from video_index.simulator import CameraSimulator

    sim = CameraSimulator(fps=10)
    await sim.start()
    urls = [sim.url(f"ok-{i}") for i in range(checks)]
    interval = 1.5
    print(f"== bench/cameras full checks: {checks} MJPEG streams, {workers} at a time, {interval} s of frames each ==")
    loop = asyncio.get_running_loop()
    for round_ in range(2):
        pool = ThreadPoolExecutor(workers)
        start = time.perf_counter()
        done = await asyncio.gather(*(loop.run_in_executor(pool, _bare_check, u, interval) for u in urls))
        bare = checks / (time.perf_counter() - start)
        pool.shutdown()
        assert all(done)
        checker = FrameChecker(workers)
        await checker.check(urls[0], 5, 5, 0.1)  # the workers start once, as in a running watch
        limit = asyncio.Semaphore(workers)
        start = time.perf_counter()
        ours_ok = await asyncio.gather(*(_judged(checker, limit, u, interval) for u in urls))
        ours = checks / (time.perf_counter() - start)
        checker.close()
        assert all(ours_ok)
        print(
            f"  round {round_ + 1}: bare OpenCV threads {bare:5.2f} checks/s   watch (worker processes, judged, JPEG)"
            f" {ours:5.2f} checks/s   ratio {ours / bare:4.2f}"
        )
    await sim.stop()


def _first_frame(url: str) -> float:
    import cv2

    start = time.perf_counter()
    capture = cv2.VideoCapture(
        url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 30000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000]
    )
    try:
        ok, _frame = capture.read()
        assert ok, url.split("?")[0]
        return time.perf_counter() - start
    finally:
        capture.release()


async def _live(data: Path) -> None:
    import uvicorn

    from command_center.api import build_app
    from command_center.runtime import start_runtime, stop_runtime
    from kernel.settings import load_settings
    from tests import servers
    from video_index.simulator import CameraSimulator

    sim = CameraSimulator(fps=10)
    await sim.start()
    ffmpeg, http = servers.hls_stream(data)
    relay, push, rtsp = servers.rtsp_stream(data)
    settings = load_settings(None, data_dir=data / "center", mqtt_port=servers.free_port(), watch_cameras=False)
    runtime = await start_runtime(settings, SystemClock(), ingest=False, migrate_schema=True)
    port = servers.free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(runtime), host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await asyncio.sleep(0.05)
    sources = {"mjpeg": sim.url("ok-1"), "hls": f"{http.url}/index.m3u8", "rtsp": rtsp}
    for name, url in sources.items():
        await runtime.catalog().save(
            parse_csv(f"id,name,department,lat,lon,stream_url\nlive-{name},{name},x,20,110.3,{url}\n").cameras[0]
        )
    print("== bench/cameras live view: request to first decoded frame (OpenCV as the player), 3 rounds ==")
    for name, url in sources.items():
        direct, ours = [], []
        for _ in range(3):
            direct.append(await asyncio.to_thread(_first_frame, url))
            ours.append(
                await asyncio.to_thread(
                    _first_frame, f"http://127.0.0.1:{port}/api/cameras/live-{name}/live?token={runtime.admin_token}"
                )
            )
            if name == "rtsp":
                await runtime.live_view().stop_all()  # each round starts the remux anew (the cold case)
        print(
            f"  {name:<6} straight from the source median {statistics.median(direct):5.2f} s"
            f"   through the API median {statistics.median(ours):5.2f} s  (min {min(ours):.2f}, max {max(ours):.2f})"
        )
    server.should_exit = True
    await task
    await stop_runtime(runtime)
    for proc in (push, relay, ffmpeg, http):
        proc.stop()
    await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cameras", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--only", default="nearest,import,sweep,full,live")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if "nearest" in only:
        bench_nearest(args.cameras, args.queries)
    if "import" in only:
        bench_import(args.cameras)
    with tempfile.TemporaryDirectory() as tmp:
        if "sweep" in only:
            (Path(tmp) / "sweep").mkdir()
            asyncio.run(_sweep(args.cameras, Path(tmp) / "sweep"))
        if "full" in only:
            asyncio.run(_full(24, 2))
        if "live" in only:
            (Path(tmp) / "live").mkdir()
            asyncio.run(_live(Path(tmp) / "live"))


if __name__ == "__main__":
    main()
