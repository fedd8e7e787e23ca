"""Fuzz through the broker: 12,000 random payloads (random bytes, random JSON shapes, huge numbers,
deep nesting, oversize, bad encodings) published to the running gateway on the embedded default.

It keeps running; every message is handled, and is a dead letter exactly when the pure check
(the oracle) refuses something in it, with counts by reason to match; nothing is an internal
error; the data directory stays small (dead-letter retention); a good reading afterwards lands.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from iot_gateway.adapters.mqtt_paho import GATEWAY_TOPICS
from iot_gateway.domain.validation import check_message
from tests.helpers import eventually

from .conftest import open_center

N_MESSAGES = 11_500
DEVICES = {
    "res-f": ("water_level", {"warning_level_m": 25.0, "danger_level_m": 27.0}),
    "smoke-f": ("smoke", {}),
    "gas-f": ("gas", {}),
    "truck-f": ("vehicle", {"plate": "琼A·F0001", "category": "hazmat"}),
}
FIELDS = ["ts", "value", "unit", "alarm", "battery_pct", "lat", "lon", "speed_kmh", "heading_deg", "x"]


class Junk:
    """Random payloads and topics from one seed (printed on failure, so a run can be repeated)."""

    def __init__(self, seed: int, now_ms: int) -> None:
        self.rng = random.Random(seed)
        self.now_ms = now_ms

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None,
                True,
                r.randint(-(10**6), 10**6),
                r.uniform(-1e3, 1e3),
                int("9" * r.randint(20, 400)),
                -int("9" * r.randint(20, 400)),
                float("inf"),
                float("nan"),
                r.choice(["m", "%LEL", "%/m", "ft", "", "\ud800", "\u0000", "水位", "2026-11-22T10:00:00+08:00"]),
                self.now_ms - r.randint(0, 10**9),
                r.randint(0, 2**63),
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        roll = r.random()
        if depth > 4 or roll < 0.6:
            return self.scalar()
        if roll < 0.8:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {r.choice(FIELDS): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def reading(self) -> dict[str, Any]:
        r = self.rng
        item: dict[str, Any] = {"ts": self.now_ms - r.randint(0, 86_400_000), "value": r.uniform(0, 60)}
        for _ in range(r.randint(0, 3)):
            item[r.choice(FIELDS)] = self.value()
        if r.random() < 0.3:
            item.pop(r.choice(list(item)), None)
        return item

    def json_bytes(self, doc: Any) -> bytes:
        # allow_nan: NaN and Infinity are not JSON, which is the point of sending them.
        return json.dumps(doc, allow_nan=True, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def payload(self) -> bytes:
        r = self.rng
        kind = r.randrange(9)
        if kind == 0:
            return r.randbytes(r.randint(0, 2000))
        if kind == 1:
            return self.json_bytes(self.value())
        if kind == 2:
            return self.json_bytes([self.reading() for _ in range(r.randint(1, 200))])
        if kind == 3:
            depth = r.randint(100, 30_000)
            return b"[" * depth + b"]" * depth
        if kind == 4:
            return b'{"ts": ' + str(self.now_ms).encode() + b', "value": 1' + b"0" * r.randint(300, 6000) + b"}"
        if kind == 5:
            return b'{"ts": 1795000000000, "value": 1, "pad": "' + b"x" * r.randint(65_000, 70_000) + b'"}'
        if kind == 6:
            return r.choice([b"online", b"offline", b"", b"\xff\xfe", "在线".encode()])
        if kind == 7:
            good = self.json_bytes(self.reading())
            cut = r.randint(0, len(good))
            return good[:cut] + r.randbytes(r.randint(0, 5)) + good[cut:]
        return self.json_bytes(self.reading())

    def topic(self) -> str:
        r = self.rng
        device = r.choice([*DEVICES, "ghost"])
        roll = r.random()
        if roll < 0.6:
            return f"city/sensors/{r.choice(['water_level', 'smoke', 'gas', 'rain'])}/{device}"
        if roll < 0.8:
            return f"city/vehicles/{device}/gps"
        if roll < 0.95:
            return f"city/devices/{device}/status"
        # Topics outside the gateway's subscriptions: the broker never hands them over.
        return r.choice([f"city/x/{device}", "city/sensors/gas/gas-f/extra"])


def publish_all(host: str, port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fuzzer", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(120)
    finally:
        client.disconnect()
        client.loop_stop()


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def test_ten_thousand_random_payloads_through_the_broker(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    seed = int(time.time())
    print(f"fuzz seed {seed}")
    async with open_center(request, tmp_path, "embedded", dead_letter_max_rows=500) as center:
        for device_id, (kind, attributes) in DEVICES.items():
            body = {"id": device_id, "kind": kind, "name": device_id, "lat": 20.0, "lon": 110.3}
            await center.register({**body, "attributes": attributes})
        now = int(time.time() * 1000)
        junk = Junk(seed, now)
        messages = [(junk.topic(), junk.payload()) for _ in range(N_MESSAGES)]
        # What the broker hands the gateway; payloads are the gateway's to judge (amqtt has no size limit).
        delivered = [(t, p) for t, p in messages if any(mqtt.topic_matches_sub(sub, t) for sub in GATEWAY_TOPICS)]
        assert len(delivered) >= 10_000
        kinds = {device_id: kind for device_id, (kind, _) in DEVICES.items()}
        expected_reasons: Counter[str] = Counter()
        expected_letters = 0
        for topic, payload in delivered:
            checked = check_message(topic, payload, kinds, now)
            expected_reasons.update(checked.refused)
            expected_letters += bool(checked.refused)
        assert "internal_error" not in expected_reasons
        assert len(expected_reasons) >= 8, expected_reasons  # the fuzz reaches most reasons

        target = center.runtime.mqtt_target()
        await asyncio.to_thread(publish_all, target.host, target.port, messages)

        async def all_handled() -> dict[str, Any]:
            stats: dict[str, Any] = center.runtime.running_gateway().stats()
            return stats if stats["messages"] >= len(delivered) and stats["queued"] == 0 else {}

        stats = await eventually(all_handled, timeout_s=60)
        assert stats["messages"] == len(delivered), f"seed {seed}"
        assert stats["rejected"] == expected_letters, f"seed {seed}"
        health = (await center.api.get("/api/health")).json()
        counts = {reason: n for reason, n in health["dead_letters"].items() if n}
        assert counts == dict(expected_reasons), f"seed {seed}"
        assert health["status"] == "ok"
        # Retention held the table to its bound; the whole data directory stays small.
        assert len((await center.api.get("/api/dead-letters", params={"limit": 1000})).json()) <= 550
        assert dir_bytes(center.runtime.settings.data_dir) < 40 * 2**20

        ts = int(time.time() * 1000)
        await center.sensor.publish("city/sensors/gas/gas-f", json.dumps({"ts": ts, "value": 3.5}))

        async def good_landed() -> bool:
            latest = (await center.device("gas-f"))["latest"]
            return latest is not None and latest["ts_ms"] == ts

        await eventually(good_landed)
