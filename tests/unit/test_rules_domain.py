"""The rules engine's pure domain: rules as data, evaluation by tables of cases, incident transitions."""

from __future__ import annotations

from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from alerts.domain.evaluate import (
    Clear,
    CorrelationState,
    LevelState,
    Problem,
    Raise,
    SilenceState,
    ZoneState,
    correlation_step,
    distance_m,
    in_scope,
    open_levels,
    prepare_zones,
    silence_seen,
    silence_status,
    silence_tick,
    threshold_step,
    zone_step,
)
from alerts.domain.incidents import (
    EscalationPolicy,
    TransitionError,
    acknowledge,
    clear_incident,
    escalate,
    escalate_by_time,
    open_incident,
    resolve,
    update_incident,
)
from alerts.domain.rules import (
    CorrelationRule,
    SilenceRule,
    ThresholdRule,
    ZoneRule,
    ZoneShape,
    default_rules,
    parse_rule,
)
from kernel.model import Device, DeviceStatus, Position, Reading

GAUGE = Device(
    "res-1", "water_level", "铁炉水库", 19.93, 110.25, "g-1", {"warning_level_m": 25.5, "danger_level_m": 26.8}
)
RULES = {rule.id: rule for rule in default_rules()}
T = TypeVar("T")


def rule_of(rule_id: str, kind: type[T]) -> T:
    rule = RULES[rule_id]
    assert isinstance(rule, kind)
    return rule


LEVEL = rule_of("reservoir-level", ThresholdRule)


def run(rule: ThresholdRule, values: list[tuple[int, float]], device: Device = GAUGE) -> list[tuple[str, str | None]]:
    """Feed readings (ts, value); what each one changed: ('raise', severity), ('clear', None) or ('-', None)."""
    state = LevelState()
    out: list[tuple[str, str | None]] = []
    for ts, value in values:
        state, changes = threshold_step(rule, state, Reading(device.id, "water_level", ts, value), device)
        if not changes:
            out.append(("-", None))
        for change in changes:
            out.append(
                ("raise", change.severity) if isinstance(change, Raise) else (type(change).__name__.lower(), None)
            )
    return out


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        # below, at warning, at danger, back down below danger but above warning, below warning - h
        (
            [(1, 25.0), (2, 25.5), (3, 26.8), (4, 26.0), (5, 25.46), (6, 25.44)],
            [("-", None), ("raise", "high"), ("raise", "critical"), ("-", None), ("-", None), ("clear", None)],
        ),
        # hysteresis: dipping just under the warning level does not clear, rising again does not re-raise
        ([(1, 25.6), (2, 25.46), (3, 25.7)], [("raise", "high"), ("-", None), ("-", None)]),
        # straight to danger: one raise at critical
        ([(1, 27.0)], [("raise", "critical")]),
        # out of order and duplicates: an older or equal timestamp changes nothing
        ([(5, 25.0), (4, 27.0), (5, 27.0), (6, 25.0)], [("-", None), ("-", None), ("-", None), ("-", None)]),
        # a gap (hours without data) is judged by the next reading as any other
        ([(1, 25.6), (10_000_000, 24.0)], [("raise", "high"), ("clear", None)]),
        # after falling from critical to high, crossing danger again raises critical again
        ([(1, 27.0), (2, 26.0), (3, 26.9)], [("raise", "critical"), ("-", None), ("raise", "critical")]),
    ],
)
def test_threshold_with_hysteresis_and_device_attributes(
    readings: list[tuple[int, float]], expected: list[tuple[str, str | None]]
) -> None:
    assert run(LEVEL, readings) == expected


def test_a_missing_attribute_is_a_problem_not_a_crash() -> None:
    bare = Device("res-9", "water_level", "no levels", 20.0, 110.0)
    state, changes = threshold_step(LEVEL, LevelState(), Reading("res-9", "water_level", 1, 30.0), bare)
    assert changes == [Problem("reservoir-level", "res-9", "device res-9 has no number in attribute 'warning_level_m'")]
    assert state.level is None


def test_smoke_alarm_flag() -> None:
    rule = rule_of("smoke-alarm", ThresholdRule)
    smoke = Device("smk-1", "smoke", "1号楼 烟感", 20.0, 110.0)
    state = LevelState()
    outcomes = []
    for ts, alarm in [(1, None), (2, True), (3, True), (4, None), (5, False)]:
        state, changes = threshold_step(rule, state, Reading("smk-1", "smoke", ts, 0.5, None, alarm), smoke)
        outcomes.append([type(c).__name__ for c in changes])
    assert outcomes == [[], ["Raise"], [], [], ["Clear"]]


