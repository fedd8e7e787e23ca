"""The demo city and its simulator's scenarios (pure: driven by `now_ms`)."""

from __future__ import annotations

import json

import pytest

from command_center.city import City, demo_city_path, load_city
from command_center.simulator import SCENARIOS, CitySimulation
from iot_gateway.domain.validation import check_message

T0 = 1_795_000_000_000


@pytest.fixture(scope="module")
def city() -> City:
    return load_city(demo_city_path())


def test_demo_city_looks_like_haikou(city: City) -> None:
    devices = city.all_devices()
    gauges = [d for d in devices if d.kind == "water_level"]
    assert {d.attributes["reservoir"] for d in gauges} == {"铁炉水库", "定荣水库", "玉凤水库", "云龙水库"}
    assert all(d.attributes["danger_level_m"] > d.attributes["warning_level_m"] for d in gauges)
    assert {d.attributes.get("community_id") for d in devices if d.kind in ("smoke", "gas")} == {
        "haidian",
        "binhai",
    }
    assert {d.attributes["category"] for d in devices if d.kind == "vehicle"} == {
        "hazmat",
        "tour_bus",
        "coach",
    }
    assert len(city.departments) >= 5
    assert city.grids["features"]
    assert city.forbidden_zones


def run(sim: CitySimulation, seconds: int, start: int = T0) -> list[tuple[int, str, dict[str, object]]]:
    out = []
    for s in range(seconds):
        now = start + s * 1000
        out += [(now, t, json.loads(p)) for t, p in sim.next_messages(len(sim.devices), now)]
    return out


def test_every_simulated_message_passes_the_gateway(city: City) -> None:
    sim = CitySimulation(city)
    kinds = {d.id: d.kind for d in sim.devices}
    for scenario in SCENARIOS:
        sim.trigger(scenario, T0)
    for now, topic, body in run(sim, 90):
        checked = check_message(topic, json.dumps(body).encode(), kinds, now)
        assert checked.rejections == [], (topic, body)


def test_reservoir_rise_passes_warning_then_danger(city: City) -> None:
    sim = CitySimulation(city)
    target = sim.trigger("reservoir_rise", T0)
    gauge = next(d for d in sim.devices if d.id == target)
    levels = [float(b["value"]) for _, t, b in run(sim, 120) if t.endswith("/" + target)]  # type: ignore[arg-type]
    assert levels[0] < gauge.attributes["warning_level_m"]
    assert levels[-1] >= gauge.attributes["danger_level_m"]
    assert levels == sorted(levels)


def test_smoke_then_gas_in_one_building(city: City) -> None:
    sim = CitySimulation(city)
    smoke_id = sim.trigger("smoke_then_gas", T0)
    gas_id = smoke_id.replace("smoke-", "gas-", 1)
    messages = run(sim, 40)
    alarms = [now for now, t, b in messages if t.endswith("/" + smoke_id) and b["alarm"]]
    high_gas = [now for now, t, b in messages if t.endswith("/" + gas_id) and float(b["value"]) >= 20]  # type: ignore[arg-type]
    assert alarms
    assert high_gas
    assert min(high_gas) - T0 >= 20_000
    others = [b for _, t, b in messages if "/smoke/" in t and not t.endswith("/" + smoke_id)]
    assert not any(b["alarm"] for b in others)


def test_detector_silent_stops_one_detector_only(city: City) -> None:
    sim = CitySimulation(city)
    before = run(sim, 5)
    silent = sim.trigger("detector_silent", T0 + 5000)
    after = run(sim, 5, start=T0 + 5000)
    assert any(t.endswith("/" + silent) for _, t, _ in before)
    assert not any(t.endswith("/" + silent) for _, t, _ in after)
    assert len({t for _, t, _ in after}) == len(sim.devices) - 1


def test_truck_off_route_heads_into_the_forbidden_zone(city: City) -> None:
    sim = CitySimulation(city)
    truck = sim.trigger("truck_off_route", T0)
    zone = city.forbidden_zones[0].polygon
    lats, lons = [p[0] for p in zone], [p[1] for p in zone]
    fixes = [b for _, t, b in run(sim, 70) if t == f"city/vehicles/{truck}/gps"]
    last = fixes[-1]
    assert min(lats) <= float(last["lat"]) <= max(lats)  # type: ignore[arg-type]
    assert min(lons) <= float(last["lon"]) <= max(lons)  # type: ignore[arg-type]


def test_unknown_scenario_is_refused(city: City) -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        CitySimulation(city).trigger("meteor", T0)
