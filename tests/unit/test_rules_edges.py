"""The edges of rule evaluation, by tables: clocks that jump, and windows rebuilt from history."""

from __future__ import annotations

import pytest

from alerts.domain.evaluate import Change, Clear, Raise, prepare_zones
from alerts.domain.replay import replay
from alerts.domain.rules import CountRule, DwellRule, parse_rule
from alerts.domain.series import SeriesState, count_step
from alerts.domain.timeline import Timeline, timeline_step
from alerts.domain.vehicles import VehicleState, dwell_step
from kernel.model import Device, Position, Reading, Sample

MINUTE = 60_000
GAUGE = Device("res-1", "water_level", "gauge", 20.0, 110.0)
TRUCK = Device("veh-1", "vehicle", "truck", 20.0, 110.0)


@pytest.mark.parametrize(
    ("arrivals", "jumps"),
    [
        # (reading ts, arrival ms) after a newest reading at ts 1,000,000 (arrived at 0).
        pytest.param([(1_000_001, 10)], [False], id="newer"),
        pytest.param([(1_000_000, 10)], [False], id="duplicate"),
        pytest.param([(900_000, 10)], [False], id="one late reading"),
        pytest.param([(900_000, 10), (900_100, 20), (900_200, 30)], [False] * 3, id="a late burst"),
        pytest.param(
            [(10_000, 1_000), (20_000, 31_000), (30_000, 61_000)], [False, False, True], id="clock set back, steady"
        ),
        pytest.param(
            [(10_000, 1_000), (1_000_500, 31_000), (30_000, 61_000)], [False, False, False], id="a newer one between"
        ),
    ],
)
def test_late_readings_are_told_from_a_clock_that_jumped_back(
    arrivals: list[tuple[int, int]], jumps: list[bool]
) -> None:
    timeline = Timeline(1_000_000)
    seen = []
    for ts, arrived in arrivals:
        timeline, jumped = timeline_step(timeline, ts, arrived, confirm_ms=60_000)
        seen.append(jumped)
    assert seen == jumps
    if jumps[-1]:
        assert timeline.newest_ts_ms == arrivals[-1][0], "it goes on from the new time"


COUNT: CountRule = parse_rule(
    {
        "id": "c",
        "name": "c",
        "category": "flood",
        "kind": "count",
        "test": {"at": 24.0},
        "times": 3,
        "window_s": 600,
    }
)  # type: ignore[assignment]


def readings(*points: tuple[int, float]) -> list[Sample]:
    return [Reading("res-1", "water_level", minutes * MINUTE, value) for minutes, value in points]


@pytest.mark.parametrize(
    ("raised_before", "history", "net"),
    [
        pytest.param(False, readings((1, 25.0), (2, 25.0), (3, 25.0)), Raise, id="a raise nobody recorded"),
        pytest.param(True, readings((1, 25.0), (2, 25.0), (3, 25.0)), None, id="raised and recorded"),
        pytest.param(True, readings((1, 25.0), (12, 20.0), (13, 20.0)), Clear, id="a clear nobody saw"),
        pytest.param(True, readings((1, 25.0), (2, 25.0), (3, 24.5)), None, id="held all along"),
        pytest.param(False, readings((1, 25.0), (2, 20.0)), None, id="nothing to do"),
        pytest.param(False, readings((3, 25.0), (1, 25.0), (2, 25.0)), Raise, id="stored out of order"),
        pytest.param(False, [], None, id="no history"),
    ],
)
def test_a_window_is_rebuilt_from_history_and_says_what_no_incident_records(
    raised_before: bool, history: list[Sample], net: type | None
) -> None:
    state, change = replay(
        count_step,
        COUNT,
        SeriesState(),
        history,
        GAUGE,
        Reading,
        raised_now=raised_before,
        is_raised=lambda s: s.raised,
    )
    assert (type(change) if change else None) is net
    assert state.raised == (net is Raise or (raised_before and net is None and bool(history)))
    if history:
        assert state.last_ts_ms == max(s.ts_ms for s in history), "later readings of the same time are ignored"


def test_positions_are_not_readings_and_a_dwell_timer_is_rebuilt() -> None:
    zone = {"id": "z", "name": "depot", "polygon": [[20.0, 110.0], [20.0, 110.1], [20.1, 110.1], [20.1, 110.0]]}
    rule: DwellRule = parse_rule(
        {"id": "d", "name": "d", "category": "traffic", "kind": "dwell", "zones": [zone], "max_s": 600}
    )  # type: ignore[assignment]
    zones = prepare_zones(rule, [])

    def step(r: DwellRule, st: VehicleState, fix: Position, d: Device) -> tuple[VehicleState, list[Change]]:
        return dwell_step(r, zones, st, fix, d)

    fixes: list[Sample] = [Position("veh-1", m * MINUTE, 20.05, 110.05) for m in (0, 5, 11)]
    mixed = [*fixes, Reading("veh-1", "water_level", 12 * MINUTE, 1.0)]
    state, change = replay(
        step, rule, VehicleState(), mixed, TRUCK, Position, raised_now=False, is_raised=lambda s: s.flagged
    )
    assert isinstance(change, Raise), "inside for 11 minutes: over the 10 allowed"
    assert state.since_ms == 0
    assert state.last_ts_ms == 11 * MINUTE, "the reading was not a fix"