def test_gas_levels() -> None:
    rule = rule_of("gas-leak", ThresholdRule)
    gas = Device("gas-1", "gas", "燃气", 20.0, 110.0)
    state, out = LevelState(), []
    for ts, value in [(1, 10.0), (2, 20.0), (3, 55.0), (4, 19.0), (5, 17.9)]:
        state, changes = threshold_step(rule, state, Reading("gas-1", "gas", ts, value), gas)
        out.append([(type(c).__name__, getattr(c, "severity", None)) for c in changes])
    assert out == [[], [("Raise", "high")], [("Raise", "critical")], [], [("Clear", None)]]


def test_state_rebuilt_from_open_incidents_does_not_raise_again() -> None:
    states = open_levels(LEVEL, {"res-1": "critical"})
    state, changes = threshold_step(LEVEL, states["res-1"], Reading("res-1", "water_level", 1, 27.0), GAUGE)
    assert changes == []
    state, changes = threshold_step(LEVEL, state, Reading("res-1", "water_level", 2, 20.0), GAUGE)
    assert [type(c) for c in changes] == [Clear]


SILENCE = rule_of("device-silent", SilenceRule)
DETECTOR = Device("gas-2", "gas", "燃气", 20.0, 110.0)  # expected every 300 s


def test_silence_after_factor_times_the_interval_and_back() -> None:
    state = SilenceState()
    state, changes = silence_seen(SILENCE, state, DETECTOR, 1_000)
    assert changes == []
    state, changes = silence_tick(SILENCE, state, DETECTOR, 1_000 + 900_000, started_ms=0)
    assert changes == [], "exactly 3 intervals is not yet silent"
    state, changes = silence_tick(SILENCE, state, DETECTOR, 1_000 + 900_001, started_ms=0)
    assert [(type(c), getattr(c, "severity", None)) for c in changes] == [(Raise, "low")]
    state, changes = silence_tick(SILENCE, state, DETECTOR, 2_000_000, started_ms=0)
    assert changes == [], "raised once"
    state, changes = silence_seen(SILENCE, state, DETECTOR, 2_000_001)
    assert [type(c) for c in changes] == [Clear]


def test_silence_counts_from_the_start_of_watching_never_from_zero() -> None:
    _, changes = silence_tick(SILENCE, SilenceState(), DETECTOR, 10**12, started_ms=10**12 - 1000)
    assert changes == [], "a restart does not make every quiet device silent at once"


def test_offline_status_raises_and_online_clears() -> None:
    state, changes = silence_status(SILENCE, SilenceState(), DETECTOR, DeviceStatus("gas-2", "offline", 5))
    assert [type(c) for c in changes] == [Raise]
    state, changes = silence_status(SILENCE, state, DETECTOR, DeviceStatus("gas-2", "offline", 6))
    assert changes == []
    state, changes = silence_status(SILENCE, state, DETECTOR, DeviceStatus("gas-2", "online", 7))
    assert [type(c) for c in changes] == [Clear]


FIRE = rule_of("fire-gas-together", CorrelationRule)


def sensor(device: Device, ts: int, value: float, alarm: bool | None) -> Reading:
    assert device.kind != "vehicle"
    return Reading(device.id, device.kind, ts, value, None, alarm)


SMOKE_A = Device("smoke-c1-b1", "smoke", "1号楼 烟感", 20.0, 110.0)
GAS_A = Device("gas-c1-b1", "gas", "1号楼 燃气", 20.0001, 110.0)  # about 11 m away
GAS_FAR = Device("gas-c1-b9", "gas", "9号楼 燃气", 20.01, 110.0)  # over 1 km away


