"""Property-based tests (Hypothesis) of the gateway's message check: whatever arrives, it never
raises, and every item of a message is either an accepted sample or a counted refusal."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iot_gateway.domain import validation as v
from kernel.model import Reading

NOW = 1_795_000_000_000
KINDS = {"res-1": "water_level", "smoke-1": "smoke", "gas-1": "gas", "truck-1": "vehicle"}
TOPICS = [
    "city/sensors/water_level/res-1",
    "city/sensors/smoke/smoke-1",
    "city/sensors/gas/gas-1",
    "city/vehicles/truck-1/gps",
    "city/devices/gas-1/status",
    "city/sensors/gas/ghost",
    "city/sensors/gas",
    "city/+/#",
    "",
]

numbers = st.one_of(
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=NOW - 10**9, max_value=NOW + 10**6),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=30,
)
fields = st.sampled_from(["ts", "value", "unit", "alarm", "battery_pct", "lat", "lon", "speed_kmh", "heading_deg"])
# Objects shaped like readings, with any of the fields replaced by anything.
plausible = st.sampled_from(["m", "%LEL", "%/m", "2026-11-22T10:00:00+08:00"])
reading_like = st.dictionaries(fields, st.one_of(json_values, plausible))
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda doc: json.dumps(doc).encode()),
    reading_like.map(lambda doc: json.dumps(doc).encode()),
    st.lists(reading_like, max_size=20).map(lambda doc: json.dumps(doc).encode()),
)


def _items(payload: bytes) -> int | None:
    """How many items the payload holds, when it is a JSON array or object (else None)."""
    try:
        doc: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(doc, list):
        return len(doc) or None
    return 1 if isinstance(doc, dict) else None


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.sampled_from(TOPICS), payload=payloads)
def test_the_check_never_raises_and_accounts_for_every_item(topic: str, payload: bytes) -> None:
    checked = v.check_message(topic, payload, KINDS, NOW)
    assert set(checked.refused) <= set(v.REASONS)
    assert len(checked.rejections) <= v.MAX_DETAILS
    for reason, detail in checked.rejections:
        assert reason in checked.refused
        assert detail
        detail.encode("utf-8")
    assert v.INTERNAL_ERROR not in checked.refused, checked.rejections
    items = _items(payload)
    sensor_topic = topic in TOPICS[:4]
    if sensor_topic and items is not None:
        # Each item is a sample or one counted refusal, never both, never neither.
        assert len(checked.samples) + sum(checked.refused.values()) == items
    elif not checked.samples and checked.status is None:
        assert sum(checked.refused.values()) >= 1
    for sample in checked.samples:
        assert sample.ts_ms <= NOW + 300_000


@settings(max_examples=500, deadline=None)
@given(
    value=st.floats(min_value=0, max_value=100, allow_nan=False),
    ts=st.integers(min_value=946_684_800_000, max_value=NOW + 300_000),
    battery=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
)
def test_every_well_formed_reading_is_accepted_as_sent(value: float, ts: int, battery: float | None) -> None:
    body: dict[str, Any] = {"ts": ts, "value": value, "unit": "%LEL"}
    if battery is not None:
        body["battery_pct"] = battery
    checked = v.check_message("city/sensors/gas/gas-1", json.dumps(body).encode(), KINDS, NOW)
    assert checked.rejections == []
    [reading] = checked.samples
    assert isinstance(reading, Reading)
    assert (reading.ts_ms, reading.value, reading.battery_pct) == (ts, value, battery)
