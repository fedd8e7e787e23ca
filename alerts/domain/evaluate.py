"""Rule evaluation: pure functions (rule, state, event, device, now) -> (new state, changes).

No I/O and no clock: `now_ms` comes in. The engine keeps the states and turns the changes
into incidents. A change is `Raise` (open an incident, or raise the open one's severity),
`Clear` (the condition is over) or `Problem` (the rule cannot judge this device, e.g. an
attribute it names is missing: counted and shown on the rule, never a crash).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from shapely.geometry import Point, Polygon
from shapely.prepared import PreparedGeometry, prep

from kernel.model import Device, DeviceStatus, Position, Reading, expected_interval_s

from .rules import CorrelationRule, DwellRule, Scope, Severity, SilenceRule, ThresholdRule, ZoneRule, ZoneShape

EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True, slots=True)
class Raise:
    rule_id: str
    subject: str
    severity: Severity
    title: str
    at_ms: int
    device_ids: tuple[str, ...]
    lat: float | None = None
    lon: float | None = None
    grid_id: str | None = None
    detail: str = ""
    camera_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Clear:
    rule_id: str
    subject: str
    at_ms: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Problem:
    rule_id: str
    device_id: str
    detail: str


Change = Raise | Clear | Problem


def in_scope(scope: Scope, device: Device) -> bool:
    """Every condition the scope gives holds for the device."""
    if scope.kinds and device.kind not in scope.kinds:
        return False
    if scope.device_ids and device.id not in scope.device_ids:
        return False
    if scope.grid_ids and device.grid_id not in scope.grid_ids:
        return False
    return not scope.categories or device.attributes.get("category") in scope.categories


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine): exact enough for metres within a city."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


# --- threshold with hysteresis --------------------------------------------------------------


class LevelState(NamedTuple):
    """Where a device stands against a threshold rule: the level reached (None: normal).

    A NamedTuple rather than a frozen dataclass: one is made per reading, and a tuple is made
    several times faster (measured in bench/rules)."""

    level: int | None = None
    last_ts_ms: int = -1


def thresholds(rule: ThresholdRule, device: Device) -> list[float] | str:
    """Each level's threshold for this device, or why there is none."""
    out: list[float] = []
    for level in rule.levels:
        if level.at is not None:
            out.append(level.at)
            continue
        raw = device.attributes.get(level.attribute or "")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return f"device {device.id} has no number in attribute {level.attribute!r}"
        out.append(float(raw))
    return out


def threshold_step(
    rule: ThresholdRule,
    state: LevelState,
    reading: Reading,
    device: Device,
    limits: Sequence[float] | str | None = None,
) -> tuple[LevelState, list[Change]]:
    """One reading against a threshold rule.

    A reading not newer than the last one judged (a duplicate, or one that arrived late) changes
    nothing: the newer reading already decided. Levels at or below the current one are left only
    `hysteresis` below their threshold; higher ones are reached at their threshold. The incident's
    severity only rises: falling back to a lower level keeps the incident as it is. `limits` are
    `thresholds(rule, device)` when the caller keeps them (they change only with rule or device).
    """
    if reading.ts_ms <= state.last_ts_ms:
        return state, []
    current = state.level
    if rule.field == "alarm":
        if reading.alarm is None:  # a heartbeat that says nothing of the alarm
            return state._replace(last_ts_ms=reading.ts_ms), []
        new = 0 if reading.alarm else None
    else:
        if limits is None:
            limits = thresholds(rule, device)
        if isinstance(limits, str):
            return state._replace(last_ts_ms=reading.ts_ms), [Problem(rule.id, device.id, limits)]
        new = None
        value = reading.value
        for i, limit in enumerate(limits):
            lowered = limit - rule.hysteresis if current is not None and i <= current else limit
            if value >= lowered:
                new = i
    if new == current:  # the common case: nothing changes but the time
        return LevelState(new, reading.ts_ms), []
    shown = "alarm" if rule.field == "alarm" else f"{reading.value:g} {reading.unit}"
    changes: list[Change] = []
    if new is not None and (current is None or new > current):
        level = rule.levels[new]
        at = (
            ""
            if rule.field == "alarm"
            else f" ≥ {level.at if level.at is not None else device.attributes[level.attribute or '']:g}"
        )
        changes.append(
            Raise(
                rule.id,
                device.id,
                level.severity,
                f"{rule.name}: {device.name} {shown}{at}",
                reading.ts_ms,
                (device.id,),
                device.lat,
                device.lon,
                device.grid_id,
            )
        )
    elif new is None and current is not None:
        changes.append(Clear(rule.id, device.id, reading.ts_ms, f"{device.name} back to normal ({shown})"))
    return LevelState(new, reading.ts_ms), changes


