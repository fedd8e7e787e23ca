"""bench/peers: the gateway against the flow many cities build instead, Node-RED, on the same drain.

Node-RED 4.1.15 and node-red-contrib-influxdb 0.7.0 are installed from npm into a throwaway
directory (Debian's nodejs and npm). Its flow is the usual one: `mqtt in` (QoS 1, JSON, a
persistent session) -> a `function` node that checks the device id against the registered set and
the value against its kind's range -> `join` (1,000 messages or 0.2 s) -> `influxdb batch` into
InfluxDB 1.6. Our gateway does more on the same messages (full validation, dedup, live state in
Redis, the bus, acknowledgement only after the write) and the bare paho subscriber does only
`json.loads`: the ceiling of a one-process Python client.

Every subscriber has its own persistent session in one Mosquitto. Each round publishes N QoS 1
readings of D devices while all of them are away, so Mosquitto queues a copy for each; then they
drain one after the other, in an order that rotates from round to round, each into a fresh InfluxDB
database. A drain counts only once InfluxDB holds every point (the bare subscriber: once it has
received them all); its rate runs from the first point stored to the last. CPU seconds and peak RSS
are the processes' own (/proc), from their start to the end of their drain.

    python -m bench.peers [--n 100000] [--devices 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.ingest import cityops, influx_count, measure, publish_all, register_devices, wait_log
from iot_gateway.domain.kinds import VALUE_RANGES
from kernel.model import Device
from tests import servers

NODE_RED = "4.1.15"
NODE_RED_INFLUXDB = "0.7.0"
UNITS = {"water_level": "m", "smoke": "%/m", "gas": "%LEL"}

# The function node: what a city's Node-RED flow checks before it stores a reading.
CHECK_JS = """
const parts = msg.topic.split('/');
const kind = parts[2], id = parts[3];
if (global.get('devices')[id] !== kind) { return null; }
const p = msg.payload;
if (p === null || typeof p !== 'object') { return null; }
const range = global.get('ranges')[kind];
if (typeof p.value !== 'number' || !(p.value >= range[0] && p.value <= range[1])) { return null; }
if (typeof p.ts !== 'number') { return null; }
msg.payload = {measurement: kind, tags: {device_id: id}, fields: {value: p.value}, timestamp: p.ts};
return msg;
"""


def install_node_red(where: Path) -> Path:
    """Node-RED and the InfluxDB nodes from npm, pinned; returns the directory holding node_modules."""
    where.mkdir(parents=True, exist_ok=True)
    if not (where / "node_modules" / "node-red" / "red.js").exists():
        subprocess.run(
            ["npm", "install", "--prefix", str(where), "--no-audit", "--no-fund", "--loglevel=error",
             f"node-red@{NODE_RED}", f"node-red-contrib-influxdb@{NODE_RED_INFLUXDB}"],
            check=True,
        )  # fmt: skip
    return where


def node_red_flow(mqtt_port: int, influx_port: int, database: str) -> list[dict[str, Any]]:
    # Ids as the editor makes them: plain words such as "join" are taken for references to config nodes.
    return [
        {"id": "a000000000000001", "type": "tab", "label": "ingest"},
        {
            "id": "a000000000000002",
            "type": "mqtt-broker",
            "name": "mosquitto",
            "broker": "127.0.0.1",
            "port": str(mqtt_port),
            "clientid": "nodered-peer",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": False,
            "autoUnsubscribe": False,
            "birthTopic": "",
            "closeTopic": "",
            "willTopic": "",
        },
        {
            "id": "a000000000000003",
            "type": "mqtt in",
            "z": "a000000000000001",
            "topic": "city/sensors/+/+",
            "qos": "1",
            "datatype": "json",
            "broker": "a000000000000002",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["a000000000000004"]],
        },
        {
            "id": "a000000000000004",
            "type": "function",
            "z": "a000000000000001",
            "func": CHECK_JS,
            "outputs": 1,
            "wires": [["a000000000000005"]],
        },
        {
            "id": "a000000000000005",
            "type": "join",
            "z": "a000000000000001",
            "mode": "custom",
            "build": "array",
            "property": "payload",
            "propertyType": "msg",
            "key": "topic",
            "joiner": "\\n",
            "joinerType": "str",
            "accumulate": False,
            "timeout": "0.2",
            "count": "1000",
            "reduceRight": False,
            "wires": [["a000000000000006"]],
        },
        {
            "id": "a000000000000006",
            "type": "influxdb batch",
            "z": "a000000000000001",
            "influxdb": "a000000000000007",
            "precision": "ms",
            "retentionPolicy": "",
            "wires": [],
        },
        {
            "id": "a000000000000007",
            "type": "influxdb",
            "hostname": "127.0.0.1",
            "port": str(influx_port),
            "protocol": "http",
            "database": database,
            "usetls": False,
            "influxdbVersion": "1.x",
        },
    ]


def node_red_settings(user_dir: Path, http_port: int, devices: list[Device]) -> None:
    registered = {d.id: d.kind for d in devices}
    ranges = {kind: list(bounds) for kind, bounds in VALUE_RANGES.items()}
    (user_dir / "settings.js").write_text(
        "module.exports = {\n"
        f"  uiPort: {http_port}, uiHost: '127.0.0.1', flowFile: 'flows.json', credentialSecret: false,\n"
        # No editor and no telemetry: nothing leaves the machine, nothing but the flow runs.
        "  disableEditor: true, telemetry: {enabled: false}, diagnostics: {enabled: false},\n"
        "  logging: {console: {level: 'info', metrics: false, audit: false}},\n"
        f"  functionGlobalContext: {{devices: {json.dumps(registered)}, ranges: {json.dumps(ranges)}}},\n"
        "};\n"
    )


Started = list[tuple[subprocess.Popen[Any], Path]]


class Peer:
    """One subscriber: `start(database, log)` starts its processes, each with its log."""

    def __init__(self, name: str, start: Callable[[str, Path], Started], ready: str, exits: bool = False) -> None:
        self.name = name
        self.start = start
        self.ready = ready
        # The bare subscriber leaves by itself once it has every message, and reports on itself.
        self.exits = exits
        self.results: list[dict[str, Any]] = []


def proc_stats(procs: list[subprocess.Popen[Any]]) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS in MiB (VmHWM), summed over the processes."""
    cpu = rss = 0.0
    for proc in procs:
        times = psutil.Process(proc.pid).cpu_times()
        cpu += times.user + times.system
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss += int(line.split()[1]) / 1024
    return cpu, rss


