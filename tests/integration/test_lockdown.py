"""Production locked down: tokens that can be revoked and expire, no weak admin token, no secret
in health, errors or logs, and several processes starting together on one PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from command_center.auth import TokenStore, check_token_text
from command_center.city import demo_city_path, load_city
from command_center.schema import migrate
from iot_gateway.adapters.records_sql import SqlDevices
from kernel.db import database_url, make_engine
from kernel.errors import ConfigError
from tests import servers
from tests.helpers import GAUGE, Publisher

from .conftest import Center

CITYOPS = [sys.executable, "-m", "command_center.cli"]


async def test_tokens_are_listed_revoked_and_expire(center: Center) -> None:
    issued = await center.api.post("/api/tokens", json={"name": "wall", "role": "viewer"})
    assert issued.status_code == 201, issued.text
    body = issued.json()
    wall = {"Authorization": f"Bearer {body['token']}"}
    assert (await center.api.get("/api/devices", headers=wall)).status_code == 200

    listed = (await center.api.get("/api/tokens")).json()
    assert {t["name"] for t in listed} == {"admin", "wall"}
    assert all("token" not in t and "digest" not in t for t in listed)
    assert next(t for t in listed if t["id"] == body["id"])["revoked_at"] is None
    assert (await center.api.delete(f"/api/tokens/{body['id']}", headers=wall)).status_code == 403

    assert (await center.api.delete(f"/api/tokens/{body['id']}")).status_code == 204
    assert (await center.api.get("/api/devices", headers=wall)).status_code == 401
    assert (await center.api.delete("/api/tokens/no-such-id")).status_code == 404
    revoked = next(t for t in (await center.api.get("/api/tokens")).json() if t["id"] == body["id"])
    assert revoked["revoked_at"] is not None

    brief = (await center.api.post("/api/tokens", json={"name": "brief", "role": "viewer", "expires_in_s": 1})).json()
    assert brief["expires_at"] is not None
    headers = {"Authorization": f"Bearer {brief['token']}"}
    assert (await center.api.get("/api/devices", headers=headers)).status_code == 200
    await asyncio.sleep(1.2)
    assert (await center.api.get("/api/devices", headers=headers)).status_code == 401


async def test_a_handler_token_names_its_department(center: Center) -> None:
    missing = await center.api.post("/api/tokens", json={"name": "h", "role": "handler"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body"]
    unknown = await center.api.post("/api/tokens", json={"name": "h", "role": "handler", "department_id": "water"})
    assert unknown.status_code == 422, "no department water yet"
    assert unknown.json()["detail"][0]["loc"] == ["body", "department_id"]
    department = {"id": "water", "name": "水务局", "categories": ["flood"]}
    assert (await center.api.post("/api/departments", json=department)).status_code == 201
    made = await center.api.post("/api/tokens", json={"name": "h", "role": "handler", "department_id": "water"})
    assert made.status_code == 201
    assert made.json()["department_id"] == "water"
    for bad in ({"name": "x", "role": "viewer", "expires_in_s": 0}, {"name": "x", "role": "king"}):
        assert (await center.api.post("/api/tokens", json=bad)).status_code == 422


@pytest.mark.parametrize("text", ["", "   \n", "short-token", "x" * 23])
def test_an_empty_or_short_token_is_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        check_token_text(text, "the token")
    assert check_token_text(" " + "x" * 24 + "\n", "the token") == "x" * 24


def _api_process(
    data_dir: Path, env: dict[str, str], *, migrate_first: bool = True
) -> subprocess.CompletedProcess[str]:
    if migrate_first:  # an api process needs a migrated database, as in production
        migrated = subprocess.run(
            [*CITYOPS, "migrate", "--data-dir", str(data_dir)], env={**os.environ, **env}, check=False, timeout=60
        )
        assert migrated.returncode == 0
    return subprocess.run(
        [*CITYOPS, "api", "--data-dir", str(data_dir), "--http-port", str(servers.free_port())],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("file_text", "env", "says"),
    [
        ("", {}, "is empty"),
        ("\n", {}, "is empty"),
        ("abc123\n", {}, "at least 24"),
        (None, {"CITYOPS_ADMIN_TOKEN": "short"}, "at least 24"),
        (None, {"CITYOPS_ADMIN_TOKEN": ""}, "is empty"),
    ],
)
def test_cityops_refuses_an_empty_or_short_admin_token(
    tmp_path: Path, file_text: str | None, env: dict[str, str], says: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if file_text is not None:
        (data / "admin.token").write_text(file_text)
    done = _api_process(data, env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert says in done.stderr
    # Nothing was registered under the weak token.
    engine = make_engine(database_url(None, data))
    migrate(engine)
    assert asyncio.run(TokenStore(engine).list()) == []
    engine.dispose()


async def test_a_revoked_admin_token_in_the_file_is_replaced(tmp_path: Path) -> None:
    engine = make_engine(database_url(None, tmp_path))
    migrate(engine)
    store = TokenStore(engine)
    token_file = tmp_path / "admin.token"
    first = await store.ensure_admin(token_file, None, 1)
    [info] = await store.list()
    assert await store.revoke(info.id, 2)
    second = await store.ensure_admin(token_file, None, 3)
    assert second != first
    assert token_file.read_text().strip() == second
    assert await store.lookup(first, 4) is None
    assert await store.lookup(second, 4) is not None
    with pytest.raises(ConfigError, match="revoked"):
        await store.ensure_admin(token_file, first, 5)
    engine.dispose()


def test_no_password_or_token_reaches_health_errors_or_logs(
    tmp_path: Path, mosquitto_server: servers.Server, redis_server: servers.Server, postgres_server: servers.Server
) -> None:
    influx = servers.influxdb(tmp_path, auth=True)  # no user "writer": InfluxDB answers 401
    db = servers.new_database(postgres_server, "secrets")
    secret = "S3cret"
    env = {
        "CITYOPS_MQTT_URL": mosquitto_server.url.replace("mqtt://", f"mqtt://gw:{secret}-mqtt@"),
        "CITYOPS_REDIS_URL": redis_server.url.replace("redis://", f"redis://:{secret}-redis@"),
        "CITYOPS_INFLUX_URL": influx.url.replace("http://", f"http://writer:{secret}-influx@"),
        # The test PostgreSQL trusts every local login: the password is carried, not checked.
        "CITYOPS_DATABASE_URL": db.replace("postgres@", f"postgres:{secret}-pg@"),
        "CITYOPS_MQTT_CLIENT_ID": "gw-secrets",
        "CITYOPS_SHUTDOWN_WRITE_TIMEOUT_S": "2",  # InfluxDB refuses us to the end: stop without waiting 30 s
        # Off by default (it costs under load); on here, where its redaction is the point.
        "CITYOPS_HTTP_ACCESS_LOG": "true",
    }
    data, port = tmp_path / "data", servers.free_port()
    log_path = tmp_path / "cityops.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CITYOPS, "run", "--data-dir", str(data), "--http-port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        health: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{base}/api/health", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        token = (data / "admin.token").read_text().strip()
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert client.post("/api/devices", json=GAUGE).status_code == 201
        sensor = Publisher("127.0.0.1", mosquitto_server.port)
        asyncio.run(
            sensor.publish("city/sensors/water_level/res-1", f'{{"ts": {int(time.time() * 1000)}, "value": 1}}')
        )
        sensor.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = httpx.get(f"{base}/api/health", timeout=5).json()
            if health["components"]["time_series"]["state"] == "down" and health["components"]["gateway"]["last_error"]:
                break
            time.sleep(0.2)
        assert health["status"] == "degraded"
        assert any(code in health["components"]["time_series"]["last_error"] for code in ("401", "403"))
        # A token in a query string (as <img> and the wall's WebSocket send it) and in a header.
        httpx.get(f"{base}/api/health", params={"token": f"{secret}-query-token"}, timeout=5)
        httpx.get(f"{base}/api/devices", headers={"Authorization": f"Bearer {secret}-header-token"}, timeout=5)
        assert secret not in str(health)
        assert secret not in client.get("/api/devices/res-1").text
        client.close()
        # The wall's WebSocket takes its token in the query string (browsers cannot set headers).
        with ws_connect(f"ws://127.0.0.1:{port}/ws/wall?token={token}", open_timeout=10) as wall:
            assert json.loads(wall.recv(timeout=30))["type"] == "snapshot"
        with pytest.raises(InvalidStatus):
            ws_connect(f"ws://127.0.0.1:{port}/ws/wall?token={secret}-ws-token", open_timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        influx.stop()
    logged = log_path.read_text(errors="replace")
    assert "GET /api/health" in logged  # the access log is on, and redacted
    assert "token=***" in logged
    assert "/ws/wall?token=***" in logged, "the WebSocket's handshake is logged, redacted"
    assert secret not in logged, [line for line in logged.splitlines() if secret in line][:5]
    assert token not in logged


def test_a_refused_setting_does_not_print_its_password(tmp_path: Path) -> None:
    done = _api_process(
        tmp_path / "d", {"CITYOPS_ENVIRONMENT": "production", "CITYOPS_DATABASE_URL": ""}, migrate_first=False
    )
    assert done.returncode == 2
    bad = _api_process(
        tmp_path / "e",
        {
            "CITYOPS_ENVIRONMENT": "production",
            "CITYOPS_DATABASE_URL": "postgresql://cityops:password@127.0.0.1:1/cityops",
            "CITYOPS_REDIS_URL": "redis://:Real-S3cret-pass@127.0.0.1:1/0",
            "CITYOPS_HTTP_PORT": "not-a-port",
        },
        migrate_first=False,
    )
    assert bad.returncode == 2
    assert "Real-S3cret-pass" not in bad.stderr + bad.stdout


def test_several_starters_race_on_one_postgres(postgres_server: servers.Server, tmp_path: Path) -> None:
    """Schema and start-up writes race: each of 8 starters creates the schema, saves the demo
    city's devices and registers the same admin token at the same instant, on 3 fresh databases."""
    devices = load_city(demo_city_path()).all_devices()
    admin = "a" * 40
    for round_ in range(3):
        url = servers.new_database(postgres_server, f"race{round_}")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def start(
            n: int,
            url: str = url,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
            round_: int = round_,
        ) -> None:
            engine = make_engine(database_url(url, tmp_path))
            try:
                barrier.wait(30)
                migrate(engine)
                asyncio.run(TokenStore(engine).ensure_admin(tmp_path / f"admin-{round_}-{n}.token", admin, 1))
                asyncio.run(SqlDevices(engine).upsert_many(devices))
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                errors.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == [], errors[:2]


