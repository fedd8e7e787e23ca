"""What `/api/health` reports, for the API process and for the gateway's own health port."""

from __future__ import annotations

import asyncio
from typing import Any

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
    report: dict[str, Any] = _redacted(
        {
            "status": "degraded" if degraded else "ok",
            "components": components,
            "dead_letters": {reason: counts.get(reason, 0) for reason in (*REASONS, STORE_REJECTED)},
        }
    )
    return report


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value
