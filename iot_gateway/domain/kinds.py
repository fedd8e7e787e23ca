"""What each kind of device may report: physical ranges and expected reporting intervals."""

from __future__ import annotations

# The intervals are the kernel's (the rules engine reads them too); named here for the gateway.
from kernel.model import EXPECTED_INTERVAL_S as EXPECTED_INTERVAL_S
from kernel.model import expected_interval_s as expected_interval_s
from kernel.model import is_stale as is_stale

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

MAX_PAYLOAD_BYTES = 64 * 1024
DEAD_LETTER_PAYLOAD_BYTES = 4 * 1024
MAX_FUTURE_MS = 5 * 60 * 1000
# Nothing in the city reported before 2000; an earlier time is a device with a reset clock.
MIN_TS_MS = 946_684_800_000