@pytest.mark.parametrize(
    ("sequence", "raises"),
    [
        ([(SMOKE_A, 1_000, 0.5, True), (GAS_A, 60_000, 25.0, None)], 1),
        ([(GAS_A, 1_000, 25.0, None), (SMOKE_A, 2_000, 0.5, True)], 1),
        ([(SMOKE_A, 1_000, 0.5, True), (GAS_FAR, 2_000, 25.0, None)], 0),  # too far apart
        ([(SMOKE_A, 1_000, 0.5, True), (GAS_A, 302_000, 25.0, None)], 0),  # too far apart in time
        ([(SMOKE_A, 1_000, 0.5, True), (GAS_A, 2_000, 19.0, None)], 0),  # gas under its limit
        ([(SMOKE_A, 1_000, 0.5, False), (GAS_A, 2_000, 30.0, None)], 0),  # no alarm
    ],
)
def test_smoke_and_gas_near_each_other_make_one_critical_incident(
    sequence: list[tuple[Device, int, float, bool | None]], raises: int
) -> None:
    state, got = CorrelationState(), []
    for device, ts, value, alarm in sequence:
        state, changes = correlation_step(FIRE, state, sensor(device, ts, value, alarm), device)
        got += changes
    assert len(got) == raises
    for change in got:
        assert isinstance(change, Raise)
        assert change.severity == "critical"
        assert set(change.device_ids) == {SMOKE_A.id, GAS_A.id}


def test_the_same_pair_again_updates_the_same_subject() -> None:
    state = CorrelationState()
    subjects = set()
    for ts in (1_000, 2_000, 3_000):
        for device, value, alarm in ((SMOKE_A, 0.5, True), (GAS_A, 30.0, None)):
            state, changes = correlation_step(FIRE, state, sensor(device, ts, value, alarm), device)
            subjects |= {c.subject for c in changes if isinstance(c, Raise)}
    assert subjects == {GAS_A.id}


ZONE = ZoneShape(
    id="z1", name="铁炉水库保护区", polygon=[(19.90, 110.20), (19.90, 110.30), (19.96, 110.30), (19.96, 110.20)]
)
TRUCK = Device("veh-1", "vehicle", "危化品车", 20.0, 110.3, None, {"plate": "琼A·D0001", "category": "hazmat"})
BUS = Device("veh-2", "vehicle", "旅游大巴", 20.0, 110.3, None, {"plate": "琼A·B0002", "category": "tour_bus"})


def test_a_hazmat_truck_entering_a_forbidden_zone() -> None:
    rule = rule_of("hazmat-forbidden-zone", ZoneRule)
    zones = prepare_zones(rule, [ZONE])
    assert in_scope(rule.scope, TRUCK)
    assert not in_scope(rule.scope, BUS)
    state, out = ZoneState(), []
    for ts, lat, lon in [
        (1, 19.85, 110.25),
        (2, 19.93, 110.25),
        (3, 19.94, 110.25),
        (1, 19.85, 110.0),
        (4, 19.99, 110.25),
    ]:
        state, changes = zone_step(rule, zones, state, Position("veh-1", ts, lat, lon), TRUCK)
        out.append([type(c).__name__ for c in changes])
    assert out == [[], ["Raise"], [], [], ["Clear"]]


def test_distance_is_metres() -> None:
    assert distance_m(20.0, 110.0, 20.0001, 110.0) == pytest.approx(11.12, abs=0.05)


# --- rules as data: every bad rule is refused naming the field --------------------------------


def base(kind: str, **extra: Any) -> dict[str, Any]:
    return {"id": "r1", "name": "rule", "category": "flood", "kind": kind, **extra}