def test_several_api_processes_start_together(tmp_path: Path, postgres_server: servers.Server) -> None:
    db = servers.new_database(postgres_server, "procs")
    env = {**os.environ, "CITYOPS_DATABASE_URL": db, "CITYOPS_ADMIN_TOKEN": "t" * 32}
    assert subprocess.run([*CITYOPS, "migrate", "--data-dir", str(tmp_path)], env=env, check=False).returncode == 0
    procs = []
    ports = [servers.free_port() for _ in range(4)]
    for i, port in enumerate(ports):
        log = open(tmp_path / f"api{i}.log", "wb")  # noqa: SIM115 - closed with the process below
        cmd = [*CITYOPS, "api", "--config", str(demo_city_path()), "--data-dir", str(tmp_path / f"d{i}")]
        procs.append((subprocess.Popen([*cmd, "--http-port", str(port)], env=env, stdout=log, stderr=log), log))
    try:
        for (proc, _log), port in zip(procs, ports, strict=True):
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, (tmp_path / f"api{procs.index((proc, _log))}.log").read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.2)
        answer = httpx.get(
            f"http://127.0.0.1:{ports[0]}/api/devices", headers={"Authorization": "Bearer " + "t" * 32}, timeout=10
        )
        assert len(answer.json()) == len(load_city(demo_city_path()).all_devices())
    finally:
        for proc, log in procs:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
            log.close()
