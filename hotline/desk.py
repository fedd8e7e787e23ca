"""The ticket desk: intake, routing, actions and their events; one per process that serves the API.

Tickets live in the records database, so every API process sees the same ones; each change is
also published on the bus (`ticket.changed`) for the wall and for other processes. Departments
and grids are read from the records into a router (the grids behind an R-tree); a change made
through this process applies at once, one made through another process within `reload_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from kernel.clock import Clock
from kernel.errors import StoreError
from kernel.events import TicketChanged
from kernel.ports import Bus

from .adapters.tickets_sql import SqlTickets
from .domain.calendar import WorkCalendar
from .domain.routing import DEFAULT_LINES, Department, GridError, GridIndex, Line, Router, parse_grids
from .domain.tickets import (
    CHANNELS,
    SYSTEM,
    Actor,
    Context,
    Forbidden,
    HistoryEntry,
    Invalid,
    Request,
    Ticket,
    Urgency,
    act,
    deadlines,
)

log = logging.getLogger(__name__)
GRIDS_DOC: Final = "grids"
# Who may take tickets in: hotline agents, admins, and tokens made for intake only (Open311 apps).
INTAKE_ROLES: Final = frozenset({"agent", "admin", "intake", "system"})


@dataclass(frozen=True, slots=True)
class Intake:
    """A new ticket as an agent, a citizen's app or an incident gives it."""

    channel: str
    category: str
    description: str
    urgency: Urgency = "normal"
    title: str = ""
    called_number: str | None = None
    lat: float | None = None
    lon: float | None = None
    grid_id: str | None = None
    address: str = ""
    caller_name: str = ""
    caller_phone: str = ""
    # Dispatch at once to this department (else the router decides, when `auto_dispatch`).
    department_id: str | None = None
    auto_dispatch: bool = True
    # Answered at intake: the ticket is closed with this answer (a consultation).
    answer: str = ""
    incident_id: str | None = None
    camera_ids: tuple[str, ...] = ()
    source: str = ""


def ticket_event(t: Ticket, action: str) -> TicketChanged:
    return TicketChanged(
        id=t.id,
        number=t.number,
        action=action,
        status=t.status,
        channel=t.channel,
        category=t.category,
        urgency=t.urgency,
        at_ms=t.updated_at_ms,
        department_id=t.department_id,
        incident_id=t.incident_id,
        grid_id=t.grid_id,
        lat=t.lat,
        lon=t.lon,
        deadline_ms=t.deadline_ms,
        response_deadline_ms=t.response_deadline_ms,
        camera_ids=t.camera_ids,
    )


