"""The gateway through its real interfaces: publish on MQTT, read through the HTTP API.

Every rejection reason of CONTRACT.md: a bad message, then a good one; the good one is
processed and the bad one is a dead letter with the right reason.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.helpers import Publisher, eventually

from .conftest import Center

GAUGE = {
    "id": "res-tielu",
    "kind": "water_level",
    "name": "铁炉水库水位",
    "lat": 19.93,
    "lon": 110.252,
    "attributes": {"warning_level_m": 25.5, "danger_level_m": 26.8},
}
SMOKE = {"id": "smoke-b1", "kind": "smoke", "name": "1号楼烟感", "lat": 20.058, "lon": 110.32}
TRUCK = {
    "id": "veh-hz-1",
    "kind": "vehicle",
    "name": "危化品运输车",
    "lat": 20.0,
    "lon": 110.3,
    "attributes": {"plate": "琼A·H0001", "category": "hazmat"},
}


def now_ms() -> int:
    return int(time.time() * 1000)


async def latest_ts(center: Center, device_id: str) -> int | None:
    latest = (await center.device(device_id))["latest"]
    return None if latest is None else int(latest["ts_ms"])


async def dead_letters(center: Center, reason: str) -> list[dict[str, Any]]:
    answer = await center.api.get("/api/dead-letters", params={"reason": reason})
    assert answer.status_code == 200
    letters: list[dict[str, Any]] = answer.json()
    return letters


BAD_MESSAGES = [
    ("bad_json", "city/sensors/water_level/res-tielu", b'{"ts": 1, "value": '),
    ("missing_field", "city/sensors/water_level/res-tielu", b'{"value": 24.1}'),
    ("wrong_type", "city/sensors/water_level/res-tielu", b'{"ts": 1795000000000, "value": "high"}'),
    ("bad_timestamp", "city/sensors/water_level/res-tielu", b'{"ts": "2026-11-22 10:00", "value": 24.1}'),
    ("unknown_device", "city/sensors/water_level/res-ghost", b'{"ts": 1795000000000, "value": 24.1}'),
    ("wrong_kind", "city/sensors/gas/res-tielu", b'{"ts": 1795000000000, "value": 2}'),
    ("out_of_range", "city/sensors/water_level/res-tielu", b'{"ts": 1795000000000, "value": 9000}'),
    ("bad_unit", "city/sensors/water_level/res-tielu", b'{"ts": 1795000000000, "value": 24.1, "unit": "ft"}'),
    (
        "too_large",
        "city/sensors/water_level/res-tielu",
        b'{"ts": 1, "value": 1, "pad": "' + b"x" * 70_000 + b'"}',
    ),
    ("future_timestamp", "city/sensors/water_level/res-tielu", None),
    ("bad_topic", "city/sensors/rainfall/res-tielu", b'{"ts": 1795000000000, "value": 1}'),
    ("bad_status", "city/devices/res-tielu/status", b"asleep"),
]


@pytest.mark.parametrize(("reason", "topic", "payload"), BAD_MESSAGES, ids=[m[0] for m in BAD_MESSAGES])
async def test_a_bad_message_is_a_dead_letter_and_the_next_good_one_goes_through(
    center: Center, reason: str, topic: str, payload: bytes | None
) -> None:
    await center.register(GAUGE)
    if payload is None:  # the future is relative to now
        payload = json.dumps({"ts": now_ms() + 10 * 60_000, "value": 24.0}).encode()
    await center.sensor.publish(topic, payload)
    good_ts = now_ms()
    await center.sensor.publish("city/sensors/water_level/res-tielu", json.dumps({"ts": good_ts, "value": 24.2}))

    async def good_is_live() -> bool:
        return await latest_ts(center, "res-tielu") == good_ts

    await eventually(good_is_live)
    letters = await eventually(lambda: dead_letters(center, reason))
    assert letters[0]["topic"] == topic
    assert letters[0]["payload"] == payload[:4096].decode("utf-8", errors="replace")
    assert letters[0]["detail"]
    health = (await center.api.get("/api/health")).json()
    assert health["dead_letters"][reason] == 1
    assert sum(health["dead_letters"].values()) == 1
    # Only the good reading reached the history.
    history = (await center.api.get("/api/devices/res-tielu/readings")).json()
    assert [r["value"] for r in history] == [24.2]


async def test_readings_reach_live_state_and_history(center: Center) -> None:
    await center.register(GAUGE)
    start = now_ms() - 10_000
    for i in range(5):
        await center.sensor.publish(
            "city/sensors/water_level/res-tielu",
            json.dumps({"ts": start + i * 1000, "value": 24.0 + i / 10, "unit": "m"}),
        )

    async def all_stored() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await center.api.get("/api/devices/res-tielu/readings")).json()
        return found if len(found) == 5 else []

    history = await eventually(all_stored)
    assert [r["value"] for r in history] == [24.0, 24.1, 24.2, 24.3, 24.4]
    assert history[0]["unit"] == "m"
    device = await center.device("res-tielu")
    assert device["latest"]["value"] == 24.4
    assert device["stale"] is False


async def test_a_batch_array_is_taken_item_by_item(center: Center) -> None:
    await center.register(SMOKE)
    base = now_ms() - 5000
    batch = [
        {"ts": base, "value": 0.2},
        {"ts": base + 1, "value": 400},
        {"ts": base + 2, "value": 9.5, "alarm": True},
    ]
    await center.sensor.publish("city/sensors/smoke/smoke-b1", json.dumps(batch))

    async def two_stored() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await center.api.get("/api/devices/smoke-b1/readings")).json()
        return found if len(found) == 2 else []

    history = await eventually(two_stored)
    assert [(r["value"], r.get("alarm")) for r in history] == [(0.2, None), (9.5, True)]
    letters = await eventually(lambda: dead_letters(center, "out_of_range"))
    assert letters[0]["detail"].startswith("item 1:")


async def test_a_reading_delivered_twice_is_stored_once(center: Center) -> None:
    await center.register(GAUGE)
    ts = now_ms() - 1000
    for _ in range(3):
        await center.sensor.publish("city/sensors/water_level/res-tielu", json.dumps({"ts": ts, "value": 24.5}))
    await center.sensor.publish("city/sensors/water_level/res-tielu", json.dumps({"ts": ts + 1, "value": 24.6}))
    await eventually(lambda: _has_latest(center, ts + 1))
    history = (await center.api.get("/api/devices/res-tielu/readings")).json()
    assert [(r["ts_ms"], r["value"]) for r in history] == [(ts, 24.5), (ts + 1, 24.6)]


async def _has_latest(center: Center, ts: int) -> bool:
    return await latest_ts(center, "res-tielu") == ts


async def test_vehicle_positions_and_qos0(center: Center) -> None:
    await center.register(TRUCK)
    ts = now_ms()
    await center.sensor.publish(
        "city/vehicles/veh-hz-1/gps",
        json.dumps({"ts": ts, "lat": 20.01, "lon": 110.31, "speed_kmh": 40, "heading_deg": 90}),
        qos=0,
    )

    async def moved() -> dict[str, Any]:
        latest: dict[str, Any] = (await center.device("veh-hz-1"))["latest"] or {}
        return latest

    latest = await eventually(moved)
    assert (latest["lat"], latest["lon"], latest["speed_kmh"], latest["heading_deg"]) == (
        20.01,
        110.31,
        40,
        90,
    )


async def test_status_topic_and_last_will(center: Center) -> None:
    await center.register(SMOKE)
    target = center.runtime.mqtt_target()
    detector = Publisher(
        target.host, target.port, client_id="smoke-b1", will=("city/devices/smoke-b1/status", b"offline")
    )
    await detector.publish("city/devices/smoke-b1/status", b"online")

    async def status_is(value: str) -> bool:
        return bool((await center.device("smoke-b1"))["status"] == value)

    await eventually(lambda: status_is("online"))
    # Drop the connection without DISCONNECT, as a detector losing power would: the broker sends the will.
    detector.client.socket().close()  # type: ignore[union-attr]
    await eventually(lambda: status_is("offline"), timeout_s=30)
    detector.client.loop_stop()


async def test_stale_when_silent_past_the_expected_interval(center: Center) -> None:
    await center.register({**SMOKE, "attributes": {"expected_interval_s": 1}})
    assert (await center.device("smoke-b1"))["stale"] is True  # never reported
    ts = now_ms()
    await center.sensor.publish("city/sensors/smoke/smoke-b1", json.dumps({"ts": ts, "value": 0.1}))
    await eventually(lambda: _latest_is(center, "smoke-b1", ts))
    assert (await center.device("smoke-b1"))["stale"] is False
    await eventually(lambda: _is_stale(center, "smoke-b1"), timeout_s=5)


async def _latest_is(center: Center, device_id: str, ts: int) -> bool:
    return await latest_ts(center, device_id) == ts


async def _is_stale(center: Center, device_id: str) -> bool:
    return bool((await center.device(device_id))["stale"])


async def test_one_refused_message_is_one_dead_letter_however_many_items_it_holds(center: Center) -> None:
    await center.register(GAUGE)
    junk = [{"ts": 0, "value": 0}] * 3000 + [{"ts": now_ms() - 1000, "value": 24.0}] + ["x"] * 50
    payload = json.dumps(junk, separators=(",", ":")).encode()
    assert 60_000 > len(payload) > 50_000
    await center.sensor.publish("city/sensors/water_level/res-tielu", payload)
    await eventually(lambda: dead_letters(center, "out_of_range"))
    health = (await center.api.get("/api/health")).json()
    assert health["dead_letters"]["out_of_range"] == 3000
    assert health["dead_letters"]["wrong_type"] == 50
    letters = (await center.api.get("/api/dead-letters")).json()
    assert len(letters) == 1
    assert letters[0]["refused_items"] == 3050
    assert letters[0]["reasons"] == {"out_of_range": 3000, "wrong_type": 50}
    assert len(letters[0]["payload"]) == 4096
    assert letters[0]["detail"].startswith("3050 items refused")
    assert len(letters[0]["detail"]) < 2000
    # The one good item of the batch was stored.
    assert [r["value"] for r in (await center.api.get("/api/devices/res-tielu/readings")).json()] == [24.0]


HOSTILE = [
    ("out_of_range", b'{"ts": 1795000000000, "value": 1' + b"0" * 400 + b"}"),
    ("bad_json", b'{"ts": 1795000000000, "value": ' + b"9" * 5000 + b"}"),
    ("future_timestamp", b'{"ts": 1' + b"0" * 400 + b', "value": 1}'),
    ("bad_json", b"[" * 30_000 + b"]" * 30_000),
    # Nested past 64 levels: refused before parsing, whatever the stack (validation.MAX_NESTING).
    ("bad_json", b'{"ts": 1795000000000, "value": ' + b"[" * 900 + b"]" * 900 + b"}"),
    ("wrong_type", b'{"ts": 1795000000000, "value": ' + b"[" * 60 + b"]" * 60 + b"}"),
    ("bad_unit", b'{"ts": 1795000000000, "value": 1, "unit": "\\ud800\\u0000"}'),
]


@pytest.mark.parametrize(("reason", "payload"), HOSTILE, ids=[f"{r}-{i}" for i, (r, _) in enumerate(HOSTILE)])
async def test_hostile_numbers_nesting_and_encodings_are_dead_letters(
    center: Center, reason: str, payload: bytes
) -> None:
    await center.register(GAUGE)
    await center.sensor.publish("city/sensors/water_level/res-tielu", payload)
    good_ts = now_ms()
    await center.sensor.publish("city/sensors/water_level/res-tielu", json.dumps({"ts": good_ts, "value": 24.2}))
    await eventually(lambda: _latest_is(center, "res-tielu", good_ts))
    letters = await eventually(lambda: dead_letters(center, reason))
    assert len(letters) == 1
    health = (await center.api.get("/api/health")).json()
    assert health["dead_letters"][reason] == 1
    assert health["dead_letters"]["internal_error"] == 0
