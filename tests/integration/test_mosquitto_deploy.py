"""The shipped Mosquitto configuration (deploy/mosquitto), run for real with only ports and paths
changed: no anonymous client, each sensor writes only its own topics, nothing over 64 KiB, and
the gateway reads over mqtts:// with a CA made here by openssl. Sensors are `mosquitto_pub`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from command_center.runtime import start_runtime, stop_runtime
from kernel.clock import SystemClock
from tests import servers
from tests.helpers import GAUGE, eventually

from .conftest import Center, api_client, production_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
PASSWORDS = {
    "cityops-gateway": "gw-pass-0123456789",
    "res-1": "res1-pass-0123456789",
    "res-2": "res2-pass-0123456789",
}


@dataclass
class Broker:
    server: servers.Server
    tls_port: int
    ca: Path


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _make_tls(work: Path) -> None:
    """A throwaway CA and a server certificate for localhost/127.0.0.1."""
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=cityops test CA",
         "-keyout", str(work / "ca.key"), "-out", str(work / "ca.pem"))  # fmt: skip
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(work / "server.key"), "-out", str(work / "server.csr"))  # fmt: skip
    (work / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _run("openssl", "x509", "-req", "-days", "2", "-in", str(work / "server.csr"), "-CA", str(work / "ca.pem"),
         "-CAkey", str(work / "ca.key"), "-CAcreateserial", "-out", str(work / "server.pem"),
         "-extfile", str(work / "san.ext"))  # fmt: skip


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    # Not under pytest's private temporary directory: Mosquitto drops root and must read these.
    work = Path(tempfile.mkdtemp(prefix="cityops-mosquitto-deploy-"))
    (work / "data").mkdir()
    _make_tls(work)
    passwd = work / "passwd"
    for n, (user, password) in enumerate(PASSWORDS.items()):
        _run(servers.binary("mosquitto_passwd"), *(["-c"] if n == 0 else []), "-b", str(passwd), user, password)
    shutil.copy(DEPLOY / "acl", work / "acl")
    port, tls_port = servers.free_port(), servers.free_port()
    conf = (DEPLOY / "mosquitto.conf").read_text()
    for old, new in [
        ("listener 1883", f"listener {port} 127.0.0.1"),
        ("listener 8883", f"listener {tls_port} 127.0.0.1"),
        ("/mosquitto/config/", f"{work}/"),
        ("/mosquitto/certs/", f"{work}/"),
        ("/mosquitto/data/", f"{work}/data/"),
        ("log_dest stdout", "log_dest stderr"),
    ]:
        assert old in conf, f"deploy/mosquitto/mosquitto.conf no longer has {old!r}"
        conf = conf.replace(old, new)
    (work / "mosquitto.conf").write_text(conf)
    if os.geteuid() == 0:
        for path in [work, *work.rglob("*")]:
            shutil.chown(path, "mosquitto", "mosquitto")
    server = servers.Server(
        "mosquitto-deploy",
        port,
        f"mqtt://127.0.0.1:{port}",
        work,
        [servers.binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(work / "mosquitto.conf")],
    )
    server.start()
    try:
        yield Broker(server, tls_port, work / "ca.pem")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
async def center(broker: Broker, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Center]:
    # The gateway logs in and reads over TLS, through a shared subscription group (one per test: a
    # persistent session that went away keeps getting its share of the group's messages, queued).
    url = f"mqtts://cityops-gateway:{PASSWORDS['cityops-gateway']}@localhost:{broker.tls_port}"
    settings = production_settings(
        request,
        tmp_path / "data",
        mqtt_client_id=f"gw-{tmp_path.name}",
        mqtt_shared_group=f"cityops-{uuid.uuid4().hex[:8]}",
    ).model_copy(update={"mqtt_url": url, "mqtt_ca_file": broker.ca})
    runtime = await start_runtime(settings, SystemClock(), migrate_schema=True)
    assert runtime.ingress is not None
    assert await runtime.ingress.wait_subscribed(15)
    async with api_client(runtime) as api:
        yield Center(runtime, api, None)  # type: ignore[arg-type]  # sensors here are mosquitto_pub
    await stop_runtime(runtime)


def mosquitto_pub(
    broker: Broker, topic: str, payload: str, user: str | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    argv = [servers.binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.server.port), "-q", "1", "-t", topic]
    if user is not None:
        argv += ["-u", user, "-P", PASSWORDS.get(user, "wrong-password")]
    argv += [*extra, "-m", payload] if payload else [*extra, "-s"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, input="")


def reading(ts: int, value: float, **extra: Any) -> str:
    return json.dumps({"ts": ts, "value": value, **extra})


async def readings(center: Center, device_id: str) -> list[tuple[int, float]]:
    answer = await center.api.get(f"/api/devices/{device_id}/readings")
    return [(r["ts_ms"], r["value"]) for r in answer.json()]


async def test_anonymous_and_wrong_passwords_are_refused(broker: Broker, center: Center) -> None:
    await center.register(GAUGE)
    ts = int(time.time() * 1000)
    anonymous = await asyncio.to_thread(mosquitto_pub, broker, "city/sensors/water_level/res-1", reading(ts, 99), None)
    assert anonymous.returncode != 0
    assert "not authori" in anonymous.stderr.lower()
    wrong = await asyncio.to_thread(mosquitto_pub, broker, "city/sensors/water_level/res-1", reading(ts, 99), "mallory")
    assert wrong.returncode != 0
    good = await asyncio.to_thread(
        mosquitto_pub, broker, "city/sensors/water_level/res-1", reading(ts + 1, 24.0), "res-1"
    )
    assert good.returncode == 0, good.stderr

    async def only_the_good_one() -> list[tuple[int, float]]:
        got = await readings(center, "res-1")
        return got if got else []

    assert await eventually(only_the_good_one) == [(ts + 1, 24.0)]
    health = (await center.api.get("/api/health")).json()
    assert health["components"]["mqtt"]["state"] == "connected"


async def test_a_sensor_cannot_forge_another_sensors_reading_or_status(broker: Broker, center: Center) -> None:
    await center.register(GAUGE)
    await center.register({**GAUGE, "id": "res-2"})
    ts = int(time.time() * 1000)
    for topic, payload in [
        ("city/sensors/water_level/res-2", reading(ts, 30.0)),  # a forged flood reading
        ("city/devices/res-2/status", "offline"),  # a forged outage
    ]:
        sent = await asyncio.to_thread(mosquitto_pub, broker, topic, payload, "res-1")
        assert sent.returncode == 0, sent.stderr  # MQTT 3.1.1: the broker drops it without telling
    own = await asyncio.to_thread(
        mosquitto_pub, broker, "city/sensors/water_level/res-2", reading(ts + 5, 21.0), "res-2"
    )
    assert own.returncode == 0, own.stderr

    async def res2_reported() -> list[tuple[int, float]]:
        return await readings(center, "res-2")

    assert await eventually(res2_reported) == [(ts + 5, 21.0)]
    assert (await center.api.get("/api/devices/res-2")).json()["status"] is None


async def test_nothing_over_64_kib_passes_the_broker(broker: Broker, center: Center) -> None:
    await center.register(GAUGE)
    ts = int(time.time() * 1000)
    big = reading(ts, 22.0, note="x" * 70_000)
    fits = reading(ts + 1, 23.0, note="x" * 60_000)
    assert len(big) > 65_536 > len(fits)
    for payload in (big, fits):
        sent = await asyncio.to_thread(mosquitto_pub, broker, "city/sensors/water_level/res-1", payload, "res-1")
        assert sent.returncode == 0, sent.stderr

    async def stored() -> list[tuple[int, float]]:
        return await readings(center, "res-1")

    assert await eventually(stored) == [(ts + 1, 23.0)]
    health = (await center.api.get("/api/health")).json()
    assert health["dead_letters"]["too_large"] == 0  # the broker dropped it; the gateway never saw it


async def test_sensors_publish_over_tls_with_the_private_ca(broker: Broker, center: Center) -> None:
    await center.register(GAUGE)
    ts = int(time.time() * 1000)
    argv = [
        servers.binary("mosquitto_pub"), "-h", "localhost", "-p", str(broker.tls_port), "--cafile", str(broker.ca),
        "-u", "res-1", "-P", PASSWORDS["res-1"], "-q", "1", "-t", "city/sensors/water_level/res-1",
        "-m", reading(ts, 24.5),
    ]  # fmt: skip
    sent = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30, check=False)
    assert sent.returncode == 0, sent.stderr

    async def stored() -> list[tuple[int, float]]:
        return await readings(center, "res-1")

    assert await eventually(stored) == [(ts, 24.5)]
    # Without the CA, a client cannot be fooled into talking to the broker.
    untrusted = await asyncio.to_thread(
        subprocess.run,
        [a for a in argv if a not in ("--cafile", str(broker.ca))] + ["--capath", "/nonexistent"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert untrusted.returncode != 0


async def test_a_flood_read_over_tls_arrives_whole_and_promptly(broker: Broker, center: Center) -> None:
    # TLS decrypts ahead: after a burst of reads, records may wait in the SSL layer with nothing
    # left on the socket to wake the reader. Every reading must still arrive without new traffic.
    # Small messages (about 55 bytes with their topic) so that one 16 KiB TLS record holds more
    # of them than the reader takes in one burst.
    await center.register({**GAUGE, "kind": "gas", "attributes": {}})
    start = int(time.time() * 1000) - 600_000
    sensor = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="res-1", protocol=mqtt.MQTTv311)
    sensor.username_pw_set("res-1", PASSWORDS["res-1"])
    sensor.max_inflight_messages_set(1000)
    sensor.connect("127.0.0.1", broker.server.port)
    sensor.loop_start()
    try:
        await eventually(lambda: _true(sensor.is_connected()))
        infos = [
            sensor.publish("city/sensors/gas/res-1", f'{{"ts":{start + i},"value":1}}', qos=1) for i in range(3000)
        ]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 30)
    finally:
        sensor.disconnect()
        sensor.loop_stop()

    async def all_arrived() -> bool:
        return len(await readings(center, "res-1")) == 3000

    await eventually(all_arrived, timeout_s=15)


async def _true(value: bool) -> bool:
    return value
