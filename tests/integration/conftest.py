"""A whole command center in-process, on the embedded default or on the real servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from command_center.api import build_app
from command_center.runtime import Runtime, start_runtime, stop_runtime
from kernel.clock import Clock, SystemClock
from kernel.settings import Settings, load_settings
from tests import servers
from tests.helpers import Publisher


@dataclass
class Center:
    """A started runtime with an API client and a sensor publisher."""

    runtime: Runtime
    api: httpx.AsyncClient
    sensor: Publisher

    async def register(self, device: dict[str, Any]) -> None:
        answer = await self.api.post("/api/devices", json=device)
        assert answer.status_code == 201, answer.text

    async def device(self, device_id: str) -> dict[str, Any]:
        answer = await self.api.get(f"/api/devices/{device_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body


@asynccontextmanager
async def api_client(runtime: Runtime, *, anonymous: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the runtime's API, as the admin (or with no token at all)."""
    transport = httpx.ASGITransport(app=build_app(runtime))
    headers = {} if anonymous else {"Authorization": f"Bearer {runtime.admin_token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://cityops", headers=headers) as client:
        yield client


def production_settings(request: pytest.FixtureRequest, data_dir: Path, **extra: Any) -> Settings:
    mosquitto = request.getfixturevalue("mosquitto_server")
    influx = request.getfixturevalue("influx_server")
    return load_settings(
        extra.pop("config_file", None),
        data_dir=data_dir,
        mqtt_url=mosquitto.url,
        redis_url=request.getfixturevalue("redis_url"),
        influx_url=influx.url,
        influx_database=f"t{uuid.uuid4().hex[:12]}",
        database_url=request.getfixturevalue("postgres_url"),
        ingest_flush_interval_s=0.02,
        **extra,
    )


def embedded_settings(data_dir: Path, **extra: Any) -> Settings:
    config_file = extra.pop("config_file", None)
    return load_settings(
        config_file, data_dir=data_dir, mqtt_port=servers.free_port(), ingest_flush_interval_s=0.02, **extra
    )


@asynccontextmanager
async def open_center(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mode: str,
    *,
    watch: bool = False,
    tickets: bool = True,
    clock: Clock | None = None,
    **extra: Any,
) -> AsyncIterator[Center]:
    """A started command center on the embedded default or the real servers, with these settings
    (`watch`: with the camera watch running, as `cityops run` has it)."""
    if mode == "embedded":
        settings = embedded_settings(tmp_path / "data", **extra)
    else:
        settings = production_settings(request, tmp_path / "data", mqtt_client_id=f"gw-{tmp_path.name}", **extra)
    runtime = await start_runtime(
        settings, clock or SystemClock(), rules=True, migrate_schema=True, watch=watch, tickets=tickets
    )
    target = runtime.mqtt_target()
    sensor = Publisher(target.host, target.port)
    try:
        async with api_client(runtime) as api:
            yield Center(runtime, api, sensor)
    finally:
        sensor.close()
        await stop_runtime(runtime)


@pytest.fixture(params=["embedded", "production"])
async def center(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Center]:
    async with open_center(request, tmp_path, request.param) as started:
        yield started
