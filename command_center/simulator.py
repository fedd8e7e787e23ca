"""The city simulator: readings and GPS for a city's devices, with scenarios to trigger.

`CitySimulation` is pure (it takes `now_ms` and returns messages); `SimulatorThread` publishes
them over MQTT at a steady rate to any broker.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Final

import paho.mqtt.client as mqtt

from iot_gateway.adapters.mqtt_paho import MqttTarget, new_client
from kernel.model import Device

from .city import City

log = logging.getLogger(__name__)

SCENARIOS: Final = ("reservoir_rise", "smoke_then_gas", "truck_off_route", "detector_silent")
RISE_M_PER_S: Final = 0.1
GAS_DELAY_MS: Final = 20_000
VEHICLE_KMH: Final = 45.0


def _route_point(route: list[tuple[float, float]], distance_km: float) -> tuple[float, float, float]:
    """Position and heading after `distance_km` along a route driven back and forth."""
    legs = []
    for (a_lat, a_lon), (b_lat, b_lon) in itertools.pairwise(route):
        dy = (b_lat - a_lat) * 111.32
        dx = (b_lon - a_lon) * 111.32 * math.cos(math.radians(a_lat))
        legs.append(((a_lat, a_lon), (b_lat, b_lon), math.hypot(dx, dy), math.degrees(math.atan2(dx, dy)) % 360))
    total = sum(leg[2] for leg in legs) or 1.0
    d = distance_km % (2 * total)
    backwards = d > total
    if backwards:
        d = 2 * total - d
    for (a_lat, a_lon), (b_lat, b_lon), length, heading in legs:
        if d <= length or length == 0:
            f = d / length if length else 0.0
            h = (heading + 180) % 360 if backwards else heading
            return a_lat + (b_lat - a_lat) * f, a_lon + (b_lon - a_lon) * f, h
        d -= length
    last = route[-1]
    return last[0], last[1], 0.0


@dataclass
class CitySimulation:
    """Device behaviour over time; scenarios change it from the moment they are triggered."""

    city: City
    seed: int = 12345
    triggered: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.devices: list[Device] = self.city.all_devices()
        self._rng = random.Random(self.seed)
        self._cursor = 0
        self._start_ms: int | None = None
        by_kind: dict[str, list[Device]] = {}
        for device in self.devices:
            by_kind.setdefault(device.kind, []).append(device)
        self._by_kind = by_kind
        centre = self.city.forbidden_zones[0].polygon if self.city.forbidden_zones else [(0.0, 0.0)]
        self._zone_centre = (sum(p[0] for p in centre) / len(centre), sum(p[1] for p in centre) / len(centre))

    def target(self, scenario: str) -> str | None:
        """The device a scenario acts on."""
        first = {"reservoir_rise": "water_level", "smoke_then_gas": "smoke", "detector_silent": "gas"}
        if scenario == "truck_off_route":
            trucks = [d for d in self._by_kind.get("vehicle", []) if d.attributes.get("category") == "hazmat"]
            return trucks[0].id if trucks else None
        devices = self._by_kind.get(first.get(scenario, ""), [])
        if scenario == "detector_silent" and devices:
            return devices[-1].id
        return devices[0].id if devices else None

    def trigger(self, scenario: str, now_ms: int) -> str:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        self.triggered.setdefault(scenario, now_ms)
        return self.target(scenario) or ""

    def next_messages(self, count: int, now_ms: int) -> list[tuple[str, bytes]]:
        """The next `count` messages, devices in turn (silent devices skipped)."""
        if self._start_ms is None:
            self._start_ms = now_ms
        out: list[tuple[str, bytes]] = []
        for _ in range(count * 2):
            if len(out) >= count or not self.devices:
                break
            device = self.devices[self._cursor % len(self.devices)]
            self._cursor += 1
            message = self._message(device, now_ms)
            if message is not None:
                out.append(message)
        return out

    def _since(self, scenario: str, device: Device, now_ms: int) -> int | None:
        at = self.triggered.get(scenario)
        if at is None or self.target(scenario) != device.id:
            return None
        return now_ms - at

    def _message(self, device: Device, now_ms: int) -> tuple[str, bytes] | None:
        rng = self._rng
        if device.kind == "vehicle":
            return self._gps(device, now_ms)
        if device.kind == "water_level":
            normal = float(device.attributes.get("normal_level_m", device.attributes["warning_level_m"] - 2))
            level = normal + rng.uniform(-0.05, 0.05)
            rising = self._since("reservoir_rise", device, now_ms)
            if rising is not None:
                level = normal + RISE_M_PER_S * rising / 1000
            body = {"ts": now_ms, "value": round(level, 3), "unit": "m", "battery_pct": 90}
            return f"city/sensors/water_level/{device.id}", json.dumps(body).encode()
        if device.kind == "smoke":
            burning = self._since("smoke_then_gas", device, now_ms)
            alarm = burning is not None
            value = rng.uniform(8, 15) if alarm else rng.uniform(0.0, 0.4)
            body = {"ts": now_ms, "value": round(value, 2), "unit": "%/m", "alarm": alarm}
            return f"city/sensors/smoke/{device.id}", json.dumps(body).encode()
        # gas
        if self._since("detector_silent", device, now_ms) is not None:
            return None
        value = rng.uniform(0.0, 3.0)
        fire = self.triggered.get("smoke_then_gas")
        smoke_target = self.target("smoke_then_gas")
        same_building = smoke_target is not None and smoke_target.replace("smoke-", "gas-", 1) == device.id
        if fire is not None and same_building and now_ms - fire >= GAS_DELAY_MS:
            value = min(60.0, 35.0 + (now_ms - fire - GAS_DELAY_MS) / 2000)
        body = {"ts": now_ms, "value": round(value, 2), "unit": "%LEL"}
        return f"city/sensors/gas/{device.id}", json.dumps(body).encode()

    def _gps(self, device: Device, now_ms: int) -> tuple[str, bytes]:
        assert self._start_ms is not None
        route = self.city.routes.get(str(device.attributes.get("route", "")), [(device.lat, device.lon)] * 2)
        offset = (sum(map(ord, device.id)) % 10) * 1.5  # vehicles on one route start apart
        elapsed_h = (now_ms - self._start_ms) / 3_600_000
        lat, lon, heading = _route_point(list(route), offset + VEHICLE_KMH * elapsed_h)
        off = self._since("truck_off_route", device, now_ms)
        if off is not None:
            # Head for the forbidden zone, arriving in about a minute.
            f = min(1.0, off / 60_000)
            lat += (self._zone_centre[0] - lat) * f
            lon += (self._zone_centre[1] - lon) * f
        body = {
            "ts": now_ms,
            "lat": round(lat, 6),
            "lon": round(lon, 6),
            "speed_kmh": VEHICLE_KMH,
            "heading_deg": round(heading, 1),
        }
        return f"city/vehicles/{device.id}/gps", json.dumps(body).encode()


class SimulatorThread:
    """Publishes a simulation to a broker at `rate` messages per second until stopped."""

    def __init__(self, simulation: CitySimulation, target: MqttTarget, rate: float, qos: int = 1) -> None:
        self.simulation = simulation
        self._target = target
        self._rate = rate
        self._qos = qos
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self._client: mqtt.Client = new_client(target, f"cityops-sim-{random.randrange(1 << 30)}", clean_session=True)
        self.published = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        self._client.connect_async(self._target.host, self._target.port, keepalive=30)
        self._client.loop_start()
        self._thread.start()

    def trigger(self, scenario: str) -> str:
        with self._lock:
            return self.simulation.trigger(scenario, int(time.time() * 1000))

    def _run(self) -> None:
        interval = 1.0 / self._rate
        per_tick = max(1, int(self._rate * 0.1))
        if per_tick > 1:
            interval = per_tick / self._rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                with self._lock:
                    messages = self.simulation.next_messages(per_tick, int(time.time() * 1000))
                if self._client.is_connected():
                    for topic, payload in messages:
                        self._client.publish(topic, payload, qos=self._qos)
                        self.published += 1
            except Exception:
                # The simulator must keep going through broker hiccups; log and carry on.
                log.exception("simulator tick failed")
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.disconnect()
        self._client.loop_stop()
