"""bench/tickets: a year of a large city's tickets (150,000) in SQLite and in PostgreSQL.

- a filtered ticket list (status, department, period; 50 per page, newest first, with its total
  count) through the ticket store and through the HTTP API, p50 and p95, beside the same query
  written by hand in SQL on the bare database driver;
- the KPIs of the whole year (all departments) through the store, beside the same aggregate
  written by hand in SQL.
The ratios show what the layers cost. Targets (issue 9): list p95 under 50 ms, year KPIs under 1 s.

    python -m bench.tickets [--tickets 150000] [--queries 200] [--only sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, insert

from command_center.schema import migrate
from hotline.adapters.tickets_sql import SqlTickets, TicketFilter, departments, tickets
from kernel.db import database_url, make_engine

YEAR_START = 1_735_660_800_000  # 2025-01-01T00:00:00+08:00
DAY = 86_400_000
DEPARTMENTS = [f"d{n:02d}" for n in range(60)]  # Luyi: 60 departments (+ townships)
CATEGORIES = [
    "flood",
    "noise",
    "traffic",
    "price",
    "housing",
    "environment",
    "gas",
    "urban_management",
    "fire",
    "consultation",
]
GRIDS = [f"g-{n:04d}" for n in range(4489)]  # Haikou: 4,489 grids


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rows(n: int, rnd: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        created = YEAR_START + int(rnd.random() * 365 * DAY)
        deadline = created + 7 * DAY
        roll = rnd.random()
        status = "closed" if roll < 0.93 else rnd.choice(["new", "dispatched", "accepted", "returned", "replied"])
        replied = created + int(rnd.uniform(0.5, 8) * DAY) if status in ("closed", "replied") else None
        called = replied + DAY if replied is not None and status == "closed" else None
        closed = called + 3_600_000 if called is not None else None
        out.append(
            {
                "id": f"tk-{i:08x}",
                "number": f"2025{i:010d}",
                "channel": rnd.choice(["phone", "phone", "phone", "wechat", "web", "grid", "sensor"]),
                "called_number": "12345",
                "line": None,
                "category": rnd.choice(CATEGORIES),
                "urgency": "urgent" if rnd.random() < 0.05 else "normal",
                "status": status,
                "title": "工单",
                "description": "群众反映小区附近道路积水，影响出行，请尽快处理。",
                "address": "",
                "lat": 20.0 + rnd.random() * 0.1,
                "lon": 110.3 + rnd.random() * 0.1,
                "grid_id": rnd.choice(GRIDS),
                "street": None,
                "department_id": rnd.choice(DEPARTMENTS) if status != "new" else None,
                "incident_id": None,
                "camera_ids": [],
                "response_deadline_ms": None,
                "deadline_ms": deadline,
                "caller_name": "",
                "caller_phone": "13800000000",
                "satisfaction": rnd.choice(["satisfied", "satisfied", "basically_satisfied", "dissatisfied"])
                if called
                else None,
                "created_at_ms": created,
                "updated_at_ms": closed or created,
                "dispatched_at_ms": created + 600_000,
                "accepted_at_ms": created + 3_600_000,
                "replied_at_ms": replied,
                "callback_at_ms": called,
                "closed_at_ms": closed,
                "reply_text": "已处理" if replied else "",
                "close_text": "",
                "returns": 0,
                "coordination": False,
                "coordinated": False,
                "supervised": False,
                "overdue": False,
                "reminders": 0,
                "extension_requested_days": None,
                "extension_reason": "",
                "extensions": 0,
                "source": "",
                "route_note": "",
                "created_by": "bench",
                "reminded_for_ms": None,
                "version": 1,
            }
        )
    return out


def load(engine: Engine, n: int) -> float:
    migrate(engine)
    rows = _rows(n, random.Random(9))
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            insert(departments),
            [
                {"id": d, "name": d, "categories": [c], "updated_at_ms": 0}
                for d, c in zip(DEPARTMENTS, CATEGORIES * 6, strict=False)
            ],
        )
        for k in range(0, len(rows), 5000):
            conn.execute(insert(tickets), rows[k : k + 5000])
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE tickets")
        else:
            conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


HAND_LIST = (
    "SELECT * FROM tickets WHERE status = {p} AND department_id = {p} AND created_at_ms >= {p} AND created_at_ms < {p} "
    "ORDER BY created_at_ms DESC, id DESC LIMIT 50"
)
HAND_COUNT = (
    "SELECT count(*) FROM tickets WHERE status = {p} AND department_id = {p} "
    "AND created_at_ms >= {p} AND created_at_ms < {p}"
)
HAND_KPIS = """
SELECT department_id, count(*),
  sum(CASE WHEN status = 'closed' THEN 1 ELSE 0 END),
  sum(CASE WHEN status = 'closed' AND closed_at_ms <= deadline_ms THEN 1 ELSE 0 END),
  sum(CASE WHEN replied_at_ms IS NOT NULL THEN 1 ELSE 0 END),
  sum(CASE WHEN callback_at_ms IS NOT NULL THEN 1 ELSE 0 END),
  sum(CASE WHEN callback_at_ms IS NOT NULL AND satisfaction IN ('satisfied', 'basically_satisfied') THEN 1 ELSE 0 END)
