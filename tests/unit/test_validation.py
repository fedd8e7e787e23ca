"""The gateway's pure message check, driven by tables of cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from iot_gateway.domain import validation as v
from kernel.model import Position, Reading

NOW = 1_795_000_000_000
# 09:59:59.123 at +08:00 is 01:59:59.123 UTC.
UTC_0159 = int(datetime(2026, 11, 18, 1, 59, 59, 123_000, tzinfo=UTC).timestamp() * 1000)
KINDS = {"res-1": "water_level", "smoke-1": "smoke", "gas-1": "gas", "truck-1": "vehicle"}


def check(topic: str, body: object) -> v.Checked:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return v.check_message(topic, payload, KINDS, NOW)


@pytest.mark.parametrize(
    ("topic", "body", "expected"),
    [
        (
            "city/sensors/water_level/res-1",
            {"ts": NOW, "value": 24.5, "unit": "m"},
            Reading("res-1", "water_level", NOW, 24.5),
        ),
        (
            "city/sensors/water_level/res-1",
            {"ts": "2026-11-18T09:59:59.123+08:00", "value": 1},
            Reading("res-1", "water_level", UTC_0159, 1.0),
        ),
        (
            "city/sensors/smoke/smoke-1",
            {"ts": NOW, "value": 3.2, "unit": "%/m", "alarm": True, "battery_pct": 71},
            Reading("smoke-1", "smoke", NOW, 3.2, 71.0, True),
        ),
        ("city/sensors/gas/gas-1", {"ts": NOW, "value": 0}, Reading("gas-1", "gas", NOW, 0.0)),
        (
            "city/vehicles/truck-1/gps",
            {"ts": NOW, "lat": 20.01, "lon": 110.3, "speed_kmh": 42, "heading_deg": 90},
            Position("truck-1", NOW, 20.01, 110.3, 42.0, 90.0),
        ),
    ],
)
def test_good_messages_are_accepted(topic: str, body: object, expected: object) -> None:
    checked = check(topic, body)
    assert checked.rejections == []
    assert checked.samples == [expected]


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("city/sensors/rain/res-1", {"ts": NOW, "value": 1}, v.BAD_TOPIC),
        ("city/other/x/y", {"ts": NOW, "value": 1}, v.BAD_TOPIC),
        ("city/sensors/water_level", {"ts": NOW, "value": 1}, v.BAD_TOPIC),
        ("city/sensors/water_level/res-1", b"{not json", v.BAD_JSON),
        ("city/sensors/water_level/res-1", b"\xff\xfe", v.BAD_JSON),
        ("city/sensors/water_level/res-1", "a string", v.WRONG_TYPE),
        ("city/sensors/water_level/res-1", [], v.MISSING_FIELD),
        ("city/sensors/water_level/res-1", {"value": 1}, v.MISSING_FIELD),
        ("city/sensors/water_level/res-1", {"ts": NOW}, v.MISSING_FIELD),
        ("city/sensors/water_level/res-1", {"ts": NOW, "value": "24"}, v.WRONG_TYPE),
        ("city/sensors/water_level/res-1", {"ts": NOW, "value": True}, v.WRONG_TYPE),
        ("city/sensors/water_level/res-1", {"ts": 1.5, "value": 1}, v.WRONG_TYPE),
        ("city/sensors/water_level/res-1", {"ts": "yesterday", "value": 1}, v.BAD_TIMESTAMP),
        ("city/sensors/water_level/res-1", {"ts": "2026-11-18T09:59:59", "value": 1}, v.BAD_TIMESTAMP),
        ("city/sensors/water_level/res-1", {"ts": NOW + 301_000, "value": 1}, v.FUTURE_TIMESTAMP),
        ("city/sensors/water_level/res-1", {"ts": 5, "value": 1}, v.OUT_OF_RANGE),
        ("city/sensors/water_level/res-1", {"ts": NOW, "value": 900}, v.OUT_OF_RANGE),
        ("city/sensors/gas/gas-1", {"ts": NOW, "value": -1}, v.OUT_OF_RANGE),
        ("city/sensors/smoke/smoke-1", {"ts": NOW, "value": 1, "battery_pct": 140}, v.OUT_OF_RANGE),
        ("city/sensors/water_level/res-1", b'{"ts": 1795000000000, "value": NaN}', v.OUT_OF_RANGE),
        ("city/vehicles/truck-1/gps", {"ts": NOW, "lat": 91, "lon": 110}, v.OUT_OF_RANGE),
        ("city/vehicles/truck-1/gps", {"ts": NOW, "lat": 20}, v.MISSING_FIELD),
        ("city/sensors/water_level/res-1", {"ts": NOW, "value": 1, "unit": "cm"}, v.BAD_UNIT),
        ("city/sensors/gas/gas-1", {"ts": NOW, "value": 1, "unit": "ppm"}, v.BAD_UNIT),
        ("city/sensors/gas/gas-1", {"ts": NOW, "value": 1, "unit": 5}, v.WRONG_TYPE),
        ("city/sensors/smoke/smoke-1", {"ts": NOW, "value": 1, "alarm": "yes"}, v.WRONG_TYPE),
        ("city/sensors/gas/nobody", {"ts": NOW, "value": 1}, v.UNKNOWN_DEVICE),
        ("city/sensors/gas/res-1", {"ts": NOW, "value": 1}, v.WRONG_KIND),
        ("city/vehicles/res-1/gps", {"ts": NOW, "lat": 1, "lon": 1}, v.WRONG_KIND),
        ("city/devices/res-1/status", b"sleeping", v.BAD_STATUS),
        ("city/devices/ghost/status", b"online", v.UNKNOWN_DEVICE),
        ("city/sensors/gas/gas-1", b"[" + b"1," * 40_000 + b"1]", v.TOO_LARGE),
    ],
)
def test_bad_messages_are_refused_with_their_reason(topic: str, body: object, reason: str) -> None:
    checked = check(topic, body)
    assert checked.samples == []
    assert [r for r, _ in checked.rejections] == [reason]
    assert checked.rejections[0][1]  # every refusal says why in words


def test_a_batch_keeps_its_good_items_and_refuses_the_bad_ones() -> None:
    checked = check(
        "city/sensors/gas/gas-1",
        [{"ts": NOW, "value": 5}, {"ts": NOW + 1, "value": 500}, {"ts": NOW + 2, "value": 6}, "x"],
    )
    assert [s.ts_ms for s in checked.samples] == [NOW, NOW + 2]
    assert [r for r, _ in checked.rejections] == [v.OUT_OF_RANGE, v.WRONG_TYPE]
    assert checked.rejections[0][1].startswith("item 1:")


def test_status_messages_become_device_status() -> None:
    checked = v.check_message("city/devices/truck-1/status", b"offline", KINDS, NOW)
    assert checked.status is not None
    assert (checked.status.device_id, checked.status.status, checked.status.at_ms) == (
        "truck-1",
        "offline",
        NOW,
    )


def test_alarm_is_kept_for_smoke_only() -> None:
    checked = check("city/sensors/gas/gas-1", {"ts": NOW, "value": 1, "alarm": True})
    assert checked.samples == [Reading("gas-1", "gas", NOW, 1.0)]


def test_exactly_five_minutes_ahead_is_still_accepted() -> None:
    assert check("city/sensors/gas/gas-1", {"ts": NOW + 300_000, "value": 1}).samples


# --- hostile input: the check never raises, every problem is a reason (issue: "one message can hurt it") ---

HOSTILE = [
    # An integer too large for a float: float() raises OverflowError.
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": 1' + b"0" * 400 + b"}", v.OUT_OF_RANGE),
    # A float literal too large for a float becomes inf.
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": 1e400}', v.OUT_OF_RANGE),
    # An integer longer than Python's int-from-string limit (4,300 digits): json.loads raises ValueError.
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": ' + b"9" * 5000 + b"}", v.BAD_JSON),
    # A timestamp too large for a float in the "seconds in the future" message.
    ("city/sensors/gas/gas-1", b'{"ts": 1' + b"0" * 400 + b', "value": 1}', v.FUTURE_TIMESTAMP),
    ("city/sensors/gas/gas-1", b'{"ts": -1' + b"0" * 400 + b', "value": 1}', v.OUT_OF_RANGE),
    ("city/sensors/gas/gas-1", b'{"ts": "' + b"9" * 5000 + b'", "value": 1}', v.BAD_TIMESTAMP),
    ("city/sensors/gas/gas-1", b'{"ts": "0001-01-01T00:00:00+23:59", "value": 1}', v.OUT_OF_RANGE),
    ("city/sensors/gas/gas-1", b'{"ts": "9999-12-31T23:59:59-23:59", "value": 1}', v.FUTURE_TIMESTAMP),
    # Deep nesting, whole and inside a field.
    ("city/sensors/gas/gas-1", b"[" * 30_000 + b"]" * 30_000, v.BAD_JSON),
    # Deeper than 64: refused before parsing, the same whatever the caller's stack (it was
    # WRONG_TYPE or BAD_JSON depending on where the check ran).
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": ' + b"[" * 900 + b"]" * 900 + b"}", v.BAD_JSON),
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": ' + b"[" * 60 + b"]" * 60 + b"}", v.WRONG_TYPE),
    # Brackets inside strings are not nesting.
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": 1, "unit": "' + b"[" * 100 + b'"}', v.BAD_UNIT),
    # Encodings: JSON is UTF-8 (RFC 8259), without a BOM; a lone surrogate, NUL characters.
    ("city/sensors/gas/gas-1", '{"ts": 1795000000000, "value": 1}'.encode("utf-16"), v.BAD_JSON),
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": 1, "unit": "\\ud800"}', v.BAD_UNIT),
    ("city/sensors/gas/gas-1", b'\xef\xbb\xbf{"ts": 1795000000000, "value": 1}', v.BAD_JSON),
    ("city/sensors/gas/gas-1", b'{"ts": 1795000000000, "value": 1, "unit": "\\u0000"}', v.BAD_UNIT),
    ("city/devices/gas-1/status", b"\xff\xfe\x00", v.BAD_STATUS),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), HOSTILE, ids=[f"hostile-{i}" for i in range(len(HOSTILE))])
def test_hostile_input_is_a_reason_never_an_exception(topic: str, payload: bytes, reason: str) -> None:
    checked = v.check_message(topic, payload, KINDS, NOW)
    assert checked.samples == []
    assert [r for r, _ in checked.rejections] == [reason]
    assert dict(checked.refused) == {reason: 1}
    detail = checked.rejections[0][1]
    assert 0 < len(detail) <= v.MAX_DETAIL_CHARS
    # The detail goes into PostgreSQL text: it must encode as UTF-8 and hold no NUL.
    detail.encode("utf-8")
    assert "\x00" not in detail


def test_a_huge_batch_of_junk_is_counted_in_full_but_describes_only_its_first_items() -> None:
    junk = [{"ts": 0, "value": 0}] * 3000 + [{"ts": NOW, "value": 5}] + ["x"] * 100
    payload = json.dumps(junk, separators=(",", ":")).encode()
    assert len(payload) < 64 * 1024
    checked = v.check_message("city/sensors/gas/gas-1", payload, KINDS, NOW)
    assert len(checked.samples) == 1
    assert checked.refused == {v.OUT_OF_RANGE: 3000, v.WRONG_TYPE: 100}
    assert len(checked.rejections) == v.MAX_DETAILS
    assert checked.rejections[0][1].startswith("item 0:")


def test_anything_unforeseen_becomes_an_internal_error_reason() -> None:
    class Exploding(dict[str, str]):
        def get(self, *_: object, **__: object) -> str:
            raise KeyError("registry went away")

    checked = v.check_message("city/sensors/gas/gas-1", b'{"ts": 1, "value": 1}', Exploding(), NOW)
    assert checked.samples == []
    assert [r for r, _ in checked.rejections] == [v.INTERNAL_ERROR]
    assert "KeyError" in checked.rejections[0][1]
    assert v.INTERNAL_ERROR in v.REASONS