def stop_all(procs: list[subprocess.Popen[Any]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def settle(pids: list[int], timeout_s: float = 60.0) -> None:
    """Wait until the servers are idle (InfluxDB compacts the last drain's data for a while after it):
    each drain starts on quiet servers, whichever came before it."""
    procs = [psutil.Process(pid) for pid in pids]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = [sum(p.cpu_times()[:2]) for p in procs]
        time.sleep(1.0)
        if all(sum(p.cpu_times()[:2]) - b < 0.05 for p, b in zip(procs, before, strict=True)):
            return


def create_database(influx_url: str, name: str) -> None:
    httpx.post(f"{influx_url}/query", params={"q": f'CREATE DATABASE "{name}"'}, timeout=30).raise_for_status()


def run(
    n: int, device_count: int, rounds: int, work: Path, only: set[int] | None = None, profile: Path | None = None
) -> dict[str, Any]:
    node_dir = install_node_red(Path(os.environ.get("CITYOPS_BENCH_NODE_RED_DIR", work / "node-red")))
    mosq, red, influx = servers.mosquitto(work), servers.redis(work), servers.influxdb(work)
    pg = servers.postgres()
    try:
        db_url = servers.new_database(pg, "peers")
        devices = register_devices(db_url, work, device_count)
        influx_port = int(influx.url.rsplit(":", 1)[1])

        def node_red(database: str, log: Path) -> Started:
            user = work / "node-red-user"
            user.mkdir(exist_ok=True)
            node_red_settings(user, servers.free_port(), devices)
            (user / "flows.json").write_text(json.dumps(node_red_flow(mosq.port, influx_port, database)))
            out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
            env = {**os.environ, "NODE_PATH": str(node_dir / "node_modules")}
            red_js = node_dir / "node_modules" / "node-red" / "red.js"
            # --userDir: the flow and settings; the InfluxDB nodes are found beside Node-RED itself.
            proc = subprocess.Popen(
                ["node", str(red_js), "--userDir", str(user), "--settings", str(user / "settings.js")],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=node_dir,
            )  # fmt: skip
            return [(proc, log)]

        base_env = {
            "CITYOPS_MQTT_URL": mosq.url,
            "CITYOPS_REDIS_URL": red.url,
            "CITYOPS_INFLUX_URL": influx.url,
            "CITYOPS_DATABASE_URL": db_url,
        }

        def gateways(count: int) -> Callable[[str, Path], Started]:
            def start(database: str, log: Path) -> Started:
                procs = []
                for i in range(count):
                    env = {
                        **base_env,
                        "CITYOPS_INFLUX_DATABASE": database,
                        "CITYOPS_DATA_DIR": str(work / f"gw{count}-{i}"),
                        "CITYOPS_MQTT_CLIENT_ID": f"peer-gateway-{count}-{i}",
                    }
                    if count > 1:
                        env["CITYOPS_MQTT_SHARED_GROUP"] = f"peers{count}"
                    path = log.with_suffix(f".{i}.log")
                    proc = cityops(["gateway"], env, path)
                    procs.append((proc, path))
                    if profile and database != "prime":
                        # Sampled from outside (py-spy attaches), so the measured process is the gateway itself.
                        out = profile / f"{database}.{i}.raw"
                        spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "-f", "raw"]
                        spy += ["-o", str(out), "--pid", str(proc.pid)]
                        subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return procs

            return start

        def bare(_database: str, log: Path) -> Started:
            mode = "prime" if "prime" in log.name else "drain"
            out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
            args = [sys.executable, "-m", "bench.bare_subscriber", mode, "--port", str(mosq.port), "--n", str(n)]
            args += ["--protocol", "5", "--client-id", "peer-bare", "--parse"]
            return [(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT), log)]

        peers = [
            Peer(f"Node-RED {NODE_RED} flow", node_red, "Connected to broker"),
            Peer("cityops gateway, 1 process", gateways(1), "subscribed to"),
            Peer("cityops gateway, 2 processes", gateways(2), "subscribed to"),
            Peer("bare paho + json.loads", bare, "subscribed", exits=True),
        ]
        if only is not None:
            peers = [peer for index, peer in enumerate(peers) if index in only]
        # Each session subscribes once and goes away: Mosquitto then queues every publish for it.
        for index, peer in enumerate(peers):
            started = peer.start("prime", work / f"peer{index}-prime.log")
            for _proc, path in started:
                wait_log(path, peer.ready)
            time.sleep(1.0)  # the SUBACK follows the CONNACK
            if peer.exits:
                started[0][0].wait(60)
            else:
                stop_all([proc for proc, _ in started])

        for round_no in range(rounds):
            batch = [
                (f"city/sensors/{d.kind}/{d.id}", json.dumps({"ts": ts, "value": v, "unit": UNITS[d.kind]}).encode())
                for i in range(n)
                for d in [devices[i % len(devices)]]
                for ts in [int(time.time() * 1000) - 86_400_000 + round_no * n + i]
                for v in [22.5 if d.kind == "water_level" else 1.5]
            ]
            publish_all(mosq.port, batch)
            order = peers[round_no % len(peers) :] + peers[: round_no % len(peers)]
            for peer in order:
                index = peers.index(peer)
                database = f"peer{index}_round{round_no}"
                create_database(influx.url, database)
                settle([server.proc.pid for server in (mosq, red, influx) if server.proc is not None])
                log = work / f"peer{index}-round{round_no}.log"
                procs = [proc for proc, _ in peer.start(database, log)]
                if peer.exits:
                    procs[0].wait(900)
                    result: dict[str, Any] = json.loads(log.read_text().strip().splitlines()[-1])
                    if result["received"] < n:
                        raise RuntimeError(f"{peer.name} received {result['received']} of {n}")
                else:
                    result = measure(lambda db=database: influx_count(influx.url, db), n)  # type: ignore[misc]
                    result["cpu_s"], result["rss_mib"] = proc_stats(procs)
                    stop_all(procs)
                peer.results.append(result)
                print(f"  round {round_no + 1}  {peer.name:<32} {result['rate']:>10,.0f} readings/s", flush=True)
        return {"peers": peers, "node_red_dir": node_dir}
    finally:
        for server in (mosq, red, influx):
            server.stop()
        servers.stop_postgres(pg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="QoS 1 readings queued per round")
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="run only these peers, by number: 0 Node-RED, 1 and 2 gateways, 3 bare")
    parser.add_argument("--profile", type=Path, help="record the gateways with py-spy into this directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cityops-peers-"))
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(
        f"== bench/peers: {args.n:,} QoS 1 readings of {args.devices:,} devices queued in Mosquitto, drained into "
        f"InfluxDB 1.6; {args.rounds} rounds, {os.cpu_count()} cores =="
    )
    print(f"  Node-RED {NODE_RED}, node-red-contrib-influxdb {NODE_RED_INFLUXDB}, Node.js {node}")
    try:
        only = {int(x) for x in args.only.split(",")} if args.only else None
        result = run(args.n, args.devices, args.rounds, work, only, args.profile)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peers: list[Peer] = result["peers"]
    print(f"{'':34} {'min':>9} {'median':>9} {'max':>9}   {'CPU s':>6} {'peak RSS':>9}  (medians)")
    for peer in peers:
        rates = [r["rate"] for r in peer.results]
        print(
            f"  {peer.name:<32} {min(rates):>9,.0f} {statistics.median(rates):>9,.0f} {max(rates):>9,.0f}   "
            f"{statistics.median(r['cpu_s'] for r in peer.results):>6.1f} "
            f"{statistics.median(r['rss_mib'] for r in peer.results):>6.0f} MiB"
        )
    if not peers[0].name.startswith("Node-RED"):
        return
    node_red = statistics.median(r["rate"] for r in peers[0].results)
    for peer in peers[1:]:
        ratio = statistics.median(r["rate"] for r in peer.results) / node_red
        print(f"  ratio {peer.name} / Node-RED{'':<4} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
