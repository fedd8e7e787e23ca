"""`/ws/wall`: the WebSocket of the wall (CONTRACT.md), and the snapshot and KPI tiles it sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from hotline.adapters.tickets_sql import TicketFilter
from iot_gateway.domain.kinds import expected_interval_s, is_stale
from kernel.clock import to_iso
from kernel.events import CAMERA_STATUS, DEVICE_STATUS, POSITION, READING
from kernel.model import DeviceStatus, Position, Reading

from .api_incidents import incident_json
from .api_tickets import iso_in, ticket_json
from .auth import Principal
from .city import city_grid_polygons
from .runtime import Runtime
from .wall import WallClient, WallHub, devices_json, position_json, reading_json

log = logging.getLogger(__name__)
# Close codes (4000-4999 are the application's): no or bad token.
UNAUTHORIZED = 4401
SNAPSHOT_TICKETS = 500


async def kpi_tiles(runtime: Runtime) -> dict[str, Any]:
    """The wall's KPI tiles: today's tickets, this month's rates, open incidents by severity and
    tier, devices online and stale, camera availability."""
    now = runtime.clock.now_ms()
    out: dict[str, Any] = {"at": to_iso(now)}
    desk = runtime.desk
    if desk is not None:
        tz = desk.calendar.tz
        local = datetime.fromtimestamp(now / 1000, tz=tz)
        day_start = int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
        month_start = int(local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)
        today = await desk.store.kpis(day_start, now + 1, now)
        month = (await desk.store.kpis(month_start, now + 1, now)).as_json()
        out["tickets_today"] = today.total.accepted
        out["tickets"] = {
            k: month[k] for k in ("accepted", "completion_rate", "on_time_rate", "satisfaction_rate", "overdue_open")
        }
    incidents = await runtime.incidents.open_incidents()
    out["incidents"] = {
        "open": len(incidents),
        "by_severity": dict(Counter(i.severity for i in incidents)),
        "by_tier": {str(k): v for k, v in Counter(i.escalation_tier for i in incidents).items()},
    }
    devices = await runtime.devices.list(None, 100_000, 0)
    latest_readings = await runtime.bus.latest(READING)
    latest_positions = await runtime.bus.latest(POSITION)
    statuses = await runtime.bus.latest(DEVICE_STATUS)
    online = stale = offline = 0
    for d in devices:
        status = statuses.get(d.id)
        if isinstance(status, DeviceStatus) and status.status == "offline":
            offline += 1
            continue
        latest = latest_positions.get(d.id) if d.kind == "vehicle" else latest_readings.get(d.id)
        ts = latest.ts_ms if isinstance(latest, Reading | Position) else None
        if is_stale(ts, expected_interval_s(d.kind, d.attributes), now):
            stale += 1
        else:
            online += 1
    out["devices"] = {"total": len(devices), "online": online, "stale": stale, "offline": offline}
    if runtime.cameras is not None:
        counts = runtime.cameras.index.status_counts()
        judged = sum(n for s, n in counts.items() if s in ("online", "offline", "degraded"))
        out["cameras"] = {
            "total": len(runtime.cameras.index),
            "by_status": counts,
            "availability": None if judged == 0 else round(counts.get("online", 0) / judged, 4),
        }
    return out


async def snapshot(runtime: Runtime, hub: WallHub) -> dict[str, Any]:
    """The whole current state of the city, as the wall draws it."""
    now = runtime.clock.now_ms()
    readings = await runtime.bus.latest(READING)
    positions = await runtime.bus.latest(POSITION)
    data: dict[str, Any] = {
        "server_time": to_iso(now),
        "city": {
            "name": runtime.city.name if runtime.city is not None else "city",
            "tile_url": runtime.settings.wall_tile_url,
        },
        "devices": await devices_json(runtime.devices),
        "readings": {k: reading_json(e) for k, e in readings.items() if isinstance(e, Reading)},
        "vehicles": {k: position_json(e) for k, e in positions.items() if isinstance(e, Position)},
        "incidents": [incident_json(i) for i in await runtime.incidents.open_incidents()],
        "tickets": [],
        "cameras": [],
        "kpi": hub.last_kpis or await kpi_tiles(runtime),
    }
    desk = runtime.desk
    if desk is not None:
        found, _total = await desk.store.list(
            TicketFilter(status=("new", "dispatched", "accepted", "returned", "replied")), SNAPSHOT_TICKETS, 0
        )
        data["tickets"] = [ticket_json(t, desk.calendar.tz) for t in found]
        grids = await desk.store.doc("grids")
        data["city"]["grids"] = grids if isinstance(grids, dict) else {"type": "FeatureCollection", "features": []}
        data["city"]["timezone"] = str(desk.calendar.tz)
        data["city"]["today"] = iso_in(now, desk.calendar.tz)
    else:
        data["city"]["grids"] = {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "properties": {"id": gid},
                    "geometry": {"type": "Polygon", "coordinates": [[[lon, lat] for lat, lon in ring]]},
                }
                for gid, ring in city_grid_polygons(runtime.city).items()
            ],
        }
    if runtime.city is not None:
        data["city"]["forbidden_zones"] = [z.model_dump() for z in runtime.city.forbidden_zones]
    if runtime.cameras is not None:
        cameras = await runtime.cameras.store.all()
        statuses = await runtime.bus.latest(CAMERA_STATUS)
        data["cameras"] = [
            {
                "id": c.id,
                "name": c.name,
                "department": c.department,
                "lat": c.lat,
                "lon": c.lon,
                "status": getattr(statuses.get(c.id), "status", None) or c.status,
                "reason": c.reason,
            }
            for c in cameras
        ]
    return data


def wall_routes(runtime: Runtime, hub: WallHub) -> APIRouter:
    router = APIRouter()

    async def who(token: str | None) -> Principal | None:
        if not token:
            return None
        return await runtime.tokens.lookup(token, runtime.clock.now_ms())

    @router.websocket("/ws/wall")
    async def wall_socket(ws: WebSocket, token: str | None = None) -> None:
        if await who(token) is None:
            # Refused before the handshake completes: the browser sees the close code.
            await ws.close(code=UNAUTHORIZED, reason="a valid token is required (?token=...)")
            return
        await ws.accept()
        client = hub.connect()
        send_lock = asyncio.Lock()

        async def send(text: str) -> None:
            async with send_lock:
                await ws.send_text(text)

        sender: asyncio.Task[None] | None = None
        try:
            await send(orjson.dumps({"type": "snapshot", "data": await snapshot(runtime, hub)}).decode())
            sender = asyncio.create_task(_forward(client, send), name="wall-client")
            while True:
                text = await ws.receive_text()
                with contextlib.suppress(orjson.JSONDecodeError):
                    if (orjson.loads(text) or {}).get("type") == "ping":
                        await send('{"type":"pong"}')
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            hub.disconnect(client)
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await sender

    return router


async def _forward(client: WallClient, send: Any) -> None:
    """The client's mailbox to its socket; a slow socket only makes its own mailbox coalesce more."""
    while True:
        for item in await client.take(500):
            await send(item.text)
            client.sent += 1
