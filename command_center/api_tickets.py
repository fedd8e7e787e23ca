"""The hotline part of the HTTP API (CONTRACT.md): tickets and their actions, history, slips,
KPIs, departments, grids, hotline lines and the knowledge base.

Who may do what is the ticket domain's rule (hotline/domain/tickets.py); here a token becomes
an actor. A department handler sees and acts on its own department's tickets only. The
caller's phone number is shown in full only to those who need it (hotline agents and admins,
and a handler for a ticket of its own department), one ticket at a time, and every such read is
written to the phone-read audit; lists always show it masked.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from hotline.adapters.tickets_sql import SqlTickets, TicketFilter
from hotline.desk import Intake, TicketDesk
from hotline.domain.routing import Department, GridError
from hotline.domain.slips import slip_code, split_code, verify
from hotline.domain.tickets import (
    ACTIONS,
    STATUSES,
    Actor,
    Forbidden,
    HistoryEntry,
    Invalid,
    NotAllowed,
    Request,
    Ticket,
    TicketError,
    allowed_actions,
    mask_phone,
)
from kernel.clock import parse_time

from .auth import Principal
from .runtime import Runtime
from .ticket_policy import note_close

# Who sees a caller's full number (one ticket at a time, audited).
PHONE_READERS: Final = frozenset({"agent", "admin"})
DEPARTMENT_WRITERS: Final = frozenset({"admin"})
KNOWLEDGE_WRITERS: Final = frozenset({"admin", "agent"})
SLIP_KEY: Final = "ticket-slip-key"


def iso_in(ms: int | None, tz: ZoneInfo) -> str | None:
    """A time in the city's zone, with its offset (CONTRACT.md: every time carries one)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=tz).isoformat(timespec="milliseconds")


def ticket_json(t: Ticket, tz: ZoneInfo, *, full_phone: bool = False) -> dict[str, Any]:
    return {
        "id": t.id,
        "number": t.number,
        "channel": t.channel,
        "called_number": t.called_number,
        "line": t.line,
        "category": t.category,
        "urgency": t.urgency,
        "status": t.status,
        "title": t.title,
        "description": t.description,
        "address": t.address,
        "lat": t.lat,
        "lon": t.lon,
        "grid_id": t.grid_id,
        "street": t.street,
        "department_id": t.department_id,
        "incident_id": t.incident_id,
        "camera_ids": list(t.camera_ids),
        "response_deadline": iso_in(t.response_deadline_ms, tz),
        "deadline": iso_in(t.deadline_ms, tz),
        "caller_name": t.caller_name[:1] + "*" * max(0, len(t.caller_name) - 1) if not full_phone else t.caller_name,
        "caller_phone": t.caller_phone if full_phone else mask_phone(t.caller_phone),
        "caller_phone_masked": not full_phone and bool(t.caller_phone),
        "satisfaction": t.satisfaction,
        "created_at": iso_in(t.created_at_ms, tz),
        "updated_at": iso_in(t.updated_at_ms, tz),
        "dispatched_at": iso_in(t.dispatched_at_ms, tz),
        "accepted_at": iso_in(t.accepted_at_ms, tz),
        "replied_at": iso_in(t.replied_at_ms, tz),
        "callback_at": iso_in(t.callback_at_ms, tz),
        "closed_at": iso_in(t.closed_at_ms, tz),
        "on_time": t.on_time,
        "reply_text": t.reply_text,
        "close_text": t.close_text,
        "returns": t.returns,
        "coordination": t.coordination,
        "coordinated": t.coordinated,
        "supervised": t.supervised,
        "overdue": t.overdue,
        "reminders": t.reminders,
        "extension_requested_days": t.extension_requested_days,
        "extension_reason": t.extension_reason,
        "extensions": t.extensions,
        "source": t.source,
        "route_note": t.route_note,
        "allowed_actions": allowed_actions(t),
    }


def history_json(e: HistoryEntry, tz: ZoneInfo) -> dict[str, Any]:
    detail = dict(e.detail)
    for key in ("deadline_ms", "previous_deadline_ms"):
        if isinstance(detail.get(key), int):
            detail[key.removesuffix("_ms")] = iso_in(detail.pop(key), tz)
    return {
        "at": iso_in(e.at_ms, tz),
        "who": e.actor,
        "role": e.role,
        "action": e.action,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "detail": detail,
    }


class TicketIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str = Field(min_length=1, max_length=16)
    category: str = Field(min_length=1, max_length=64)
    description: str = Field(min_length=1, max_length=10_000)
    title: str = Field(default="", max_length=200)
    urgency: Literal["normal", "urgent"] = "normal"
    called_number: str | None = Field(default=None, max_length=16)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: str = Field(default="", max_length=500)
    caller_name: str = Field(default="", max_length=100)
    caller_phone: str = Field(default="", max_length=32, pattern=r"^[0-9+\- ]*$")
    department_id: str | None = Field(default=None, max_length=64)
    auto_dispatch: bool = True
    # Answered at intake: closed at once with this answer, or the knowledge entry's.
    answer: str = Field(default="", max_length=10_000)
    knowledge_id: int | None = Field(default=None, ge=1)


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1, max_length=32)
    department_id: str | None = Field(default=None, max_length=64)
    reason: str = Field(default="", max_length=2000)
    text: str = Field(default="", max_length=10_000)
    satisfaction: str | None = Field(default=None, max_length=32)
    days: int | None = None
    approve: bool | None = None
    note: str = Field(default="", max_length=2000)


class DepartmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    name: str = Field(min_length=1, max_length=200)
    categories: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]] = Field(
        default_factory=list, max_length=200
    )


class KnowledgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=2000)
    answer: str = Field(min_length=1, max_length=10_000)
    department_id: str | None = Field(default=None, max_length=64)
    tags: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(default_factory=list, max_length=50)


def _refusal(exc: TicketError) -> Exception:
    if isinstance(exc, Invalid):
        return RequestValidationError(
            [{"loc": ("body", exc.field or "action"), "msg": str(exc), "type": "value_error"}]
        )
    if isinstance(exc, Forbidden):
        return HTTPException(403, str(exc))
    return HTTPException(409, str(exc))


def actor_of(who: Principal) -> Actor:
    return Actor(who.name, who.role, who.department_id)