FROM tickets WHERE created_at_ms >= {p} AND created_at_ms < {p} GROUP BY department_id
"""
HAND_OVERDUE = (
    "SELECT department_id, count(*) FROM tickets WHERE status IN ('new', 'dispatched', 'accepted', 'returned') "
    "AND deadline_ms < {p} GROUP BY department_id"
)


def _filters(rnd: random.Random, queries: int) -> list[tuple[str, str, int, int]]:
    out = []
    for _ in range(queries):
        month = rnd.randrange(12)
        start = YEAR_START + month * 30 * DAY
        out.append((rnd.choice(["closed", "dispatched", "accepted"]), rnd.choice(DEPARTMENTS), start, start + 30 * DAY))
    return out


def _hand(engine: Engine, filters: list[tuple[str, str, int, int]], now_ms: int) -> tuple[list[float], float]:
    raw = engine.raw_connection()
    p = "%s" if engine.dialect.name == "postgresql" else "?"
    try:
        cur = raw.cursor()
        times = []
        for f in filters:
            t0 = time.perf_counter()
            cur.execute(HAND_LIST.format(p=p), f)
            cur.fetchall()
            cur.execute(HAND_COUNT.format(p=p), f)
            cur.fetchall()
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cur.execute(HAND_KPIS.format(p=p), (YEAR_START, YEAR_START + 365 * DAY))
        cur.fetchall()
        cur.execute(HAND_OVERDUE.format(p=p), (now_ms,))
        cur.fetchall()
        kpi_s = time.perf_counter() - t0
        cur.close()
    finally:
        raw.close()
    return times, kpi_s


async def _layers(
    engine: Engine, filters: list[tuple[str, str, int, int]], now_ms: int, api: httpx.AsyncClient | None
) -> tuple[list[float], list[float], float, int]:
    store = SqlTickets(engine)
    store_times = []
    for status, dep, start, end in filters:
        t0 = time.perf_counter()
        await store.list(
            TicketFilter(status=[status], department_id=dep, created_from_ms=start, created_to_ms=end), 50, 0
        )
        store_times.append(time.perf_counter() - t0)
    api_times = []
    if api is not None:
        for status, dep, start, end in filters:
            t0 = time.perf_counter()
            answer = await api.get(
                "/api/tickets",
                params={"status": status, "department_id": dep, "start": str(start), "end": str(end), "limit": 50},
            )
            answer.raise_for_status()
            api_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    kpis = await store.kpis(YEAR_START, YEAR_START + 365 * DAY, now_ms)
    kpi_s = time.perf_counter() - t0
    return store_times, api_times, kpi_s, kpis.total.accepted


def _ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


async def run_backend(name: str, url: str, data: Path, n: int, queries: int) -> None:
    from command_center.api import build_app
    from command_center.runtime import start_runtime, stop_runtime
    from kernel.clock import SystemClock
    from kernel.settings import load_settings
    from tests import servers

    engine = make_engine(url)
    load_s = load(engine, n)
    print(f"[{name}] {n:,} tickets loaded in {load_s:.1f} s")
    now_ms = YEAR_START + 365 * DAY
    filters = _filters(random.Random(3), queries)
    hand, hand_kpi = _hand(engine, filters, now_ms)
    settings = load_settings(
        None,
        # SQLite: the center's embedded records are the very file loaded above.
        data_dir=data,
        database_url=None if name == "sqlite" else url,
        mqtt_port=servers.free_port(),
        watch_cameras=False,
        tickets_from_incidents=False,
    )
    runtime = await start_runtime(settings, SystemClock(), ingest=False, tickets=True, migrate_schema=True)
    if runtime.ticket_scheduler is not None:
        # A year of old tickets is overdue by today's clock: the scheduler would be marking them
        # while we measure. The benchmark measures reads.
        await runtime.ticket_scheduler.stop()
    try:
        transport = httpx.ASGITransport(app=build_app(runtime))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://cityops", headers={"Authorization": f"Bearer {runtime.admin_token}"}
        ) as api:
            store_t, api_t, kpi_s, accepted = await _layers(engine, filters, now_ms, api)
    finally:
        await stop_runtime(runtime)
        engine.dispose()
    print(f"[{name}] filtered list (50 a page + total count), {queries} queries:")
    hand95 = _pct(hand, 0.95)
    print(f"    hand-written SQL  p50 {_ms(_pct(hand, 0.5))}  p95 {_ms(hand95)}")
    for label, times, note in (("ticket store", store_t, ""), ("HTTP API", api_t, "  (target p95 < 50 ms)")):
        p95 = _pct(times, 0.95)
        print(f"    {label:<16}  p50 {_ms(_pct(times, 0.5))}  p95 {_ms(p95)}  ratio p95 {p95 / hand95:.2f}{note}")
    print(
        f"[{name}] KPIs of the year ({accepted:,} tickets): store {kpi_s:.3f} s, "
        f"hand-written SQL {hand_kpi:.3f} s, ratio {kpi_s / hand_kpi:.2f}  (target < 1 s)"
    )


async def main_async(args: argparse.Namespace) -> None:
    from tests import servers

    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-tickets-") as work:
        data = Path(work)
        if "sqlite" in only:
            (data / "sqlite").mkdir()
            await run_backend(
                "sqlite", database_url(None, data / "sqlite"), data / "sqlite", args.tickets, args.queries
            )
        if "postgresql" in only:
            server = servers.postgres()
            try:
                await run_backend("postgresql", database_url(server.url, data), data / "pg", args.tickets, args.queries)
            finally:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=150_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--only", default="sqlite,postgresql")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
