"""bench/wall: the wall's WebSocket hub, publish-to-screen in a real browser, and the map's frames.

- **Fan-out**: 100 WebSocket clients (in a process of their own, `bench/wall_clients.py`) on `/ws/wall` of a command
  center while 1,000 reading changes a second flow into its bus (1,000 gauges, each once a
  second: under the hub's 4-a-second coalescing, so every change is due), for 10 s; beside the
  websockets library's own `broadcast` of the same messages to 100 clients of a bare websockets
  server in the same run. Delivered messages per second and latency p50/p99 (publish to receipt,
  every tenth client), and the same with one more client that never reads.
- **Publish-to-screen**: an MQTT publish to the change of the value in Chromium's DOM (the wall
  page, the embedded default), p50 and p99.
- **The map**: 10,000 cameras and 5,000 devices on the wall's map, frame times while the mouse
  pans it, p50 and p95 (a smooth map is under 33 ms, 30 frames a second).

    python -m bench.wall [--clients 100] [--rate 1000] [--seconds 10] [--only fanout,screen,map]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from websockets.asyncio.server import ServerConnection, broadcast, serve

from command_center.api import build_app
from command_center.runtime import Runtime, start_runtime, stop_runtime
from command_center.wall import message
from kernel.clock import SystemClock
from kernel.events import DeviceChanged
from kernel.model import Device, Reading
from kernel.settings import load_settings
from tests import servers
from tests.helpers import Publisher

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _uvicorn(runtime: Runtime) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = servers.free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(runtime), host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag
        await asyncio.sleep(0.02)
    return server, task, port


def _clients(url: str, n: int, seconds: float, *, slow: bool, skip_first: bool) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "bench.wall_clients", url, str(n), str(seconds)]
    argv += ["--slow"] * slow + ["--skip-first"] * skip_first
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def _drive(proc: subprocess.Popen[str], produce: Any, seconds: float) -> dict[str, Any]:
    """Wait for the clients to connect, start them, run the producer for the window, read the result."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    if line.strip() != "ready":
        raise RuntimeError(f"clients did not start: {line!r}")
    proc.stdin.write("go\n")
    proc.stdin.flush()
    producer = asyncio.create_task(produce(seconds + 1.0))
    result_line = await asyncio.to_thread(proc.stdout.readline)
    producer.cancel()
    await asyncio.to_thread(proc.wait, 30)
    result: dict[str, Any] = json.loads(result_line)
    return result


def _readings(n_devices: int, batch: int, cursor: int) -> list[Reading]:
    now = int(time.time() * 1000)
    return [
        Reading(f"g-{(cursor + k) % n_devices:05d}", "water_level", now, 20.0 + (cursor + k) % 97 / 100)
        for k in range(batch)
    ]


async def fanout_hub(clients: int, rate: int, seconds: float, slow: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-wall-") as work:
        settings = load_settings(None, data_dir=Path(work), mqtt_port=servers.free_port(), watch_cameras=False)
        runtime = await start_runtime(settings, SystemClock(), ingest=False, tickets=True, migrate_schema=True)
        server, task, port = await _uvicorn(runtime)
        try:
            await runtime.devices.upsert_many(
                [
                    Device(
                        f"g-{n:05d}",
                        "water_level",
                        f"g{n}",
                        20.0,
                        110.3,
                        None,
                        {"warning_level_m": 30.0, "danger_level_m": 31.0},
                    )
                    for n in range(1000)
                ]
            )
            url = f"ws://127.0.0.1:{port}/ws/wall?token={runtime.admin_token}"
            proc = _clients(url, clients, seconds, slow=slow, skip_first=True)

            async def produce(duration: float) -> None:
                batch, cursor, tick = rate // 20, 0, 0.05
                end = time.monotonic() + duration
                next_at = time.monotonic()
                while time.monotonic() < end:
                    await runtime.bus.publish_many(_readings(1000, batch, cursor))
                    cursor += batch
                    next_at += tick
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            return await _drive(proc, produce, seconds)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 15)
            await stop_runtime(runtime)


