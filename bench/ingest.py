"""bench/ingest: the gateway's sustained ingest rate against a bare paho subscriber, same broker, same run.

Production: Mosquitto, Redis, InfluxDB and PostgreSQL are started on free loopback ports; 100,000
devices are registered. N readings are published while the subscriber is away, so the broker
queues them for its persistent session; then the subscriber comes back and the time to drain
the queue is measured from the first message to the last. The baseline is a bare paho client that
only counts; the gateway's figure counts a reading when it is validated, in Redis and in InfluxDB
(polled in InfluxDB itself). Embedded default: `cityops run` with its in-process amqtt broker,
memory live state and SQLite; the bare subscriber and the gateway drain the same publish stream.

    python -m bench.ingest [--n 200000] [--devices 100000] [--embedded-n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from command_center.schema import migrate
from iot_gateway.adapters.records_sql import SqlDevices
from kernel.db import database_url, make_engine
from kernel.model import Device, DeviceKind
from tests import servers

BASE_TS = int(time.time() * 1000) - 3 * 24 * 3600 * 1000


def register_devices(url: str | None, data_dir: Path, count: int) -> list[Device]:
    # One gauge to nine smoke and ten gas detectors, roughly a smart community's mix.
    smoke: list[DeviceKind] = ["smoke"] * 9
    gas: list[DeviceKind] = ["gas"] * 10
    kinds: list[DeviceKind] = ["water_level", *smoke, *gas]
    devices = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        attributes: dict[str, Any] = {"warning_level_m": 25.0, "danger_level_m": 27.0} if kind == "water_level" else {}
        devices.append(Device(f"{kind}-{i:06d}", kind, f"bench {i}", 20.0 + i * 1e-6, 110.3, None, attributes))
    engine = make_engine(database_url(url, data_dir))
    migrate(engine)
    store = SqlDevices(engine)
    for start in range(0, count, 10_000):
        asyncio.run(store.add_many(devices[start : start + 10_000]))
    engine.dispose()
    return devices


def messages(devices: list[Device], n: int) -> list[tuple[str, bytes]]:
    units = {"water_level": "m", "smoke": "%/m", "gas": "%LEL"}
    out = []
    for i in range(n):
        d = devices[i % len(devices)]
        value = 22.5 if d.kind == "water_level" else 1.5
        body = {"ts": BASE_TS + i, "value": value, "unit": units[d.kind]}
        out.append((f"city/sensors/{d.kind}/{d.id}", json.dumps(body).encode()))
    return out


def publish_all(port: int, batch: list[tuple[str, bytes]]) -> float:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    started = time.perf_counter()
    last = None
    for i, (topic, payload) in enumerate(batch):
        # paho's message ids wrap at 65,535: keep fewer than that unacknowledged.
        if last is not None and i % 20_000 == 0:
            last.wait_for_publish(600)
        last = client.publish(topic, payload, qos=1)
    if last is not None:
        last.wait_for_publish(600)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return elapsed


def start_bare(port: int, mode: str, n: int = 0, protocol: str = "3.1.1") -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "bench.bare_subscriber", mode, "--port", str(port), "--n", str(n),
            "--protocol", protocol, "--client-id", f"bench-bare-{protocol}",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "subscribed" not in line:
        raise RuntimeError(f"bare subscriber did not subscribe: {line!r}")
    return proc


def finish_bare(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=900)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def measure(count: Callable[[], int], n: int, timeout_s: float = 900, interval_s: float = 0.1) -> dict[str, Any]:
    """Poll a stored count until it reaches n; rate from the first poll that saw data to the last."""
    first_t = first_c = None
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        seen = count()
        now = time.perf_counter()
        if seen and first_t is None:
            first_t, first_c = now, seen
        if seen >= n:
            assert first_t is not None
            assert first_c is not None
            span = now - first_t
            return {"stored": seen, "seconds": span, "rate": (seen - first_c) / span if span > 0 else 0.0}
        time.sleep(interval_s)
    raise RuntimeError(f"only {seen} of {n} readings stored within {timeout_s}s")


def influx_count(url: str, db: str) -> int:
    answer = httpx.get(f"{url}/query", params={"db": db, "q": "SELECT COUNT(value) FROM /.*/"}, timeout=30).json()
    total = 0
    for result in answer.get("results", []):
        for series in result.get("series", []):
            total += int(series["values"][0][1])
    return total


def sqlite_count(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def cityops(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "command_center.cli", *args],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(120)


def wait_log(log: Path, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{text!r} not in {log} after {timeout_s}s:\n{log.read_text(errors='replace')[-3000:]}")


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def junk(i: int, devices: list[Device]) -> tuple[str, bytes]:
    """Hostile message number i: a rotation of what the fuzz test throws, all refused."""
    d = devices[i % len(devices)]
    topic = f"city/sensors/{d.kind}/{d.id}" if d.kind != "vehicle" else f"city/vehicles/{d.id}/gps"
    kind = i % 8
    if kind == 0:
        return topic, b'{"ts": 1, "value": '
    if kind == 1:
        return f"city/sensors/gas/ghost-{i}", b'{"ts": 1795000000000, "value": 1}'
    if kind == 2:
        return topic, json.dumps([{"ts": 0, "value": 0}] * 50).encode()
    if kind == 3:
        return topic, b"[" * 2000 + b"]" * 2000
    if kind == 4:
        return topic, b'{"ts": 1795000000000, "value": 1' + b"0" * 500 + b"}"
    if kind == 5:
        return topic, bytes((i * 7 + k) % 256 for k in range(200))
    if kind == 6:
        return f"city/sensors/rain/{d.id}", b'{"ts": 1795000000000, "value": 1}'
    return topic, b'{"ts": "yesterday", "value": 1}'


def health_stats(port: int) -> dict[str, Any]:
    try:
        body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=10).json()
    except httpx.HTTPError:
        return {}
    return dict(body["components"]["gateway"])


def hostile(
    devices: list[Device], n: int, base_env: dict[str, str], mqtt_port: int, influx_url: str, work: Path
) -> dict[str, Any]:
    """Good readings drained alone, then the same good readings interleaved 1:1 with hostile messages.

    Figures: good readings/s in both drains (their ratio is what the flood costs good data), and
    hostile messages/s absorbed (checked, kept as one dead letter each, counted) during the flood.
    """
    good = messages(devices, n)
    results: dict[str, Any] = {}
    for phase, batch in (
        ("alone", good),
        ("flood", [m for pair in zip(good, (junk(i, devices) for i in range(n)), strict=True) for m in pair]),
    ):
        port = servers.free_port()
        env = {
            **base_env,
            "CITYOPS_MQTT_CLIENT_ID": f"bench-{phase}",
            "CITYOPS_INFLUX_DATABASE": f"bench_{phase}",
            "CITYOPS_DATA_DIR": str(work / phase),
        }
        log = work / f"gateway-{phase}.log"
        first = cityops(["gateway", "--health-port", str(port)], env, log)
        wait_log(log, "subscribed to")
        stop(first)
        publish_all(mqtt_port, batch)
        gateway = cityops(["gateway", "--health-port", str(port)], env, log)
        wait_log(log, "Uvicorn running")
        started = time.perf_counter()
        database = f"bench_{phase}"
        stored = measure(lambda: influx_count(influx_url, database), n)  # noqa: B023 - called before the loop moves on
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            stats = health_stats(port)
            if stats.get("messages", 0) >= len(batch) and stats.get("queued", 1) == 0:
                break
            time.sleep(0.1)
        all_s = time.perf_counter() - started
        results[phase] = {"good_rate": stored["rate"], "all_s": all_s, "stats": stats}
        stop(gateway)
    flood = results["flood"]
    flood["hostile_rate"] = n / flood["all_s"]
    return results


PROTOCOLS = ("5", "3.1.1")


def production(n: int, device_count: int, work: Path, hostile_n: int = 0) -> dict[str, Any]:
    """One publish, queued by Mosquitto for four persistent sessions, drained one after the other:
    a bare subscriber and the gateway, each in MQTT 5 and in MQTT 3.1.1."""
    mosq, red, influx = servers.mosquitto(work), servers.redis(work), servers.influxdb(work)
    pg = servers.postgres()
    try:
        db_url = servers.new_database(pg, "bench")
        devices = register_devices(db_url, work, device_count)
        batch = messages(devices, n)
        base_env = {
            "CITYOPS_MQTT_URL": mosq.url,
            "CITYOPS_REDIS_URL": red.url,
            "CITYOPS_INFLUX_URL": influx.url,
            "CITYOPS_DATABASE_URL": db_url,
            "CITYOPS_DATA_DIR": str(work / "gw"),
        }

        def gateway_env(protocol: str) -> dict[str, str]:
            tag = protocol.replace(".", "")
            return {
                **base_env,
                "CITYOPS_MQTT_PROTOCOL": protocol,
                "CITYOPS_MQTT_CLIENT_ID": f"bench-gateway-{tag}",
                "CITYOPS_INFLUX_DATABASE": f"bench{tag}",
            }

        # Every session subscribes once and goes away: Mosquitto then queues the publish for each.
        for protocol in PROTOCOLS:
            start_bare(mosq.port, "prime", protocol=protocol).communicate(timeout=60)
            log = work / f"gateway-{protocol}.log"
            first = cityops(["gateway"], gateway_env(protocol), log)
            wait_log(log, "subscribed to")
            stop(first)
        publish_s = publish_all(mosq.port, batch)

        result: dict[str, Any] = {"publish_s": publish_s, "bare": {}, "gateway": {}}
        for protocol in PROTOCOLS:
            result["bare"][protocol] = finish_bare(start_bare(mosq.port, "drain", n, protocol))
        import redis as redis_lib

        for protocol in PROTOCOLS:
            log = work / f"gateway-{protocol}.log"
            log.write_text("")
            env = gateway_env(protocol)
            gateway = cityops(["gateway"], env, log)
            wait_log(log, "gateway started with")
            proc = psutil.Process(gateway.pid)
            rss_idle, cpu_before = rss_mib(gateway.pid), sum(proc.cpu_times()[:2])
            drained = measure(lambda db=env["CITYOPS_INFLUX_DATABASE"]: influx_count(influx.url, db), n)  # type: ignore[misc]
            drained["cpu_us_per_reading"] = (sum(proc.cpu_times()[:2]) - cpu_before) / n * 1e6
            drained["rss_idle_mib"], drained["rss_mib"] = rss_idle, rss_mib(gateway.pid)
            stop(gateway)
            stats = [line for line in log.read_text().splitlines() if "gateway stopped cleanly" in line]
            drained["stats"] = stats[-1] if stats else ""
            result["gateway"][protocol] = drained
        client = redis_lib.Redis.from_url(red.url)
        result["live_keys"] = sum(1 for _ in client.scan_iter(match="cityops:live:*", count=10_000))
        # What the bus got from both drains: every reading, as events of the work stream.
        entries: Any = client.xrange("cityops:bus:stream:reading")
        result["bus_entries"] = len(entries)
        result["bus_events"] = sum(len(orjson.loads(fields[b"e"])["events"]) for _id, fields in entries)
        result["bus_latest"] = int(client.hlen("cityops:bus:latest:v1:reading"))
        client.close()
        if hostile_n:
            result["hostile"] = hostile(devices, hostile_n, gateway_env("5"), mosq.port, influx.url, work)
        return result
    finally:
        for server in (mosq, red, influx):
            server.stop()
        servers.stop_postgres(pg)


def embedded(n: int, device_count: int, work: Path) -> dict[str, Any]:
    data = work / "embedded"
    data.mkdir()
    devices = register_devices(None, data, device_count)
    batch = messages(devices, n)
    http, broker = servers.free_port(), servers.free_port()
    log = work / "embedded.log"
    proc = cityops(["run", "--data-dir", str(data), "--http-port", str(http), "--mqtt-port", str(broker)], {}, log)
    try:
        wait_log(log, "Uvicorn running")
        rss_idle = rss_mib(proc.pid)
        bare_proc = start_bare(broker, "drain", n)
        holder: dict[str, Any] = {}
        counter = threading.Thread(
            target=lambda: holder.update(measure(lambda: sqlite_count(data / "series.sqlite"), n))
        )
        counter.start()
        publish_s = publish_all(broker, batch)
        bare = finish_bare(bare_proc)
        counter.join()
        return {
            "bare": bare,
            "gateway": holder,
            "publish_s": publish_s,
            "rss_idle_mib": rss_idle,
            "rss_mib": rss_mib(proc.pid),
        }
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="readings for the production run")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--embedded-n", type=int, default=20_000, help="readings for the embedded run (0 skips)")
    parser.add_argument("--hostile-n", type=int, default=50_000, help="good and hostile messages of the flood run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cityops-bench-"))
    print(f"== bench/ingest: {args.n:,} readings, {args.devices:,} registered devices, {os.cpu_count()} cores ==")
    prod = production(args.n, args.devices, work, args.hostile_n)
    bare5, bare3 = prod["bare"]["5"]["rate"], prod["bare"]["3.1.1"]["rate"]
    gw5, gw3 = prod["gateway"]["5"], prod["gateway"]["3.1.1"]
    print("production: Mosquitto 2 + Redis 7 + InfluxDB 1.6 + PostgreSQL 15; one publish drained by each session")
    print(f"  publisher (QoS 1)             {args.n / prod['publish_s']:>10,.0f} readings/s")
    print(f"  bare paho subscriber, MQTT 5  {bare5:>10,.0f} readings/s  (drain, counts only)")
    print(f"  bare paho subscriber, 3.1.1   {bare3:>10,.0f} readings/s")
    print(
        f"  cityops gateway, MQTT 5       {gw5['rate']:>10,.0f} readings/s  (acknowledged after Redis and InfluxDB"
        f" have it; {gw5['cpu_us_per_reading']:.0f} us CPU per reading)"
    )
    print(
        f"  cityops gateway, 3.1.1        {gw3['rate']:>10,.0f} readings/s  "
        f"({gw3['cpu_us_per_reading']:.0f} us CPU per reading)"
    )
    print(f"  ratio gateway / bare, MQTT 5  {gw5['rate'] / bare5:>10.2f}")
    print(f"  ratio gateway / bare, 3.1.1   {gw3['rate'] / bare3:>10.2f}")
    print(f"  ratio gateway 5 / bare 3.1.1  {gw5['rate'] / bare3:>10.2f}")
    print(
        f"  gateway RSS                   {gw5['rss_idle_mib']:>10.0f} MiB with {args.devices:,} devices loaded, "
        f"{gw5['rss_mib']:.0f} MiB after the drain"
    )
    print(f"  Redis live-state keys         {prod['live_keys']:>10,}")
    print(
        f"  Redis bus work stream         {prod['bus_events']:>10,} events in {prod['bus_entries']:,} entries "
        f"(both drains), latest values of {prod['bus_latest']:,} devices"
    )
    print(f"  {gw5['stats'].split(': ', 1)[-1]}")
    if args.hostile_n:
        alone, flood = prod["hostile"]["alone"], prod["hostile"]["flood"]
        print(f"hostile flood (MQTT 5): {args.hostile_n:,} good readings drained alone, then interleaved 1:1 with")
        print("  as many hostile messages (bad JSON, unknown devices, junk arrays, deep nesting, huge numbers, ...)")
        print(f"  good readings alone           {alone['good_rate']:>10,.0f} readings/s")
        print(f"  good readings in the flood    {flood['good_rate']:>10,.0f} readings/s")
        print(f"  ratio flood / alone           {flood['good_rate'] / alone['good_rate']:>10.2f}")
        print(f"  hostile messages absorbed     {flood['hostile_rate']:>10,.0f} messages/s  (each one dead letter)")
        print(f"  gateway after the flood       {flood['stats']}")
    if args.embedded_n:
        emb = embedded(args.embedded_n, args.devices, work)
        e_bare, e_gw = emb["bare"]["rate"], emb["gateway"]["rate"]
        print(f"embedded default: amqtt in-process + memory live state + SQLite, {args.embedded_n:,} readings")
        print(f"  publisher (QoS 1)           {args.embedded_n / emb['publish_s']:>10,.0f} readings/s")
        print(f"  bare paho subscriber        {e_bare:>10,.0f} readings/s  (3.1.1, same broker, same stream)")
        print(f"  cityops gateway             {e_gw:>10,.0f} readings/s  (validated, in memory and in SQLite)")
        print(f"  ratio gateway / bare        {e_gw / e_bare:>10.2f}")
        print(
            f"  process RSS                 {emb['rss_idle_mib']:>10.0f} MiB with {args.devices:,} devices loaded, "
            f"{emb['rss_mib']:.0f} MiB after"
        )


if __name__ == "__main__":
    main()