class TicketDesk:
    def __init__(
        self,
        store: SqlTickets,
        bus: Bus,
        clock: Clock,
        calendar: WorkCalendar,
        *,
        lines: Sequence[Line] = DEFAULT_LINES,
        reload_s: float = 30.0,
    ) -> None:
        self.store = store
        self.calendar = calendar
        self._bus = bus
        self._clock = clock
        self._lines = list(lines)
        self._reload_s = reload_s
        self.router = Router([], GridIndex([]), self._lines)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._reload_loop(), name="ticket-desk-reload")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def reload(self) -> None:
        found = await self.store.departments()
        grids_doc = await self.store.doc(GRIDS_DOC)
        departments = {d.id: d for d in found}
        try:
            grids = parse_grids(grids_doc, departments) if grids_doc else []
        except GridError as exc:
            # Stored grids were checked when saved; a department removed since leaves its grids unrouted.
            log.warning("stored grids refused (%s); routing without grids", exc)
            grids = []
        self.router = Router(found, GridIndex(grids), self._lines)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self._reload_s)
            try:
                await self.reload()
            except StoreError as exc:
                log.warning("ticket desk: reloading departments and grids failed: %s", exc)

    def context(self) -> Context:
        return Context(self.router.departments, self.calendar)

    async def _publish(self, ticket: Ticket, action: str) -> None:
        try:
            await self._bus.publish(ticket_event(ticket, action))
        except StoreError:
            # The ticket is stored; the wall catches up from its next snapshot.
            log.warning("ticket %s %s, but the bus is down", ticket.number, action)

    def _check(self, intake: Intake) -> None:
        if intake.channel not in CHANNELS:
            raise Invalid(f"unknown channel {intake.channel!r}; one of {', '.join(CHANNELS)}", "channel")
        if intake.urgency not in ("normal", "urgent"):
            raise Invalid("urgency must be normal or urgent", "urgency")
        categories = self.router.categories()
        # Sensor tickets carry their rule's category, routed by grid when no department claims it.
        if intake.channel != "sensor" and intake.category not in categories:
            raise Invalid(
                f"unknown category {intake.category!r}; the departments take: {', '.join(categories) or 'none yet'}",
                "category",
            )
        if intake.called_number is not None and intake.called_number not in self.router.lines:
            raise Invalid(
                f"unknown hotline number {intake.called_number!r}; lines: {', '.join(self.router.lines)}",
                "called_number",
            )
        if (intake.lat is None) != (intake.lon is None):
            raise Invalid("give lat and lon together", "lat" if intake.lat is None else "lon")
        if intake.department_id is not None and intake.department_id not in self.router.departments:
            raise Invalid(f"unknown department {intake.department_id!r}", "department_id")
        if not intake.description.strip():
            raise Invalid("description is required", "description")

    async def intake(self, intake: Intake, actor: Actor) -> Ticket:
        """Check, route and store a new ticket; dispatch or close it at once where that is decided."""
        if actor.role not in INTAKE_ROLES:
            raise Forbidden(f"role {actor.role!r} may not take tickets in")
        self._check(intake)
        grid = None
        if intake.lat is not None and intake.lon is not None:
            grid = self.router.grids.locate(intake.lat, intake.lon)
            if grid is None and len(self.router.grids) and intake.channel != "sensor":
                raise Invalid(f"the position {intake.lat}, {intake.lon} is outside every grid of the city", "lat")
        if grid is None and intake.grid_id is not None:
            grid = self.router.grids.get(intake.grid_id)
        called = intake.called_number or ("12345" if intake.channel == "phone" else None)
        route = self.router.route(
            intake.category,
            grid=grid,
            called_number=called,
            auto=intake.auto_dispatch and not intake.answer and intake.department_id is None,
        )
        now = self._clock.now_ms()
        response_deadline, deadline = deadlines(now, intake.urgency, self.calendar)
        draft = Ticket(
            id="",
            number=self.calendar.local_day(now).strftime("%Y%m%d"),
            channel=intake.channel,
            category=intake.category,
            urgency=intake.urgency,
            status="new",
            description=intake.description.strip(),
            created_at_ms=now,
            updated_at_ms=now,
            deadline_ms=deadline,
            response_deadline_ms=response_deadline,
            called_number=called,
            line=route.line.number if route.line is not None and route.line.departments else None,
            title=intake.title.strip() or intake.description.strip()[:60],
            address=intake.address,
            lat=intake.lat,
            lon=intake.lon,
            grid_id=grid.id if grid is not None else intake.grid_id,
            street=grid.street if grid is not None else None,
            incident_id=intake.incident_id,
            camera_ids=intake.camera_ids,
            caller_name=intake.caller_name,
            caller_phone=intake.caller_phone.strip(),
            source=intake.source,
            route_note=route.note,
            created_by=actor.name,
        )
        detail: dict[str, Any] = {"channel": intake.channel, "route": route.note}
        if called:
            detail["called_number"] = called
        then: Request | None = None
        by = actor
        if intake.answer:
            then = Request("close", text=intake.answer)
        elif intake.department_id is not None or route.department_id is not None:
            then = Request("dispatch", department_id=intake.department_id or route.department_id)
            if intake.department_id is None:
                by = dataclasses.replace(SYSTEM, name="system:router")
        ctx = self.context()
        step = None if then is None else (lambda t: act(t, then, by, now, ctx))
        ticket, created = await self.store.create(draft, (actor.name, actor.role), detail, step)
        if created:
            # A ticket dispatched (or answered) at intake is announced as that: what follows it
            # (the department's queue, a notification) cares that it was dispatched.
            await self._publish(ticket, "created" if then is None else then.action)
        return ticket

    async def act(self, ticket_id: str, request: Request, actor: Actor) -> Ticket | None:
        """One action; None when there is no such ticket. Raises the domain's refusals."""
        ctx = self.context()
        now = self._clock.now_ms()
        done = await self.store.apply(ticket_id, lambda t: act(t, request, actor, now, ctx))
        if done is None:
            return None
        ticket, _entry = done
        await self._publish(ticket, request.action)
        return ticket

    async def apply_step(self, ticket_id: str, step: Any, action: str) -> Ticket | None:
        """A change computed by the caller (the scheduler's overdue mark), stored and published."""
        done = await self.store.apply(ticket_id, step)
        if done is None:
            return None
        await self._publish(done[0], action)
        return done[0]

    async def note(self, ticket: Ticket, entry: HistoryEntry, dedup: str) -> bool:
        return await self.store.note(entry, dedup)

    async def save_department(self, department: Department) -> bool:
        created = await self.store.save_department(department, self._clock.now_ms())
        await self.reload()
        return created

    async def save_grids(self, collection: Any) -> int:
        """Check and store the grids (GridError naming the field at fault); how many."""
        grids = parse_grids(collection, self.router.departments)
        await self.store.save_doc(GRIDS_DOC, collection, self._clock.now_ms())
        await self.reload()
        return len(grids)
