"""The incident-to-ticket policy (CONTRACT.md): an incident whose rule says it needs a department
(by default from severity high) becomes exactly one hotline ticket, channel `sensor`, urgent for
high and critical, routed by category and grid, with the nearest online cameras attached; the
incident's later changes are written into the ticket's history.

It reads incidents from the work stream as the `tickets` consumer group, so each event is
handled by one API process, at least once, and a process that dies leaves its events to the
others. Exactly one ticket comes of an incident however often its events arrive: the tickets
table is unique by incident, and a history note is unique by the change it records.

A ticket never resolves its incident: closing the ticket while the incident still fires leaves
the incident open for a person, and the ticket's history says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from alerts.adapters.incidents_sql import SqlIncidents
from alerts.domain.rules import AnyRule, rank
from hotline.desk import Intake, TicketDesk
from hotline.domain.tickets import Actor, HistoryEntry, Ticket, TicketError
from kernel.events import INCIDENT_CHANGED, RULE_CHANGED, IncidentChanged, RuleChanged
from kernel.ports import Bus

log = logging.getLogger(__name__)
GROUP: Final = "tickets"
ACTOR: Final = Actor("system:incidents", "system")
URGENT_FROM: Final = "high"


def _describe(event: IncidentChanged) -> str:
    where = f" ({event.lat:.5f}, {event.lon:.5f})" if event.lat is not None and event.lon is not None else ""
    devices = f"; devices {', '.join(event.device_ids)}" if event.device_ids else ""
    return f"[{event.severity}] {event.title}{where}{devices}. Incident {event.id}, rule {event.rule_id}."


class IncidentTickets:
    def __init__(
        self,
        desk: TicketDesk,
        bus: Bus,
        incidents: SqlIncidents,
        load_rules: Callable[[], Awaitable[Sequence[AnyRule]]],
        nearby_cameras: Callable[[float, float], list[str]],
        *,
        name: str | None = None,
    ) -> None:
        self._desk = desk
        self._bus = bus
        self._incidents = incidents
        self._load_rules = load_rules
        self._nearby = nearby_cameras
        self._name = name or f"tickets-{socket.gethostname()}-{os.getpid()}"
        self._rules: dict[str, AnyRule] = {}
        self._task: asyncio.Task[None] | None = None
        self.made = 0
        self.noted = 0
        self.last_error: str | None = None

    async def start(self) -> None:
        self._rules = {r.id: r for r in await self._load_rules()}
        self._task = asyncio.create_task(self._consume(), name="incident-tickets")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def stats(self) -> dict[str, object]:
        return {"tickets_made": self.made, "history_notes": self.noted, "last_error": self.last_error}

    async def _consume(self) -> None:
        consumer = self._bus.consumer(GROUP, self._name, [INCIDENT_CHANGED, RULE_CHANGED])
        attempt = 0
        try:
            while True:
                try:
                    for item in await consumer.read(count=20, block_s=1.0):
                        while True:  # the same entry until it is handled: nothing is skipped on a failure
                            try:
                                for event in item.events:
                                    await self.handle(event)
                                break
                            except asyncio.CancelledError:
                                raise
                            except Exception as exc:  # noqa: BLE001 - logged, backed off, retried
                                self.last_error = f"{type(exc).__name__}: {exc}"
                                attempt += 1
                                delay = min(0.1 * 2**attempt, 5.0) * random.uniform(0.8, 1.2)
                                log.warning("incident tickets: %s; again in %.1fs", self.last_error, delay)
                                await asyncio.sleep(delay)
                        attempt = 0
                        await consumer.ack([item])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the bus is down: back off and read again
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    attempt += 1
                    await asyncio.sleep(min(0.1 * 2**attempt, 5.0))
        finally:
            await consumer.close()

    async def _rule(self, rule_id: str) -> AnyRule | None:
        if rule_id not in self._rules:
            self._rules = {r.id: r for r in await self._load_rules()}
        return self._rules.get(rule_id)

    def needs_ticket(self, event: IncidentChanged, rule: AnyRule | None) -> bool:
        threshold = rule.ticket_from if rule is not None else "high"
        return threshold is not None and rank(event.severity) >= rank(threshold)

    async def handle(self, event: object) -> Ticket | None:
        """One event: a ticket made, or a note in an existing ticket's history (or nothing)."""
        if isinstance(event, RuleChanged):
            self._rules = {r.id: r for r in await self._load_rules()}
            return None
        if not isinstance(event, IncidentChanged):
            return None
        ticket = await self._desk.store.by_incident(event.id)
        if ticket is None:
            if event.status == "resolved" or not self.needs_ticket(event, await self._rule(event.rule_id)):
                return None
            return await self._make(event)
        await self._note(ticket, event)
        return ticket

    async def _make(self, event: IncidentChanged) -> Ticket:
        cameras = tuple(event.camera_ids)
        if not cameras and event.lat is not None and event.lon is not None:
            cameras = tuple(self._nearby(event.lat, event.lon))
        intake = Intake(
            channel="sensor",
            category=event.category,
            description=_describe(event),
            title=event.title[:200],
            urgency="urgent" if rank(event.severity) >= rank(URGENT_FROM) else "normal",
            lat=event.lat,
            lon=event.lon,
            grid_id=event.grid_id,
            incident_id=event.id,
            camera_ids=cameras,
            source=f"incident:{event.rule_id}",
        )
        try:
            ticket = await self._desk.intake(intake, ACTOR)
        except TicketError as exc:
            # A sensor incident must reach a person even when it cannot be routed: retried
            # as a plain ticket left for an agent, with why.
            log.warning("incident %s: ticket refused as given (%s); taking it in without a position", event.id, exc)
            intake = dataclasses.replace(intake, lat=None, lon=None, auto_dispatch=False)
            ticket = await self._desk.intake(intake, ACTOR)
        if ticket.incident_id == event.id:
            await self._incidents.set_ticket(event.id, ticket.id)
            await self._note(ticket, event)
        self.made += 1
        log.info("incident %s -> ticket %s (%s)", event.id, ticket.number, ticket.department_id or "agents' queue")
        return ticket

    async def _note(self, ticket: Ticket, event: IncidentChanged) -> None:
        """The change into the ticket's history, once: the rules engine publishes an incident on
        every reading that keeps it raised, so a severity is noted once per severity reached, a
        tier once per tier, a resolution once per time it was resolved."""
        key = _change_key(event)
        if key is None:
            return
        action, dedup = key
        detail = {
            "incident_id": event.id,
            "change": event.change,
            "severity": event.severity,
            "escalation_tier": event.escalation_tier,
            "incident_status": event.status,
        }
        entry = HistoryEntry(
            ticket.id, event.updated_at_ms, ACTOR.name, ACTOR.role, action, ticket.status, ticket.status, detail
        )
        if await self._desk.store.note(entry, dedup):
            self.noted += 1


