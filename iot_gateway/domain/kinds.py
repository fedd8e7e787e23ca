"""What each kind of device may report: physical ranges and expected reporting intervals."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Ranges a real instrument can report; outside them the reading is a fault, not a flood.
# Water level: metres above the gauge datum (reservoir gauges here read tens of metres).
VALUE_RANGES: dict[str, tuple[float, float]] = {
    "water_level": (-50.0, 500.0),
    "smoke": (0.0, 100.0),
    "gas": (0.0, 100.0),
}
BATTERY_RANGE = (0.0, 100.0)
LAT_RANGE = (-90.0, 90.0)
LON_RANGE = (-180.0, 180.0)
SPEED_RANGE_KMH = (0.0, 300.0)
HEADING_RANGE_DEG = (0.0, 360.0)

# How often each kind reports when healthy (seconds). Haikou's reservoir gauges report hourly;
# detectors send a heartbeat every few minutes; vehicles every few seconds while moving.
EXPECTED_INTERVAL_S: dict[str, int] = {
    "water_level": 3600,
    "smoke": 300,
    "gas": 300,
    "vehicle": 30,
}

MAX_PAYLOAD_BYTES = 64 * 1024
DEAD_LETTER_PAYLOAD_BYTES = 4 * 1024
MAX_FUTURE_MS = 5 * 60 * 1000
# Nothing in the city reported before 2000; an earlier time is a device with a reset clock.
MIN_TS_MS = 946_684_800_000


def expected_interval_s(kind: str, attributes: Mapping[str, Any]) -> int:
    """A device's expected interval: its own `expected_interval_s` attribute, else its kind's."""
    own = attributes.get("expected_interval_s")
    if isinstance(own, int | float) and not isinstance(own, bool) and own > 0:
        return int(own)
    return EXPECTED_INTERVAL_S[kind]


def is_stale(last_ts_ms: int | None, interval_s: int, now_ms: int) -> bool:
    """True when there was no data within the expected interval (never any data counts as stale)."""
    if last_ts_ms is None:
        return True
    return now_ms - last_ts_ms > interval_s * 1000
