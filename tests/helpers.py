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


class LoadPublisher:
    """Sensors under load: a thread publishes `n` QoS 1 readings at about `rate`/s over `devices`.

    Reading i has ts = `base_ts` + i, so what is stored can be matched to what was sent. `acked`
    holds the readings the broker acknowledged (PUBACK): those it has accepted, which must all be
    stored. The client keeps its session and resends what was in flight across a broker restart.
    """

    def __init__(
        self,
        host: str,
        port: int,
        devices: list[str],
        n: int,
        rate: float,
        base_ts: int,
        client_id: str = "load",
        value: float | None = None,
    ) -> None:
        import threading

        self.devices, self.n, self.rate, self.base_ts = devices, n, rate, base_ts
        # None: values 1..10 (below every default threshold); else this value in every reading.
        self.value = value
        self.acked: set[int] = set()
        self.mids_sent: dict[int, int] = {}
        self.acked_early: set[int] = set()
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311
        )
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self.on_publish
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def topic(self, i: int) -> str:
        return f"city/sensors/gas/{self.devices[i % len(self.devices)]}"

    def on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        # Runs on paho's thread, which holds paho's own locks: never wait on anything else here.
        with self.lock:
            index = self.mids_sent.pop(mid, None)
            if index is None:
                self.acked_early.add(mid)  # acknowledged before publish() returned its mid
            else:
                self.acked.add(index)

    def run(self) -> None:
        import json as _json

        started = time.monotonic()
        for i in range(self.n):
            value = 1.0 + (i % 10) if self.value is None else self.value
            payload = _json.dumps({"ts": self.base_ts + i, "value": value})
            info = self.client.publish(self.topic(i), payload, qos=1)
            with self.lock:
                if info.mid in self.acked_early:
                    self.acked_early.discard(info.mid)
                    self.acked.add(i)
                else:
                    self.mids_sent[info.mid] = i
            delay = started + (i + 1) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def start(self) -> LoadPublisher:
        self.thread.start()
        return self

    def wait_sent(self, timeout_s: float = 120) -> None:
        """Wait until every reading was published and the broker acknowledged all it will."""
        self.thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.acked) < self.n:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SettableClock:
    """The wall clock moved to a chosen time (and on by hand): time keeps flowing from there."""

    def __init__(self, now_ms: int | None = None) -> None:
        self.offset_ms = 0 if now_ms is None else now_ms - time.time_ns() // 1_000_000

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def set(self, now_ms: int) -> None:
        self.offset_ms = now_ms - time.time_ns() // 1_000_000

    def advance(self, seconds: float) -> None:
        self.offset_ms += int(seconds * 1000)
