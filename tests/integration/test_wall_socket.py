"""The wall's WebSocket (CONTRACT.md `/ws/wall`) through a real server and the `websockets` client:
snapshot then changes, ping, refusals, per-entity coalescing, a slow client, and two API
processes on one Redis showing the same wall."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from command_center.api import build_app
from command_center.runtime import Runtime, start_runtime, stop_runtime
from kernel.clock import SystemClock
from kernel.settings import load_settings
from tests import servers
from tests.helpers import GAUGE, eventually

from .conftest import Center, open_center


@asynccontextmanager
async def serving(runtime: Runtime) -> AsyncIterator[str]:
    """The runtime's app on a real HTTP server on a free port: its ws:// base URL."""
    port = servers.free_port()
    config = uvicorn.Config(build_app(runtime), host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.02)
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture(params=["embedded", "production"])
async def wall(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Center, str]]:
    async with (
        open_center(request, tmp_path, request.param, wall_kpi_every_s=0.5) as center,
        serving(center.runtime) as base,
    ):
        yield center, base


async def recv(ws: ClientConnection, timeout_s: float = 10.0) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    return message


async def until(ws: ClientConnection, match: Any, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no matching message in time")
        message = await recv(ws, left)
        if match(message):
            return message


async def send_level(center: Center, device: str, value: float, ts: int | None = None) -> None:
    body = {"ts": ts or int(time.time() * 1000), "value": value}
    await center.sensor.publish(f"city/sensors/water_level/{device}", json.dumps(body))


async def test_snapshot_then_changes_and_ping(wall: tuple[Center, str]) -> None:
    center, base = wall
    await center.register(GAUGE)
    await send_level(center, "res-1", 21.5)

    async def stored() -> bool:
        return (await center.device("res-1"))["latest"] is not None

    await eventually(stored)
    async with connect(f"{base}/ws/wall?token={center.runtime.admin_token}") as ws:
        first = await recv(ws)
        assert first["type"] == "snapshot"
        data = first["data"]
        assert {"devices", "readings", "vehicles", "incidents", "tickets", "cameras", "kpi", "city"} <= set(data)
        gauge = next(d for d in data["devices"] if d["id"] == "res-1")
        assert gauge["attributes"]["warning_level_m"] == 25.5
        assert gauge["expected_interval_s"] > 0
        assert data["readings"]["res-1"]["value"] == 21.5
        assert {"incidents", "devices", "tickets_today"} <= set(data["kpi"]), "the tiles as last computed"
        await ws.send(json.dumps({"type": "ping"}))
        assert await until(ws, lambda m: m["type"] == "pong")
        await send_level(center, "res-1", 22.25)
        change = await until(ws, lambda m: m["type"] == "reading" and m["data"]["device_id"] == "res-1")
        assert change["data"]["value"] == 22.25
        # Rising past the warning level: the incident and its ticket reach the wall too.
        await send_level(center, "res-1", 25.9)
        incident = await until(ws, lambda m: m["type"] == "incident")
        assert (incident["data"]["severity"], incident["data"]["status"]) == ("high", "open")
        ticket = await until(ws, lambda m: m["type"] == "ticket")
        assert ticket["data"]["incident_id"] == incident["data"]["id"]
        kpi = await until(ws, lambda m: m["type"] == "kpi" and m["data"]["incidents"]["open"] >= 1)
        assert kpi["data"]["incidents"]["by_severity"]["high"] == 1
    # Reconnecting gives a fresh snapshot with what happened meanwhile.
    async with connect(f"{base}/ws/wall?token={center.runtime.admin_token}") as ws:
        again = (await recv(ws))["data"]
        assert again["readings"]["res-1"]["value"] == 25.9
        assert [i["severity"] for i in again["incidents"]] == ["high"]


async def test_no_or_a_bad_token_is_refused(wall: tuple[Center, str]) -> None:
    _center, base = wall
    for url in (f"{base}/ws/wall", f"{base}/ws/wall?token=not-a-token-at-all-0123456789"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url):
                pass
        assert refused.value.response.status_code == 403


async def test_a_fast_entity_is_coalesced_and_its_latest_value_arrives(wall: tuple[Center, str]) -> None:
    center, base = wall
    await center.register(GAUGE)
    async with connect(f"{base}/ws/wall?token={center.runtime.admin_token}") as ws:
        assert (await recv(ws))["type"] == "snapshot"
        start = int(time.time() * 1000) - 10_000
        values = [20.0 + n / 100 for n in range(60)]
        began = time.monotonic()
        for n, value in enumerate(values):
            await send_level(center, "res-1", value, ts=start + n * 10)
            await asyncio.sleep(0.01)
        seen: list[float] = []
        while not seen or seen[-1] != values[-1]:
            message = await recv(ws)
            if message["type"] == "reading" and message["data"]["device_id"] == "res-1":
                seen.append(message["data"]["value"])
        elapsed = time.monotonic() - began
        assert seen[-1] == values[-1], "the latest value is never lost"
        assert len(seen) <= 4 * elapsed + 2, f"{len(seen)} updates in {elapsed:.2f} s: at most 4 a second"
        assert len(seen) < len(values)


async def test_a_slow_client_loses_intermediate_values_never_the_latest_nor_slows_others(
    wall: tuple[Center, str],
) -> None:
    center, base = wall
    ids = [f"res-{n}" for n in range(30)]
    devices = [{**GAUGE, "id": device_id, "name": device_id} for device_id in ids]
    for device in devices:
        await center.register(device)
    token = center.runtime.admin_token
    # The slow client's library buffers one message and then stops reading its socket.
    async with (
        connect(f"{base}/ws/wall?token={token}", max_queue=1) as slow,
        connect(f"{base}/ws/wall?token={token}") as fast,
    ):
        assert (await recv(slow))["type"] == "snapshot"
        assert (await recv(fast))["type"] == "snapshot"
        start = int(time.time() * 1000) - 60_000
        last: dict[str, float] = {}
        for round_ in range(20):
            for n, device_id in enumerate(ids):
                value = 10.0 + round_ + n / 100
                last[device_id] = value
                await send_level(center, device_id, value, ts=start + round_ * 1000)
            await asyncio.sleep(0.05)
        fast_seen: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while fast_seen != last and time.monotonic() < deadline:
            message = await recv(fast)
            if message["type"] == "reading":
                fast_seen[message["data"]["device_id"]] = message["data"]["value"]
        assert fast_seen == last, "the fast client has every latest value while the slow one is stuck"
        slow_seen: dict[str, float] = {}
        slow_count = 0
        while slow_seen != last:
            message = await recv(slow)
            if message["type"] == "reading":
                slow_count += 1
                slow_seen[message["data"]["device_id"]] = message["data"]["value"]
        assert slow_seen == last, "the slow client ends with every latest value"
        assert slow_count < 20 * len(devices), "and skipped intermediate ones"


async def test_two_api_processes_on_one_redis_show_the_same_wall(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_center(request, tmp_path, "production") as center:
        settings = load_settings(
            None,
            data_dir=tmp_path / "api-2",
            redis_url=center.runtime.settings.redis_url,
            database_url=center.runtime.settings.database_url,
            influx_url=center.runtime.settings.influx_url,
            influx_database=center.runtime.settings.influx_database,
            mqtt_url=center.runtime.settings.mqtt_url,
            watch_cameras=False,
        )
        other = await start_runtime(settings, SystemClock(), ingest=False, tickets=True)
        try:
            async with serving(other) as base:
                await center.register(GAUGE)
                async with connect(f"{base}/ws/wall?token={center.runtime.admin_token}") as ws:
                    snapshot = (await recv(ws))["data"]
                    assert any(d["id"] == "res-1" for d in snapshot["devices"])
                    await send_level(center, "res-1", 23.5)
                    change = await until(ws, lambda m: m["type"] == "reading")
                    assert (change["data"]["device_id"], change["data"]["value"]) == ("res-1", 23.5)
        finally:
            await stop_runtime(other)
