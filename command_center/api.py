"""The HTTP API of CONTRACT.md (the part built so far: health, devices, readings, dead letters, tokens)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator

from iot_gateway.domain.devices import device_problems
from iot_gateway.domain.kinds import expected_interval_s, is_stale
from kernel.clock import parse_time, to_iso
from kernel.errors import DuplicateError, StoreError
from kernel.events import DeviceChanged
from kernel.model import Device, Sample, sample_to_dict
from kernel.redact import redact_text

from .api_cameras import camera_routes
from .api_incidents import incident_routes
from .api_notify import notify_routes
from .api_open311 import open311_routes
from .api_tickets import ticket_routes
from .api_wall import wall_routes
from .auth import DEVICE_WRITERS, Principal, Role
from .city import DeviceSpec, city_grid_polygons
from .health import health_report
from .runtime import Runtime

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "frontend" / "static"


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    role: Role
    # A department handler acts for one department only.
    department_id: str | None = Field(default=None, min_length=1, max_length=64)
    expires_in_s: float | None = Field(default=None, gt=0, le=10 * 365 * 86_400)

    @model_validator(mode="after")
    def _handler_has_a_department(self) -> TokenRequest:
        if self.role == "handler" and self.department_id is None:
            raise ValueError("department_id is required for a handler token")
        return self


def _sample_json(sample: Sample) -> dict[str, Any]:
    out = sample_to_dict(sample)
    out["ts"] = to_iso(sample.ts_ms)
    return out


def _device_json(device: Device) -> dict[str, Any]:
    # By hand, not dataclasses.asdict: that deep-copies, a tenth of a device read under load.
    return {
        "id": device.id,
        "kind": device.kind,
        "name": device.name,
        "lat": device.lat,
        "lon": device.lon,
        "grid_id": device.grid_id,
        "attributes": device.attributes,
    }


def _json(body: Any) -> Response:
    """A JSON answer serialized once by orjson: the hot read routes skip FastAPI's re-validation of
    a plain dict against `dict[str, Any]` (the same bytes, a fifth of the cost)."""
    return Response(orjson.dumps(body), media_type="application/json")


def _bad(loc: tuple[str | int, ...], message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": kind}])


def _time_param(name: str, raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        return parse_time(raw)
    except ValueError as exc:
        raise _bad(("query", name), f"{name} must be ISO-8601 with an offset or epoch milliseconds") from exc


def build_app(runtime: Runtime) -> FastAPI:
    """The FastAPI application over a started runtime."""
    app = FastAPI(title="cityops command center", version="0.1.0")
    clock = runtime.clock

    async def principal(request: Request) -> Principal:
        # The header read straight from the request: FastAPI's Header() parameter machinery cost
        # a third of a device read under load (bench/api); the check itself is the same.
        authorization = request.headers.get("authorization")
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        found = await runtime.tokens.lookup(authorization[7:].strip(), clock.now_ms())
        if found is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        return found

    def role_in(allowed: frozenset[str]) -> Callable[[Principal], Awaitable[Principal]]:
        # A plain default, not Annotated: `principal` is local, and postponed annotations
        # are resolved against module globals.
        async def check(who: Principal = Depends(principal)) -> Principal:  # noqa: B008
            if who.role not in allowed:
                raise HTTPException(403, f"role {who.role!r} may not do this")
            return who

        return check

    anyone = Depends(principal)
    device_writer = Depends(role_in(DEVICE_WRITERS))
    admin_only = Depends(role_in(frozenset({"admin"})))
    api = APIRouter(prefix="/api")

    @app.exception_handler(StoreError)
    async def _store_down(_request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error answering a request: %s", exc)
        return JSONResponse({"detail": f"a backing store failed: {redact_text(str(exc))}"}, status_code=503)

    # The device reads first: routes are matched in order, and these are what consoles poll most.
    @api.get("/devices", dependencies=[anyone])
    async def list_devices(
        kind: Annotated[str | None, Query(pattern="^(water_level|smoke|gas|vehicle)$")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        found = await runtime.devices.list(kind, limit, offset)
        return _json([_device_json(d) for d in found])

    async def _device_or_404(device_id: str) -> Device:
        device = await runtime.devices.get(device_id)
        if device is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return device

    @api.get("/devices/{device_id}", dependencies=[anyone])
    async def get_device(device_id: str) -> Response:
        device = await _device_or_404(device_id)
        entry = await runtime.live.get(device_id)
        latest = entry.sample
        if latest is None:
            # After a restart the in-memory live state is empty; the history still knows.
            latest = await runtime.series.latest(device_id, device.kind)
        interval = expected_interval_s(device.kind, device.attributes)
        out = _device_json(device)
        out["latest"] = None if latest is None else _sample_json(latest)
        out["stale"] = is_stale(None if latest is None else latest.ts_ms, interval, clock.now_ms())
        out["expected_interval_s"] = interval
        out["status"] = None if entry.status is None else entry.status.status
        return _json(out)

    @api.get("/health")
    async def health() -> dict[str, Any]:
        return await health_report(runtime)

    @api.get("/me")
    async def me(who: Principal = anyone) -> dict[str, Any]:
        """Who this token is (the consoles show what the role may do)."""
        return {"name": who.name, "role": who.role, "department_id": who.department_id}

    @api.post("/tokens", status_code=201, dependencies=[admin_only])
    async def issue_token(body: TokenRequest) -> dict[str, Any]:
        if body.department_id is not None and runtime.tickets is not None:
            known = {d.id for d in await runtime.tickets.departments()}
            if body.department_id not in known:
                raise _bad(("body", "department_id"), f"unknown department {body.department_id!r}")
        now = clock.now_ms()
        expires = None if body.expires_in_s is None else now + int(body.expires_in_s * 1000)
        token_id, token = await runtime.tokens.issue(
            body.name, body.role, now, department_id=body.department_id, expires_at_ms=expires
        )
        return {
            "id": token_id,
            "name": body.name,
            "role": body.role,
            "department_id": body.department_id,
            "expires_at": None if expires is None else to_iso(expires),
            "token": token,
        }

    @api.get("/tokens", dependencies=[admin_only])
    async def list_tokens() -> list[dict[str, Any]]:
        infos = await runtime.tokens.list()
        return [
            {
                "id": t.id,
                "name": t.name,
                "role": t.role,
                "department_id": t.department_id,
                "created_at": to_iso(t.created_at_ms),
                "expires_at": None if t.expires_at_ms is None else to_iso(t.expires_at_ms),
                "revoked_at": None if t.revoked_at_ms is None else to_iso(t.revoked_at_ms),
            }
            for t in infos
        ]

    @api.delete("/tokens/{token_id}", status_code=204, dependencies=[admin_only])
    async def revoke_token(token_id: str) -> Response:
        if not await runtime.tokens.revoke(token_id, clock.now_ms()):
            raise HTTPException(404, f"no token {token_id!r}")
        return Response(status_code=204)

    def _checked(spec: DeviceSpec) -> Device:
        problems = device_problems(spec.kind, spec.attributes)
        if problems:
            raise RequestValidationError(
                [{"loc": ("body", "attributes", *loc), "msg": msg, "type": "value_error"} for loc, msg in problems]
            )
        return spec.to_device()

    async def _announce(change: DeviceChanged) -> None:
        """Tell every process (gateways elsewhere included) at once; their periodic reload is the safety net."""
        if runtime.gateway is not None:
            runtime.gateway.note_change(change)  # this process's own gateway, without waiting for the bus
        try:
            await runtime.bus.publish(change)
        except StoreError:
            log.warning(
                "device %s %s, but the bus is down: other gateways learn it at their next reload",
                change.device_id,
                change.change,
            )

    @api.post("/devices", status_code=201, dependencies=[device_writer])
    async def register_device(spec: DeviceSpec) -> dict[str, Any]:
        device = _checked(spec)
        try:
            await runtime.devices.add(device)
        except DuplicateError as exc:
            raise HTTPException(409, str(exc)) from exc
        await _announce(DeviceChanged(device.id, "registered", clock.now_ms(), device))
        return _device_json(device)

    @api.put("/devices/{device_id}", dependencies=[device_writer])
    async def change_device(device_id: str, spec: DeviceSpec) -> dict[str, Any]:
        if spec.id != device_id:
            raise _bad(("body", "id"), f"the body's id {spec.id!r} is not the path's {device_id!r}")
        await _device_or_404(device_id)
        device = _checked(spec)
        await runtime.devices.upsert(device)
        await _announce(DeviceChanged(device.id, "changed", clock.now_ms(), device))
        return _device_json(device)

    @api.delete("/devices/{device_id}", status_code=204, dependencies=[device_writer])
    async def remove_device(device_id: str) -> Response:
        if not await runtime.devices.remove(device_id):
            raise HTTPException(404, f"no device {device_id!r}")
        await _announce(DeviceChanged(device_id, "removed", clock.now_ms()))
        return Response(status_code=204)

    @api.get("/devices/{device_id}/readings", dependencies=[anyone])
    async def readings(
        device_id: str,
        start: str | None = None,
        end: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> list[dict[str, Any]]:
        device = await _device_or_404(device_id)
        now = clock.now_ms()
        end_ms = _time_param("end", end, now + 300_000)
        start_ms = _time_param("start", start, end_ms - 24 * 3600 * 1000)
        if start_ms > end_ms:
            raise _bad(("query", "start"), "start must not be after end")
        samples = await runtime.series.read(device_id, device.kind, start_ms, end_ms, limit)
        return [_sample_json(s) for s in samples]

    @api.get("/dead-letters", dependencies=[device_writer])
    async def dead_letters(
        reason: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[dict[str, Any]]:
        letters = await runtime.dead_letters.recent(limit, reason)
        return [
            {
                "topic": d.topic,
                "payload": d.payload.decode("utf-8", errors="replace"),
                "reason": d.reason,
                "detail": d.detail,
                "refused_items": d.refused_items,
                "reasons": d.refused or {d.reason: 1},
                "received_at": to_iso(d.received_at_ms),
            }
            for d in letters
        ]

    @api.post("/demo/scenarios/{name}", dependencies=[device_writer])
    async def trigger_scenario(name: str) -> dict[str, Any]:
        simulator = runtime.simulator
        if simulator is None:
            raise HTTPException(404, "the demo simulator is not running (start with --demo)")
        try:
            device_id = simulator.trigger(name)
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from exc
        return {"scenario": name, "device_id": device_id}

    app.include_router(api)
    app.include_router(incident_routes(runtime, role_in, anyone))
    if runtime.desk is not None:
        app.include_router(ticket_routes(runtime, role_in, anyone))
        app.include_router(open311_routes(runtime))
    if runtime.wall is not None:
        app.include_router(wall_routes(runtime, runtime.wall))
    if runtime.desk is not None and runtime.notify is not None:
        app.include_router(notify_routes(runtime, runtime.notify, role_in))

    async def authenticate(token: str) -> Principal | None:
        return await runtime.tokens.lookup(token, clock.now_ms())

    app.include_router(
        camera_routes(
            runtime.catalog(),
            role_in,
            anyone,
            snapshots=runtime.snapshot_store(),
            live=runtime.live_view(),
            grids=city_grid_polygons(runtime.city),
            authenticate=authenticate,
            clock=clock,
        )
    )

    @app.get("/", include_in_schema=False)
    async def wall() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/console/{which}", include_in_schema=False)
    async def console(which: str) -> FileResponse:
        if which not in ("agent", "handler"):
            raise HTTPException(404, "consoles: /console/agent, /console/handler")
        return FileResponse(STATIC_DIR / "console.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.runtime = runtime
    return app


def build_health_app(runtime: Runtime) -> FastAPI:
    """Only `GET /api/health`: what a gateway process serves for docker-compose's health check."""
    app = FastAPI(title="cityops gateway health", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return await health_report(runtime)

    return app