async def fanout_bare(clients: int, rate: int, seconds: float, slow: bool) -> dict[str, Any]:
    connected: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        connected.add(ws)
        try:
            await ws.wait_closed()
        finally:
            connected.discard(ws)

    port = servers.free_port()
    async with serve(handler, "127.0.0.1", port, max_size=None):
        proc = _clients(f"ws://127.0.0.1:{port}/", clients, seconds, slow=slow, skip_first=False)

        async def produce(duration: float) -> None:
            batch, cursor, tick = rate // 20, 0, 0.05
            end = time.monotonic() + duration
            next_at = time.monotonic()
            while time.monotonic() < end:
                for reading in _readings(1000, batch, cursor):
                    # The same message the hub sends, encoded once per change as the hub does.
                    broadcast(connected, orjson.dumps(message(reading)).decode())
                cursor += batch
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        return await _drive(proc, produce, seconds)


def _line(label: str, r: dict[str, Any]) -> str:
    return (
        f"  {label:<34} {r['per_second']:>9,.0f} messages/s  (slowest client {r['min_client']:,})"
        f"  latency p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms"
    )


async def bench_fanout(clients: int, rate: int, seconds: float) -> None:
    print(
        f"fan-out: {clients} WebSocket clients, {rate:,} changes/s for {seconds:g} s"
        f" ({clients * rate:,} messages/s to deliver)"
    )
    bare = await fanout_bare(clients, rate, seconds, slow=False)
    hub = await fanout_hub(clients, rate, seconds, slow=False)
    hub_slow = await fanout_hub(clients, rate, seconds, slow=True)
    print(_line("websockets broadcast (bare server)", bare))
    print(_line("cityops /ws/wall hub", hub))
    print(_line("hub, one more client never reading", hub_slow))
    print(f"  ratio hub / broadcast               {hub['per_second'] / bare['per_second']:.2f}  (target >= 0.5)")


async def bench_screen(probes: int) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="bench-wall-screen-") as work:
        settings = load_settings(None, data_dir=Path(work), mqtt_port=servers.free_port(), watch_cameras=False)
        runtime = await start_runtime(settings, SystemClock(), tickets=True, migrate_schema=True)
        server, task, port = await _uvicorn(runtime)
        sensor = Publisher("127.0.0.1", runtime.mqtt_target().port)
        try:
            gauge = Device(
                "res-1", "water_level", "水位", 19.93, 110.25, None, {"warning_level_m": 25.5, "danger_level_m": 26.8}
            )
            await runtime.devices.upsert_many([gauge])
            # Told to the gateway at once, as the API does (its own registry reload is every 30 s).
            runtime.running_gateway().note_change(DeviceChanged("res-1", "registered", int(time.time() * 1000), gauge))
            await sensor.publish(
                "city/sensors/water_level/res-1", json.dumps({"ts": int(time.time() * 1000), "value": 20.0})
            )
            await asyncio.sleep(0.5)
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1920, "height": 1080})
                await page.goto(f"http://127.0.0.1:{port}/#token={runtime.admin_token}")
                await page.wait_for_selector('[data-device="res-1"] .value')
                await page.evaluate(
                    """() => { window.seen = {}; new MutationObserver(() => {
                         const el = document.querySelector('[data-device="res-1"] .value');
                         const text = el && el.textContent;
                         if (text && !(text in window.seen)) window.seen[text] = Date.now();
                       }).observe(document.querySelector('#readings'),
                                  {subtree: true, childList: true, characterData: true}); }"""
                )
                sent: dict[str, float] = {}
                for n in range(probes):
                    value = 21.0 + n / 100
                    sent[f"{value:.2f} m"] = time.time() * 1000
                    await sensor.publish(
                        "city/sensors/water_level/res-1", json.dumps({"ts": int(time.time() * 1000), "value": value})
                    )
                    await asyncio.sleep(0.3)  # slower than the 4-a-second coalescing: each value is shown
                await asyncio.sleep(1.0)
                seen: dict[str, float] = await page.evaluate("window.seen")
                await browser.close()
        finally:
            sensor.close()
            server.should_exit = True
            await asyncio.wait_for(task, 15)
            await stop_runtime(runtime)
    latencies = [seen[k] - t for k, t in sent.items() if k in seen]
    print(f"publish-to-screen: {probes} readings over MQTT to the wall's DOM in Chromium (embedded default)")
    print(
        f"  shown {len(latencies)}/{probes}  p50 {_pct(latencies, 0.5):.0f} ms"
        f"  p99 {_pct(latencies, 0.99):.0f} ms  (target p99 < 1000 ms)"
    )