def _change_key(event: IncidentChanged) -> tuple[str, str] | None:
    """(history action, dedup key) for an incident change worth a line in its ticket, or None."""
    if event.status == "resolved":
        return "incident_resolved", f"{event.id}|resolved|{event.resolved_at_ms}"
    if event.change == "escalated":
        return "incident_escalated", f"{event.id}|tier|{event.escalation_tier}"
    if event.change == "acknowledged":
        return "incident_acknowledged", f"{event.id}|acknowledged"
    if event.change in ("opened", "updated", "merged", "reopened"):
        return "incident_severity", f"{event.id}|severity|{event.severity}"
    return None


async def note_close(desk: TicketDesk, incidents: SqlIncidents, ticket: Ticket, at_ms: int) -> bool:
    """After a sensor ticket is closed: if its incident still fires, say so in the ticket's history
    (the incident stays open for a person; closing paperwork never resolves a live danger)."""
    if ticket.incident_id is None:
        return False
    incident = await incidents.get(ticket.incident_id)
    if incident is None or incident.status == "resolved":
        return False
    entry = HistoryEntry(
        ticket.id,
        at_ms,
        ACTOR.name,
        ACTOR.role,
        "incident_still_open",
        ticket.status,
        ticket.status,
        {"incident_id": incident.id, "incident_status": incident.status, "cleared": incident.cleared},
    )
    return await desk.store.note(entry, f"{incident.id}|still_open|{ticket.id}|{at_ms}")
