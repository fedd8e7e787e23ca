"""The ticket scheduler: reminds a department before its deadline, marks overdue tickets and puts
them under supervision, and presses an urgent ticket nobody answered within 30 minutes.

It keeps no timers: each tick asks the records which deadlines have come, so a restart (or a
new process taking over) loses nothing, and a deadline that passed while every process was down
is acted on at the next start. Only the holder of the `tickets` lease ticks; the changes are
also conditional in the database (a ticket is marked overdue once, reminded once per deadline),
so two processes that overlap for a moment do nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from typing import Final

from kernel.clock import Clock
from kernel.errors import StoreError
from kernel.ports import Bus

from .desk import TicketDesk
from .domain.tickets import SYSTEM, HistoryEntry, NotAllowed, Request, Ticket, mark_overdue

log = logging.getLogger(__name__)
SCHEDULER: Final = dataclasses.replace(SYSTEM, name="system:scheduler")


@dataclass(frozen=True)
class SchedulerOptions:
    tick_s: float = 10.0
    # Remind the department this long before the deadline.
    remind_before_s: float = 86_400.0
    lease_s: float = 30.0


class TicketScheduler:
    def __init__(self, desk: TicketDesk, bus: Bus, clock: Clock, options: SchedulerOptions | None = None) -> None:
        self._desk = desk
        self._clock = clock
        self._opts = options or SchedulerOptions()
        owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._lease = bus.lease("tickets-scheduler", owner, self._opts.lease_s)
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.last_error: str | None = None
        self.done = {"reminded": 0, "overdue": 0, "late_response": 0}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="ticket-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StoreError):
            await self._lease.release()

    async def _loop(self) -> None:
        while True:
            try:
                if await self._lease.acquire():
                    await self.tick()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; the next tick tries again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("ticket scheduler: %s", self.last_error)
            await asyncio.sleep(self._opts.tick_s)

    async def tick(self) -> None:
        """One pass over the deadlines that have come (also called directly by tests)."""
        now = self._clock.now_ms()
        store = self._desk.store
        for ticket in await store.due(now):
            await self._overdue(ticket.id, now)
        for ticket in await store.late_responses(now):
            await self._late_response(ticket, now)
        for ticket in await store.to_remind(now, int(self._opts.remind_before_s * 1000)):
            if await store.mark_reminded(ticket.id, ticket.deadline_ms):
                try:
                    await self._desk.act(ticket.id, Request("remind", note="the deadline is near"), SCHEDULER)
                    self.done["reminded"] += 1
                except NotAllowed:
                    pass  # replied or returned in the meantime
        self.ticks += 1

    async def _overdue(self, ticket_id: str, now: int) -> None:
        def step(ticket: Ticket) -> tuple[Ticket, HistoryEntry]:
            marked = mark_overdue(ticket, now)
            if marked is None:
                raise NotAllowed("not overdue (any more)")
            return marked

        try:
            if await self._desk.apply_step(ticket_id, step, "overdue") is not None:
                self.done["overdue"] += 1
        except NotAllowed:
            pass

    async def _late_response(self, ticket: Ticket, now: int) -> None:
        try:
            await self._desk.act(
                ticket.id, Request("supervise", note="urgent: no department answered within 30 minutes"), SCHEDULER
            )
            self.done["late_response"] += 1
        except NotAllowed:
            pass
