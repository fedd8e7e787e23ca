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

from alerts.adapters.incidents_sql import SqlIncidents
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


async def test_a_restart_keeps_windows_and_what_people_resolved(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    count_rule = {
        "id": "wl-count",
        "kind": "count",
        "name": "three high readings in ten minutes",
        "category": "flood",
        "scope": {"device_ids": ["res-1"]},
        "test": {"field": "value", "op": ">=", "at": 24.0},
        "times": 3,
        "window_s": 600,
    }
    topic = "city/sensors/water_level/res-1"
    async with open_center(request, tmp_path, "embedded", rules_tick_s=0.1) as first:
        await first.register(GAUGE)
        assert (await first.api.post("/api/rules", json=count_rule)).status_code == 201
        for value in (24.5, 24.6):  # two of three, under warning (25.5)
            await first.sensor.publish(topic, json.dumps({"ts": now_ms(), "value": value}))
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
    async with open_center(request, tmp_path, "embedded", rules_tick_s=0.1) as second:
        await second.sensor.publish(topic, json.dumps({"ts": now_ms(), "value": 25.6}))

        async def counted() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (
                await second.api.get("/api/incidents", params={"rule_id": "wl-count"})
            ).json()
            return found

        [by_count] = await eventually(counted)  # the window outlived the restart
        level = await eventually(lambda: _open(second.api, "reservoir-level"))
        for incident in (by_count, level):
            done = await second.api.post(f"/api/incidents/{incident['id']}/resolve", json={"note": "处置完毕"})
            assert done.status_code == 200, done.text
    # Resolved by a person while both conditions still hold: a restart raises neither again.
    async with open_center(request, tmp_path, "embedded", rules_tick_s=0.1) as third:
        await third.sensor.publish(topic, json.dumps({"ts": now_ms(), "value": 25.7}))
        await asyncio.sleep(1.0)
        listed = (await third.api.get("/api/incidents")).json()
        assert sorted((i["rule_id"], i["status"]) for i in listed) == [
            ("reservoir-level", "resolved"),
            ("wl-count", "resolved"),
        ]


async def _open(api: httpx.AsyncClient, rule_id: str) -> dict[str, Any]:
    listed = (await api.get("/api/incidents", params={"rule_id": rule_id, "status": "open"})).json()
    return dict(listed[0]) if listed else {}


async def _has(api: httpx.AsyncClient, rule_id: str, device_id: str) -> bool:
    listed = (await api.get("/api/incidents", params={"rule_id": rule_id, "status": "open"})).json()
    return any(device_id in i["device_ids"] for i in listed)


def test_a_standby_rules_process_takes_over_from_a_killed_leader_without_a_duplicate_or_a_loss(
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
        SqlDevices(engine).add_many(
            [
                *[Device(d, "gas", d, 20.0 + i * 0.01, 110.0) for i, d in enumerate(devices)],
                Device("wl-w", "water_level", "window", 20.5, 110.5),
            ]
        )
    )
    # A count rule whose window spans the takeover: two hits seen by the leader that dies, the
    # third by the one that takes over (which rebuilds the window from the time series).
    count_rule = {
        "id": "wl-count",
        "kind": "count",
        "name": "three high readings in ten minutes",
        "category": "flood",
        "scope": {"device_ids": ["wl-w"]},
        "test": {"field": "value", "op": ">=", "at": 10.0},
        "times": 3,
        "window_s": 600,
    }
    asyncio.run(SqlIncidents(engine).save_rule(count_rule, now_ms()))
    env = {
        **os.environ,
        "CITYOPS_MQTT_URL": mosquitto_server.url,
        "CITYOPS_REDIS_URL": redis_url,
        "CITYOPS_INFLUX_URL": influx_server.url,
        "CITYOPS_INFLUX_DATABASE": "rules2",
        "CITYOPS_DATABASE_URL": postgres_url,
        "CITYOPS_MQTT_CLIENT_ID": "gw-rules2",
        "CITYOPS_DATA_DIR": str(tmp_path / "data"),
        "CITYOPS_RULES_LEASE_S": "2",
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "command_center.cli", *argv], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    def log_of(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")

    def wait_log(name: str, says: str) -> None:
        deadline = time.monotonic() + 60
        while says not in log_of(name):
            assert time.monotonic() < deadline, log_of(name)[-3000:]
            time.sleep(0.05)

    def count(rule_id: str) -> list[tuple[str, int]]:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT subject, count(*) FROM incidents WHERE rule_id = :r GROUP BY subject"), {"r": rule_id}
            )
            return [(str(r[0]), int(r[1])) for r in rows]

    try:
        start(["gateway"], "gateway")
        rules = {"rules-a": start(["rules"], "rules-a"), "rules-b": start(["rules"], "rules-b")}
        for name in ("gateway", "rules-a", "rules-b"):
            wait_log(name, "started")
        wait_log("gateway", "subscribed to")
        [leader] = [name for name in rules if "started: leading" in log_of(name)]
        [standby] = [name for name in rules if name != leader]
        assert "standing by" in log_of(standby)

        def sensor(value: float) -> None:
            argv = [servers.binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(mosquitto_server.port), "-q", "1"]
            payload = json.dumps({"ts": now_ms(), "value": value})
            subprocess.run([*argv, "-t", "city/sensors/water_level/wl-w", "-m", payload], check=True, timeout=30)

        sensor(12.0)
        sensor(13.0)
        # Every reading is over 20 %LEL: one incident per detector; the leader dies with -9
        # halfway through, and the standby takes over what it left unacknowledged.
        base = now_ms() - 60_000
        load = LoadPublisher(
            "127.0.0.1", mosquitto_server.port, devices, 3000, rate=1500, base_ts=base, client_id="r2", value=35.0
        )
        load.start()
        time.sleep(1.0)
        rules[leader].send_signal(signal.SIGKILL)
        load.wait_sent()
        load.close()
        assert len(load.acked) == 3000
        assert count("wl-count") == [], "two hits of three: nothing yet"
        wait_log(standby, "started: leading")
        sensor(14.0)

        deadline = time.monotonic() + 60
        while len(count("gas-leak")) < len(devices) or not count("wl-count"):
            assert time.monotonic() < deadline, f"{len(count('gas-leak'))} of {len(devices)}; {count('wl-count')}"
            time.sleep(0.2)
        time.sleep(1.0)
        rows = count("gas-leak")
        assert sorted(subject for subject, _ in rows) == sorted(devices), "none lost"
        assert all(n == 1 for _, n in rows), "none raised twice"
        assert count("wl-count") == [("wl-w", 1)], "the window survived the takeover"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        engine.dispose()
