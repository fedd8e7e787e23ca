"""The `cityops` command as a person runs it: a real process, stopped with SIGTERM, restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests import servers

CITYOPS = [sys.executable, "-m", "command_center.cli"]


@contextmanager
def cityops(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    http, broker = servers.free_port(), servers.free_port()
    log = open(data_dir.parent / f"cityops-{http}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            *CITYOPS,
            "run",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http),
            "--mqtt-port",
            str(broker),
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        base = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError("cityops did not start: " + (data_dir.parent / f"cityops-{http}.log").read_text())
        yield base, broker
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
        assert code == 0, (data_dir.parent / f"cityops-{http}.log").read_text()[-3000:]


def api(base: str, data_dir: Path) -> httpx.Client:
    token = (data_dir / "admin.token").read_text().strip()
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def wait_for(probe: Any, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("condition not met")


def test_run_stop_and_restart_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    start = int(time.time() * 1000) - 30_000
    with cityops(data_dir=data) as (base, broker):
        token = (data / "admin.token").read_text().strip()
        with api(base, data) as client:
            created = client.post(
                "/api/devices", json={"id": "gas-1", "kind": "gas", "name": "燃气", "lat": 20.0, "lon": 110.3}
            )
            assert created.status_code == 201
            sensor = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
            sensor.connect("127.0.0.1", broker)
            sensor.loop_start()
            for i in range(20):
                sensor.publish(
                    "city/sensors/gas/gas-1", json.dumps({"ts": start + i, "value": i}), qos=1
                ).wait_for_publish(10)
            sensor.disconnect()
            sensor.loop_stop()
            wait_for(lambda: client.get("/api/devices/gas-1").json()["latest"])
    # SIGTERM answered with exit 0 (checked on leaving the block); now the same data dir again.
    with cityops(data_dir=data) as (base, _broker), api(base, data) as client:
        assert (data / "admin.token").read_text().strip() == token
        device = client.get("/api/devices/gas-1").json()
        assert device["latest"]["ts_ms"] == start + 19
        history = client.get("/api/devices/gas-1/readings").json()
        assert [r["value"] for r in history] == [float(i) for i in range(20)]


def test_demo_shows_readings_flowing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with (
        cityops("--demo", data_dir=data, env={"CITYOPS_SIMULATE_RATE": "50"}) as (base, _),
        api(base, data) as client,
    ):
        devices = client.get("/api/devices").json()
        assert len(devices) >= 50

        def latest(device_id: str) -> Any:
            return client.get(f"/api/devices/{device_id}").json()["latest"]

        first = wait_for(lambda: latest("res-tielu"))
        wait_for(lambda: latest("res-tielu")["ts_ms"] > first["ts_ms"])
        truck = wait_for(lambda: latest("veh-hz-001"))
        assert {"lat", "lon", "speed_kmh"} <= set(truck)
        assert client.post("/api/demo/scenarios/reservoir_rise").json()["device_id"] == "res-tielu"
        danger = client.get("/api/devices/res-tielu").json()["attributes"]["warning_level_m"]
        wait_for(lambda: latest("res-tielu")["value"] >= danger, timeout_s=120)
        health = client.get("/api/health").json()
        assert health["status"] == "ok"
        assert sum(health["dead_letters"].values()) == 0


@pytest.mark.timeout(300)
def test_demo_cameras_are_served_and_judged_by_the_watch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # Two ffmpeg encoders, the relay and the watch's workers share 2 cores here: generous timeouts.
    env = {
        "CITYOPS_SIMULATE_RATE": "5",
        "CITYOPS_CAMERA_LIVENESS_EVERY_S": "5",
        "CITYOPS_CAMERA_OPEN_TIMEOUT_S": "15",
    }
    with cityops("--demo", data_dir=data, env=env) as (base, _), api(base, data) as client:
        # The demo's cameras, served by the camera simulator and judged by the watch.
        cameras = client.get("/api/cameras", params={"limit": 100}).json()
        assert len(cameras) == 24, "22 from the simulator, an HLS and an RTSP one made by ffmpeg"

        def judged(camera_id: str, status: str) -> bool:
            return bool(client.get(f"/api/cameras/{camera_id}").json()["status"] == status)

        wait_for(lambda: judged("cam-tielu-dam", "online"), timeout_s=60)
        wait_for(lambda: judged("cam-yunlong-gate", "offline"), timeout_s=60)
        wait_for(lambda: judged("cam-haidian-b8", "degraded"), timeout_s=60)
        wait_for(lambda: judged("cam-coastal-hls", "online"), timeout_s=120)
        wait_for(lambda: judged("cam-port-rtsp", "online"), timeout_s=120)
        near = client.get("/api/cameras", params={"near": "19.930,110.252", "limit": 2}).json()
        assert [c["id"] for c in near] == ["cam-tielu-dam", "cam-tielu-spill"]
        # Within a grid's polygon (the city's GeoJSON grids).
        haidian = client.get("/api/cameras", params={"grid": "g-haidian-01"}).json()
        assert [c["id"] for c in haidian] == [
            "cam-haidian-b3",
            "cam-haidian-b8",
            "cam-haidian-gate",
            "cam-haidian-lane",
        ]
        assert client.get("/api/cameras", params={"grid": "nowhere"}).status_code == 422


def test_simulate_command_feeds_a_gateway_process(tmp_path: Path, mosquitto_server: servers.Server) -> None:
    data = tmp_path / "data"
    env = {
        **os.environ,
        "CITYOPS_MQTT_URL": mosquitto_server.url,
        "CITYOPS_MQTT_CLIENT_ID": "gw-sim",
        "CITYOPS_DATA_DIR": str(data),
    }
    # The gateway on its own (a production process), with the demo city as its config.
    from command_center.city import demo_city_path

    # As docker-compose does: the schema first, once, then the processes.
    migrated = subprocess.run([*CITYOPS, "migrate"], env=env, capture_output=True, text=True, check=False)
    assert migrated.returncode == 0, migrated.stderr[-2000:]
    health_port = servers.free_port()
    gateway = subprocess.Popen(
        [*CITYOPS, "gateway", "--config", str(demo_city_path()), "--health-port", str(health_port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def health(port: int) -> subprocess.CompletedProcess[str]:
        url = f"http://127.0.0.1:{port}/api/health"
        return subprocess.run([*CITYOPS, "health", "--url", url], capture_output=True, text=True, check=False)

    try:
        # The health check docker-compose runs: 0 once the gateway is up and subscribed.
        wait_for(lambda: health(health_port).returncode == 0, timeout_s=60)
        assert health(health_port).stdout.strip() == "ok"
        assert health(servers.free_port()).returncode == 1  # nothing answers there
        sim = subprocess.run(
            [
                *CITYOPS,
                "simulate",
                "--mqtt-url",
                mosquitto_server.url,
                "--rate",
                "100",
                "--duration",
                "2",
                "--scenario",
                "smoke_then_gas",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sim.returncode == 0, sim.stderr
        assert "published" in sim.stderr
    finally:
        gateway.send_signal(signal.SIGTERM)
        out, _ = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, out.decode()[-3000:]
    stopped = out.decode().splitlines()[-1]
    assert "gateway stopped cleanly" in stopped
    assert "'accepted': 0" not in stopped
    assert "'rejected': 0" in stopped


def _camera_file(path: Path, n: int, bad: bool = True) -> Path:
    lines = ["id,name,department,lat,lon,stream_url"]
    lines += [f"cam-{i},摄像机{i},公安,{20 + i * 1e-4:.6f},110.3,http://10.0.0.{i % 250}/mjpeg" for i in range(n)]
    if bad:
        lines.append("cam-bad,x,公安,200,110.3,http://10.0.0.1/mjpeg")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cameras_import_with_no_center_running_and_through_a_running_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    offline = subprocess.run(
        [*CITYOPS, "cameras", "import", str(_camera_file(tmp_path / "a.csv", 1500)), "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CITYOPS_HTTP_PORT": str(servers.free_port())},
    )
    assert offline.returncode == 1, offline.stderr  # a line was rejected
    assert "importing" in offline.stderr
    assert "into the records" in offline.stderr
    assert "cameras: 100%" in offline.stderr, "a progress bar"
    assert "line 1502: lat:" in offline.stdout
    assert "imported 1500, rejected 1" in offline.stdout
    with cityops(data_dir=data) as (base, _broker), api(base, data) as client:
        total = client.get("/api/cameras", params={"limit": 1}).headers["X-Total-Count"]
        assert total == "1500", "imported before the start, loaded at the start"
        second = _camera_file(tmp_path / "b.csv", 0, bad=False)
        second.write_text(
            "id,name,department,lat,lon,stream_url\n"
            + "".join(f"new-{i},新{i},城管,20.5,110.5,http://10.1.0.1/m\n" for i in range(2100)),
            encoding="utf-8",
        )
        online = subprocess.run(
            [*CITYOPS, "cameras", "import", str(second), "--data-dir", str(data), "--url", base],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert online.returncode == 0, online.stderr + online.stdout
        assert "through the command center" in online.stderr
        assert "imported 2100, rejected 0" in online.stdout
        # The running center's index knows them at once: nearest to their spot.
        [near] = client.get("/api/cameras", params={"near": "20.5,110.5", "limit": 1}).json()
        assert near["id"].startswith("new-")
