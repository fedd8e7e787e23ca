"""Rate of change, projected crossing, duration, count, corridor, dwell, speed and camera outages, by tables."""

from __future__ import annotations

from typing import Any

import pytest

from alerts.domain.evaluate import Clear, Raise, prepare_zones
from alerts.domain.rules import (
    CameraOfflineRule,
    CorridorRule,
    CountRule,
    DurationRule,
    DwellRule,
    ProjectionRule,
    RateRule,
    SpeedRule,
    parse_rule,
)
from alerts.domain.series import (
    SeriesState,
    count_step,
    duration_step,
    projected_crossing_s,
    projection_step,
    rate_step,
)
from alerts.domain.vehicles import (
    CameraState,
    VehicleState,
    camera_status_step,
    camera_tick,
    corridor_step,
    dwell_step,
    make_route,
    off_route_m,
    speed_step,
)
from kernel.events import CameraStatusChanged
from kernel.model import Device, Position, Reading

GAUGE = Device(
    "res-1", "water_level", "铁炉水库", 19.93, 110.25, "g-1", {"warning_level_m": 25.5, "danger_level_m": 26.8}
)
HOUR = 3_600_000


def base(kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": f"{kind}-rule", "name": kind, "category": "flood", "kind": kind, **extra}


def outcomes(step: Any, rule: Any, readings: list[tuple[int, float]], state: Any = None) -> list[str]:
    state = state if state is not None else SeriesState()
    out = []
    for ts, value in readings:
        state, changes = step(rule, state, Reading("res-1", "water_level", ts, value), GAUGE)
        out.append(",".join(type(c).__name__ for c in changes) or "-")
    return out


def test_rate_of_change() -> None:
    rule = parse_rule(base("rate", change=0.3, window_s=3600))
    assert isinstance(rule, RateRule)
    readings = [(0, 20.0), (HOUR // 2, 20.2), (HOUR - 1000, 20.31), (HOUR + 10_000, 20.32), (3 * HOUR, 20.32)]
    # +0.31 within the hour raises; once 20.0 is more than an hour old the hour holds 0.12: clear.
    assert outcomes(rate_step, rule, readings) == ["-", "-", "Raise", "Clear", "-"]
    assert outcomes(rate_step, rule, [(5, 20.0), (4, 25.0), (5, 30.0)]) == ["-", "-", "-"], "late and repeated readings"


def test_projected_crossing_is_raised_before_the_level() -> None:
    rule = parse_rule(
        base(
            "projection",
            level={"severity": "critical", "attribute": "danger_level_m"},
            window_s=3 * 3600,
            horizon_s=3600,
            min_points=3,
        )
    )
    assert isinstance(rule, ProjectionRule)
    # Rising 0.5 m per hour from 25.0: 26.8 is reached 3.6 h after the start.
    rising = [(i * HOUR // 2, 25.0 + 0.25 * i) for i in range(7)]  # up to 26.5 at 3 h
    got = outcomes(projection_step, rule, rising)
    # At 2.5 h (26.25 m) the level is 1.1 h away: beyond the 1 h horizon. At 3 h (26.5 m), 0.6 h.
    assert got == ["-", "-", "-", "-", "-", "-", "Raise"], got
    assert max(v for _, v in rising) < 26.8, "raised before the level was reached"
    falling = [(4 * HOUR, 26.0), (5 * HOUR, 25.0)]
    state = SeriesState()
    for ts, v in rising:
        state, _ = projection_step(rule, state, Reading("res-1", "water_level", ts, v), GAUGE)
    assert outcomes(projection_step, rule, falling, state) == ["Clear", "-"], "the trend turned: cleared"


@pytest.mark.parametrize(
    ("points", "level", "expected"),
    [
        (((0, 1.0), (1000, 2.0), (2000, 3.0)), 5.0, 2.0),  # 1 per second, 2 to go
        (((0, 3.0), (1000, 2.0)), 5.0, None),  # falling
        (((0, 1.0), (1000, 1.0)), 5.0, None),  # flat
        (((0, 1.0), (1000, 6.0)), 5.0, 0.0),  # there already
    ],
)
def test_projection_arithmetic(points: tuple[tuple[int, float], ...], level: float, expected: float | None) -> None:
    got = projected_crossing_s(points, level)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_duration() -> None:
    rule = parse_rule(base("duration", test={"attribute": "warning_level_m"}, for_s=600))
    assert isinstance(rule, DurationRule)
    minute = 60_000
    readings = [
        (0, 25.6),
        (5 * minute, 25.7),
        (10 * minute, 25.8),
        (11 * minute, 25.9),
        (12 * minute, 25.0),
        (13 * minute, 25.6),
    ]
    assert outcomes(duration_step, rule, readings) == ["-", "-", "Raise", "-", "Clear", "-"]


def test_count() -> None:
    rule = parse_rule(base("count", test={"at": 25.5}, times=3, window_s=600))
    assert isinstance(rule, CountRule)
    minute = 60_000
    readings = [(0, 26.0), (1 * minute, 20.0), (2 * minute, 26.0), (3 * minute, 26.0), (20 * minute, 20.0)]
    assert outcomes(count_step, rule, readings) == ["-", "-", "-", "Raise", "Clear"]


TRUCK = Device(
    "veh-1", "vehicle", "危化品车", 20.0, 110.3, None, {"plate": "琼A·D0001", "category": "hazmat", "route": "east"}
)
ROUTE = [(20.010, 110.300), (20.005, 110.340), (19.995, 110.380)]


def fixes(step: Any, points: list[tuple[int, float, float, float | None]]) -> list[str]:
    state, out = VehicleState(), []
    for ts, lat, lon, speed in points:
        state, changes = step(state, Position("veh-1", ts, lat, lon, speed))
        out.append(",".join(type(c).__name__ for c in changes) or "-")
    return out


def test_route_distance_in_metres() -> None:
    route = make_route([(20.0, 110.0), (20.0, 110.1)])
    assert off_route_m(route, 20.001, 110.05) == pytest.approx(111.3, abs=1.0)
    assert off_route_m(route, 20.0, 110.05) == pytest.approx(0.0, abs=0.5)


def test_leaving_the_route_corridor() -> None:
    rule = parse_rule(base("corridor", width_m=200))
    assert isinstance(rule, CorridorRule)
    route = make_route(ROUTE)
    got = fixes(
        lambda s, f: corridor_step(rule, route, s, f, TRUCK),
        [(1, 20.010, 110.300, 40), (2, 20.0075, 110.320, 40), (3, 20.0200, 110.320, 40), (4, 20.0076, 110.321, 40)],
    )
    assert got == ["-", "-", "Raise", "Clear"]
    assert corridor_step(rule, None, VehicleState(), Position("veh-1", 1, 0, 0), TRUCK)[1] == [], (
        "no route, no judgement"
    )


def test_dwelling_too_long_in_a_zone() -> None:
    rule = parse_rule(
        base(
            "dwell",
            max_s=600,
            zones=[
                {"id": "z", "name": "水库", "polygon": [[19.9, 110.2], [19.9, 110.3], [19.95, 110.3], [19.95, 110.2]]}
            ],
        )
    )
    assert isinstance(rule, DwellRule)
    zones = prepare_zones(rule, [])
    minute = 60_000
    got = fixes(
        lambda s, f: dwell_step(rule, zones, s, f, TRUCK),
        [
            (0, 19.92, 110.25, 0),
            (5 * minute, 19.92, 110.25, 0),
            (11 * minute, 19.921, 110.25, 0),
            (12 * minute, 19.8, 110.25, 30),
        ],
    )
    assert got == ["-", "-", "Raise", "Clear"]


def test_speeding_with_hysteresis() -> None:
    rule = parse_rule(base("speed", limit_kmh=80, hysteresis_kmh=5))
    assert isinstance(rule, SpeedRule)
    got = fixes(
        lambda s, f: speed_step(rule, s, f, TRUCK),
        [(1, 20, 110, 70), (2, 20, 110, 85), (3, 20, 110, 78), (4, 20, 110, None), (5, 20, 110, 74)],
    )
    assert got == ["-", "Raise", "-", "-", "Clear"]


def test_a_camera_offline_for_too_long() -> None:
    rule = parse_rule(base("camera_offline", for_s=600))
    assert isinstance(rule, CameraOfflineRule)
    state = CameraState()
    state, changes = camera_status_step(
        rule, state, CameraStatusChanged("cam-1", "offline", "online", "timeout", 0, 20.0, 110.0)
    )
    assert changes == []
    state, changes = camera_tick(rule, "cam-1", state, 599_000)
    assert changes == []
    state, changes = camera_tick(rule, "cam-1", state, 600_000)
    assert [type(c) for c in changes] == [Raise]
    assert isinstance(changes[0], Raise)
    assert changes[0].camera_ids == ("cam-1",)
    state, changes = camera_tick(rule, "cam-1", state, 700_000)
    assert changes == []
    state, changes = camera_status_step(rule, state, CameraStatusChanged("cam-1", "online", "offline", "", 800_000))
    assert [type(c) for c in changes] == [Clear]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (base("rate", window_s=60), "Field required"),
        (base("rate", change=-1, window_s=60), "greater than 0"),
        (base("projection", level={"severity": "high"}), "give the threshold"),
        (base("duration", test={"field": "value"}, for_s=60), "give the threshold"),
        (base("count", test={"at": 1}, times=1, window_s=60), "greater than or equal to 2"),
        (base("corridor", route=[[20, 110]]), "at least 2 points"),
        (base("corridor", route_from_attribute=False), "needs `route`"),
        (base("dwell", max_s=60), "needs `zones`"),
        (base("speed", limit_kmh=400), "less than or equal to 300"),
        (base("camera_offline", for_s=0), "greater than 0"),
    ],
)
def test_bad_rules_of_the_other_kinds_are_refused(data: dict[str, Any], says: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=says):
        parse_rule(data)
