"""Several API processes on one PostgreSQL and one Redis (the production split): an incident's
events, delivered to the `tickets` consumer group of two processes and repeated, make exactly one
ticket; two deadline schedulers ticking at once act on each deadline once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from command_center.city import demo_city_path
from command_center.runtime import Runtime, start_runtime, stop_runtime
from hotline.adapters.tickets_sql import TicketFilter
from hotline.desk import Intake
from hotline.domain.tickets import Actor
from kernel.clock import SystemClock
from kernel.events import IncidentChanged
from kernel.settings import load_settings
from tests.helpers import SettableClock, eventually


@asynccontextmanager
async def api_process(
    request: pytest.FixtureRequest, data: Path, clock: SystemClock | SettableClock
) -> AsyncIterator[Runtime]:
    settings = load_settings(
        demo_city_path(),
        data_dir=data,
        redis_url=request.getfixturevalue("redis_url"),
        database_url=request.getfixturevalue("postgres_url"),
        influx_url=request.getfixturevalue("influx_server").url,
        mqtt_url=request.getfixturevalue("mosquitto_server").url,
        tickets_tick_s=3600.0,
        watch_cameras=False,
    )
    runtime = await start_runtime(settings, clock, ingest=False, tickets=True, migrate_schema=True)
    try:
        yield runtime
    finally:
        await stop_runtime(runtime)


def incident(n: int, change: str, severity: str, at_ms: int) -> IncidentChanged:
    return IncidentChanged(
        id=f"inc-{n:04d}",
        change=change,
        rule_id="reservoir-level",
        category="flood",
        severity=severity,  # type: ignore[arg-type]
        escalation_tier=1,
        status="open",
        title=f"水位超警戒 {n}",
        opened_at_ms=at_ms,
        updated_at_ms=at_ms,
        lat=19.93,
        lon=110.252,
        device_ids=(f"res-{n}",),
    )


async def test_two_api_processes_make_one_ticket_per_incident(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(api_process(request, tmp_path / "a", SystemClock()))
        second = await stack.enter_async_context(api_process(request, tmp_path / "b", SystemClock()))
        now = int(time.time() * 1000)
        events = []
        for n in range(20):
            events += [incident(n, "opened", "high", now), incident(n, "updated", "high", now + 1)]
            events += [incident(n, "updated", "critical", now + 2), incident(n, "updated", "critical", now + 3)]
        # Published twice over, from both processes: a redelivery storm.
        await asyncio.gather(first.bus.publish_many(events), second.bus.publish_many(events))
        desk = first.ticket_desk()

        async def all_made() -> bool:
            _found, total = await desk.store.list(_sensor(), 1000, 0)
            return total >= 20

        await eventually(all_made, timeout_s=30)
        await asyncio.sleep(1.0)  # let anything late arrive
        found, total = await desk.store.list(_sensor(), 1000, 0)
        assert total == 20
        assert sorted(t.incident_id or "" for t in found) == [f"inc-{n:04d}" for n in range(20)]
        made = [p.incident_tickets.made for p in (first, second) if p.incident_tickets is not None]
        assert sum(made) >= 20
        for ticket in found:
            severities = [
                e.detail["severity"] for e in await desk.store.history(ticket.id) if e.action == "incident_severity"
            ]
            assert severities == ["high", "critical"], "each severity noted once"


def _sensor() -> TicketFilter:
    return TicketFilter(channel="sensor")


async def test_two_schedulers_act_on_each_deadline_once(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    clock = SettableClock()
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(api_process(request, tmp_path / "a", clock))
        second = await stack.enter_async_context(api_process(request, tmp_path / "b", clock))
        desk = first.ticket_desk()
        agent = Actor("agent", "agent")
        made = [
            await desk.intake(Intake("phone", "flood", f"积水 {n}", department_id="water"), agent) for n in range(10)
        ]
        urgent = await desk.intake(Intake("phone", "flood", "有人被困", urgency="urgent", department_id="water"), agent)
        clock.advance((made[0].deadline_ms - clock.now_ms()) / 1000 - 3600)  # an hour before
        schedulers = [p.ticket_scheduler for p in (first, second) if p.ticket_scheduler is not None]
        await asyncio.gather(*(s.tick() for s in schedulers))
        clock.advance(7200)  # an hour past
        await asyncio.gather(*(s.tick() for s in schedulers), *(s.tick() for s in schedulers))
        for ticket in [*made, urgent]:
            actions = [e.action for e in await desk.store.history(ticket.id)]
            assert actions.count("remind") <= 1, actions
            assert actions.count("overdue") == 1, actions
            assert actions.count("supervise") <= 1, actions
        assert [e.action for e in await desk.store.history(made[0].id)] == ["created", "dispatch", "remind", "overdue"]
