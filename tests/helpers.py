"""Helpers for tests that go through the real interfaces."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")

# A reservoir gauge as the API registers it.
GAUGE = {
    "id": "res-1",
    "kind": "water_level",
    "name": "水位",
    "lat": 19.93,
    "lon": 110.25,
    "attributes": {"warning_level_m": 25.5, "danger_level_m": 26.8},
}


async def eventually(probe: Callable[[], Awaitable[T]], timeout_s: float = 15.0, interval_s: float = 0.05) -> T:
    """Poll `probe` until it returns something truthy (or raise with the last result)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return cast(T, last)
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s; last result: {last!r}")


class Publisher:
    """A sensor: a paho client that publishes and waits until the broker has each QoS 1 message."""

    def __init__(self, host: str, port: int, client_id: str = "", will: tuple[str, bytes] | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.connect(host, port, keepalive=5)
        self.client.loop_start()

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        # Waiting in a thread: the embedded broker runs on this event loop and must keep serving.
        info = self.client.publish(topic, payload, qos=qos)
        await asyncio.to_thread(info.wait_for_publish, 10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
