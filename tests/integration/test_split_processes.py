"""Production split into processes over Redis: a gateway process publishes, consumer processes
receive every event at least once, and a consumer killed with -9 leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from command_center.schema import migrate
from iot_gateway.adapters.records_sql import SqlDevices
from kernel.db import database_url, make_engine
from kernel.model import Device
from tests import servers
from tests.helpers import LoadPublisher


def _start(argv: list[str], env: dict[str, str], log: Path, ready: str | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "command_center.cli", *argv], env=env, stdout=out, stderr=subprocess.PIPE
        )
    if ready is not None:
        deadline = time.monotonic() + 60
        while ready not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text()
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
    return proc


def _lines(path: Path) -> list[dict[str, object]]:
    # The last line of a killed consumer may be cut off: only whole lines count.
    text = path.read_text(encoding="utf-8", errors="replace")
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def _keys(lines: list[dict[str, object]]) -> set[tuple[str, int]]:
    out = set()
    for line in lines:
        event = line["event"]
        assert isinstance(event, dict)
        out.add((str(event["device_id"]), int(event["ts_ms"])))
    return out


def test_kill_9_of_a_consumer_process_mid_stream_loses_no_event(
    tmp_path: Path,
    mosquitto_server: servers.Server,
    redis_url: str,
    influx_server: servers.Server,
    postgres_url: str,
) -> None:
    engine = make_engine(database_url(postgres_url, tmp_path))
    migrate(engine)
    devices = [f"gas-s{i}" for i in range(20)]
    import asyncio

    asyncio.run(SqlDevices(engine).add_many([Device(d, "gas", d, 20.0, 110.3) for d in devices]))
    engine.dispose()
    env = {
        **os.environ,
        "CITYOPS_MQTT_URL": mosquitto_server.url,
        "CITYOPS_REDIS_URL": redis_url,
        "CITYOPS_INFLUX_URL": influx_server.url,
        "CITYOPS_INFLUX_DATABASE": "split",
        "CITYOPS_DATABASE_URL": postgres_url,
        "CITYOPS_MQTT_CLIENT_ID": "gw-split-proc",
        "CITYOPS_DATA_DIR": str(tmp_path / "data"),
    }
    gateway_log = tmp_path / "gateway.log"
    with open(gateway_log, "wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "command_center.cli", "gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    consumer = ["events", "--group", "rules", "--topic", "reading", "--claim-idle-s", "1"]
    # A slow consumer: it holds entries for a while, so a kill finds some read and unacknowledged.
    first = _start([*consumer, "--name", "first", "--slow-ms", "150"], env, first_out)
    second: subprocess.Popen[bytes] | None = None
    load = None
    try:
        deadline = time.monotonic() + 60
        while "subscribed to" not in gateway_log.read_text(errors="replace"):
            assert time.monotonic() < deadline, gateway_log.read_text()
            assert gateway.poll() is None, gateway_log.read_text()
            time.sleep(0.05)
        n, start = 4000, int(time.time() * 1000) - 3_600_000
        load = LoadPublisher(
            "127.0.0.1", mosquitto_server.port, devices, n, rate=2000, base_ts=start, client_id="split"
        )
        load.start()
        deadline = time.monotonic() + 60
        while len(_lines(first_out)) < 400:
            assert time.monotonic() < deadline, "the first consumer printed too little"
            assert first.poll() is None, first.stderr.read() if first.stderr else b""
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        seen_by_first = _keys(_lines(first_out))
        assert len(seen_by_first) < n, "the kill came mid-stream"
        second = _start([*consumer, "--name", "second"], env, second_out)
        load.wait_sent()
        assert len(load.acked) == n
        expected = {(devices[i % len(devices)], start + i) for i in range(n)}
        deadline = time.monotonic() + 90
        while not expected <= seen_by_first | _keys(_lines(second_out)):
            missing = len(expected - seen_by_first - _keys(_lines(second_out)))
            assert time.monotonic() < deadline, f"{missing} events never reached a consumer"
            assert second.poll() is None
            time.sleep(0.2)
        second_lines = _lines(second_out)
        # What the first had read and not acknowledged went to the second, marked as redelivered.
        taken_over = {key for line in second_lines if line["redelivered"] for key in _keys([line])}
        assert taken_over, "the second took over the first one's pending events"
        assert taken_over <= expected
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
    finally:
        if load is not None:
            load.close()
        for proc in (first, second, gateway):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.mark.parametrize("command", ["gateway", "api"])
def test_a_production_process_refuses_a_database_not_yet_migrated(
    command: str, tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    env = {
        **os.environ,
        "CITYOPS_DATABASE_URL": postgres_url,
        "CITYOPS_REDIS_URL": redis_url,
        "CITYOPS_MQTT_URL": "mqtt://127.0.0.1:1",
        "CITYOPS_DATA_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "command_center.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "run `cityops migrate` first" in done.stderr


def test_events_needs_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "command_center.cli",
            "events",
            "--group",
            "g",
            "--name",
            "n",
            "--topic",
            "reading",
            "--data-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "CITYOPS_REDIS_URL" in done.stderr