@pytest.mark.parametrize(
    ("data", "loc", "says"),
    [
        (base("weather"), (), "does not match any of the expected tags"),
        (base("threshold"), ("threshold",), "needs at least one level"),
        (base("threshold", levels=[{"severity": "high"}]), ("threshold", "levels", 0), "give the threshold"),
        (
            base("threshold", levels=[{"severity": "extreme", "at": 1}]),
            ("threshold", "levels", 0, "severity"),
            "Input should be",
        ),
        (
            base("threshold", levels=[{"severity": "critical", "at": 2}, {"severity": "high", "at": 1}]),
            ("threshold",),
            "lowest severity to the highest",
        ),
        (
            base("threshold", levels=[{"severity": "high", "at": 1}], hysteresis=-1),
            ("threshold", "hysteresis"),
            "greater than or equal",
        ),
        (base("zone"), ("zone",), "needs `zones` or `zone_ids`"),
        (
            base("zone", zones=[{"id": "z", "name": "z", "polygon": [[0, 0], [0, 1]]}]),
            ("zone", "zones", 0, "polygon"),
            "at least 3",
        ),
        (
            base("zone", zones=[{"id": "z", "name": "z", "polygon": [[0, 0], [1, 1], [0, 1], [1, 0]]}]),
            ("zone", "zones", 0, "polygon"),
            "not simple",
        ),
        (
            base("zone", zones=[{"id": "z", "name": "z", "polygon": [[0, 0], [1, 1], [2, 2]]}]),
            ("zone", "zones", 0, "polygon"),
            "not simple",
        ),
        (
            base("zone", zones=[{"id": "z", "name": "z", "polygon": [[95, 0], [1, 1], [0, 1]]}]),
            ("zone", "zones", 0, "polygon"),
            "WGS-84",
        ),
        (
            base("correlation", conditions=[{"kind": "smoke", "field": "alarm"}]),
            ("correlation", "conditions"),
            "at least 2",
        ),
        (
            base("correlation", conditions=[{"kind": "gas"}, {"kind": "smoke", "field": "alarm"}]),
            ("correlation", "conditions", 0),
            "needs `at`",
        ),
        (base("silence", factor=1), ("silence", "factor"), "greater than 1"),
        ({**base("silence"), "id": "bad id"}, ("silence", "id"), "pattern"),
        (base("silence", colour="red"), ("silence", "colour"), "Extra inputs"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(data: dict[str, Any], loc: tuple[Any, ...], says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_rule(data)
    errors = caught.value.errors()
    assert any(tuple(e["loc"]) == loc and says in e["msg"] for e in errors), errors


def test_the_default_rules_are_those_of_the_contract() -> None:
    assert set(RULES) == {
        "reservoir-level",
        "smoke-alarm",
        "gas-leak",
        "fire-gas-together",
        "device-silent",
        "hazmat-forbidden-zone",
    }


# --- incidents -------------------------------------------------------------------------------

RAISE_HIGH = Raise("reservoir-level", "res-1", "high", "warning", 1_000, ("res-1",), 19.9, 110.2, "g-1")
RAISE_CRIT = Raise("reservoir-level", "res-1", "critical", "danger", 2_000, ("res-1",))


def test_incident_lifecycle_with_history() -> None:
    incident, opened = open_incident("inc-1", "flood", RAISE_HIGH)
    assert (incident.status, incident.severity, incident.escalation_tier) == ("open", "high", 1)
    assert opened.action == "opened"
    incident, entries = update_incident(incident, RAISE_CRIT)
    assert incident.severity == "critical"
    assert [e.action for e in entries] == ["severity_raised"]
    incident, entries = update_incident(incident, RAISE_HIGH)
    assert incident.severity == "critical", "severity only rises"
    assert entries == []
    incident, entry = acknowledge(incident, "leader", 3_000)
    assert incident.status == "acknowledged"
    with pytest.raises(TransitionError):
        acknowledge(incident, "leader", 3_001)
    incident, entry = escalate(incident, "leader", 4_000, "big")
    assert incident.escalation_tier == 2
    assert entry.detail == "tier 1 -> 2: big"
    incident, _ = escalate(incident, "leader", 4_001)
    with pytest.raises(TransitionError, match="highest"):
        escalate(incident, "leader", 4_002)
    incident, entry = resolve(incident, "leader", 5_000, "drained")
    assert (incident.status, incident.resolved_at_ms) == ("resolved", 5_000)
    for action in (
        lambda i: resolve(i, "x", 6),
        lambda i: escalate(i, "x", 6),
        lambda i: update_incident(i, RAISE_HIGH),
    ):
        with pytest.raises(TransitionError):
            action(incident)


def test_clear_resolves_by_itself_or_waits_for_a_person() -> None:
    incident, _ = open_incident("inc-1", "flood", RAISE_HIGH)
    auto, entries = clear_incident(incident, Clear("reservoir-level", "res-1", 9_000), "auto")
    assert (auto.status, auto.resolved_at_ms, [e.action for e in entries]) == ("resolved", 9_000, ["resolved"])
    manual, entries = clear_incident(incident, Clear("reservoir-level", "res-1", 9_000), "manual")
    assert (manual.status, manual.cleared, [e.action for e in entries]) == ("open", True, ["cleared"])


def test_escalation_by_time_left_unacknowledged() -> None:
    policy = EscalationPolicy()
    incident, _ = open_incident("inc-1", "fire", Raise("fire", "x", "critical", "t", 0, ("x",)))
    assert escalate_by_time(incident, policy, 599_000) is None
    step = escalate_by_time(incident, policy, 600_000)
    assert step is not None
    assert step[0].escalation_tier == 2
    step = escalate_by_time(step[0], policy, 1_800_000)
    assert step is not None
    assert step[0].escalation_tier == 3
    acked, _ = acknowledge(incident, "op", 100)
    assert escalate_by_time(acked, policy, 10**9) is None, "an acknowledged incident waits for people"
