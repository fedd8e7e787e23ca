"""The rules engine across restarts and processes: nothing raised twice, nothing lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from command_center.schema import migrate
from iot_gateway.adapters.records_sql import SqlDevices
from kernel.db import database_url, make_engine
from kernel.model import Device
from tests import servers
from tests.helpers import GAUGE, LoadPublisher, eventually

from .conftest import open_center


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_a_restart_keeps_open_incidents_raises_nothing_new_and_forgets_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    quiet = {
        "id": "gas-q",
        "kind": "gas",
        "name": "quiet",
        "lat": 20.0,
        "lon": 110.0,
        "attributes": {"expected_interval_s": 2},
    }
    async with open_center(request, tmp_path, "embedded", rules_tick_s=0.1) as first:
        await first.register(GAUGE)
        await first.register(quiet)
        await first.sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": now_ms(), "value": 26.0}))

        async def opened() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (
                await first.api.get("/api/incidents", params={"rule_id": "reservoir-level"})
            ).json()
            return found

        [incident] = await eventually(opened)
        # The quiet gas detector has never reported: it is silent 3 x 2 s after watching began.
        await eventually(lambda: _has(first.api, "device-silent", "gas-q"))
    async with open_center(request, tmp_path, "embedded", rules_tick_s=0.1) as second:
        await asyncio.sleep(1.0)  # more than enough ticks for anything that would fire at start
        listed = (await second.api.get("/api/incidents")).json()
        assert sorted(i["rule_id"] for i in listed) == ["device-silent", "reservoir-level"], "nothing new at start"
        # Still above warning: the open incident is the one, not raised again.
        await second.sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": now_ms(), "value": 26.1}))
        await asyncio.sleep(0.5)
        assert len((await second.api.get("/api/incidents", params={"rule_id": "reservoir-level"})).json()) == 1
        # Below: the incident raised before the restart resolves (it was not forgotten).
        await second.sensor.publish("city/sensors/water_level/res-1", json.dumps({"ts": now_ms(), "value": 20.0}))

        async def resolved() -> bool:
            got = (await second.api.get(f"/api/incidents/{incident['id']}")).json()
            return bool(got["status"] == "resolved")

        await eventually(resolved)


async def _has(api: httpx.AsyncClient, rule_id: str, device_id: str) -> bool:
    listed = (await api.get("/api/incidents", params={"rule_id": rule_id, "status": "open"})).json()
    return any(device_id in i["device_ids"] for i in listed)


def test_two_rules_processes_share_the_stream_without_a_duplicate_or_a_loss(
    tmp_path: Path,
    mosquitto_server: servers.Server,
    redis_url: str,
    influx_server: servers.Server,
    postgres_url: str,
) -> None:
    engine = make_engine(database_url(postgres_url, tmp_path))
    migrate(engine)
    devices = [f"gas-r{i:03d}" for i in range(120)]
    asyncio.run(
        SqlDevices(engine).add_many([Device(d, "gas", d, 20.0 + i * 0.01, 110.0) for i, d in enumerate(devices)])
    )
    env = {
        **os.environ,
        "CITYOPS_MQTT_URL": mosquitto_server.url,
        "CITYOPS_REDIS_URL": redis_url,
        "CITYOPS_INFLUX_URL": influx_server.url,
        "CITYOPS_INFLUX_DATABASE": "rules2",
        "CITYOPS_DATABASE_URL": postgres_url,
        "CITYOPS_MQTT_CLIENT_ID": "gw-rules2",
        "CITYOPS_DATA_DIR": str(tmp_path / "data"),
        "CITYOPS_BUS_CLAIM_IDLE_S": "1",
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "command_center.cli", *argv], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    def wait_log(name: str, says: str) -> None:
        deadline = time.monotonic() + 60
        while says not in (tmp_path / f"{name}.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, (tmp_path / f"{name}.log").read_text()[-3000:]
            time.sleep(0.05)

    try:
        start(["gateway"], "gateway")
        first, _second = start(["rules"], "rules-a"), start(["rules"], "rules-b")
        for name in ("gateway", "rules-a", "rules-b"):
            wait_log(name, "started")
        wait_log("gateway", "subscribed to")
        # Every reading is over 20 %LEL: each detector's readings are split between both processes,
        # so both try to raise its incident; one process dies with -9 halfway through.
        base = now_ms() - 60_000
        load = LoadPublisher(
            "127.0.0.1", mosquitto_server.port, devices, 3000, rate=1500, base_ts=base, client_id="r2", value=35.0
        )
        load.start()

        time.sleep(1.0)
        first.send_signal(signal.SIGKILL)
        load.wait_sent()
        load.close()
        assert len(load.acked) == 3000

        def count() -> list[tuple[str, int]]:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT subject, count(*) FROM incidents WHERE rule_id = 'gas-leak' GROUP BY subject")
                )
                return [(str(r[0]), int(r[1])) for r in rows]

        deadline = time.monotonic() + 60
        while len(count()) < len(devices):
            assert time.monotonic() < deadline, f"{len(count())} of {len(devices)} devices have their incident"
            time.sleep(0.2)
        time.sleep(1.0)
        rows = count()
        assert sorted(subject for subject, _ in rows) == sorted(devices), "none lost"
        assert all(n == 1 for _, n in rows), "none raised twice"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        engine.dispose()