async def bench_map(cameras: int, devices: int) -> None:
    from playwright.async_api import async_playwright

    from video_index.domain.cameras import parse_json

    with tempfile.TemporaryDirectory(prefix="bench-wall-map-") as work:
        settings = load_settings(None, data_dir=Path(work), mqtt_port=servers.free_port(), watch_cameras=False)
        runtime = await start_runtime(settings, SystemClock(), ingest=False, tickets=True, migrate_schema=True)
        server, task, port = await _uvicorn(runtime)
        try:
            import random

            rnd = random.Random(5)
            kinds = ["smoke", "gas", "water_level"]
            await runtime.devices.upsert_many(
                [
                    Device(
                        f"d-{n:05d}",
                        kinds[n % 3],  # type: ignore[arg-type]
                        f"d{n}",
                        20.02 + rnd.uniform(-0.15, 0.15),
                        110.33 + rnd.uniform(-0.2, 0.2),
                        None,
                        {"warning_level_m": 25.0, "danger_level_m": 26.0} if n % 3 == 2 else {},
                    )
                    for n in range(devices)
                ]
            )
            rows = [
                {
                    "id": f"c-{n:05d}",
                    "name": f"c{n}",
                    "department": "公安局",
                    "lat": 20.02 + rnd.uniform(-0.15, 0.15),
                    "lon": 110.33 + rnd.uniform(-0.2, 0.2),
                    "stream_url": f"http://10.0.0.1/{n}.mjpg",
                }
                for n in range(cameras)
            ]
            await runtime.catalog().import_cameras(parse_json(rows))
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1920, "height": 1080})
                await page.goto(f"http://127.0.0.1:{port}/#token={runtime.admin_token}")
                await page.wait_for_selector("#link.up")
                await page.wait_for_timeout(3000)
                box = await page.locator("#map").bounding_box()
                assert box is not None
                await page.evaluate(
                    """() => { window.frames_ = []; let last = performance.now();
                       const tick = (t) => { window.frames_.push(t - last); last = t;
                                             if (window.frames_.length < 100000) requestAnimationFrame(tick); };
                       requestAnimationFrame(tick); }"""
                )
                cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                await page.mouse.move(cx, cy)
                await page.mouse.down()
                for step in range(6):
                    dx = 200 if step % 2 == 0 else -200
                    await page.mouse.move(cx + dx, cy + dx / 4, steps=40)
                await page.mouse.up()
                frames: list[float] = await page.evaluate("window.frames_.slice(2)")
                await browser.close()
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 15)
            await stop_runtime(runtime)
    print(f"map: {cameras:,} cameras and {devices:,} devices, panned with the mouse in Chromium (1920x1080, no GPU)")
    print(
        f"  {len(frames)} frames  frame time p50 {_pct(frames, 0.5):.1f} ms  p95 {_pct(frames, 0.95):.1f} ms"
        f"  max {max(frames):.1f} ms"
    )


def main() -> None:
    # The clients' process ends without closing handshakes; the servers' write errors are expected.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--probes", type=int, default=60)
    parser.add_argument("--cameras", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--only", default="fanout,screen,map")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if "fanout" in only:
        asyncio.run(bench_fanout(args.clients, args.rate, args.seconds))
    if "screen" in only:
        asyncio.run(bench_screen(args.probes))
    if "map" in only:
        asyncio.run(bench_map(args.cameras, args.devices))


if __name__ == "__main__":
    main()
