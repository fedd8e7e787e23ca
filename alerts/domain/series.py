"""Rules over a device's recent readings: rate of change, projected crossing, duration, count.

Pure: (rule, state, reading, device) -> (state, changes). Each keeps only the readings of its
window in its state, and ignores a reading not newer than the last one it judged.
"""

from __future__ import annotations

from typing import NamedTuple

from kernel.model import Device, Reading

from .evaluate import Change, Clear, Problem, Raise
from .rules import CountRule, DurationRule, Level, ProjectionRule, RateRule, Test

Point = tuple[int, float]  # (ts_ms, value)


class SeriesState(NamedTuple):
    """Recent points of one device for one rule, and whether the rule is raised for it."""

    points: tuple[Point, ...] = ()
    raised: bool = False
    since_ms: int | None = None  # duration: when the test began to hold
    last_ts_ms: int = -1


def _raise(rule: RateRule | ProjectionRule | DurationRule | CountRule, device: Device, at_ms: int, what: str) -> Raise:
    return Raise(
        rule.id,
        device.id,
        rule.severity,
        f"{rule.name}: {device.name} {what}",
        at_ms,
        (device.id,),
        device.lat,
        device.lon,
        device.grid_id,
    )


def _keep(points: tuple[Point, ...], point: Point, window_ms: float) -> tuple[Point, ...]:
    return (*[p for p in points if point[0] - p[0] <= window_ms], point)


def level_value(level: Level, device: Device) -> float | str:
    if level.at is not None:
        return level.at
    raw = device.attributes.get(level.attribute or "")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return f"device {device.id} has no number in attribute {level.attribute!r}"
    return float(raw)


def passes(test: Test, reading: Reading, device: Device) -> bool | str:
    """Whether the reading passes the test, or why it cannot be judged."""
    if test.field == "alarm":
        return bool(reading.alarm)
    if test.attribute is not None:
        raw = device.attributes.get(test.attribute)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return f"device {device.id} has no number in attribute {test.attribute!r}"
        limit = float(raw)
    else:
        limit = float(test.at or 0.0)
    return reading.value >= limit if test.op == ">=" else reading.value <= limit


def rate_step(rule: RateRule, state: SeriesState, reading: Reading, device: Device) -> tuple[SeriesState, list[Change]]:
    if reading.ts_ms <= state.last_ts_ms:
        return state, []
    points = _keep(state.points, (reading.ts_ms, reading.value), rule.window_s * 1000)
    values = [v for _, v in points]
    moved = reading.value - min(values) if rule.direction == "rise" else max(values) - reading.value
    raised = moved >= rule.change
    new = SeriesState(points, raised, None, reading.ts_ms)
    if raised and not state.raised:
        word = "上涨" if rule.direction == "rise" else "下降"
        return new, [_raise(rule, device, reading.ts_ms, f"{rule.window_s / 60:g} 分钟内{word} {moved:.2f}")]
    if state.raised and not raised:
        return new, [Clear(rule.id, device.id, reading.ts_ms, "the rate is back under its limit")]
    return new, []


def projected_crossing_s(points: tuple[Point, ...], level: float) -> float | None:
    """Seconds from the last point until the least-squares trend reaches `level` (None: it never
    does going forward, or it is flat or falling). 0 when the last value is at the level already."""
    n = len(points)
    t0 = points[0][0]
    xs = [(t - t0) / 1000 for t, _ in points]
    ys = [v for _, v in points]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    if ys[-1] >= level:
        return 0.0
    if slope <= 0:
        return None
    # The trend line's value now (at the last point), then how long until it reaches the level.
    now_value = my + slope * (xs[-1] - mx)
    return max(0.0, (level - now_value) / slope)


def projection_step(
    rule: ProjectionRule, state: SeriesState, reading: Reading, device: Device
) -> tuple[SeriesState, list[Change]]:
    if reading.ts_ms <= state.last_ts_ms:
        return state, []
    target = level_value(rule.level, device)
    points = _keep(state.points, (reading.ts_ms, reading.value), rule.window_s * 1000)
    if isinstance(target, str):
        return SeriesState(points, state.raised, None, reading.ts_ms), [Problem(rule.id, device.id, target)]
    eta = projected_crossing_s(points, target) if len(points) >= rule.min_points else None
    soon = eta is not None and eta <= rule.horizon_s
    new = SeriesState(points, soon, None, reading.ts_ms)
    if soon and not state.raised:
        minutes = (eta or 0.0) / 60
        what = f"按当前趋势约 {minutes:.0f} 分钟后达到 {target:g} (now {reading.value:g})"
        return new, [_raise(rule, device, reading.ts_ms, what)]
    if state.raised and not soon:
        return new, [Clear(rule.id, device.id, reading.ts_ms, "the trend no longer reaches the level soon")]
    return new, []


def duration_step(
    rule: DurationRule, state: SeriesState, reading: Reading, device: Device
) -> tuple[SeriesState, list[Change]]:
    if reading.ts_ms <= state.last_ts_ms:
        return state, []
    holds = passes(rule.test, reading, device)
    if isinstance(holds, str):
        return state._replace(last_ts_ms=reading.ts_ms), [Problem(rule.id, device.id, holds)]
    if not holds:
        new = SeriesState((), False, None, reading.ts_ms)
        if state.raised:
            return new, [Clear(rule.id, device.id, reading.ts_ms, "the condition no longer holds")]
        return new, []
    since = state.since_ms if state.since_ms is not None else reading.ts_ms
    held_s = (reading.ts_ms - since) / 1000
    raised = held_s >= rule.for_s
    new = SeriesState((), raised, since, reading.ts_ms)
    if raised and not state.raised:
        return new, [_raise(rule, device, reading.ts_ms, f"持续 {held_s / 60:.0f} 分钟")]
    return new, []


def count_step(
    rule: CountRule, state: SeriesState, reading: Reading, device: Device
) -> tuple[SeriesState, list[Change]]:
    if reading.ts_ms <= state.last_ts_ms:
        return state, []
    holds = passes(rule.test, reading, device)
    if isinstance(holds, str):
        return state._replace(last_ts_ms=reading.ts_ms), [Problem(rule.id, device.id, holds)]
    window_ms = rule.window_s * 1000
    points = tuple(p for p in state.points if reading.ts_ms - p[0] <= window_ms)
    if holds:
        points = (*points, (reading.ts_ms, reading.value))
    raised = len(points) >= rule.times
    new = SeriesState(points, raised, None, reading.ts_ms)
    if raised and not state.raised:
        return new, [_raise(rule, device, reading.ts_ms, f"{rule.window_s / 60:g} 分钟内 {len(points)} 次")]
    if state.raised and not raised:
        return new, [Clear(rule.id, device.id, reading.ts_ms, "fewer times within the window")]
    return new, []
