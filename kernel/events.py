"""Events between areas: typed, with their topic names, and one JSON form with a schema version.

Every area reads the events of the others from here, never by importing the other area.
An event has a `TOPIC` (the stream it travels on) and a `key` (the entity it is about: the
live fan-out keeps the latest event per key).

On the wire (Redis) a batch of events of one topic is one JSON document:
`{"v": 1, "topic": "reading", "events": [{...}, ...]}`. `v` is the schema version: it changes
only when a field is renamed, dropped or changes meaning, and a reader refuses a version it
does not know (`EventDecodeError`) instead of guessing. Adding a field keeps `v`: an older
reader ignores fields it does not know, and a newer reader gives missing new fields their
defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

import orjson

from kernel.errors import CityOpsError
from kernel.model import Device, DeviceStatus, Position, Reading

SCHEMA_VERSION: Final = 1

# Topic names: one per event type.
READING: Final = "reading"
POSITION: Final = "position"
DEVICE_STATUS: Final = "device.status"
DEVICE_CHANGED: Final = "device.changed"
INCIDENT_CHANGED: Final = "incident.changed"
TICKET_CHANGED: Final = "ticket.changed"
CAMERA_STATUS: Final = "camera.status"
RULE_CHANGED: Final = "rule.changed"
SILENCE_CHANGED: Final = "silence.changed"
CAMERA_CHANGED: Final = "camera.changed"

Severity = Literal["low", "medium", "high", "critical"]
IncidentStatus = Literal["open", "acknowledged", "resolved"]
TicketStatus = Literal["new", "dispatched", "accepted", "returned", "replied", "closed"]
CameraStatus = Literal["unknown", "online", "offline", "degraded"]


class EventDecodeError(CityOpsError):
    """Bytes on the bus that are not events this code understands."""


@dataclass(frozen=True, slots=True)
class DeviceChanged:
    """A device was registered, changed or removed (`device` is its new record, None when removed)."""

    TOPIC: ClassVar[str] = DEVICE_CHANGED
    device_id: str
    change: Literal["registered", "changed", "removed"]
    at_ms: int
    device: Device | None = None

    @property
    def key(self) -> str:
        return self.device_id


@dataclass(frozen=True, slots=True)
class IncidentChanged:
    """An incident was opened or changed (its whole state after the change, and what changed)."""

    TOPIC: ClassVar[str] = INCIDENT_CHANGED
    id: str
    change: str  # opened, updated, severity_raised, acknowledged, escalated, resolved, ...
    rule_id: str
    category: str
    severity: Severity
    escalation_tier: int
    status: IncidentStatus
    title: str
    opened_at_ms: int
    updated_at_ms: int
    resolved_at_ms: int | None = None
    lat: float | None = None
    lon: float | None = None
    grid_id: str | None = None
    device_ids: tuple[str, ...] = ()
    camera_ids: tuple[str, ...] = ()
    ticket_id: str | None = None
    # What the rule watches (a device id, or a group's first device): one open incident per rule and subject.
    subject: str = ""

    @property
    def key(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class TicketChanged:
    """A hotline ticket was created or an action changed it (its state after the action)."""

    TOPIC: ClassVar[str] = TICKET_CHANGED
    id: str
    number: str
    action: str  # created, dispatch, accept, return, reply, callback, close, remind, supervise, extend
    status: TicketStatus
    channel: str
    category: str
    urgency: Literal["normal", "urgent"]
    at_ms: int
    department_id: str | None = None
    incident_id: str | None = None
    grid_id: str | None = None
    lat: float | None = None
    lon: float | None = None
    deadline_ms: int | None = None
    response_deadline_ms: int | None = None
    camera_ids: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class CameraStatusChanged:
    """A camera's health changed (the stream URL never travels: it may hold credentials)."""

    TOPIC: ClassVar[str] = CAMERA_STATUS
    camera_id: str
    status: CameraStatus
    previous: CameraStatus
    reason: str
    checked_at_ms: int
    lat: float | None = None
    lon: float | None = None
    department: str | None = None

    @property
    def key(self) -> str:
        return self.camera_id


@dataclass(frozen=True, slots=True)
class RuleChanged:
    """A rule was created, changed, disabled or enabled (through the API): rules processes reload."""

    TOPIC: ClassVar[str] = RULE_CHANGED
    rule_id: str
    at_ms: int

    @property
    def key(self) -> str:
        return self.rule_id


@dataclass(frozen=True, slots=True)
class SilenceChanged:
    """A silence (maintenance window) was made or removed: rules processes reload them."""

    TOPIC: ClassVar[str] = SILENCE_CHANGED
    silence_id: str
    at_ms: int

    @property
    def key(self) -> str:
        return self.silence_id


@dataclass(frozen=True, slots=True)
class CameraChanged:
    """A camera was added, changed or removed in the catalog: every process's index follows.
    Its position and status travel; its stream URL never does (it may hold credentials)."""

    TOPIC: ClassVar[str] = CAMERA_CHANGED
    camera_id: str
    change: Literal["added", "changed", "removed"]
    at_ms: int
    lat: float | None = None
    lon: float | None = None
    status: CameraStatus = "unknown"
    department: str | None = None

    @property
    def key(self) -> str:
        return self.camera_id


Event = (
    Reading
    | Position
    | DeviceStatus
    | DeviceChanged
    | IncidentChanged
    | TicketChanged
    | CameraStatusChanged
    | RuleChanged
    | SilenceChanged
    | CameraChanged
)

