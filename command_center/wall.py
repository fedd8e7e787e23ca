"""The wall's WebSocket hub (CONTRACT.md `/ws/wall`): a snapshot of the whole city, then one
message per change.

One live subscription per API process feeds every wall client. On the embedded default it is
the in-process fan-out; in production the Redis pub/sub fan-out, so several API processes
behind a load balancer show the same wall.

- **Coalescing**: an entity changes on the wall at most `per_entity_hz` (4) times a second; a
  faster one is held and its newest value sent when its turn comes (never dropped).
- **Slow clients**: each client has a latest-per-entity mailbox: it is bounded by the number of
  entities, a slow reader loses intermediate values of an entity, never the latest, and the hub
  never waits for it.
- **Reconnect**: a client that reconnects gets a fresh snapshot, then changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import orjson

from iot_gateway.domain.kinds import expected_interval_s
from kernel.bus import LatestMailbox
from kernel.clock import to_iso
from kernel.events import (
    CAMERA_STATUS,
    INCIDENT_CHANGED,
    POSITION,
    READING,
    TICKET_CHANGED,
    CameraStatusChanged,
    IncidentChanged,
    TicketChanged,
)
from kernel.model import Position, Reading
from kernel.ports import Bus, DeviceRegistry, LiveSubscription

log = logging.getLogger(__name__)
WALL_TOPICS: Final = (READING, POSITION, INCIDENT_CHANGED, TICKET_CHANGED, CAMERA_STATUS)
Event = Any


def reading_json(r: Reading) -> dict[str, Any]:
    out: dict[str, Any] = {"device_id": r.device_id, "kind": r.kind, "ts": to_iso(r.ts_ms), "value": r.value}
    if r.battery_pct is not None:
        out["battery_pct"] = r.battery_pct
    if r.alarm is not None:
        out["alarm"] = r.alarm
    return out


def position_json(p: Position) -> dict[str, Any]:
    return {
        "device_id": p.device_id,
        "ts": to_iso(p.ts_ms),
        "lat": p.lat,
        "lon": p.lon,
        "speed_kmh": p.speed_kmh,
        "heading_deg": p.heading_deg,
    }


def incident_event_json(e: IncidentChanged) -> dict[str, Any]:
    return {
        "id": e.id,
        "change": e.change,
        "rule_id": e.rule_id,
        "category": e.category,
        "severity": e.severity,
        "escalation_tier": e.escalation_tier,
        "status": e.status,
        "title": e.title,
        "opened_at": to_iso(e.opened_at_ms),
        "updated_at": to_iso(e.updated_at_ms),
        "resolved_at": None if e.resolved_at_ms is None else to_iso(e.resolved_at_ms),
        "lat": e.lat,
        "lon": e.lon,
        "grid_id": e.grid_id,
        "device_ids": list(e.device_ids),
        "camera_ids": list(e.camera_ids),
        "ticket_id": e.ticket_id,
    }


def ticket_event_json(e: TicketChanged) -> dict[str, Any]:
    return {
        "id": e.id,
        "number": e.number,
        "action": e.action,
        "status": e.status,
        "channel": e.channel,
        "category": e.category,
        "urgency": e.urgency,
        "at": to_iso(e.at_ms),
        "department_id": e.department_id,
        "incident_id": e.incident_id,
        "grid_id": e.grid_id,
        "lat": e.lat,
        "lon": e.lon,
        "deadline": None if e.deadline_ms is None else to_iso(e.deadline_ms),
        "camera_ids": list(e.camera_ids),
    }


def camera_event_json(e: CameraStatusChanged) -> dict[str, Any]:
    return {
        "id": e.camera_id,
        "status": e.status,
        "previous": e.previous,
        "reason": e.reason,
        "last_checked": to_iso(e.checked_at_ms),
        "lat": e.lat,
        "lon": e.lon,
    }


def message(event: Event) -> dict[str, Any] | None:
    """The wall message for a bus event (None: not for the wall)."""
    if isinstance(event, Reading):
        return {"type": "reading", "data": reading_json(event)}
    if isinstance(event, Position):
        return {"type": "vehicle", "data": position_json(event)}
    if isinstance(event, IncidentChanged):
        return {"type": "incident", "data": incident_event_json(event)}
    if isinstance(event, TicketChanged):
        return {"type": "ticket", "data": ticket_event_json(event)}
    if isinstance(event, CameraStatusChanged):
        return {"type": "camera", "data": camera_event_json(event)}
    return None


@dataclass(eq=False)
class WallClient:
    """One connected wall: its mailbox (latest per entity) and what it was sent."""

    mailbox: LatestMailbox = field(default_factory=LatestMailbox)
    sent: int = 0

    async def take(self, max_events: int = 500, timeout_s: float | None = None) -> list[Event]:
        return await self.mailbox.take(max_events, timeout_s)


@dataclass(frozen=True)
class KpiTick:
    """A `kpi` message made by `compute` every `every_s` (sent when it changed)."""

    compute: Callable[[], Awaitable[dict[str, Any]]]
    every_s: float = 5.0


class Encoded:
    """A wall message encoded once for every client (100 screens do not mean 100 encodings),
    keyed like the bus event it came from so that the mailboxes keep the latest per entity."""

    __slots__ = ("TOPIC", "key", "text")

    def __init__(self, topic: str, key: str, text: str) -> None:
        self.TOPIC = topic
        self.key = key
        self.text = text

    @classmethod
    def of(cls, event: Event) -> Encoded | None:
        found = message(event)
        return None if found is None else cls(event.TOPIC, event.key, orjson.dumps(found).decode())


class WallHub:
    def __init__(self, bus: Bus, *, per_entity_hz: float = 4.0, kpis: KpiTick | None = None) -> None:
        self._bus = bus
        self._gap_s = 1.0 / per_entity_hz
        self._kpis = kpis
        self._clients: set[WallClient] = set()
        self._last_sent: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], Event] = {}
        self._sub: LiveSubscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.last_kpis: dict[str, Any] | None = None
        self.counts = {"events": 0, "held": 0, "delivered": 0}

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        self._sub = self._bus.live(WALL_TOPICS)
        self._tasks = [
            asyncio.create_task(self._pump(self._sub), name="wall-pump"),
            asyncio.create_task(self._release(), name="wall-release"),
        ]
        if self._kpis is not None:
            self._tasks.append(asyncio.create_task(self._kpi_loop(self._kpis), name="wall-kpis"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sub is not None:
            await self._sub.close()
        for client in self._clients:
            client.mailbox.closed = True

    def connect(self) -> WallClient:
        """A new client; changes from now on go to its mailbox (take the snapshot after this)."""
        client = WallClient()
        self._clients.add(client)
        return client

    def disconnect(self, client: WallClient) -> None:
        self._clients.discard(client)

    def stats(self) -> dict[str, Any]:
        return {"clients": len(self._clients), **self.counts, "holding": len(self._held)}

    def offer(self, event: Event) -> None:
        """An event for every client, at most `per_entity_hz` times a second per entity."""
        self.counts["events"] += 1
        key = (event.TOPIC, event.key)
        now = time.monotonic()
        last = self._last_sent.get(key)
        if last is not None and now - last < self._gap_s:
            if key not in self._held:
                self.counts["held"] += 1
            self._held[key] = event  # the newest waits for the entity's turn
            self._wake.set()
            return
        # A value held for this entity is older than this one: it must not go out after it
        # (its turn can pass while the release loop sleeps on a busy event loop).
        self._held.pop(key, None)
        self._deliver(key, event, now)

    def _deliver(self, key: tuple[str, str], event: Event, now: float) -> None:
        self._last_sent[key] = now
        encoded = Encoded.of(event)
        if encoded is None:
            return
        # Not a bus event, but keyed like one: the mailbox only needs TOPIC and key.
        item = cast(Any, encoded)
        for client in self._clients:
            client.mailbox.offer(item)
        self.counts["delivered"] += 1

    async def _pump(self, sub: LiveSubscription) -> None:
        while True:
            try:
                for event in await sub.take(1000, timeout_s=1.0):
                    self.offer(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("wall: reading the live fan-out failed; retrying")
                await asyncio.sleep(0.5)

    async def _release(self) -> None:
        """Send held entities whose turn has come."""
        while True:
            if not self._held:
                self._wake.clear()
                await self._wake.wait()
            now = time.monotonic()
            due = [k for k in self._held if now - self._last_sent.get(k, 0.0) >= self._gap_s]
            for key in due:
                self._deliver(key, self._held.pop(key), now)
            if self._held:
                earliest = min(self._last_sent.get(k, 0.0) for k in self._held) + self._gap_s
                await asyncio.sleep(max(0.005, earliest - time.monotonic()))
            if len(self._last_sent) > 200_000:
                # Forget entities not heard of for a minute (vehicles come and go).
                cutoff = time.monotonic() - 60
                self._last_sent = {k: t for k, t in self._last_sent.items() if t >= cutoff or k in self._held}

    async def _kpi_loop(self, tick: KpiTick) -> None:
        while True:
            try:
                data = await tick.compute()
                if data != self.last_kpis:
                    self.last_kpis = data
                    item = cast(Any, Encoded("kpi", "kpi", orjson.dumps({"type": "kpi", "data": data}).decode()))
                    for client in self._clients:
                        client.mailbox.offer(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("wall: computing the KPI tiles failed")
            await asyncio.sleep(tick.every_s)


async def devices_json(devices: DeviceRegistry) -> list[dict[str, Any]]:
    out = []
    for d in await devices.list(None, 100_000, 0):
        out.append(
            {
                "id": d.id,
                "kind": d.kind,
                "name": d.name,
                "lat": d.lat,
                "lon": d.lon,
                "grid_id": d.grid_id,
                "attributes": d.attributes,
                "expected_interval_s": expected_interval_s(d.kind, d.attributes),
            }
        )
    return out
