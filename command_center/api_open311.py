"""Open311 GeoReport v2 (https://wiki.open311.org/GeoReport_v2) over the ticket flow, so that
existing 311 clients and city apps can file and follow tickets.

A service is a ticket category (its group: the department that takes it). A request is a
ticket: filed with `POST requests.json`, form-encoded, `api_key` being an API token allowed to
take tickets in; read publicly, as the standard expects, without the caller's name, phone or
e-mail. Errors are the standard's list of `{"code", "description"}` with the HTTP status.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hotline.adapters.tickets_sql import TicketFilter
from hotline.desk import INTAKE_ROLES, Intake
from hotline.domain.tickets import Actor, Ticket, TicketError
from kernel.clock import parse_time

from .api_tickets import iso_in
from .runtime import Runtime

# The standard's default window for a request search without dates, and its cap.
DEFAULT_DAYS: Final = 90
MAX_RESULTS: Final = 1000


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse([{"code": status, "description": description}], status_code=status)


def open311_routes(runtime: Runtime) -> APIRouter:
    api = APIRouter(prefix="/open311/v2", tags=["open311"])
    desk = runtime.ticket_desk()
    tz = desk.calendar.tz

    def request_json(t: Ticket) -> dict[str, Any]:
        department = desk.router.departments.get(t.department_id or "")
        closed = t.status == "closed"
        return {
            "service_request_id": t.number,
            "status": "closed" if closed else "open",
            "status_notes": (t.close_text or t.reply_text) if closed else t.status,
            "service_name": t.category,
            "service_code": t.category,
            "description": t.description,
            "agency_responsible": department.name if department is not None else None,
            "service_notice": None,
            "requested_datetime": iso_in(t.created_at_ms, tz),
            "updated_datetime": iso_in(t.updated_at_ms, tz),
            "expected_datetime": iso_in(t.deadline_ms, tz),
            "address": t.address or None,
            "address_id": None,
            "zipcode": None,
            "lat": t.lat,
            "long": t.lon,
            "media_url": None,
        }

    @api.get("/services.json")
    async def services() -> list[dict[str, Any]]:
        out = []
        for department in desk.router.departments.values():
            for category in department.categories:
                out.append(
                    {
                        "service_code": category,
                        "service_name": category,
                        "description": f"{category} ({department.name})",
                        "metadata": False,
                        "type": "realtime",
                        "keywords": category,
                        "group": department.name,
                    }
                )
        return out

    @api.post("/requests.json", response_model=None)
    async def create_request(request: Request) -> JSONResponse:
        form = await request.form()

        def field(name: str) -> str:
            value = form.get(name)
            return value.strip() if isinstance(value, str) else ""

        api_key = field("api_key")
        who = await runtime.tokens.lookup(api_key, runtime.clock.now_ms()) if api_key else None
        if who is None:
            return _error(403, "api_key is missing or not valid")
        if who.role not in INTAKE_ROLES:
            return _error(403, f"this api_key (role {who.role}) may not file requests")
        service_code = field("service_code")
        if not service_code:
            return _error(400, "service_code is required")
        if service_code not in desk.router.categories():
            return _error(400, f"unknown service_code {service_code!r}; see services.json")
        lat_text, lon_text, address = field("lat"), field("long"), field("address_string")
        lat = lon = None
        if lat_text or lon_text:
            try:
                lat, lon = float(lat_text), float(lon_text)
            except ValueError:
                return _error(400, "lat and long must both be decimal degrees")
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                return _error(400, "lat and long are out of range")
        elif not address and not field("address_id"):
            return _error(400, "a location is required: lat and long, address_string or address_id")
        description = field("description")
        if not description:
            return _error(400, "description is required")
        name = " ".join(part for part in (field("first_name"), field("last_name")) if part)
        intake = Intake(
            channel="web",
            category=service_code,
            description=description[:10_000],
            lat=lat,
            lon=lon,
            address=address[:500],
            caller_name=name[:100],
            caller_phone=field("phone")[:32],
            source="open311",
        )
        try:
            ticket = await desk.intake(intake, Actor(who.name, who.role, who.department_id))
        except TicketError as exc:
            return _error(400, str(exc))
        return JSONResponse([{"service_request_id": ticket.number, "service_notice": None, "account_id": None}])

    @api.get("/requests.json", response_model=None)
    async def list_requests(
        service_request_id: str | None = None,
        service_code: str | None = None,
        start_date: str | None = None,
        end_date: str | None = None,
        status: str | None = None,
    ) -> JSONResponse | list[dict[str, Any]]:
        if service_request_id:
            found = [await desk.store.by_number(n.strip()) for n in service_request_id.split(",")[:MAX_RESULTS]]
            return [request_json(t) for t in found if t is not None]
        if status not in (None, "open", "closed"):
            return _error(400, "status must be open or closed")
        try:
            end_ms = _when(end_date) if end_date else runtime.clock.now_ms() + 1
            start_ms = _when(start_date) if start_date else end_ms - DEFAULT_DAYS * 86_400_000
        except ValueError:
            return _error(400, "start_date and end_date must be W3C date-times (with an offset)")
        statuses = (
            ["closed"]
            if status == "closed"
            else ["new", "dispatched", "accepted", "returned", "replied"]
            if status
            else []
        )
        where = TicketFilter(status=statuses, category=service_code, created_from_ms=start_ms, created_to_ms=end_ms)
        tickets, _total = await desk.store.list(where, MAX_RESULTS, 0)
        return [request_json(t) for t in tickets]

    @api.get("/requests/{request_id}.json", response_model=None)
    async def get_request(request_id: str) -> JSONResponse | list[dict[str, Any]]:
        ticket = await desk.store.by_number(request_id)
        if ticket is None:
            return _error(404, f"no service request {request_id!r}")
        return [request_json(ticket)]

    return api


def _when(text: str) -> int:
    return parse_time(text)
