"""bench/notify: notifications through the outbox to a local webhook receiver, beside a bare loop
of HTTP POSTs with the same client to the same receiver in the same run; and the time from an
incident's escalation to the webhook's receipt.

- **Throughput**: N outbox rows (incident `opened`, one policy sending each to 20 people) are
  written, the notifier started, and the clock runs until every notification is recorded sent.
  The bare loop posts the same number of JSON bodies of the same size with an httpx.AsyncClient,
  as many at once as the notifier's concurrency (20). The receiver is a uvicorn app in a process
  of its own (`bench/notify_receiver.py`) that answers 200 at once. SQLite (the embedded default)
  and PostgreSQL.
- **Latency**: a leader escalates an open incident through the API (tier 1 to 2); the tier-2
  person on duty has a webhook; from the API call to the receiver's receipt, p50 and p99.

    python -m bench.notify [--notifications 4000] [--escalations 100] [--only sqlite,postgresql,latency]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from alerts.domain.evaluate import Raise
from command_center.api import build_app
from command_center.runtime import start_runtime, stop_runtime
from kernel.clock import SystemClock
from kernel.db import database_url
from kernel.outbox import OutboxEntry, append
from kernel.settings import load_settings
from tests import servers

PEOPLE = 20


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _receiver() -> tuple[subprocess.Popen[bytes], str]:
    port = servers.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.notify_receiver", str(port)])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/count", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the receiver did not start")


async def _count(client: httpx.AsyncClient, base: str, path: str = "") -> int:
    return int((await client.get(f"{base}/count", params={"path": path} if path else None)).json()["count"])


async def bare(base: str, n: int, concurrency: int) -> float:
    body = json.dumps(
        {"id": "nt-0000000000000000", "title": "【新事件】[高] 水库水位超警戒" * 2, "text": "x" * 300}
    ).encode()
    async with httpx.AsyncClient(timeout=10) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for k in range(n):
            queue.put_nowait(k)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                response = await client.post(
                    f"{base}/hook/bare", content=body, headers={"Content-Type": "application/json"}
                )
                response.raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - began)


async def through_outbox(base: str, n: int, backend: str, data: Path, url: str | None) -> float:
    settings = load_settings(
        None,
        data_dir=data,
        database_url=url,
        mqtt_port=servers.free_port(),
        watch_cameras=False,
        notify_enabled=False,  # started below, once the outbox is full
        notify_max_per_window=1_000_000,
    )
    runtime = await start_runtime(settings, SystemClock(), ingest=False, tickets=True, migrate_schema=True)
    try:
        store = runtime.notify
        assert store is not None
        people = [
            {"id": f"p{k:02d}", "name": f"值班{k}", "contacts": {"webhook": f"{base}/hook/p{k:02d}"}}
            for k in range(PEOPLE)
        ]
        policy = [
            {"id": "all", "on": "incident", "events": ["opened"], "to": [f"person:p{k:02d}" for k in range(PEOPLE)]}
        ]
        now = int(time.time() * 1000)
        await store.put_config("roster", {"people": people}, "bench", now)
        await store.put_config("policies", policy, "bench", now)
        incidents = n // PEOPLE
        state = {
            "severity": "high",
            "status": "open",
            "escalation_tier": 1,
            "title": "水库水位超警戒",
            "grid_id": "g-1",
        }
        entries = [
            OutboxEntry(now, "incident", f"inc-{k:06d}", "opened", "rule:bench", {**state, "id": f"inc-{k:06d}"}, {})
            for k in range(incidents)
        ]

        def fill() -> None:
            with runtime.engine.begin() as conn:
                append(conn, entries)

        await asyncio.to_thread(fill)
        from command_center.runtime import start_notifier

        began = time.perf_counter()
        await start_notifier(runtime)
        while True:
            counts = await store.counts()
            if counts.get("sent", 0) >= incidents * PEOPLE:
                break
            if counts.get("failed"):
                raise RuntimeError(f"deliveries failed: {counts}")
            if time.perf_counter() - began > 300:
                raise RuntimeError(f"not all sent after 300 s: {counts}")
            await asyncio.sleep(0.05)
        rate = incidents * PEOPLE / (time.perf_counter() - began)
    finally:
        await stop_runtime(runtime)
    print(f"  [{backend}] cityops outbox -> notifier -> webhook   {rate:>8,.0f} notifications/s")
    return rate


async def latency(base: str, escalations: int, data: Path) -> None:
    settings = load_settings(
        None,
        data_dir=data,
        mqtt_port=servers.free_port(),
        watch_cameras=False,
        notify_max_per_window=1_000_000,  # one person gets every escalation: no digests here
    )
    runtime = await start_runtime(settings, SystemClock(), ingest=False, tickets=True, migrate_schema=True)
    samples: list[float] = []
    try:
        transport = httpx.ASGITransport(app=build_app(runtime))
        headers = {"Authorization": f"Bearer {runtime.admin_token}"}
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://cityops", headers=headers) as api,
            httpx.AsyncClient(timeout=5) as client,
        ):
            patterns = [
                {"post": "tier1", "person_id": "one", "days": "daily", "start": "00:00", "end": "00:00"},
                {"post": "tier2", "person_id": "two", "days": "daily", "start": "00:00", "end": "00:00"},
            ]
            people = [
                {"id": "one", "name": "一级", "contacts": {"webhook": f"{base}/hook/tier1"}},
                {"id": "two", "name": "二级", "contacts": {"webhook": f"{base}/hook/tier2"}},
            ]
            assert (await api.put("/api/duty", json={"people": people, "patterns": patterns})).status_code == 200
            for k in range(escalations):
                incident, _ = await runtime.incidents.raised(
                    Raise(
                        "bench",
                        f"dev-{k}",
                        "high",
                        "水库水位超警戒",
                        int(time.time() * 1000),
                        (f"dev-{k}",),
                        19.9,
                        110.3,
                    ),
                    "flood",
                )
                await asyncio.sleep(0.05)  # tier 1's own notification goes first
                before = await _count(client, base, "/hook/tier2")
                began = time.perf_counter()
                answer = await api.post(f"/api/incidents/{incident.id}/escalate", json={"note": "bench"})
                answer.raise_for_status()
                while await _count(client, base, "/hook/tier2") < before + 1:  # noqa: ASYNC110 - polls another process
                    await asyncio.sleep(0.002)
                samples.append((time.perf_counter() - began) * 1000)
    finally:
        await stop_runtime(runtime)
    print(f"escalation to webhook receipt: {escalations} escalations (tier 1 -> 2 through the API, embedded default)")
    print(f"  p50 {_pct(samples, 0.5):.1f} ms  p99 {_pct(samples, 0.99):.1f} ms  max {max(samples):.1f} ms")


async def main_async(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    proc, base = _receiver()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-notify-") as work:
            root = Path(work)
            if only & {"sqlite", "postgresql"}:
                print(f"throughput: {args.notifications:,} notifications to a local webhook receiver, 20 at once")
                rate = await bare(base, args.notifications, 20)
                print(f"  bare httpx POST loop (same client, same receiver) {rate:>8,.0f} POSTs/s")
                for backend in ("sqlite", "postgresql"):
                    if backend not in only:
                        continue
                    data = root / backend
                    data.mkdir()
                    if backend == "sqlite":
                        ours = await through_outbox(base, args.notifications, backend, data, None)
                    else:
                        server = servers.postgres()
                        try:
                            ours = await through_outbox(
                                base, args.notifications, backend, data, database_url(server.url, data)
                            )
                        finally:
                            server.stop()
                    print(f"  [{backend}] ratio cityops / bare               {ours / rate:>8.2f}  (target >= 0.5)")
            if "latency" in only:
                (root / "latency").mkdir()
                await latency(base, args.escalations, root / "latency")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=4000)
    parser.add_argument("--escalations", type=int, default=100)
    parser.add_argument("--only", default="sqlite,postgresql,latency")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
