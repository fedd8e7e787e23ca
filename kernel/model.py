"""Event and record types shared by the areas. Frozen dataclasses, no behaviour beyond shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

SensorKind = Literal["water_level", "smoke", "gas"]
DeviceKind = Literal["water_level", "smoke", "gas", "vehicle"]
UNITS: dict[str, str] = {"water_level": "m", "smoke": "%/m", "gas": "%LEL"}

# How often each kind reports when healthy (seconds). Haikou's reservoir gauges report hourly;
# detectors send a heartbeat every few minutes; vehicles every few seconds while moving.
EXPECTED_INTERVAL_S: dict[str, int] = {
    "water_level": 3600,
    "smoke": 300,
    "gas": 300,
    "vehicle": 30,
}


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


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device: a sensor or a vehicle."""

    id: str
    kind: DeviceKind
    name: str
    lat: float
    lon: float
    grid_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reading:
    """One accepted sensor reading (an event on topic `reading`)."""

    TOPIC: ClassVar[str] = "reading"
    device_id: str
    kind: SensorKind
    ts_ms: int
    value: float
    battery_pct: float | None = None
    alarm: bool | None = None

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    @property
    def key(self) -> str:
        return self.device_id


@dataclass(frozen=True, slots=True)
class Position:
    """One accepted vehicle GPS fix, WGS-84 (an event on topic `position`)."""

    TOPIC: ClassVar[str] = "position"
    device_id: str
    ts_ms: int
    lat: float
    lon: float
    speed_kmh: float | None = None
    heading_deg: float | None = None
    kind: Literal["vehicle"] = "vehicle"

    @property
    def key(self) -> str:
        return self.device_id


Sample = Reading | Position


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device said it is online or offline, or its last will did (an event on topic `device.status`)."""

    TOPIC: ClassVar[str] = "device.status"
    device_id: str
    status: Literal["online", "offline"]
    at_ms: int

    @property
    def key(self) -> str:
        return self.device_id


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the gateway refused (wholly or some of its items), kept once with why.

    `reason` is the first reason; `refused` counts every refused item of the message by
    reason, and `detail` describes the first few.
    """

    topic: str
    payload: bytes
    reason: str
    detail: str
    received_at_ms: int
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def refused_items(self) -> int:
        return sum(self.refused.values()) or 1


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    """The JSON shape of a sample, as the API and the wall show it."""
    if isinstance(sample, Reading):
        out: dict[str, Any] = {
            "device_id": sample.device_id,
            "kind": sample.kind,
            "ts_ms": sample.ts_ms,
            "value": sample.value,
            "unit": sample.unit,
        }
        if sample.battery_pct is not None:
            out["battery_pct"] = sample.battery_pct
        if sample.alarm is not None:
            out["alarm"] = sample.alarm
        return out
    pos: dict[str, Any] = {
        "device_id": sample.device_id,
        "kind": "vehicle",
        "ts_ms": sample.ts_ms,
        "lat": sample.lat,
        "lon": sample.lon,
    }
    if sample.speed_kmh is not None:
        pos["speed_kmh"] = sample.speed_kmh
    if sample.heading_deg is not None:
        pos["heading_deg"] = sample.heading_deg
    return pos


def sample_from_dict(data: dict[str, Any]) -> Sample:
    """Inverse of sample_to_dict."""
    if data["kind"] == "vehicle":
        return Position(
            device_id=data["device_id"],
            ts_ms=int(data["ts_ms"]),
            lat=float(data["lat"]),
            lon=float(data["lon"]),
            speed_kmh=data.get("speed_kmh"),
            heading_deg=data.get("heading_deg"),
        )
    return Reading(
        device_id=data["device_id"],
        kind=data["kind"],
        ts_ms=int(data["ts_ms"]),
        value=float(data["value"]),
        battery_pct=data.get("battery_pct"),
        alarm=data.get("alarm"),
    )
