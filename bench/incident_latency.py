"""bench/incident_latency: from a reading that crosses a threshold to the incident in the API and on the bus.

A command center runs in this process (embedded default: amqtt, memory, SQLite; production:
Mosquitto, Redis, InfluxDB, PostgreSQL started on free loopback ports), its rules engine
included. A background publisher (a process of its own, as sensors are) sends ordinary readings at a load (about half of
what the gateway drains at most on this machine; bench/ingest measures that). Then, one at a
time, a gauge gets a reading above its warning level; the time is taken from just before the
publish until its incident event arrives on the bus (a live subscription) and until
`GET /api/incidents` lists it (polled every ~20 ms). p50 and p99 are printed.

    python -m bench.incident_latency [--probes 100] [--embedded-load 500] [--production-load 2500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from command_center.api import build_app
from command_center.runtime import Runtime, start_runtime, stop_runtime
from kernel.clock import SystemClock
from kernel.events import INCIDENT_CHANGED, IncidentChanged
from kernel.settings import load_settings
from tests import servers
from tests.helpers import LoadPublisher, Publisher


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def probe_run(runtime: Runtime, probes: int, load: float) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=build_app(runtime))
    headers = {"Authorization": f"Bearer {runtime.admin_token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://cityops", headers=headers) as api:
        gauges = [f"res-b{i:04d}" for i in range(probes)]
        noise = [f"gas-b{i:04d}" for i in range(200)]
        for device in gauges:
            body = {
                "id": device,
                "kind": "water_level",
                "name": device,
                "lat": 20.0,
                "lon": 110.0,
                "attributes": {"warning_level_m": 25.5, "danger_level_m": 26.8},
            }
            assert (await api.post("/api/devices", json=body)).status_code == 201
        for device in noise:
            body = {"id": device, "kind": "gas", "name": device, "lat": 20.0, "lon": 110.1}
            assert (await api.post("/api/devices", json=body)).status_code == 201
        target = runtime.mqtt_target()
        # The sensors are another process, as in a city: their publishing must not take this one's CPU.
        n_background = int(load * (probes * 0.6 + 30))
        background = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
            [
                sys.executable,
                "-m",
                "bench.incident_latency",
                "--publish",
                target.host,
                str(target.port),
                str(load),
                str(n_background),
                ",".join(noise),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        sensor = Publisher(target.host, target.port)
        live = runtime.bus.live([INCIDENT_CHANGED])
        # As `cityops run` does after start-up (command_center/cli.py): what lives as long as the
        # process is moved out of the collector's sight.
        gc.collect()
        gc.freeze()
        await asyncio.sleep(3.0)  # the publisher is connected and the load is on
        on_bus: list[float] = []
        in_api: list[float] = []
        try:
            for device in gauges:
                seen_bus: float | None = None
                start = time.perf_counter()
                await sensor.publish(
                    f"city/sensors/water_level/{device}", json.dumps({"ts": int(time.time() * 1000), "value": 26.0})
                )
                deadline = start + 10
                while time.perf_counter() < deadline:
                    if seen_bus is None:
                        for event in await live.take(1000, timeout_s=0.005):
                            if isinstance(event, IncidentChanged) and event.subject == device:
                                seen_bus = time.perf_counter() - start
                    await asyncio.sleep(0.015)  # a console polling every ~20 ms (the wall will be told, not poll)
                    listed = (await api.get("/api/incidents", params={"rule_id": "reservoir-level", "limit": 1})).json()
                    if listed and listed[0]["device_ids"] == [device]:
                        in_api.append(time.perf_counter() - start)
                        break
                if seen_bus is None:  # the event came while the API was polled
                    for event in await live.take(1000, timeout_s=1.0):
                        if isinstance(event, IncidentChanged) and event.subject == device:
                            seen_bus = time.perf_counter() - start
                if seen_bus is not None:
                    on_bus.append(seen_bus)
                await asyncio.sleep(0.05)
        finally:
            background.terminate()
            out, _ = await asyncio.to_thread(background.communicate)
            sensor.close()
            await live.close()
        stats = runtime.rules_engine.stats() if runtime.rules_engine else {}
        sent = int(out.strip().splitlines()[-1]) if out.strip() else 0
        return {"bus": on_bus, "api": in_api, "probes": probes, "load": load, "stats": stats, "background_sent": sent}


def report(name: str, result: dict[str, Any]) -> None:
    sent = result["background_sent"]
    print(f"{name}: background {result['load']:,.0f} readings/s ({sent:,} acknowledged by the broker)")
    for where in ("bus", "api"):
        got = [v * 1000 for v in result[where]]
        if not got:
            print(f"  {where:<4} no incident seen")
            continue
        print(
            f"  {('on the bus' if where == 'bus' else 'in the API'):<12} p50 {statistics.median(got):7.1f} ms   "
            f"p99 {percentile(got, 99):7.1f} ms   max {max(got):7.1f} ms   ({len(got)} of {result['probes']})"
        )


async def embedded(probes: int, load: float, work: Path) -> dict[str, Any]:
    settings = load_settings(None, data_dir=work / "embedded", mqtt_port=servers.free_port())
    runtime = await start_runtime(settings, SystemClock(), rules=True, migrate_schema=True)
    try:
        return await probe_run(runtime, probes, load)
    finally:
        await stop_runtime(runtime)


async def production(probes: int, load: float, work: Path) -> dict[str, Any]:
    mosq, red, influx, pg = servers.mosquitto(work), servers.redis(work), servers.influxdb(work), servers.postgres()
    try:
        settings = load_settings(
            None,
            data_dir=work / "production",
            mqtt_url=mosq.url,
            redis_url=red.url,
            influx_url=influx.url,
            influx_database="latency",
            database_url=servers.new_database(pg, "latency"),
        )
        runtime = await start_runtime(settings, SystemClock(), rules=True, migrate_schema=True)
        try:
            return await probe_run(runtime, probes, load)
        finally:
            await stop_runtime(runtime)
    finally:
        for server in (mosq, red, influx):
            server.stop()
        servers.stop_postgres(pg)


def publish_only(host: str, port: int, rate: float, n: int, devices: list[str]) -> None:
    """The background sensors (a process of their own); prints how many the broker acknowledged."""
    load = LoadPublisher(
        host,
        port,
        devices,
        n,
        rate=rate,
        base_ts=int(time.time() * 1000) - 3_600_000,
        client_id=f"bg-{uuid.uuid4().hex[:6]}",
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    load.start()
    while load.thread.is_alive() and not stopped.is_set():
        stopped.wait(0.1)
    print(len(load.acked), flush=True)
    load.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        host, port, rate, n, devices = sys.argv[2:7]
        publish_only(host, int(port), float(rate), int(n), devices.split(","))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--embedded-load", type=float, default=500.0, help="about half the embedded gateway's drain")
    parser.add_argument("--production-load", type=float, default=2500.0, help="about half the production drain")
    args = parser.parse_args()
    print(f"== bench/incident_latency: {args.probes} threshold crossings, one at a time, under background load ==")
    with tempfile.TemporaryDirectory(prefix="cityops-latency-") as tmp:
        work = Path(tmp)
        report("embedded default", asyncio.run(embedded(args.probes, args.embedded_load, work)))
        report(
            "production (Mosquitto + Redis + InfluxDB + PostgreSQL)",
            asyncio.run(production(args.probes, args.production_load, work)),
        )


if __name__ == "__main__":
    main()
