"""Fault injection on the real servers: whatever fails, every reading the broker accepted is stored, once.

The module starts its own Mosquitto (persistent), Redis, InfluxDB and PostgreSQL, so it may stop
and start them. Sensors publish QoS 1 readings under load while a gateway process is killed with
SIGKILL, Mosquitto restarts, or Redis, InfluxDB or PostgreSQL is down for a while; afterwards the
time series holds exactly the readings the broker acknowledged to the sensors, and health went
`degraded` and came back to `ok`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from command_center.runtime import start_runtime, stop_runtime
from command_center.schema import migrate
from iot_gateway.adapters.mqtt_paho import PahoIngress
from iot_gateway.adapters.records_sql import SqlDevices
from kernel.clock import SystemClock
from kernel.db import database_url, make_engine
from kernel.model import Device
from kernel.settings import load_settings
from tests import servers
from tests.helpers import GAUGE, LoadPublisher, Publisher, eventually

from .conftest import api_client


@dataclass
class Stack:
    mosquitto: servers.Server
    redis: servers.Server
    influx: servers.Server
    postgres: servers.Server

    def server(self, name: str) -> servers.Server:
        return {"redis": self.redis, "influxdb": self.influx, "postgres": self.postgres}[name]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("faults")
    started: list[servers.Server] = []
    try:
        started.append(servers.mosquitto(work, persistent=True))
        started.append(servers.redis(work))
        started.append(servers.influxdb(work))
        started.append(servers.postgres())
        yield Stack(*started)
    finally:
        for server in started:
            if server.name == "postgres":
                servers.stop_postgres(server)
            else:
                server.stop()


def influx_times(url: str, db: str, measurement: str = "gas") -> list[int]:
    q = f'SELECT value FROM "{measurement}"'
    answer = httpx.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ms"}, timeout=30)
    times: list[int] = []
    for result in answer.json().get("results", []):
        for series in result.get("series", []):
            times.extend(int(row[0]) for row in series["values"])
    return times


def register(db_url: str, devices: list[str], data_dir: Path) -> None:
    engine = make_engine(database_url(db_url, data_dir))
    migrate(engine)
    asyncio.run(SqlDevices(engine).add_many([Device(d, "gas", d, 20.0, 110.3) for d in devices]))
    engine.dispose()


def base_ts() -> int:
    return int(time.time() * 1000) - 3_600_000


def test_kill_9_of_the_gateway_under_load_loses_nothing_the_broker_accepted(stack: Stack, tmp_path: Path) -> None:
    db_url = servers.new_database(stack.postgres, "kill9")
    devices = [f"gas-k{i}" for i in range(40)]
    register(db_url, devices, tmp_path)
    env = {
        **os.environ,
        "CITYOPS_MQTT_URL": stack.mosquitto.url,
        "CITYOPS_REDIS_URL": stack.redis.url,
        "CITYOPS_INFLUX_URL": stack.influx.url,
        "CITYOPS_INFLUX_DATABASE": "kill9",
        "CITYOPS_DATABASE_URL": db_url,
        "CITYOPS_MQTT_CLIENT_ID": "gw-kill9",
        "CITYOPS_DATA_DIR": str(tmp_path / "gw"),
    }

    def gateway(log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "command_center.cli", "gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while "subscribed to" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text()
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        return proc

    first = gateway(tmp_path / "first.log")
    n, start = 8000, base_ts()
    load = LoadPublisher("127.0.0.1", stack.mosquitto.port, devices, n, rate=2500, base_ts=start, client_id="k9")
    load.start()
    try:
        # Kill it while readings stream in: some are checked and queued, some half written.
        deadline = time.monotonic() + 30
        while len(influx_times(stack.influx.url, "kill9")) < 1000:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        stored_at_kill = len(influx_times(stack.influx.url, "kill9"))
        second = gateway(tmp_path / "second.log")
        load.wait_sent()
        assert len(load.acked) == n
        assert stored_at_kill < n  # the kill really came under load

        def all_stored() -> bool:
            return len(influx_times(stack.influx.url, "kill9")) >= n

        deadline = time.monotonic() + 60
        while not all_stored():
            assert time.monotonic() < deadline, f"{len(influx_times(stack.influx.url, 'kill9'))} of {n} stored"
            time.sleep(0.2)
        times = influx_times(stack.influx.url, "kill9")
        assert sorted(times) == [start + i for i in range(n)]  # every one, and each once
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        load.close()
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()


def _settings(stack: Stack, tmp_path: Path, name: str) -> Any:
    return load_settings(
        None,
        data_dir=tmp_path / "data",
        mqtt_url=stack.mosquitto.url,
        mqtt_client_id=f"gw-{name}",
        redis_url=stack.redis.url,
        influx_url=stack.influx.url,
        influx_database=name,
        database_url=servers.new_database(stack.postgres, f"{name}_{uuid.uuid4().hex[:6]}"),
        ingest_flush_interval_s=0.02,
    )


async def test_mosquitto_restarting_under_load_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    runtime = await start_runtime(_settings(stack, tmp_path, "mqttrestart"), SystemClock(), migrate_schema=True)
    devices = [f"gas-m{i}" for i in range(20)]
    n, start = 5000, base_ts()
    load: LoadPublisher | None = None
    try:
        async with api_client(runtime) as api:
            for device in devices:
                body = {"id": device, "kind": "gas", "name": device, "lat": 20.0, "lon": 110.3}
                assert (await api.post("/api/devices", json=body)).status_code == 201
            load = LoadPublisher(
                "127.0.0.1", stack.mosquitto.port, devices, n, rate=1500, base_ts=start, client_id="mr"
            )
            load.start()
            await asyncio.sleep(1.0)
            stack.mosquitto.stop()  # SIGTERM: Mosquitto saves its sessions and queues

            async def degraded() -> bool:
                return bool((await api.get("/api/health")).json()["status"] == "degraded")

            await eventually(degraded)
            await asyncio.sleep(1.0)
            stack.mosquitto.start()
            await asyncio.to_thread(load.wait_sent)
            assert len(load.acked) == n

            async def all_stored() -> bool:
                return len(await asyncio.to_thread(influx_times, stack.influx.url, "mqttrestart")) >= n

            await eventually(all_stored, timeout_s=90)
            times = await asyncio.to_thread(influx_times, stack.influx.url, "mqttrestart")
            assert sorted(times) == [start + i for i in range(n)]

            async def healthy() -> bool:
                return bool((await api.get("/api/health")).json()["status"] == "ok")

            await eventually(healthy, timeout_s=30)
    finally:
        if load is not None:
            load.close()
        await stop_runtime(runtime)


@pytest.mark.parametrize("down", ["redis", "influxdb", "postgres"])
async def test_a_store_down_under_load_loses_nothing_and_health_shows_it(
    stack: Stack, tmp_path: Path, down: str
) -> None:
    name = f"down_{down}"
    runtime = await start_runtime(_settings(stack, tmp_path, name), SystemClock(), migrate_schema=True)
    devices = [f"gas-{down}-{i}" for i in range(20)]
    marker = f"res-{down}"
    n, start, junk = 4000, base_ts(), 50
    load: LoadPublisher | None = None
    server = stack.server(down)
    try:
        async with api_client(runtime) as api:
            for device in devices:
                body = {"id": device, "kind": "gas", "name": device, "lat": 20.0, "lon": 110.3}
                assert (await api.post("/api/devices", json=body)).status_code == 201
            assert (await api.post("/api/devices", json={**GAUGE, "id": marker})).status_code == 201

            async def status() -> str:
                return str((await api.get("/api/health")).json()["status"])

            load = LoadPublisher(
                "127.0.0.1", stack.mosquitto.port, devices, n, rate=1000, base_ts=start, client_id=f"l-{down}"
            )
            load.start()
            await asyncio.sleep(1.0)
            server.stop()
            stopped_at = time.monotonic()

            async def degraded() -> bool:
                return await status() == "degraded"

            await eventually(degraded)
            # Junk while the store is down: its dead letters wait for PostgreSQL without slowing readings.
            sensor = Publisher("127.0.0.1", stack.mosquitto.port)
            for i in range(junk):
                await sensor.publish(f"city/sensors/gas/{devices[i % len(devices)]}", b"{not json")
            sensor.close()
            # A detector's last will arriving now is kept until live state can take it.
            detector = Publisher(
                "127.0.0.1",
                stack.mosquitto.port,
                client_id=devices[1],
                will=(f"city/devices/{devices[1]}/status", b"offline"),
            )
            await detector.publish(f"city/devices/{devices[1]}/status", b"online")
            detector.client.socket().close()  # type: ignore[union-attr]  # power lost: the broker sends the will
            detector.client.loop_stop()
            if down == "postgres":
                # Seconds into the outage (when a writer stuck on the dead letters would be backing
                # off for seconds at a time), a fresh reading still lands at once.
                await asyncio.sleep(2.0)
                marker_ts = int(time.time() * 1000)
                sensor = Publisher("127.0.0.1", stack.mosquitto.port)
                await sensor.publish(f"city/sensors/water_level/{marker}", json.dumps({"ts": marker_ts, "value": 20.0}))
                sensor.close()
                sent = time.monotonic()
                while marker_ts not in await asyncio.to_thread(influx_times, stack.influx.url, name, "water_level"):
                    assert time.monotonic() - sent < 2.0, "a good reading waited on the records store"
                    await asyncio.sleep(0.05)
            await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - stopped_at)))
            server.start()
            await asyncio.to_thread(load.wait_sent)
            assert len(load.acked) == n

            async def all_stored() -> bool:
                return len(await asyncio.to_thread(influx_times, stack.influx.url, name)) >= n

            await eventually(all_stored, timeout_s=90)
            times = await asyncio.to_thread(influx_times, stack.influx.url, name)
            assert sorted(times) == [start + i for i in range(n)]

            async def healthy_and_counted() -> bool:
                body = (await api.get("/api/health")).json()
                return bool(body["status"] == "ok" and body["dead_letters"]["bad_json"] == junk)

            await eventually(healthy_and_counted, timeout_s=30)
            # Live state holds each device's newest reading.
            newest = max(i for i in range(n) if i % len(devices) == 0)
            device = (await api.get(f"/api/devices/{devices[0]}")).json()
            assert device["latest"]["ts_ms"] == start + newest

            async def will_kept() -> bool:
                return bool((await api.get(f"/api/devices/{devices[1]}")).json()["status"] == "offline")

            await eventually(will_kept)
    finally:
        if load is not None:
            load.close()
        await stop_runtime(runtime)


async def test_a_records_outage_pauses_intake_instead_of_piling_dead_letters_up(stack: Stack, tmp_path: Path) -> None:
    settings = _settings(stack, tmp_path, "dlpause").model_copy(update={"ingest_side_pending_max": 20})
    runtime = await start_runtime(settings, SystemClock(), migrate_schema=True)
    junk = 2000
    try:
        async with api_client(runtime) as api:
            stack.postgres.stop()
            try:
                sensor = Publisher("127.0.0.1", stack.mosquitto.port)
                for i in range(junk):
                    sensor.client.publish(f"city/sensors/gas/ghost-{i}", b"{}", qos=1)
                await sensor.publish("city/sensors/gas/ghost-last", b"{}")
                sensor.close()

                async def paused() -> dict[str, Any]:
                    body: dict[str, Any] = (await api.get("/api/health")).json()
                    return body if body["components"]["mqtt"]["backpressure_pauses"] > 0 else {}

                health = await eventually(paused)
                assert health["status"] == "degraded"
                assert health["components"]["records"]["state"] == "down"
                await asyncio.sleep(1.0)
                # Bounded: the side queue's limit plus one burst of the reader, not all that was sent.
                queued = runtime.running_gateway().stats()["queued"]
                assert queued < 20 + 2 * PahoIngress.READ_BURST, queued
            finally:
                stack.postgres.start()

            async def all_counted() -> bool:
                body = (await api.get("/api/health")).json()
                return bool(body["status"] == "ok" and body["dead_letters"]["unknown_device"] == junk + 1)

            await eventually(all_counted, timeout_s=60)
    finally:
        await stop_runtime(runtime)
