"""Rules over vehicle fixes: leaving the route corridor, dwelling in a zone, speeding; and camera outages.

Pure: (rule, state, fix or status, device or camera) -> (state, changes). Distances to a route
are computed on a local flat projection in metres (a city is small enough for it), with shapely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from shapely.geometry import LineString, Point

from kernel.events import CameraStatusChanged
from kernel.model import Device, Position

from .evaluate import Change, Clear, PreparedZone, Raise
from .rules import CameraOfflineRule, CorridorRule, DwellRule, LatLon, SpeedRule

METRES_PER_DEGREE = 111_320.0


class Route(NamedTuple):
    """A route as a line in local metres, with the origin and scale of that projection."""

    line: LineString
    lat0: float
    lon0: float
    cos0: float


def make_route(points: Sequence[LatLon]) -> Route:
    lat0 = sum(lat for lat, _ in points) / len(points)
    lon0 = sum(lon for _, lon in points) / len(points)
    cos0 = math.cos(math.radians(lat0))
    line = LineString(
        [((lon - lon0) * METRES_PER_DEGREE * cos0, (lat - lat0) * METRES_PER_DEGREE) for lat, lon in points]
    )
    return Route(line, lat0, lon0, cos0)


def off_route_m(route: Route, lat: float, lon: float) -> float:
    x = (lon - route.lon0) * METRES_PER_DEGREE * route.cos0
    y = (lat - route.lat0) * METRES_PER_DEGREE
    return float(route.line.distance(Point(x, y)))


class VehicleState(NamedTuple):
    flagged: bool = False
    since_ms: int | None = None  # dwell: when the vehicle entered the zone it is in
    zone: str | None = None
    last_ts_ms: int = -1


def _raise(rule: CorridorRule | DwellRule | SpeedRule, device: Device, fix: Position, what: str) -> Raise:
    plate = device.attributes.get("plate", device.id)
    return Raise(
        rule.id,
        device.id,
        rule.severity,
        f"{rule.name}: {plate} {what}",
        fix.ts_ms,
        (device.id,),
        fix.lat,
        fix.lon,
        device.grid_id,
    )


def corridor_step(
    rule: CorridorRule, route: Route | None, state: VehicleState, fix: Position, device: Device
) -> tuple[VehicleState, list[Change]]:
    """`route` is the vehicle's route (None: it has none, so the rule cannot judge it)."""
    if fix.ts_ms <= state.last_ts_ms or route is None:
        return state, []
    away = off_route_m(route, fix.lat, fix.lon)
    off = away > rule.width_m / 2
    new = VehicleState(off, None, None, fix.ts_ms)
    if off and not state.flagged:
        return new, [_raise(rule, device, fix, f"偏离路线 {away:.0f} 米")]
    if state.flagged and not off:
        return new, [Clear(rule.id, device.id, fix.ts_ms, "back on its route")]
    return new, []


def dwell_step(
    rule: DwellRule, zones: Sequence[PreparedZone], state: VehicleState, fix: Position, device: Device
) -> tuple[VehicleState, list[Change]]:
    if fix.ts_ms <= state.last_ts_ms:
        return state, []
    point = Point(fix.lon, fix.lat)
    inside = next((z for z in zones if z.shape.contains(point)), None)
    if inside is None:
        new = VehicleState(False, None, None, fix.ts_ms)
        if state.flagged:
            return new, [Clear(rule.id, device.id, fix.ts_ms, "left the zone")]
        return new, []
    since = state.since_ms if state.zone == inside.id and state.since_ms is not None else fix.ts_ms
    stayed_s = (fix.ts_ms - since) / 1000
    too_long = stayed_s > rule.max_s
    new = VehicleState(too_long or state.flagged, since, inside.id, fix.ts_ms)
    if too_long and not state.flagged:
        return new, [_raise(rule, device, fix, f"在 {inside.name} 停留 {stayed_s / 60:.0f} 分钟")]
    return new, []


def speed_step(
    rule: SpeedRule, state: VehicleState, fix: Position, device: Device
) -> tuple[VehicleState, list[Change]]:
    if fix.ts_ms <= state.last_ts_ms or fix.speed_kmh is None:
        return state, []
    limit = rule.limit_kmh - rule.hysteresis_kmh if state.flagged else rule.limit_kmh
    fast = fix.speed_kmh > limit
    new = VehicleState(fast, None, None, fix.ts_ms)
    if fast and not state.flagged:
        return new, [_raise(rule, device, fix, f"超速 {fix.speed_kmh:.0f} km/h (限 {rule.limit_kmh:g})")]
    if state.flagged and not fast:
        return new, [Clear(rule.id, device.id, fix.ts_ms, "back under the limit")]
    return new, []


class CameraState(NamedTuple):
    offline_since_ms: int | None = None
    raised: bool = False
    last_ms: int = -1
    lat: float | None = None
    lon: float | None = None


def camera_status_step(
    rule: CameraOfflineRule, state: CameraState, event: CameraStatusChanged
) -> tuple[CameraState, list[Change]]:
    """A camera's status changed: offline starts the clock, online clears."""
    if event.checked_at_ms <= state.last_ms:
        return state, []
    if rule.departments and event.department not in rule.departments:
        return state, []
    if event.status == "offline":
        since = state.offline_since_ms if state.offline_since_ms is not None else event.checked_at_ms
        return CameraState(since, state.raised, event.checked_at_ms, event.lat, event.lon), []
    new = CameraState(None, False, event.checked_at_ms, event.lat, event.lon)
    if state.raised:
        return new, [
            Clear(rule.id, event.camera_id, event.checked_at_ms, f"camera {event.camera_id} is {event.status}")
        ]
    return new, []


def camera_tick(
    rule: CameraOfflineRule, camera_id: str, state: CameraState, now_ms: int
) -> tuple[CameraState, list[Change]]:
    if state.raised or state.offline_since_ms is None:
        return state, []
    offline_s = (now_ms - state.offline_since_ms) / 1000
    if offline_s < rule.for_s:
        return state, []
    raised = Raise(
        rule.id,
        camera_id,
        rule.severity,
        f"{rule.name}: 摄像头 {camera_id} 离线 {offline_s / 60:.0f} 分钟",
        now_ms,
        (),
        state.lat,
        state.lon,
        None,
        camera_ids=(camera_id,),
    )
    return state._replace(raised=True), [raised]