# --- silence ------------------------------------------------------------------------------


class SilenceState(NamedTuple):
    """When a device was last heard of, and whether it is silent or said it is offline (per reading too)."""

    last_seen_ms: int | None = None
    silent: bool = False
    offline: bool = False


def silence_seen(
    rule: SilenceRule, state: SilenceState, device: Device, at_ms: int
) -> tuple[SilenceState, list[Change]]:
    """The device sent data (a reading or a position)."""
    if state.last_seen_ms is not None and at_ms <= state.last_seen_ms:
        return state, []
    was_raised = state.silent or state.offline
    new = SilenceState(at_ms, False, False)
    return new, [Clear(rule.id, device.id, at_ms, f"{device.name} reports again")] if was_raised else []


def silence_status(
    rule: SilenceRule, state: SilenceState, device: Device, status: DeviceStatus
) -> tuple[SilenceState, list[Change]]:
    """The device said it is online or offline (its last will says offline)."""
    if not rule.offline_status:
        return state, []
    if status.status == "offline" and not state.offline:
        new = state._replace(offline=True)
        if state.silent:
            return new, []
        return new, [_silent(rule, device, status.at_ms, f"{device.name} 离线 (offline)")]
    if status.status == "online" and state.offline:
        new = state._replace(offline=False, last_seen_ms=max(state.last_seen_ms or 0, status.at_ms), silent=False)
        return new, [Clear(rule.id, device.id, status.at_ms, f"{device.name} online again")]
    return state, []


def silence_tick(
    rule: SilenceRule, state: SilenceState, device: Device, now_ms: int, started_ms: int
) -> tuple[SilenceState, list[Change]]:
    """Time passed. A device never heard from counts from `started_ms` (when watching began), so a
    restart does not make every quiet device 'silent' at once."""
    if state.silent or state.offline:
        return state, []
    since = state.last_seen_ms if state.last_seen_ms is not None else started_ms
    limit_ms = int(rule.factor * expected_interval_s(device.kind, device.attributes) * 1000)
    if now_ms - since <= limit_ms:
        return state, []
    minutes = (now_ms - since) / 60_000
    return state._replace(silent=True), [_silent(rule, device, now_ms, f"{device.name} 无数据 {minutes:.0f} 分钟")]


def _silent(rule: SilenceRule, device: Device, at_ms: int, title: str) -> Raise:
    return Raise(
        rule.id,
        device.id,
        rule.severity,
        f"{rule.name}: {title}",
        at_ms,
        (device.id,),
        device.lat,
        device.lon,
        device.grid_id,
    )


# --- correlation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    device_id: str
    condition: int
    at_ms: int
    lat: float
    lon: float
    grid_id: str | None


@dataclass(frozen=True, slots=True)
class CorrelationState:
    """Recent hits of each condition, and the groups already raised (by their first device)."""

    hits: tuple[Hit, ...] = ()
    raised: frozenset[str] = field(default_factory=frozenset)


def condition_met(rule: CorrelationRule, reading: Reading) -> int | None:
    for i, cond in enumerate(rule.conditions):
        if cond.kind != reading.kind:
            continue
        if cond.field == "alarm" and reading.alarm:
            return i
        if cond.field == "value" and cond.at is not None and reading.value >= cond.at:
            return i
    return None