EVENT_TYPES: Final[dict[str, type[Any]]] = {
    READING: Reading,
    POSITION: Position,
    DEVICE_STATUS: DeviceStatus,
    DEVICE_CHANGED: DeviceChanged,
    INCIDENT_CHANGED: IncidentChanged,
    TICKET_CHANGED: TicketChanged,
    CAMERA_STATUS: CameraStatusChanged,
    RULE_CHANGED: RuleChanged,
    SILENCE_CHANGED: SilenceChanged,
    CAMERA_CHANGED: CameraChanged,
}
TOPICS: Final = tuple(EVENT_TYPES)


def _tuples(names: tuple[str, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fix(data: dict[str, Any]) -> dict[str, Any]:
        for name in names:
            if name in data and data[name] is not None:
                data[name] = tuple(data[name])
        return data

    return fix


def _device_changed(data: dict[str, Any]) -> dict[str, Any]:
    device = data.get("device")
    if device is not None:
        data["device"] = Device(**_known(Device, device))
    return data


# Fields JSON cannot give back as they were (tuples come back as lists, nested records as dicts).
_FIXUPS: Final[dict[type[Any], Callable[[dict[str, Any]], dict[str, Any]]]] = {
    DeviceChanged: _device_changed,
    IncidentChanged: _tuples(("device_ids", "camera_ids")),
    TicketChanged: _tuples(("camera_ids",)),
}
_FIELDS: Final[dict[type[Any], frozenset[str]]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls)) for cls in (*EVENT_TYPES.values(), Device)
}


def _known(cls: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    names = _FIELDS[cls]
    if data.keys() <= names:
        return data
    return {k: v for k, v in data.items() if k in names}  # fields from a newer writer


def _build(cls: type[Any], data: Any) -> Any:
    if not isinstance(data, dict):
        raise EventDecodeError(f"a {cls.__name__} must be a JSON object, not {type(data).__name__}")
    fixup = _FIXUPS.get(cls)
    if fixup is None:
        try:
            return cls(**data)  # the common case, and the fast one
        except TypeError:
            pass  # fields from a newer writer, or missing ones: said below
    try:
        return cls(**_known(cls, fixup(data) if fixup else data))
    except (TypeError, ValueError) as exc:
        raise EventDecodeError(f"not a {cls.__name__}: {exc}") from exc


def encode_each(events: Sequence[Event]) -> list[bytes]:
    """Each event's own JSON object (what `join` puts in a batch, and what a latest-value store keeps)."""
    dumps = orjson.dumps
    return [dumps(event) for event in events]


def join(topic: str, encoded: Sequence[bytes]) -> bytes:
    """A batch of one topic from events encoded by `encode_each`."""
    head = b'{"v":%d,"topic":"%s","events":[' % (SCHEMA_VERSION, topic.encode())
    return head + b",".join(encoded) + b"]}"


def encode(events: Sequence[Event]) -> bytes:
    """One batch of events of one topic as JSON bytes."""
    if not events:
        raise ValueError("an empty batch has no topic")
    return join(events[0].TOPIC, encode_each(events))


def decode_one(topic: str, raw: bytes | str) -> Event:
    """One event's JSON object (from `encode_each`) of a known topic."""
    cls = EVENT_TYPES.get(topic)
    if cls is None:
        raise EventDecodeError(f"unknown topic {topic!r}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from exc
    event: Event = _build(cls, data)
    return event


def decode(raw: bytes | str) -> tuple[str, list[Event]]:
    """The topic and the events of one encoded batch; EventDecodeError if it is not one."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise EventDecodeError("an event batch must be a JSON object")
    version = doc.get("v")
    if version != SCHEMA_VERSION:
        raise EventDecodeError(f"schema version {version!r} is not one this reader knows ({SCHEMA_VERSION})")
    topic = doc.get("topic")
    if not isinstance(topic, str) or topic not in EVENT_TYPES:
        raise EventDecodeError(f"unknown topic {topic!r}")
    cls = EVENT_TYPES[topic]
    items = doc.get("events")
    if not isinstance(items, list):
        raise EventDecodeError("'events' must be a list")
    if cls not in _FIXUPS:
        try:
            return topic, [cls(**item) for item in items]  # the common case, and the fast one
        except TypeError:
            pass  # not an object, or fields from a newer writer, or missing ones: sorted out below
    return topic, [_build(cls, item) for item in items]


def to_json_dict(event: Event) -> dict[str, Any]:
    """The event as plain JSON data (for logs, the command line and the wall)."""
    data: dict[str, Any] = orjson.loads(orjson.dumps(event))
    return data


__all__ = [
    "CAMERA_STATUS",
    "DEVICE_CHANGED",
    "DEVICE_STATUS",
    "EVENT_TYPES",
    "INCIDENT_CHANGED",
    "POSITION",
    "READING",
    "RULE_CHANGED",
    "SCHEMA_VERSION",
    "SILENCE_CHANGED",
    "TICKET_CHANGED",
    "TOPICS",
    "CameraStatusChanged",
    "DeviceChanged",
    "Event",
    "EventDecodeError",
    "IncidentChanged",
    "RuleChanged",
    "SilenceChanged",
    "TicketChanged",
    "decode",
    "decode_one",
    "encode",
    "encode_each",
    "join",
    "to_json_dict",
]
