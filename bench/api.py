"""bench/api: the API under a control room's load, beside a bare FastAPI app, in the same run.

`cityops run --demo` (the embedded default with its demo city: simulated sensors publishing, the
gateway, rules, camera checks and the wall all running) is driven by wrk (Debian's, 100
connections, 10 s per route, after 2 s not counted) on the routes a control room polls: one device, the devices
list, incidents, tickets, KPIs and health, each with an admin bearer token. The baseline is a bare
FastAPI app in its own process on the same uvicorn, answering every route with the JSON cityops
gave for it, from memory and without authentication: what the framework costs with none of our
work. Printed per route: requests/s, latency p50 and p99 (wrk's), non-2xx answers, and the ratio.

wrk runs one thread: on this 2-core machine a second wrk thread competes with the server for a
core, and wrk's own waits then make the tail (measured on the bare app alone: p99 39 ms with one
thread, 361 ms with two, at about the same requests/s). The device read is measured with two
threads as well, as the issue's figure was.

Saturation runs measure the most each answers; their p99 is mostly queueing on a machine whose two
cores the load generator shares, and it swings from run to run with loopback TCP retransmissions
(`nstat`: runs with none had a device-read p99 of 67 ms, runs with ~50 of 950 ms). The paced runs
measure what a control room does: 100 consoles, each polling with a pause (40 ms: up to 2,500
requests/s offered), and the latency the consoles then see.

    python -m bench.api [--duration 10] [--connections 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.ingest import cityops, stop, wait_log
from tests import servers

ROUTES = [
    ("device", "/api/devices/{device}"),
    ("devices list", "/api/devices"),
    ("incidents", "/api/incidents"),
    ("tickets", "/api/tickets"),
    ("KPIs", "/api/kpis"),
    ("health", "/api/health"),
]

BARE_APP = """
import json, os
from fastapi import FastAPI
from fastapi.responses import Response
bodies = json.load(open(os.environ["BENCH_BODIES"]))
app = FastAPI()
def route(path, body):
    async def answer() -> Response:
        return Response(body, media_type="application/json")
    app.add_api_route(path, answer, methods=["GET"])
for path, body in bodies.items():
    route(path, body.encode())