def ticket_routes(
    runtime: Runtime, role_in: Callable[[frozenset[str]], Callable[[Principal], Awaitable[Principal]]], anyone: Any
) -> APIRouter:
    api = APIRouter(prefix="/api")
    desk: TicketDesk = runtime.ticket_desk()
    store = desk.store
    tz = desk.calendar.tz
    clock = runtime.clock
    admin_only = Depends(role_in(DEPARTMENT_WRITERS))
    knowledge_writer = Depends(role_in(KNOWLEDGE_WRITERS))

    async def _ticket_or_404(ticket_id: str) -> Ticket:
        ticket = await store.get(ticket_id)
        if ticket is None:
            raise HTTPException(404, f"no ticket {ticket_id!r}")
        return ticket

    def _may_see(who: Principal, ticket: Ticket) -> None:
        if who.role == "handler" and ticket.department_id != who.department_id:
            raise HTTPException(403, f"a handler of {who.department_id!r} sees its own department's tickets only")

    async def _shown(ticket: Ticket, who: Principal, purpose: str) -> dict[str, Any]:
        full = bool(ticket.caller_phone) and (
            who.role in PHONE_READERS or (who.role == "handler" and who.department_id == ticket.department_id)
        )
        if full:
            await store.log_phone_read(ticket.id, clock.now_ms(), who.name, who.role, who.token_id, purpose)
        return ticket_json(ticket, tz, full_phone=full)

    @api.post("/tickets", status_code=201)
    async def create_ticket(body: TicketIn, who: Principal = anyone) -> dict[str, Any]:
        answer = body.answer
        if body.knowledge_id is not None:
            entry = await store.knowledge_entry(body.knowledge_id)
            if entry is None:
                raise RequestValidationError(
                    [
                        {
                            "loc": ("body", "knowledge_id"),
                            "msg": f"no knowledge entry {body.knowledge_id}",
                            "type": "value_error",
                        }
                    ]
                )
            answer = answer or entry.answer
        intake = Intake(
            channel=body.channel,
            category=body.category,
            description=body.description,
            urgency=body.urgency,
            title=body.title,
            called_number=body.called_number,
            lat=body.lat,
            lon=body.lon,
            address=body.address,
            caller_name=body.caller_name,
            caller_phone=body.caller_phone,
            department_id=body.department_id,
            auto_dispatch=body.auto_dispatch,
            answer=answer,
            source=f"knowledge:{body.knowledge_id}" if body.knowledge_id is not None else "",
        )
        try:
            ticket = await desk.intake(intake, actor_of(who))
        except TicketError as exc:
            raise _refusal(exc) from exc
        return ticket_json(ticket, tz, full_phone=who.role in PHONE_READERS)

    @api.get("/tickets")
    async def list_tickets(
        response: Response,
        who: Principal = anyone,
        status: Annotated[str | None, Query(max_length=200)] = None,
        department_id: str | None = None,
        category: str | None = None,
        channel: str | None = None,
        urgency: Annotated[str | None, Query(pattern="^(normal|urgent)$")] = None,
        grid_id: str | None = None,
        incident_id: str | None = None,
        overdue: bool | None = None,
        supervised: bool | None = None,
        coordination: bool | None = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        start: str | None = None,
        end: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        statuses = [s for s in (status or "").split(",") if s]
        unknown = [s for s in statuses if s not in STATUSES]
        if unknown:
            raise RequestValidationError(
                [{"loc": ("query", "status"), "msg": f"unknown status {unknown[0]!r}", "type": "value_error"}]
            )
        if who.role == "handler":
            if department_id not in (None, who.department_id):
                raise HTTPException(403, f"a handler of {who.department_id!r} sees its own department's tickets only")
            department_id = who.department_id
        where = TicketFilter(
            status=statuses,
            department_id=department_id,
            category=category,
            channel=channel,
            urgency=urgency,
            grid_id=grid_id,
            incident_id=incident_id,
            overdue=overdue,
            supervised=supervised,
            coordination=coordination,
            created_from_ms=_time("start", start),
            created_to_ms=_time("end", end),
            q=q,
        )
        found, total = await store.list(where, limit, offset)
        response.headers["X-Total-Count"] = str(total)
        return [ticket_json(t, tz) for t in found]

    @api.get("/tickets/{ticket_id}")
    async def get_ticket(ticket_id: str, who: Principal = anyone) -> dict[str, Any]:
        ticket = await _ticket_or_404(ticket_id)
        _may_see(who, ticket)
        return await _shown(ticket, who, "read the ticket")

    @api.post("/tickets/{ticket_id}/actions")
    async def ticket_action(ticket_id: str, body: ActionIn, who: Principal = anyone) -> dict[str, Any]:
        if body.action not in ACTIONS:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "action"),
                        "msg": f"unknown action; one of {', '.join(ACTIONS)}",
                        "type": "value_error",
                    }
                ]
            )
        request = Request(
            body.action,
            department_id=body.department_id,
            reason=body.reason,
            text=body.text,
            satisfaction=body.satisfaction,
            days=body.days,
            approve=body.approve,
            note=body.note,
        )
        try:
            ticket = await desk.act(ticket_id, request, actor_of(who))
        except NotAllowed as exc:
            current = await store.get(ticket_id)
            allowed = allowed_actions(current) if current is not None else []
            raise HTTPException(
                409, {"message": str(exc), "status": current.status if current else None, "allowed": allowed}
            ) from exc
        except TicketError as exc:
            raise _refusal(exc) from exc
        if ticket is None:
            raise HTTPException(404, f"no ticket {ticket_id!r}")
        if body.action == "close":
            await note_close(desk, runtime.incidents, ticket, clock.now_ms())
        return ticket_json(ticket, tz)

    @api.get("/tickets/{ticket_id}/history")
    async def ticket_history(ticket_id: str, who: Principal = anyone) -> list[dict[str, Any]]:
        ticket = await _ticket_or_404(ticket_id)
        _may_see(who, ticket)
        return [history_json(e, tz) for e in await store.history(ticket_id)]

    @api.get("/tickets/{ticket_id}/slip", response_class=HTMLResponse)
    async def ticket_slip(ticket_id: str, who: Principal = anyone) -> HTMLResponse:
        """A printable slip: masked personal data and a verification code against forgery."""
        ticket = await _ticket_or_404(ticket_id)
        _may_see(who, ticket)
        code = slip_code((await store.secret(SLIP_KEY)).encode(), ticket)
        return HTMLResponse(_slip_html(ticket, code, tz))

    @api.get("/slips/{code}", dependencies=[anyone])
    async def check_slip(code: str) -> dict[str, Any]:
        return await verify_slip(store, tz, code)

    @api.get("/kpis", dependencies=[anyone])
    async def kpis(
        start: str | None = None, end: str | None = None, department_id: str | None = None
    ) -> dict[str, Any]:
        now = clock.now_ms()
        start_ms, end_ms = _period(start, end, now, tz)
        found = await store.kpis(start_ms, end_ms, now, department_id)
        return {"start": iso_in(start_ms, tz), "end": iso_in(end_ms, tz), **found.as_json()}

    @api.get("/departments", dependencies=[anyone])
    async def list_departments() -> list[dict[str, Any]]:
        return [{"id": d.id, "name": d.name, "categories": list(d.categories)} for d in await store.departments()]

    @api.post("/departments", dependencies=[admin_only])
    async def save_department(body: DepartmentIn, response: Response) -> dict[str, Any]:
        created = await desk.save_department(Department(body.id, body.name, tuple(body.categories)))
        response.status_code = 201 if created else 200
        return body.model_dump()

    @api.get("/grids", dependencies=[anyone])
    async def get_grids() -> dict[str, Any]:
        doc = await store.doc("grids")
        return doc if isinstance(doc, dict) else {"type": "FeatureCollection", "features": []}

    @api.put("/grids", dependencies=[admin_only])
    async def put_grids(body: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        try:
            count = await desk.save_grids(body)
        except GridError as exc:
            raise RequestValidationError([{"loc": ("body", *exc.loc), "msg": str(exc), "type": "value_error"}]) from exc
        return {"grids": count}

    @api.get("/hotline/lines", dependencies=[anyone])
    async def lines() -> list[dict[str, Any]]:
        return [
            {"number": line.number, "name": line.name, "departments": list(line.departments)}
            for line in desk.router.lines.values()
        ]

    @api.get("/knowledge", dependencies=[anyone])
    async def search_knowledge(
        q: Annotated[str, Query(min_length=1, max_length=200)], limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> list[dict[str, Any]]:
        return [
            {
                "id": e.id,
                "question": e.question,
                "answer": e.answer,
                "department_id": e.department_id,
                "tags": list(e.tags),
                "score": round(e.score, 4),
            }
            for e in await store.search_knowledge(q, limit)
        ]

    @api.post("/knowledge", status_code=201, dependencies=[knowledge_writer])
    async def add_knowledge(body: KnowledgeIn) -> dict[str, Any]:
        if body.department_id is not None and body.department_id not in desk.router.departments:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "department_id"),
                        "msg": f"unknown department {body.department_id!r}",
                        "type": "value_error",
                    }
                ]
            )
        entry = await store.add_knowledge(body.question, body.answer, body.department_id, body.tags, clock.now_ms())
        return {"id": entry.id, **body.model_dump()}

    @api.get("/audit/phone-reads", dependencies=[admin_only])
    async def phone_reads(ticket_id: str | None = None) -> list[dict[str, Any]]:
        rows = await store.phone_reads(ticket_id)
        return [{**r, "at": iso_in(r.pop("at_ms"), tz)} for r in rows]

    return api


