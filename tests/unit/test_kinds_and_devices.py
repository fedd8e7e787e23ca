"""Staleness and the per-kind registration rules."""

from __future__ import annotations

import pytest

from iot_gateway.domain.devices import device_problems, valid_device_id
from iot_gateway.domain.kinds import expected_interval_s, is_stale


@pytest.mark.parametrize(
    ("last", "interval", "now", "stale"),
    [(None, 60, 0, True), (1000, 60, 61_000, False), (1000, 60, 61_001, True), (5000, 3600, 5000, False)],
)
def test_is_stale(last: int | None, interval: int, now: int, stale: bool) -> None:
    assert is_stale(last, interval, now) is stale


def test_expected_interval_uses_the_device_attribute_first() -> None:
    assert expected_interval_s("water_level", {}) == 3600
    assert expected_interval_s("water_level", {"expected_interval_s": 600}) == 600
    assert expected_interval_s("gas", {"expected_interval_s": "fast"}) == 300


@pytest.mark.parametrize(
    ("kind", "attributes", "fields"),
    [
        ("water_level", {"warning_level_m": 1, "danger_level_m": 2}, []),
        ("water_level", {"danger_level_m": 2}, ["warning_level_m"]),
        ("water_level", {"warning_level_m": "1", "danger_level_m": 2}, ["warning_level_m"]),
        ("water_level", {"warning_level_m": 3, "danger_level_m": 2}, ["danger_level_m"]),
        ("vehicle", {"plate": "琼A·1", "category": "hazmat"}, []),
        ("vehicle", {"category": "tank"}, ["plate", "category"]),
        ("gas", {"expected_interval_s": -5}, ["expected_interval_s"]),
        ("smoke", {}, []),
    ],
)
def test_device_problems_name_the_field(kind: str, attributes: dict[str, object], fields: list[str]) -> None:
    assert [loc[0] for loc, _ in device_problems(kind, attributes)] == fields


@pytest.mark.parametrize(
    ("device_id", "ok"),
    [
        ("res-1", True),
        ("a/b", False),
        ("x+", False),
        ("", False),
        ("#", False),
        ("a" * 65, False),
        ("veh.hz:001_A", True),
    ],
)
def test_device_ids_are_safe_topic_levels(device_id: str, ok: bool) -> None:
    assert valid_device_id(device_id) is ok
