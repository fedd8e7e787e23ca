"""The incidents and rules part of the HTTP API (CONTRACT.md): list, read with history, act; rules as data."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alerts.domain.hygiene import Silence
from alerts.domain.incidents import HistoryEntry, Incident, TransitionError, acknowledge, escalate, resolve
from alerts.domain.rules import RULE_KINDS, AnyRule, parse_rule
from alerts.engine import incident_event
from kernel.clock import parse_time, to_iso
from kernel.errors import StoreError
from kernel.events import RuleChanged, SilenceChanged

from .auth import Principal
from .runtime import Runtime, effective_rules

# Leaders and operators act on incidents (CONTRACT.md); admins may do anything.
INCIDENT_ACTORS = frozenset({"admin", "operator", "leader"})
RULE_WRITERS = frozenset({"admin", "operator"})


def incident_json(incident: Incident) -> dict[str, Any]:
    def iso(ms: int | None) -> str | None:
        return None if ms is None else to_iso(ms)

    return {
        "id": incident.id,
        "rule_id": incident.rule_id,
        "subject": incident.subject,
        "category": incident.category,
        "severity": incident.severity,
        "escalation_tier": incident.escalation_tier,
        "status": incident.status,
        "title": incident.title,
        "opened_at": iso(incident.opened_at_ms),
        "updated_at": iso(incident.updated_at_ms),
        "acknowledged_at": iso(incident.acknowledged_at_ms),
        "resolved_at": iso(incident.resolved_at_ms),
        "cleared": incident.cleared,
        "lat": incident.lat,
        "lon": incident.lon,
        "grid_id": incident.grid_id,
        "device_ids": list(incident.device_ids),
        "camera_ids": list(incident.camera_ids),
        "ticket_id": incident.ticket_id,
    }


def history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {"at": to_iso(entry.at_ms), "who": entry.actor, "action": entry.action, "detail": entry.detail}


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=2000)
    to_tier: int | None = Field(default=None, ge=2, le=3)


class SilenceBody(BaseModel):
    """A maintenance window: no new incidents for what it names, from `start` (default now) to `end`."""

    model_config = ConfigDict(extra="forbid")
    device_ids: list[str] = Field(default_factory=list, max_length=10_000)
    grid_ids: list[str] = Field(default_factory=list, max_length=10_000)
    rule_ids: list[str] = Field(default_factory=list, max_length=1000)
    start: str | None = None
    end: str | None = None
    duration_s: float | None = Field(default=None, gt=0, le=30 * 86_400)
    reason: str = Field(min_length=1, max_length=2000)


def silence_json(silence: Silence) -> dict[str, Any]:
    return {
        "id": silence.id,
        "device_ids": list(silence.device_ids),
        "grid_ids": list(silence.grid_ids),
        "rule_ids": list(silence.rule_ids),
        "start": to_iso(silence.starts_at_ms),
        "end": to_iso(silence.ends_at_ms),
        "reason": silence.reason,
        "created_by": silence.created_by,
    }


def _rule_error(exc: ValidationError) -> RequestValidationError:
    # The discriminator ("threshold", ...) is pydantic's own step in the path, not a body field.
    errors = []
    for error in exc.errors():
        loc = list(error["loc"])
        if loc and loc[0] in RULE_KINDS:
            loc = loc[1:]
        errors.append({"loc": ("body", *loc), "msg": error["msg"], "type": error["type"]})
    return RequestValidationError(errors)


def incident_routes(
    runtime: Runtime, role_in: Callable[[frozenset[str]], Callable[[Principal], Awaitable[Principal]]], anyone: Any
) -> APIRouter:
    api = APIRouter(prefix="/api")
    store = runtime.incidents
    clock = runtime.clock

    async def publish(incident: Incident, change: str) -> None:
        # Recorded already: with the bus down, the wall learns it from its next snapshot.
        with contextlib.suppress(StoreError):
            await runtime.bus.publish(incident_event(incident, change))

    @api.get("/incidents", dependencies=[anyone])
    async def list_incidents(
        status: Annotated[str | None, Query(pattern="^(open|acknowledged|resolved)$")] = None,
        rule_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        return [incident_json(i) for i in await store.list(status, limit, offset, rule_id)]

    @api.get("/incidents/{incident_id}", dependencies=[anyone])
    async def get_incident(incident_id: str) -> dict[str, Any]:
        incident = await store.get(incident_id)
        if incident is None:
            raise HTTPException(404, f"no incident {incident_id!r}")
        return {**incident_json(incident), "history": [history_json(e) for e in await store.history(incident_id)]}

    async def act(
        incident_id: str, name: str, step: Callable[[Incident], tuple[Incident, HistoryEntry]]
    ) -> dict[str, Any]:
        try:
            changed = await store.act(incident_id, step)
        except TransitionError as exc:
            raise HTTPException(409, str(exc)) from exc
        if changed is None:
            raise HTTPException(404, f"no incident {incident_id!r}")
        await publish(changed, name)
        return incident_json(changed)

    # Plain defaults, not Annotated: these are local, and postponed annotations resolve in module globals.
    actor = Depends(role_in(INCIDENT_ACTORS))

    @api.post("/incidents/{incident_id}/acknowledge")
    async def acknowledge_incident(
        incident_id: str, body: ActionBody | None = None, who: Principal = actor
    ) -> dict[str, Any]:
        return await act(incident_id, "acknowledged", lambda i: acknowledge(i, who.name, clock.now_ms()))

    @api.post("/incidents/{incident_id}/escalate")
    async def escalate_incident(
        incident_id: str, body: ActionBody | None = None, who: Principal = actor
    ) -> dict[str, Any]:
        note, tier = (body.note, body.to_tier) if body else ("", None)
        return await act(incident_id, "escalated", lambda i: escalate(i, who.name, clock.now_ms(), note, tier))

    @api.post("/incidents/{incident_id}/resolve")
    async def resolve_incident(
        incident_id: str, body: ActionBody | None = None, who: Principal = actor
    ) -> dict[str, Any]:
        note = body.note if body else ""
        return await act(incident_id, "resolved", lambda i: resolve(i, who.name, clock.now_ms(), note))

    # --- rules --------------------------------------------------------------------------

    async def current() -> dict[str, AnyRule]:
        return {rule.id: rule for rule in await effective_rules(runtime)}

    def rule_json(rule: AnyRule) -> dict[str, Any]:
        engine = runtime.rules_engine
        problems = engine.problems.get(rule.id, {}) if engine is not None else {}
        return {**rule.model_dump(mode="json"), "problems": problems}

    async def save(rule: AnyRule) -> dict[str, Any]:
        await store.save_rule(rule.model_dump(mode="json"), clock.now_ms())
        rules = await current()
        if runtime.rules_engine is not None:
            runtime.rules_engine.set_rules(list(rules.values()))
        # Saved already: with the bus down, other rules processes take it at their next start.
        with contextlib.suppress(StoreError):
            await runtime.bus.publish(RuleChanged(rule.id, clock.now_ms()))
        return rule_json(rules[rule.id])

    def checked(data: Any) -> AnyRule:
        try:
            return parse_rule(data)
        except ValidationError as exc:
            raise _rule_error(exc) from exc

    writer = Depends(role_in(RULE_WRITERS))

    @api.get("/rules", dependencies=[anyone])
    async def list_rules() -> list[dict[str, Any]]:
        return [rule_json(rule) for rule in (await current()).values()]

    @api.post("/rules", status_code=201, dependencies=[writer])
    async def create_rule(data: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        rule = checked(data)
        if rule.id in await current():
            raise HTTPException(409, f"rule {rule.id!r} exists already; change it with PUT")
        return await save(rule)

    @api.put("/rules/{rule_id}", dependencies=[writer])
    async def change_rule(rule_id: str, data: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        rule = checked(data)
        if rule.id != rule_id:
            raise RequestValidationError(
                [{"loc": ("body", "id"), "msg": "not the path's rule id", "type": "value_error"}]
            )
        if rule_id not in await current():
            raise HTTPException(404, f"no rule {rule_id!r}")
        return await save(rule)

    async def switch(rule_id: str, enabled: bool) -> dict[str, Any]:
        rules = await current()
        if rule_id not in rules:
            raise HTTPException(404, f"no rule {rule_id!r}")
        return await save(rules[rule_id].model_copy(update={"enabled": enabled}))

    @api.post("/rules/{rule_id}/disable", dependencies=[writer])
    async def disable_rule(rule_id: str) -> dict[str, Any]:
        return await switch(rule_id, False)

    @api.post("/rules/{rule_id}/enable", dependencies=[writer])
    async def enable_rule(rule_id: str) -> dict[str, Any]:
        return await switch(rule_id, True)

    # --- silences (maintenance windows) ------------------------------------------------------

    async def silences_changed(silence_id: str) -> None:
        if runtime.rules_engine is not None:
            await runtime.rules_engine.reload_silences()
        with contextlib.suppress(StoreError):  # saved already: other processes reload at their start
            await runtime.bus.publish(SilenceChanged(silence_id, clock.now_ms()))

    def when(name: str, raw: str) -> int:
        try:
            return parse_time(raw)
        except ValueError as exc:
            loc = ("body", name)
            raise RequestValidationError(
                [{"loc": loc, "msg": "ISO-8601 with an offset", "type": "value_error"}]
            ) from exc

    @api.post("/silences", status_code=201)
    async def add_silence(body: SilenceBody, who: Principal = writer) -> dict[str, Any]:
        now = clock.now_ms()
        start = when("start", body.start) if body.start else now
        if body.end is not None:
            end = when("end", body.end)
        elif body.duration_s is not None:
            end = start + int(body.duration_s * 1000)
        else:
            raise RequestValidationError(
                [{"loc": ("body", "end"), "msg": "give `end` or `duration_s`", "type": "missing"}]
            )
        if end <= start:
            raise RequestValidationError(
                [{"loc": ("body", "end"), "msg": "the end is not after the start", "type": "value_error"}]
            )
        if end - start > 30 * 86_400_000:
            raise RequestValidationError(
                [{"loc": ("body", "end"), "msg": "a silence lasts 30 days at most", "type": "value_error"}]
            )
        if not (body.device_ids or body.grid_ids or body.rule_ids):
            msg = "name the devices, grids or rules to silence (silencing everything is refused)"
            raise RequestValidationError([{"loc": ("body", "device_ids"), "msg": msg, "type": "value_error"}])
        silence = Silence(
            "sil-" + secrets.token_hex(6),
            tuple(body.device_ids),
            tuple(body.grid_ids),
            tuple(body.rule_ids),
            start,
            end,
            body.reason,
            who.name,
        )
        await store.add_silence(silence, now)
        await silences_changed(silence.id)
        return silence_json(silence)

    @api.get("/silences", dependencies=[anyone])
    async def list_silences(all: bool = False) -> list[dict[str, Any]]:
        return [silence_json(s) for s in await store.silences(None if all else clock.now_ms())]

    @api.delete("/silences/{silence_id}", status_code=204, dependencies=[writer])
    async def remove_silence(silence_id: str) -> Response:
        if not await store.remove_silence(silence_id):
            raise HTTPException(404, f"no silence {silence_id!r}")
        await silences_changed(silence_id)
        return Response(status_code=204)

    return api
