"""The events' JSON form: round trips, schema version, and what a reader refuses."""

from __future__ import annotations

import orjson
import pytest

from kernel.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    CameraChanged,
    CameraStatusChanged,
    DeviceChanged,
    EventDecodeError,
    IncidentChanged,
    RuleChanged,
    SilenceChanged,
    TicketChanged,
    decode,
    encode,
    to_json_dict,
)
from kernel.model import Device, DeviceStatus, Position, Reading

SAMPLES = [
    Reading("smk-1", "smoke", 1, 0.5, 80.0, True),
    Position("veh-1", 2, 20.0, 110.3, 35.5, 270.0),
    DeviceStatus("smk-1", "offline", 3),
    DeviceChanged("gas-9", "changed", 4, Device("gas-9", "gas", "燃气", 20.0, 110.0, None, {"a": [1, 2]})),
    IncidentChanged("i", "escalated", "r", "flood", "high", 2, "open", "水位", 5, 6, device_ids=("res-1",)),
    TicketChanged("t", "N-1", "created", "new", "sensor", "flood", "urgent", 7, camera_ids=("c1", "c2")),
    CameraStatusChanged("c1", "degraded", "online", "frozen picture", 8),
    RuleChanged("gas-leak", 9),
    SilenceChanged("sil-1", 10),
    CameraChanged("cam-1", "added", 11, 20.0, 110.3, "unknown", "police"),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_each_event_type_round_trips_with_its_topic(event: object) -> None:
    topic, events = decode(encode([event]))  # type: ignore[list-item]
    assert events == [event]
    assert EVENT_TYPES[topic] is type(event)


def test_every_topic_has_a_sample() -> None:
    assert {type(e) for e in SAMPLES} == set(EVENT_TYPES.values())


def test_the_wire_form_names_version_and_topic() -> None:
    doc = orjson.loads(encode([Reading("res-1", "water_level", 1, 20.5)]))
    assert doc["v"] == SCHEMA_VERSION
    assert doc["topic"] == "reading"
    assert doc["events"][0] == {
        "device_id": "res-1",
        "kind": "water_level",
        "ts_ms": 1,
        "value": 20.5,
        "battery_pct": None,
        "alarm": None,
    }
    incident = IncidentChanged("i", "opened", "r", "flood", "high", 1, "open", "t", 5, 6, device_ids=("res-1",))
    assert to_json_dict(incident)["device_ids"] == ["res-1"]


def test_fields_from_a_newer_writer_are_ignored_and_new_optional_fields_default() -> None:
    raw = orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "topic": "device.status",
            "events": [{"device_id": "d", "status": "online", "at_ms": 1, "firmware": "2.1"}],
        }
    )
    assert decode(raw) == ("device.status", [DeviceStatus("d", "online", 1)])
    raw = orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "topic": "camera.status",
            "events": [{"camera_id": "c", "status": "online", "previous": "unknown", "reason": "", "checked_at_ms": 1}],
        }
    )
    assert decode(raw)[1] == [CameraStatusChanged("c", "online", "unknown", "", 1)]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"v": 2, "topic": "reading", "events": []}', "schema version 2"),
        (b'{"topic": "reading", "events": []}', "schema version None"),
        (b'{"v": 1, "topic": "weather", "events": []}', "unknown topic"),
        (b'{"v": 1, "topic": "reading", "events": {}}', "must be a list"),
        (b'{"v": 1, "topic": "reading", "events": [3]}', "JSON object"),
        (b'{"v": 1, "topic": "reading", "events": [{"device_id": "d"}]}', "not a Reading"),
        (
            b'{"v": 1, "topic": "device.changed", "events": [{"device_id": "d", "change": "registered", '
            b'"at_ms": 1, "device": {"id": "d"}}]}',
            "not a DeviceChanged",
        ),
    ],
)
def test_what_is_not_an_event_batch_is_refused_with_why(raw: bytes, why: str) -> None:
    with pytest.raises(EventDecodeError, match=why):
        decode(raw)


def test_an_empty_batch_has_no_topic() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode([])


def test_one_event_alone_round_trips_and_refuses_what_is_not_one() -> None:
    from kernel.events import decode_one, encode_each, join

    event = SAMPLES[1]
    [raw] = encode_each([event])  # type: ignore[list-item]
    assert decode_one("position", raw) == event
    assert decode(join("position", [raw, raw])) == ("position", [event, event])
    with pytest.raises(EventDecodeError, match="unknown topic"):
        decode_one("weather", raw)
    with pytest.raises(EventDecodeError, match="not JSON"):
        decode_one("position", b"{")
    with pytest.raises(EventDecodeError, match="not a Position"):
        decode_one("position", b'{"device_id": "v"}')
