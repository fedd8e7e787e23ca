"""Mosquitto specifics: the persistent session across gateway restarts, and shared subscriptions."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest

from command_center.runtime import start_runtime, stop_runtime
from iot_gateway.adapters.mqtt_paho import MqttTarget
from kernel.clock import SystemClock
from kernel.settings import Settings
from tests import servers
from tests.helpers import GAUGE, Publisher, eventually

from .conftest import api_client, production_settings


async def _readings(runtime_app: httpx.AsyncClient) -> list[float]:
    answer = await runtime_app.get("/api/devices/res-1/readings")
    return [r["value"] for r in answer.json()]


async def register_then_go_away(settings: Settings) -> MqttTarget:
    """Start a gateway, register the gauge, stop it: the broker keeps its session while it is away."""
    first = await start_runtime(settings, SystemClock(), migrate_schema=True)
    async with api_client(first) as api:
        assert (await api.post("/api/devices", json=GAUGE)).status_code == 201
    target = first.mqtt_target()
    await stop_runtime(first)
    return target


async def test_readings_published_while_the_gateway_restarts_are_not_lost(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = production_settings(request, tmp_path / "data", mqtt_client_id="gw-restart")
    target = await register_then_go_away(settings)

    sensor = Publisher(target.host, target.port)
    start = int(time.time() * 1000) - 60_000
    for i in range(50):  # the gateway is away: Mosquitto keeps these for its persistent session
        await sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": start + i, "value": 20 + i / 100}))
    sensor.close()

    second = await start_runtime(settings, SystemClock(), migrate_schema=True)
    try:
        async with api_client(second) as api:

            async def all_fifty() -> list[float]:
                values = await _readings(api)
                return values if len(values) == 50 else []

            values = await eventually(all_fifty)
        assert values == [20 + i / 100 for i in range(50)]
    finally:
        await stop_runtime(second)


async def test_two_gateways_in_a_shared_group_split_the_load_and_store_everything_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Client ids of their own: a persistent session another test left under a common name
    # ("gw-a") would bring its old subscription and queued messages along.
    ids = uuid.uuid4().hex[:8]
    base = production_settings(request, tmp_path / "a", mqtt_client_id=f"gw-a-{ids}", mqtt_shared_group="cityops")
    other = base.model_copy(update={"mqtt_client_id": f"gw-b-{ids}", "data_dir": tmp_path / "b"})
    a = await start_runtime(base, SystemClock(), migrate_schema=True)
    b = await start_runtime(other, SystemClock(), migrate_schema=True)
    try:
        async with api_client(a) as api:
            assert (await api.post("/api/devices", json=GAUGE)).status_code == 201
            # b has its own device cache and learns the device from the bus
            await eventually(lambda: _knows(b.running_gateway().stats()))
            target = a.mqtt_target()
            sensor = Publisher(target.host, target.port)
            start = int(time.time() * 1000) - 60_000
            for i in range(200):
                sensor.client.publish(
                    "city/sensors/water_level/res-1", json.dumps({"ts": start + i, "value": 20.0}), qos=1
                )
            await sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": start + 200, "value": 20.0}))
            sensor.close()

            async def all_stored() -> bool:
                return len(await _readings(api)) == 201

            await eventually(all_stored)
        got_a, got_b = a.running_gateway().stats()["accepted"], b.running_gateway().stats()["accepted"]
        assert got_a + got_b == 201, json.dumps([a.running_gateway().stats(), b.running_gateway().stats()])
        assert got_a > 0
        assert got_b > 0
    finally:
        await stop_runtime(a)
        await stop_runtime(b)


async def test_a_separate_gateway_learns_devices_registered_through_the_api_process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # An hour between reloads: what the gateway learns, it learns from the bus.
    shared = production_settings(request, tmp_path / "gw", mqtt_client_id="gw-split", registry_refresh_s=3600)
    gateway = await start_runtime(shared, SystemClock(), migrate_schema=True)
    api_only = await start_runtime(
        shared.model_copy(update={"data_dir": tmp_path / "api"}), SystemClock(), ingest=False
    )
    try:
        assert api_only.ingress is None
        async with api_client(api_only) as api:
            assert (await api.post("/api/devices", json=GAUGE)).status_code == 201
            await eventually(lambda: _knows(gateway.running_gateway().stats()))
            target = gateway.mqtt_target()
            sensor = Publisher(target.host, target.port)
            ts = int(time.time() * 1000)
            await sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": ts, "value": 21.5}))
            sensor.close()

            async def seen_by_api() -> bool:
                latest = (await api.get("/api/devices/res-1")).json()["latest"]
                return latest is not None and latest["ts_ms"] == ts

            await eventually(seen_by_api)
            changed = dict(GAUGE, name="changed name")
            assert (await api.put("/api/devices/res-1", json=changed)).status_code == 200
            assert (await api.delete("/api/devices/res-1")).status_code == 204
            await eventually(lambda: _knows(gateway.running_gateway().stats(), 0))
            assert gateway.running_gateway().stats()["registry_changes"] >= 3
    finally:
        await stop_runtime(api_only)
        await stop_runtime(gateway)


async def _knows(stats: dict[str, object], count: int = 1) -> bool:
    return stats["registered_devices"] == count


async def test_the_gateway_reconnects_after_the_broker_restarts(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    broker = servers.mosquitto(tmp_path)
    settings = production_settings(request, tmp_path / "data", mqtt_client_id="gw-reconnect").model_copy(
        update={"mqtt_url": broker.url}
    )
    runtime = await start_runtime(settings, SystemClock(), migrate_schema=True)
    try:
        assert runtime.ingress is not None
        async with api_client(runtime) as api:
            assert (await api.post("/api/devices", json=GAUGE)).status_code == 201
            broker.stop()

            async def disconnected() -> bool:
                return bool((await api.get("/api/health")).json()["status"] == "degraded")

            await eventually(disconnected)
            broker.start()  # same port; this Mosquitto kept no session, so the gateway must subscribe again
            assert await runtime.ingress.wait_subscribed(40)
            sensor = Publisher("127.0.0.1", broker.port)
            ts = int(time.time() * 1000)
            await sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": ts, "value": 22.0}))
            sensor.close()

            async def arrived() -> bool:
                latest = (await api.get("/api/devices/res-1")).json()["latest"]
                return latest is not None and latest["ts_ms"] == ts

            await eventually(arrived)
            assert (await api.get("/api/health")).json()["status"] == "ok"
    finally:
        await stop_runtime(runtime)
        broker.stop()


async def test_a_full_queue_pauses_reading_and_loses_nothing(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # A queue of at most 100 readings against 3,000 waiting in the broker: they arrive as one flood
    # when the gateway comes back (a trickle could be written as fast as it comes, never filling
    # the queue), so the reader must pause, and nothing may be dropped.
    settings = production_settings(request, tmp_path / "data", mqtt_client_id="gw-backpressure", ingest_pending_max=100)
    target = await register_then_go_away(settings)
    sensor = Publisher(target.host, target.port)
    start = int(time.time() * 1000) - 3_600_000
    for i in range(2999):
        sensor.client.publish("city/sensors/water_level/res-1", json.dumps({"ts": start + i, "value": 20}), qos=1)
    await sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": start + 2999, "value": 20}))
    sensor.close()
    runtime = await start_runtime(settings, SystemClock(), migrate_schema=True)
    try:
        assert runtime.ingress is not None
        async with api_client(runtime) as api:

            async def all_stored() -> bool:
                answer = await api.get("/api/devices/res-1/readings", params={"start": str(start - 1)})
                return len(answer.json()) == 3000

            await eventually(all_stored, timeout_s=60)
            health = (await api.get("/api/health")).json()
        assert health["components"]["mqtt"]["backpressure_pauses"] > 0
        assert health["components"]["gateway"]["accepted"] == 3000
    finally:
        await stop_runtime(runtime)


async def test_stop_with_redis_down_gives_up_in_time_and_the_reading_comes_back_after_restart(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    own_redis = servers.redis(tmp_path)
    settings = production_settings(request, tmp_path / "data", mqtt_client_id="gw-redis-down").model_copy(
        update={"redis_url": own_redis.url}
    )
    runtime = await start_runtime(settings, SystemClock(), migrate_schema=True)
    ts = int(time.time() * 1000)
    try:
        async with api_client(runtime) as api:
            assert (await api.post("/api/devices", json=GAUGE)).status_code == 201
        own_redis.stop()
        target = runtime.mqtt_target()
        sensor = Publisher(target.host, target.port)
        await sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": ts, "value": 1}))
        sensor.close()
        await eventually(lambda: _failing(runtime.running_gateway().stats()))
    finally:
        started = time.monotonic()
        await stop_runtime(runtime, write_timeout_s=1)
        assert time.monotonic() - started < 10
    # Not acknowledged, so not lost: the broker kept it for the gateway's session.
    assert runtime.running_gateway().stats()["unwritten_at_stop"] == 1
    assert runtime.running_gateway().stats()["lost"] == 0
    own_redis.start()
    again = await start_runtime(settings, SystemClock(), migrate_schema=True)
    try:
        async with api_client(again) as api:

            async def landed() -> bool:
                latest = (await api.get("/api/devices/res-1")).json()["latest"]
                return latest is not None and latest["ts_ms"] == ts

            await eventually(landed)
            assert [r["ts_ms"] for r in (await api.get("/api/devices/res-1/readings")).json()] == [ts]
    finally:
        await stop_runtime(again)
        own_redis.stop()


async def _failing(stats: dict[str, object]) -> bool:
    return stats["last_error"] is not None


async def test_a_reading_influxdb_rejects_as_malformed_is_a_dead_letter_not_a_stall(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = production_settings(request, tmp_path / "data", mqtt_client_id="gw-malformed")
    influx = settings.influx_url
    assert influx is not None
    # Someone wrote `value` of measurement water_level as text in this week's shard: our floats conflict.
    now = int(time.time() * 1000)
    async with httpx.AsyncClient(base_url=influx) as raw:
        await raw.post("/query", params={"q": f'CREATE DATABASE "{settings.influx_database}"'})
        answer = await raw.post(
            "/write",
            params={"db": settings.influx_database, "precision": "ms"},
            content=f'water_level,device_id=other value="text" {now - 1000}'.encode(),
        )
        assert answer.status_code == 204, answer.text
    runtime = await start_runtime(settings, SystemClock(), migrate_schema=True)
    try:
        async with api_client(runtime) as api:
            assert (await api.post("/api/devices", json=GAUGE)).status_code == 201
            gas = {**GAUGE, "id": "gas-1", "kind": "gas", "attributes": {}}
            assert (await api.post("/api/devices", json=gas)).status_code == 201
            sensor = Publisher("127.0.0.1", runtime.mqtt_target().port)
            await sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": now, "value": 24.0}))
            await sensor.publish("city/sensors/gas/gas-1", json.dumps({"ts": now, "value": 3.0}))
            sensor.close()

            async def rejected() -> list[dict[str, object]]:
                letters: list[dict[str, object]] = (
                    await api.get("/api/dead-letters", params={"reason": "store_rejected"})
                ).json()
                return letters

            [letter] = await eventually(rejected)
            assert letter["topic"] == "city/sensors/water_level/res-1"
            assert "conflict" in str(letter["detail"])

            async def gas_stored() -> bool:
                return len((await api.get("/api/devices/gas-1/readings")).json()) == 1

            await eventually(gas_stored)  # the other reading of the batch went on
            health = (await api.get("/api/health")).json()
            assert health["dead_letters"]["store_rejected"] == 1
            assert health["components"]["time_series"]["rejected"] == 1
            assert health["components"]["gateway"]["queued"] == 0  # acknowledged, not retried forever
            assert (await api.get("/api/devices/res-1")).json()["latest"] is None  # nor in live state
    finally:
        await stop_runtime(runtime)
