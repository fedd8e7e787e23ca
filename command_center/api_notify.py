"""The duty roster, notification policies and channels, the notification log, and the signed
acknowledgement links (CONTRACT.md `/api/duty`, `/api/notifications`; issue 12).

- `PUT /api/duty`, `GET /api/duty`, `POST /api/duty/import` (CSV), `GET /api/duty/now?at=`
- `GET /api/notify/policies`, `PUT /api/notify/policies`
- `GET /api/channels`, `PUT /api/channels/{type}` (secrets shown as `***`, never back)
- `GET /api/notifications?incident_id=&ticket_id=&status=&person_id=`, `GET /api/notifications/{id}`
  (with every attempt), `POST /api/notifications/test`
- `GET /ack/{token}` (a page that asks), `POST /ack/{token}` (acknowledges the incident; once)
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict

from alerts.domain.incidents import TransitionError, acknowledge
from alerts.engine import incident_event
from kernel.clock import parse_time
from kernel.errors import StoreError
from notify.adapters.notify_sql import SqlNotify
from notify.domain.channels import ChannelError, masked, parse_channel
from notify.domain.links import LinkError, verify
from notify.domain.policy import DEFAULT_POLICIES, PolicyError, parse_policies, policy_json
from notify.domain.roster import CONTACT_TYPES, TIERS, RosterError, merge_csv, parse_merged, parse_roster
from notify.notifier import NotifyConfig, load_config

from .auth import Principal
from .runtime import Runtime

DUTY_READERS = frozenset({"admin", "leader", "operator", "agent"})
LOG_READERS = frozenset({"admin", "leader", "operator", "agent", "viewer"})


def _refused(exc: RosterError, where: str) -> RequestValidationError:
    return RequestValidationError([{"loc": (where, *exc.loc), "msg": str(exc), "type": "value_error"}])


def _iso(ms: int | None, tz: ZoneInfo) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")


def notification_json(row: dict[str, Any], tz: ZoneInfo) -> dict[str, Any]:
    return {
        "id": row["id"],
        "kind": row["kind"],
        "event": row["event"],
        "person_id": row["person_id"],
        "person_name": row["person_name"],
        "post": row["post"],
        "channel": row["channel"],
        "incident_id": row["incident_id"],
        "ticket_id": row["ticket_id"],
        "title": row["title"],
        "status": row["status"],
        "attempts": row["attempts"],
        "created_at": _iso(row["created_at_ms"], tz),
        "not_before": _iso(row["not_before_ms"], tz),
        "sent_at": _iso(row["sent_at_ms"], tz),
        "last_error": row["last_error"],
        "digest_id": row["digest_id"],
        "acknowledged_at": _iso(row["acknowledged_at_ms"], tz),
    }


class TestSend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    person_id: str
    channel: str


def notify_routes(
    runtime: Runtime,
    store: SqlNotify,
    role_in: Callable[[frozenset[str]], Callable[[Principal], Awaitable[Principal]]],
) -> APIRouter:
    """The routes; they work in an API process that runs no notifier of its own (then the
    settings are read from the records on each call, and a test-send answers 503)."""
    api = APIRouter()
    clock = runtime.clock
    tz = ZoneInfo(runtime.settings.timezone)
    admin = Depends(role_in(frozenset({"admin"})))
    duty_reader = Depends(role_in(DUTY_READERS))
    log_reader = Depends(role_in(LOG_READERS))

    async def departments() -> list[str]:
        return [d.id for d in await runtime.tickets.departments()] if runtime.tickets is not None else []

    async def stored(key: str, default: Any) -> Any:
        found = await store.config(key)
        return default if found is None else found[0]

    async def save(key: str, value: Any, who: Principal) -> None:
        await store.put_config(key, value, who.name, clock.now_ms())
        if runtime.notifier is not None:
            await runtime.notifier.reload()

    async def current() -> NotifyConfig:
        return runtime.notifier.config if runtime.notifier is not None else await load_config(store)

    # ----- the roster ------------------------------------------------------------------

    @api.get("/api/duty", dependencies=[duty_reader])
    async def get_duty() -> dict[str, Any]:
        doc: dict[str, Any] = await stored("roster", {"people": [], "shifts": [], "patterns": []})
        return {"people": [], "shifts": [], "patterns": [], **doc}

    @api.put("/api/duty")
    async def put_duty(body: Annotated[Any, Body()], who: Principal = admin) -> dict[str, Any]:
        try:
            parse_roster(body, await departments())
        except RosterError as exc:
            raise _refused(exc, "body") from exc
        await save("roster", body, who)
        doc: dict[str, Any] = body
        return {"people": [], "shifts": [], "patterns": [], **doc}

    @api.post("/api/duty/import")
    async def import_duty(
        request: Request,
        mode: Annotated[str, Query(pattern="^(merge|replace)$")] = "merge",
        who: Principal = admin,
    ) -> dict[str, Any]:
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "the CSV must be UTF-8", "type": "value_error"}]
            ) from exc
        current = await stored("roster", {}) if mode == "merge" else {}
        if mode == "replace":
            # People are kept (their contacts are not in every sheet); the shifts are replaced.
            current = {"people": (await stored("roster", {})).get("people", [])}
        try:
            roster, doc = parse_merged(merge_csv(current, text), await departments())
        except RosterError as exc:
            raise _refused(exc, "body") from exc
        await save("roster", doc, who)
        return {"people": len(roster.people), "shifts": len(roster.shifts), "patterns": len(roster.patterns)}

    @api.get("/api/duty/now", dependencies=[duty_reader])
    async def duty_now(at: str | None = None) -> dict[str, Any]:
        try:
            at_ms = parse_time(at) if at else clock.now_ms()
        except ValueError as exc:
            raise RequestValidationError([{"loc": ("query", "at"), "msg": str(exc), "type": "value_error"}]) from exc
        roster = (await current()).roster
        posts = [*TIERS, *(f"dept:{d}" for d in await departments())]
        posts += [p for p in roster.posts() if p not in posts]
        on_duty = {
            post: [
                {"id": p.id, "name": p.name, "channels": sorted(p.contacts)} for p in roster.on_duty(post, at_ms, tz)
            ]
            for post in posts
        }
        return {
            "at": _iso(at_ms, tz),
            "posts": on_duty,
            "uncovered": [p for p, people in on_duty.items() if not people],
        }

    # ----- policies and channels -------------------------------------------------------

    @api.get("/api/notify/policies", dependencies=[duty_reader])
    async def get_policies() -> list[dict[str, Any]]:
        return [policy_json(p) for p in (await current()).policies]

    @api.put("/api/notify/policies")
    async def put_policies(body: Annotated[Any, Body()], who: Principal = admin) -> list[dict[str, Any]]:
        try:
            policies = parse_policies(body, await departments(), (await current()).roster.people)
        except PolicyError as exc:
            raise _refused(exc, "body") from exc
        await save("policies", [policy_json(p) for p in policies], who)
        return [policy_json(p) for p in policies]

    @api.delete("/api/notify/policies")
    async def reset_policies(who: Principal = admin) -> list[dict[str, Any]]:
        """Back to the policies shipped (CONTRACT.md's)."""
        await save("policies", [policy_json(p) for p in DEFAULT_POLICIES], who)
        return [policy_json(p) for p in DEFAULT_POLICIES]

    @api.get("/api/channels", dependencies=[admin])
    async def get_channels() -> dict[str, Any]:
        current: dict[str, Any] = await stored("channels", {})
        return {kind: masked(current.get(kind, {})) for kind in CONTACT_TYPES}

    @api.put("/api/channels/{kind}")
    async def put_channel(kind: str, body: Annotated[Any, Body()], who: Principal = admin) -> dict[str, Any]:
        current: dict[str, Any] = await stored("channels", {})
        try:
            settings = parse_channel(kind, body, current.get(kind))
        except ChannelError as exc:
            where = ("path",) if exc.loc == ("type",) else ("body",)
            raise _refused(exc, where[0]) from exc
        await save("channels", {**current, kind: settings}, who)
        return masked(settings)

    # ----- the log ---------------------------------------------------------------------

    @api.get("/api/notifications", dependencies=[log_reader])
    async def list_notifications(
        incident_id: str | None = None,
        ticket_id: str | None = None,
        status: Annotated[str | None, Query(pattern="^(pending|sent|failed|grouped)$")] = None,
        person_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[dict[str, Any]]:
        rows = await store.list(
            incident_id=incident_id, ticket_id=ticket_id, status=status, person_id=person_id, limit=limit, offset=offset
        )
        return [notification_json(r, tz) for r in rows]

    @api.get("/api/notifications/{notification_id}", dependencies=[log_reader])
    async def get_notification(notification_id: str) -> dict[str, Any]:
        found = await store.get(notification_id)
        if found is None:
            raise HTTPException(404, f"no notification {notification_id!r}")
        row, attempts = found
        return {
            **notification_json(row, tz),
            "lines": row["lines"],
            "attempt_log": [
                {
                    "n": a["n"],
                    "worker": a["worker"],
                    "started_at": _iso(a["started_at_ms"], tz),
                    "finished_at": _iso(a["finished_at_ms"], tz),
                    # A send never finished: its worker died or lost its lease mid-send.
                    "outcome": "interrupted"
                    if a["outcome"] == "sending" and a["finished_at_ms"] is None and row["attempts"] > a["n"]
                    else a["outcome"],
                    "error": a["error"],
                }
                for a in attempts
            ],
        }

    @api.post("/api/notifications/test")
    async def test_send(body: TestSend, who: Principal = admin) -> dict[str, Any]:
        if body.channel not in CONTACT_TYPES:
            raise RequestValidationError(
                [
                    {
                        "loc": ("body", "channel"),
                        "msg": f"unknown channel type: one of {', '.join(CONTACT_TYPES)}",
                        "type": "value_error",
                    }
                ]
            )
        if runtime.notifier is None:
            raise HTTPException(503, "this process runs no notifier (notify_enabled is false)")
        notification_id = await runtime.notifier.test_send(body.person_id, body.channel, who.name)
        if notification_id is None:
            raise HTTPException(404, f"no person {body.person_id!r} with a {body.channel} contact in the roster")
        found = await store.get(notification_id)
        assert found is not None
        return notification_json(found[0], tz)

    # ----- acknowledgement links -------------------------------------------------------

    async def _link(token: str) -> dict[str, Any]:
        try:
            link_id = verify(await store.link_key(), token, clock.now_ms())
        except LinkError as exc:
            raise HTTPException(410 if "expired" in str(exc) else 404, str(exc)) from exc
        link = await store.link(link_id)
        if link is None:
            raise HTTPException(404, "this is not an acknowledgement link of this center")
        return link

    def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(
            "<!doctype html><html lang=zh-CN><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title>"
            "<body style='font:18px/1.5 sans-serif;margin:1.5em;background:#0b1620;color:#e6eef5'>"
            f"<h1 style='font-size:1.3em'>{html.escape(title)}</h1>{body}</body></html>",
            status_code=status,
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    @api.get("/ack/{token}", include_in_schema=False)
    async def ack_page(token: str) -> HTMLResponse:
        # A GET changes nothing: chat apps open links to preview them.
        try:
            link = await _link(token)
        except HTTPException as exc:
            return _page("链接无效 Link not valid", f"<p>{html.escape(str(exc.detail))}</p>", exc.status_code)
        incident = await runtime.incidents.get(link["incident_id"])
        if incident is None:
            return _page("链接无效 Link not valid", "<p>no such incident</p>", 404)
        if link["used_at_ms"] is not None:
            return _page(
                "已使用 Already used",
                f"<p>{html.escape(incident.title)}</p><p>used {_iso(link['used_at_ms'], tz)}</p>",
                410,
            )
        return _page(
            "确认事件 Acknowledge the incident",
            f"<p>{html.escape(incident.title)}</p><p>{html.escape(incident.severity)} · tier {incident.escalation_tier}"
            f" · {html.escape(incident.status)}</p>"
            f"<form method=post><button style='font-size:1.2em;padding:.5em 1.5em'>确认 Acknowledge</button></form>",
        )

    @api.post("/ack/{token}", include_in_schema=False)
    async def ack(token: str) -> HTMLResponse:
        try:
            link = await _link(token)
        except HTTPException as exc:
            return _page("链接无效 Link not valid", f"<p>{html.escape(str(exc.detail))}</p>", exc.status_code)
        person = (await current()).roster.people.get(link["person_id"])
        who = f"{person.name if person else link['person_id']} (via link)"
        now = clock.now_ms()
        if not await store.use_link(link["id"], who, now):
            return _page("已使用 Already used", "<p>this link was used before: each works once</p>", 410)
        try:
            changed = await runtime.incidents.act(link["incident_id"], lambda i: acknowledge(i, who, now))
        except TransitionError as exc:
            return _page("无需确认 Nothing to acknowledge", f"<p>{html.escape(str(exc))}</p>", 409)
        if changed is None:
            return _page("链接无效 Link not valid", "<p>no such incident</p>", 404)
        with contextlib.suppress(StoreError):
            await runtime.bus.publish(incident_event(changed, "acknowledged"))
        return _page("已确认 Acknowledged", f"<p>{html.escape(changed.title)}</p><p>{html.escape(who)}</p>")

    return api