def _time(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"{name} must be ISO-8601 with an offset or epoch ms",
                    "type": "value_error",
                }
            ]
        ) from exc


def _period(start: str | None, end: str | None, now_ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """The KPI period: as given, or the current month in the city's zone."""
    today = datetime.fromtimestamp(now_ms / 1000, tz=tz)
    month_start = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    given_start, given_end = _time("start", start), _time("end", end)
    start_ms = int(month_start.timestamp() * 1000) if given_start is None else given_start
    end_ms = int(next_month.timestamp() * 1000) if given_end is None else given_end
    if start_ms >= end_ms:
        raise RequestValidationError(
            [{"loc": ("query", "start"), "msg": "start must be before end", "type": "value_error"}]
        )
    return start_ms, end_ms


async def verify_slip(store: SqlTickets, tz: ZoneInfo, code: str) -> dict[str, Any]:
    """Whether a printed slip's code is genuine, and what it is the slip of (nothing personal)."""
    parts = split_code(code)
    ticket = await store.by_number(parts[0]) if parts is not None else None
    if parts is None or ticket is None or not verify((await store.secret(SLIP_KEY)).encode(), ticket, parts[1]):
        return {"valid": False, "reason": "no ticket has this code: the slip is not genuine or was altered"}
    return {
        "valid": True,
        "number": ticket.number,
        "created_at": iso_in(ticket.created_at_ms, tz),
        "category": ticket.category,
        "status": ticket.status,
    }


def _slip_html(t: Ticket, code: str, tz: ZoneInfo) -> str:
    e = html.escape
    rows = [
        ("工单编号 Ticket", t.number),
        ("受理时间 Taken in", iso_in(t.created_at_ms, tz) or ""),
        ("渠道 Channel", t.channel + (f" ({t.called_number})" if t.called_number else "")),
        ("类别 Category", t.category),
        ("承办单位 Department", t.department_id or "—"),
        ("办理时限 Deadline", iso_in(t.deadline_ms, tz) or ""),
        ("来电号码 Caller", mask_phone(t.caller_phone) or "—"),
        ("诉求 Request", t.description),
    ]
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return (
        "<!doctype html><html lang='zh-CN'><head><meta charset='utf-8'><title>工单 "
        f"{e(t.number)}</title><style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}"
        "code{font-size:1.4em;letter-spacing:.1em}</style></head><body>"
        f"<h1>12345 工单回执</h1><table>{body}</table>"
        f"<p>验证码 Verification code: <code>{e(code)}</code></p>"
        "<p>Check it with <code>cityops verify CODE</code> or GET /api/slips/CODE.</p></body></html>"
    )