def correlation_step(
    rule: CorrelationRule, state: CorrelationState, reading: Reading, device: Device
) -> tuple[CorrelationState, list[Change]]:
    """A reading may complete a group: a hit for every condition within the radius and window."""
    cond = condition_met(rule, reading)
    if cond is None:  # most readings: nothing to remember (old hits are pruned when one comes)
        return state, []
    window_ms = int(rule.window_s * 1000)
    hits = tuple(h for h in state.hits if reading.ts_ms - h.at_ms <= window_ms)
    hit = Hit(device.id, cond, reading.ts_ms, device.lat, device.lon, device.grid_id)
    hits = (*[h for h in hits if not (h.device_id == hit.device_id and h.condition == cond)], hit)
    # A box around the hit first (cheap comparisons), the great-circle distance only inside it.
    dlat = rule.radius_m / 111_000 * 1.01
    dlon = dlat / max(math.cos(math.radians(hit.lat)), 0.01)
    near = [
        h
        for h in hits
        if abs(h.lat - hit.lat) <= dlat
        and abs(h.lon - hit.lon) <= dlon
        and abs(h.at_ms - hit.at_ms) <= window_ms
        and distance_m(h.lat, h.lon, hit.lat, hit.lon) <= rule.radius_m
    ]
    by_condition: dict[int, Hit] = {}
    for h in near:
        by_condition.setdefault(h.condition, h)
    if len(by_condition) < len(rule.conditions):
        return CorrelationState(hits, state.raised), []
    devices = tuple(sorted({h.device_id for h in near}))
    # One incident per place: named after the group's first device in id order, so the same
    # pair seen again (or with a third device) updates it instead of opening another.
    subject = next((d for d in devices if d in state.raised), devices[0])
    lat = sum(h.lat for h in near) / len(near)
    lon = sum(h.lon for h in near) / len(near)
    change = Raise(
        rule.id,
        subject,
        rule.severity,
        f"{rule.name}: {', '.join(devices)}",
        reading.ts_ms,
        devices,
        lat,
        lon,
        hit.grid_id,
    )
    return CorrelationState(hits, state.raised | {subject}), [change]


# --- vehicles in zones ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedZone:
    id: str
    name: str
    shape: PreparedGeometry[Polygon]


def prepare_zones(rule: ZoneRule | DwellRule, city_zones: Sequence[ZoneShape]) -> list[PreparedZone]:
    """The rule's own zones and the city zones it names (`*`: every city zone)."""
    chosen = list(rule.zones)
    wanted = set(rule.zone_ids)
    chosen += [z for z in city_zones if "*" in wanted or z.id in wanted]
    return [PreparedZone(z.id, z.name, prep(Polygon([(lon, lat) for lat, lon in z.polygon]))) for z in chosen]


@dataclass(frozen=True, slots=True)
class ZoneState:
    inside: str | None = None  # the zone the vehicle is in
    last_ts_ms: int = -1


def zone_step(
    rule: ZoneRule, zones: Sequence[PreparedZone], state: ZoneState, fix: Position, device: Device
) -> tuple[ZoneState, list[Change]]:
    if fix.ts_ms <= state.last_ts_ms:
        return state, []
    point = Point(fix.lon, fix.lat)
    inside = next((z for z in zones if z.shape.contains(point)), None)
    new = ZoneState(inside.id if inside else None, fix.ts_ms)
    if inside is not None and state.inside is None:
        plate = device.attributes.get("plate", device.id)
        return new, [
            Raise(
                rule.id,
                device.id,
                rule.severity,
                f"{rule.name}: {plate} 进入 {inside.name}",
                fix.ts_ms,
                (device.id,),
                fix.lat,
                fix.lon,
                device.grid_id,
            )
        ]
    if inside is None and state.inside is not None:
        return new, [Clear(rule.id, device.id, fix.ts_ms, f"{device.name} left the zone")]
    return new, []


def open_levels(rule: ThresholdRule, severities: Mapping[str, Severity]) -> dict[str, LevelState]:
    """Threshold states rebuilt from open incidents (device -> severity) after a restart: the level
    whose severity the incident has, so the next reading neither raises it again nor forgets it."""
    ranks = {level.severity: i for i, level in enumerate(rule.levels)}
    return {
        device_id: LevelState(ranks.get(severity, len(rule.levels) - 1)) for device_id, severity in severities.items()
    }
