"""Turn one MQTT message into accepted samples, a device status, or reasons for refusal.

`check_message(topic, payload, kinds, now_ms)` is pure: `kinds` maps registered device ids
to their kind. A batch (JSON array) is checked item by item, so one bad item does not
take the good ones down with it. It never raises: every number, nesting, encoding and date
problem is a reason, and a last-resort guard turns anything unforeseen into `internal_error`.
Refusals are counted in full by reason, but only the first few are described, so one
message of 30,000 bad items costs what one bad item costs downstream.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from kernel.clock import parse_time
from kernel.model import UNITS, DeviceStatus, Position, Reading, Sample, SensorKind

from .kinds import (
    BATTERY_RANGE,
    HEADING_RANGE_DEG,
    LAT_RANGE,
    LON_RANGE,
    MAX_FUTURE_MS,
    MAX_PAYLOAD_BYTES,
    MIN_TS_MS,
    SPEED_RANGE_KMH,
    VALUE_RANGES,
)

# Reasons a message is refused; these names are what /api/health counts.
BAD_TOPIC: Final = "bad_topic"
TOO_LARGE: Final = "too_large"
BAD_JSON: Final = "bad_json"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
BAD_TIMESTAMP: Final = "bad_timestamp"
FUTURE_TIMESTAMP: Final = "future_timestamp"
OUT_OF_RANGE: Final = "out_of_range"
BAD_UNIT: Final = "bad_unit"
UNKNOWN_DEVICE: Final = "unknown_device"
WRONG_KIND: Final = "wrong_kind"
BAD_STATUS: Final = "bad_status"
INTERNAL_ERROR: Final = "internal_error"
REASONS: Final = (
    BAD_TOPIC,
    TOO_LARGE,
    BAD_JSON,
    MISSING_FIELD,
    WRONG_TYPE,
    BAD_TIMESTAMP,
    FUTURE_TIMESTAMP,
    OUT_OF_RANGE,
    BAD_UNIT,
    UNKNOWN_DEVICE,
    WRONG_KIND,
    BAD_STATUS,
    INTERNAL_ERROR,
)
# Refused items described in words per message; the rest are only counted.
MAX_DETAILS: Final = 5
MAX_DETAIL_CHARS: Final = 300

SENSOR_KIND_SET: Final = frozenset(VALUE_RANGES)


@dataclass(slots=True)
class Checked:
    """What one message yielded: accepted samples or a status, and its refusals.

    `refused` counts every refused item by reason; `rejections` describes the first
    MAX_DETAILS of them as (reason, detail).
    """

    samples: list[Sample] = field(default_factory=list)
    status: DeviceStatus | None = None
    rejections: list[tuple[str, str]] = field(default_factory=list)
    # A plain dict, not a Counter: this is made for every message, and Counter() costs 15 times more.
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if len(self.rejections) < MAX_DETAILS:
            self.rejections.append((reason, _clean(detail)))


def _clean(text: str) -> str:
    """Text safe for any store: valid UTF-8 (no lone surrogates), no NUL, bounded length."""
    safe = text.encode("utf-8", errors="backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return safe if len(safe) <= MAX_DETAIL_CHARS else safe[: MAX_DETAIL_CHARS - 1] + "…"


def _show(raw: Any) -> str:
    """A short repr of what a sender sent; never raises (huge ints, deep nesting)."""
    try:
        text = repr(raw)
    except (ValueError, RecursionError):
        if isinstance(raw, int):
            return f"<integer of {raw.bit_length()} bits>"
        return f"<{type(raw).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


class Refused(Exception):
    """One item (or the whole message) is refused for `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def check_message(topic: str, payload: bytes, kinds: Mapping[str, str], now_ms: int) -> Checked:
    """Check one message; never raises."""
    out = Checked()
    try:
        _check(topic, payload, kinds, now_ms, out)
    except Refused as refused:
        out.refuse(refused.reason, refused.detail)
    except Exception as exc:  # noqa: BLE001 - the last-resort guard: a message must never raise
        # Whatever was half-accepted goes too: the message is kept whole as one dead letter.
        out = Checked()
        out.refuse(INTERNAL_ERROR, f"the check failed unexpectedly: {type(exc).__name__}: {_show(exc)}")
    return out


def _check(topic: str, payload: bytes, kinds: Mapping[str, str], now_ms: int, out: Checked) -> None:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Refused(TOO_LARGE, f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "city" or not parts[3]:
        raise Refused(BAD_TOPIC, f"topic {topic!r} is not one of the gateway's")
    section = parts[1]
    if section == "sensors":
        kind, device_id = parts[2], parts[3]
        if kind not in SENSOR_KIND_SET:
            raise Refused(BAD_TOPIC, f"unknown sensor kind {kind!r}")
        _require_device(device_id, kind, kinds)
        for index, item in _items(payload):
            try:
                out.samples.append(_reading(device_id, kind, item, now_ms))  # type: ignore[arg-type]
            except Refused as refused:
                out.refuse(refused.reason, _at(index, refused.detail))
    elif section == "vehicles" and parts[3] == "gps":
        device_id = parts[2]
        _require_device(device_id, "vehicle", kinds)
        for index, item in _items(payload):
            try:
                out.samples.append(_position(device_id, item, now_ms))
            except Refused as refused:
                out.refuse(refused.reason, _at(index, refused.detail))
    elif section == "devices" and parts[3] == "status":
        device_id = parts[2]
        if device_id not in kinds:
            raise Refused(UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
        text = payload.decode("utf-8", errors="replace").strip()
        if text not in ("online", "offline"):
            raise Refused(BAD_STATUS, f"status must be 'online' or 'offline', got {text[:40]!r}")
        out.status = DeviceStatus(device_id, text, now_ms)  # type: ignore[arg-type]
    else:
        raise Refused(BAD_TOPIC, f"topic {topic!r} is not one of the gateway's")


def _at(index: int | None, detail: str) -> str:
    return detail if index is None else f"item {index}: {detail}"


def _require_device(device_id: str, kind: str, kinds: Mapping[str, str]) -> None:
    registered = kinds.get(device_id)
    if registered is None:
        raise Refused(UNKNOWN_DEVICE, f"device {device_id!r} is not registered")
    if registered != kind:
        raise Refused(WRONG_KIND, f"device {device_id!r} is a {registered}, not a {kind}")


# A reading nests 2 levels (a batch of objects). Deeper JSON is refused before it is parsed: how
# deep json.loads can go before RecursionError depends on how deep the caller's own stack is, so a
# document nested ~900 levels was judged one way by the gateway and another way elsewhere (the
# fuzz test caught it). A fixed limit judges it the same everywhere.
MAX_NESTING: Final = 64
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting(payload: bytes) -> int:
    """How deep the JSON's arrays and objects nest (brackets inside strings do not count)."""
    if payload.count(b"[") + payload.count(b"{") <= MAX_NESTING:
        return 0  # cannot nest deeper than the limit: the common case, at C speed
    depth = deepest = 0
    for byte in _STRINGS.sub(b"", payload).translate(None, _NOT_BRACKETS):
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _items(payload: bytes) -> list[tuple[int | None, Any]]:
    if nesting(payload) > MAX_NESTING:
        raise Refused(BAD_JSON, f"payload nests deeper than {MAX_NESTING} levels")
    try:
        # orjson first: strict RFC 8259 (UTF-8, no BOM) and six times faster than json on a reading.
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        # What orjson refuses (NaN, integers past 64 bits, ...) is judged as before, by json, so a
        # sender gets the same reason whichever parser answered.
        try:
            # JSON on the wire is UTF-8 without a BOM (RFC 8259); json.loads on bytes would guess UTF-16 too.
            doc = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            # ValueError covers bad UTF-8, JSON syntax and integers past Python's digit limit.
            raise Refused(BAD_JSON, f"payload is not JSON: {exc}") from exc
    if isinstance(doc, dict):
        return [(None, doc)]
    if isinstance(doc, list):
        if not doc:
            raise Refused(MISSING_FIELD, "empty batch: no readings in the array")
        return list(enumerate(doc))
    raise Refused(WRONG_TYPE, f"payload must be a JSON object or array, got {type(doc).__name__}")


def _number(item: dict[str, Any], name: str, bounds: tuple[float, float], required: bool) -> float | None:
    raw = item.get(name)
    if raw is None:
        if required:
            raise Refused(MISSING_FIELD, f"`{name}` is missing")
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise Refused(WRONG_TYPE, f"`{name}` must be a number, got {type(raw).__name__}")
    low, high = bounds
    try:
        value = float(raw)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or not low <= value <= high:
        raise Refused(OUT_OF_RANGE, f"`{name}` {_show(raw)} is outside [{low:g}, {high:g}]")
    return value


def _timestamp(item: dict[str, Any], now_ms: int) -> int:
    raw = item.get("ts")
    if raw is None:
        raise Refused(MISSING_FIELD, "`ts` is missing")
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise Refused(WRONG_TYPE, f"`ts` must be ISO-8601 text or integer epoch ms, got {type(raw).__name__}")
    if isinstance(raw, int):
        ts = raw
    else:
        try:
            ts = parse_time(raw)
        except (ValueError, OverflowError, OSError) as exc:
            raise Refused(BAD_TIMESTAMP, f"`ts` {_show(raw)} is not ISO-8601 with an offset: {_show(exc)}") from exc
    if ts > now_ms + MAX_FUTURE_MS:
        ahead = "more than a year" if ts - now_ms > 366 * 86_400_000 else f"{(ts - now_ms) // 1000} s"
        raise Refused(FUTURE_TIMESTAMP, f"`ts` is {ahead} in the future (limit 300 s)")
    if ts < MIN_TS_MS:
        raise Refused(OUT_OF_RANGE, f"`ts` {_show(raw)} is before 2000-01-01")
    return ts


def _object(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise Refused(WRONG_TYPE, f"each reading must be a JSON object, got {type(item).__name__}")
    return item


def _reading(device_id: str, kind: SensorKind, raw: Any, now_ms: int) -> Reading:
    item = _object(raw)
    ts = _timestamp(item, now_ms)
    value = _number(item, "value", VALUE_RANGES[kind], required=True)
    assert value is not None  # required=True guarantees it
    unit = item.get("unit")
    if unit is not None:
        if not isinstance(unit, str):
            raise Refused(WRONG_TYPE, f"`unit` must be text, got {type(unit).__name__}")
        if unit != UNITS[kind]:
            raise Refused(BAD_UNIT, f"`unit` {_show(unit[:20])} is not {UNITS[kind]!r}, the unit of {kind}")
    battery = _number(item, "battery_pct", BATTERY_RANGE, required=False)
    alarm = item.get("alarm")
    if alarm is not None and not isinstance(alarm, bool):
        raise Refused(WRONG_TYPE, f"`alarm` must be true or false, got {type(alarm).__name__}")
    return Reading(device_id, kind, ts, value, battery, alarm if kind == "smoke" else None)


def _position(device_id: str, raw: Any, now_ms: int) -> Position:
    item = _object(raw)
    ts = _timestamp(item, now_ms)
    lat = _number(item, "lat", LAT_RANGE, required=True)
    lon = _number(item, "lon", LON_RANGE, required=True)
    assert lat is not None  # required=True guarantees it
    assert lon is not None
    speed = _number(item, "speed_kmh", SPEED_RANGE_KMH, required=False)
    heading = _number(item, "heading_deg", HEADING_RANGE_DEG, required=False)
    return Position(device_id, ts, lat, lon, speed, heading)
