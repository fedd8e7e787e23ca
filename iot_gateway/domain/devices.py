"""What a device registration must carry, per kind (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

# Device ids become MQTT topic levels: no '/', '+', '#', spaces or control characters.
DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
VEHICLE_CATEGORIES: Final = ("hazmat", "tour_bus", "coach")

_ID_RE = re.compile(DEVICE_ID_PATTERN)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def device_problems(kind: str, attributes: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Each problem as (location under `attributes`, message); empty when the device is fine."""
    problems: list[tuple[tuple[str, ...], str]] = []
    if kind == "water_level":
        for name in ("warning_level_m", "danger_level_m"):
            if name not in attributes:
                problems.append(((name,), f"{name} is required for a water_level device"))
            elif not _is_number(attributes[name]):
                problems.append(((name,), f"{name} must be a number of metres"))
        if not problems and attributes["danger_level_m"] < attributes["warning_level_m"]:
            problems.append((("danger_level_m",), "danger_level_m must be at or above warning_level_m"))
    elif kind == "vehicle":
        plate = attributes.get("plate")
        if not isinstance(plate, str) or not plate.strip():
            problems.append((("plate",), "plate is required for a vehicle"))
        if attributes.get("category") not in VEHICLE_CATEGORIES:
            problems.append((("category",), f"category must be one of {', '.join(VEHICLE_CATEGORIES)}"))
    interval = attributes.get("expected_interval_s")
    if interval is not None and (not _is_number(interval) or interval <= 0):
        problems.append((("expected_interval_s",), "expected_interval_s must be a positive number of seconds"))
    return problems


def valid_device_id(device_id: str) -> bool:
    return _ID_RE.match(device_id) is not None