"""


# Each connection waits this long between its requests in the paced runs (wrk's Lua `delay`).
PACE_SCRIPT = "delay = function() return {pause_ms} end\n"


def wrk(
    url: str,
    token: str | None,
    duration_s: int,
    connections: int,
    threads: int = 1,
    pause_ms: int | None = None,
    scripts: Path | None = None,
) -> dict[str, Any]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "--timeout", "5s"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    if pause_ms is not None:
        assert scripts is not None
        script = scripts / f"pace-{pause_ms}.lua"
        script.write_text(PACE_SCRIPT.format(pause_ms=pause_ms))
        args += ["-s", str(script)]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True, timeout=duration_s + 60).stdout

    def ms(text: str) -> float:
        value, unit = float(re.match(r"([\d.]+)", text).group(1)), re.sub(r"[\d.]", "", text)  # type: ignore[union-attr]
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]

    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if "99" not in latency:
        raise RuntimeError(f"wrk gave no latency distribution:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": ms(latency["50"]),
        "p99": ms(latency["99"]),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1) if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per route")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--pause-ms", type=int, default=40, help="pause between a connection's requests, paced runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cityops-bench-api-"))
    http, broker, bare_port = servers.free_port(), servers.free_port(), servers.free_port()
    log = work / "cityops.log"
    demo = cityops(
        ["run", "--demo", "--data-dir", str(work / "data"), "--http-port", str(http), "--mqtt-port", str(broker)],
        {},
        log,
    )
    bare: subprocess.Popen[bytes] | None = None
    try:
        wait_log(log, "Uvicorn running", timeout_s=180)
        token = (work / "data" / "admin.token").read_text().strip()
        base = f"http://127.0.0.1:{http}"
        headers = {"Authorization": f"Bearer {token}"}
        time.sleep(5)  # the demo's sensors publish a while: incidents open, the wall has news
        device = httpx.get(f"{base}/api/devices", headers=headers, timeout=30).json()[0]["id"]
        paths = {name: path.format(device=device) for name, path in ROUTES}
        bodies = {}
        for path in paths.values():
            response = httpx.get(base + path, headers=headers, timeout=30)
            response.raise_for_status()
            bodies[path] = response.text
        (work / "bodies.json").write_text(json.dumps(bodies))
        (work / "bare_app.py").write_text(BARE_APP)
        bare = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(work), "bare_app:app", "--port", str(bare_port),
             "--host", "127.0.0.1", "--no-access-log", "--log-level", "warning"],
            env={**os.environ, "BENCH_BODIES": str(work / "bodies.json")}, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        servers.wait_tcp(bare_port)
        print(
            f"== bench/api: wrk, 1 thread, {args.connections} connections, {args.duration} s per route, "
            f"{os.cpu_count()} cores; cityops run --demo (embedded default, demo running) =="
        )
        print("saturation: each connection sends its next request as soon as the last is answered")
        print(f"  {'route':<14} {'cityops req/s':>13} {'p50':>8} {'p99':>8}   {'bare req/s':>10} {'p99':>8}   ratio")
        for name, path in paths.items():
            # A short run first, not counted: the 100 connections open, and the first answers of a
            # route (caches, the connections' set-up) do not stand in the measured latency.
            wrk(base + path, token, 2, args.connections)
            ours = wrk(base + path, token, args.duration, args.connections)
            wrk(f"http://127.0.0.1:{bare_port}{path}", None, 2, args.connections)
            theirs = wrk(f"http://127.0.0.1:{bare_port}{path}", None, args.duration, args.connections)
            flags = "" if not (ours["non2xx"] or ours["errors"]) else f"  ({ours['non2xx']} non-2xx {ours['errors']})"
            print(
                f"  {name:<14} {ours['rps']:>13,.0f} {ours['p50']:>6.1f}ms {ours['p99']:>6.1f}ms   "
                f"{theirs['rps']:>10,.0f} {theirs['p99']:>6.1f}ms   {ours['rps'] / theirs['rps']:.2f}{flags}",
                flush=True,
            )
        print(
            f"paced: each of the {args.connections} connections (a console) waits {args.pause_ms} ms between requests, "
            f"so at most {args.connections * 1000 // args.pause_ms:,} requests/s are offered"
        )
        print(f"  {'route':<14} {'cityops req/s':>13} {'p50':>8} {'p99':>8}   {'bare req/s':>10} {'p99':>8}")
        for name, path in paths.items():
            ours = wrk(base + path, token, args.duration, args.connections, pause_ms=args.pause_ms, scripts=work)
            theirs = wrk(
                f"http://127.0.0.1:{bare_port}{path}", None, args.duration, args.connections,
                pause_ms=args.pause_ms, scripts=work,
            )  # fmt: skip
            flags = "" if not (ours["non2xx"] or ours["errors"]) else f"  ({ours['non2xx']} non-2xx {ours['errors']})"
            print(
                f"  {name:<14} {ours['rps']:>13,.0f} {ours['p50']:>6.1f}ms {ours['p99']:>6.1f}ms   "
                f"{theirs['rps']:>10,.0f} {theirs['p99']:>6.1f}ms{flags}",
                flush=True,
            )
        print("saturation with two wrk threads, as the issue measured")
        device_path = paths["device"]
        wrk(base + device_path, token, 2, args.connections, threads=2)
        ours = wrk(base + device_path, token, args.duration, args.connections, threads=2)
        wrk(f"http://127.0.0.1:{bare_port}{device_path}", None, 2, args.connections, threads=2)
        theirs = wrk(f"http://127.0.0.1:{bare_port}{device_path}", None, args.duration, args.connections, threads=2)
        print(
            f"  {'device, wrk -t2':<14} {ours['rps']:>13,.0f} {ours['p50']:>6.1f}ms {ours['p99']:>6.1f}ms   "
            f"{theirs['rps']:>10,.0f} {theirs['p99']:>6.1f}ms   {ours['rps'] / theirs['rps']:.2f}",
            flush=True,
        )
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
        stop(demo)


if __name__ == "__main__":
    main()
