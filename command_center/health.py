"""What `/api/health` reports, for the API process and for the gateway's own health port."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

from iot_gateway.domain.validation import REASONS
from iot_gateway.gateway import STORE_REJECTED
from kernel.errors import StoreError
from kernel.redact import redact_text

from .runtime import Runtime


async def health_report(runtime: Runtime) -> dict[str, Any]:
    """Each component's state, the gateway's counters and the dead-letter counts by reason.

    `status` is `degraded` while any component is down. Error texts pass through redaction:
    whatever a library put in them, no password or token leaves here.
    """
    components: dict[str, Any] = {}
    degraded = False
    ingress = runtime.ingress
    if ingress is not None:
        components["mqtt"] = {
            "state": "connected" if ingress.connected else "disconnected",
            "last_error": ingress.last_error,
            "backpressure_pauses": ingress.pauses,
        }
        degraded |= not ingress.connected
    try:
        await runtime.live.ping()
        components["live_state"] = {"state": "up"}
    except StoreError as exc:
        components["live_state"] = {"state": "down", "error": str(exc)}
        degraded = True
    try:
        await runtime.bus.ping()
        components["bus"] = {"state": "up", "kind": type(runtime.bus).__name__, "topics": await runtime.bus.stats()}
    except StoreError as exc:
        components["bus"] = {"state": "down", "error": str(exc)}
        degraded = True
    series = runtime.series.stats()
    components["time_series"] = series
    degraded |= series.get("state") == "down"
    try:
        await asyncio.to_thread(runtime.records_ok)
        counts = await runtime.dead_letters.counts()
        components["records"] = {"state": "up"}
    except Exception as exc:  # noqa: BLE001 - any failure here is "records down", reported, not raised
        components["records"] = {"state": "down", "error": f"{type(exc).__name__}: {exc}"[:500]}
        counts = dict(runtime.gateway.dead_counts) if runtime.gateway is not None else {}
        degraded = True
    if runtime.gateway is not None:
        components["gateway"] = runtime.gateway.stats()
    if runtime.rules_engine is not None:
        components["rules"] = runtime.rules_engine.stats()
    if runtime.watch is not None:
        components["camera_watch"] = runtime.watch.stats()
    warnings: list[str] = []
    if runtime.desk is not None:
        components["tickets"], warnings = _tickets(runtime)
    if runtime.notifier is not None:
        notify, notify_warnings = await _notify(runtime)
        components["notify"] = notify
        warnings = [*warnings, *notify_warnings]
    report: dict[str, Any] = _redacted(
        {
            "status": "degraded" if degraded else "ok",
            "components": components,
            "warnings": warnings,
            "dead_letters": {reason: counts.get(reason, 0) for reason in (*REASONS, STORE_REJECTED)},
        }
    )
    return report


async def _notify(runtime: Runtime) -> tuple[dict[str, Any], list[str]]:
    """The notifier's counts, dead letters, and tier posts nobody holds right now (a warning:
    an escalation to them would reach no one)."""
    notifier = runtime.notifier
    assert notifier is not None
    warnings: list[str] = []
    try:
        stored = await notifier.store.counts()
    except StoreError as exc:
        return {"state": "down", "error": str(exc)[:500]}, warnings
    if stored.get("failed"):
        warnings.append(f"{stored['failed']} notification(s) failed for good: GET /api/notifications?status=failed")
    roster = notifier.config.roster
    if roster.people:
        now = runtime.clock.now_ms()
        tz = ZoneInfo(runtime.settings.timezone)
        empty = [post for post in ("tier1", "tier2", "tier3") if not roster.on_duty(post, now, tz)]
        if empty:
            warnings.append(f"nobody is on duty for {', '.join(empty)} now")
    else:
        warnings.append("the duty roster is empty: incidents notify no one (PUT /api/duty)")
    return {"state": "up", **notifier.counts, "records": stored}, warnings


# Warn this long before the official calendar's data runs out (the State Council publishes the
# next year's holidays in November; a city must add them before January).
CALENDAR_WARN_DAYS = 60


def _tickets(runtime: Runtime) -> tuple[dict[str, Any], list[str]]:
    """The ticket desk's state and the calendar's coverage: a warning, not degraded (tickets still
    get deadlines, counted in plain weekdays past the data)."""
    desk = runtime.ticket_desk()
    calendar = desk.calendar
    today = calendar.local_day(runtime.clock.now_ms())
    covered = calendar.coverage_end()
    left = (covered - today).days
    state: dict[str, Any] = {
        "state": "up",
        "departments": len(desk.router.departments),
        "grids": len(desk.router.grids),
        "calendar": {"covered_until": covered.isoformat(), "days_left": left, "timezone": str(calendar.tz)},
    }
    warnings: list[str] = []
    if left < CALENDAR_WARN_DAYS:
        message = (
            f"the working-day calendar's official data ends {covered.isoformat()} ({left} days): add the next "
            "year's holidays and make-up working days (settings calendar_holidays, calendar_workdays) or a newer "
            "chinese-calendar; past it, deadlines count plain weekdays"
        )
        state["calendar"]["warning"] = message
        warnings.append(message)
    if runtime.ticket_scheduler is not None:
        state["scheduler"] = {"ticks": runtime.ticket_scheduler.ticks, **runtime.ticket_scheduler.done}
        state["scheduler"]["last_error"] = runtime.ticket_scheduler.last_error
    if runtime.incident_tickets is not None:
        state["from_incidents"] = runtime.incident_tickets.stats()
    return state, warnings


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value
