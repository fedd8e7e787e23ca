"""bench/rules: readings replayed through the rules engine with 1,000 rules, no I/O, beside a bare loop.

5,000 gauges and detectors and 1,000 threshold rules (each watching five devices, with levels
from the devices' attributes or fixed, and hysteresis) plus the default rules. N recorded
readings, about 1% of them crossing a level, go through `RulesEngine.handle` (scope lookup,
pure evaluation, incident changes into an in-memory store, incident events onto a MemoryBus),
in entries of 200 events as the engine takes them from the work stream.
The baseline is a bare Python loop over the same readings doing one dict lookup and one
comparison each: what any rules engine must at least do.

    python -m bench.rules [--n 200000] [--rules 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from alerts.domain.evaluate import Clear, Raise
from alerts.domain.incidents import Incident, clear_incident, open_incident, update_incident
from alerts.domain.rules import AnyRule, default_rules, parse_rule
from alerts.engine import RulesEngine
from kernel.bus import MemoryBus
from kernel.clock import SystemClock
from kernel.model import Device, DeviceKind, Reading


class MemoryIncidents:
    """An in-memory incident store for the replay (the benchmark measures evaluation, not a database)."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], Incident] = {}
        self.made = 0

    async def raised(self, raise_: Raise, category: str) -> tuple[Incident, bool]:
        key = (raise_.rule_id, raise_.subject)
        current = self.open.get(key)
        if current is None:
            self.made += 1
            incident, _ = open_incident(f"inc-{self.made}", category, raise_)
            self.open[key] = incident
            return incident, True
        changed, entries = update_incident(current, raise_)
        self.open[key] = changed
        return changed, bool(entries)

    async def correlated(
        self, raise_: Raise, category: str, member_rules: list[str]
    ) -> tuple[Incident, list[Incident]]:
        incident, _ = await self.raised(raise_, category)
        return incident, []

    async def cleared(self, clear: Clear, resolve: Any) -> Incident | None:
        current = self.open.pop((clear.rule_id, clear.subject), None)
        if current is None:
            return None
        done, _ = clear_incident(current, clear, resolve)
        return done

    async def act(self, incident_id: str, action: Any) -> Incident | None:
        return None

    async def open_incidents(self) -> list[Incident]:
        return list(self.open.values())

    async def resolved_since(self, since_ms: int, rule_ids: Sequence[str]) -> list[Incident]:
        return []


class Registry:
    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices

    async def list(self, kind: str | None = None, limit: int = 1000, offset: int = 0) -> list[Device]:
        return self.devices[offset : offset + limit]


def city(n_devices: int, n_rules: int) -> tuple[list[Device], list[AnyRule]]:
    kinds: list[DeviceKind] = ["water_level", "gas"]
    devices = []
    for i in range(n_devices):
        kind = kinds[i % 2]
        attributes: dict[str, Any] = {"warning_level_m": 25.0, "danger_level_m": 27.0} if kind == "water_level" else {}
        devices.append(Device(f"{kind}-{i:05d}", kind, f"d{i}", 20.0 + i * 1e-4, 110.0, f"g-{i % 50}", attributes))
    rules: list[AnyRule] = list(default_rules())
    for r in range(n_rules):
        # Five devices of one kind (even indexes are gauges, odd ones gas detectors).
        watched = [devices[(r * 10 + 2 * k + r % 2) % n_devices] for k in range(5)]
        level = (
            {"severity": "high", "attribute": "warning_level_m"}
            if watched[0].kind == "water_level"
            else {"severity": "high", "at": 30.0}
        )
        rules.append(
            parse_rule(
                {
                    "id": f"r{r:04d}",
                    "name": f"rule {r}",
                    "category": "bench",
                    "kind": "threshold",
                    "scope": {"device_ids": [d.id for d in watched]},
                    "levels": [level],
                    "hysteresis": 0.1,
                }
            )
        )
    return devices, rules


def readings(devices: list[Device], n: int) -> list[Reading]:
    base = int(time.time() * 1000) - 86_400_000
    out = []
    for i in range(n):
        device = devices[i % len(devices)]
        crossing = i % 97 == 0  # about 1% cross a level (and the next reading of the device falls back)
        if device.kind == "water_level":
            value = 25.5 if crossing else 20.0 + (i % 30) * 0.1
            out.append(Reading(device.id, "water_level", base + i, value))
        else:
            value = 35.0 if crossing else float(i % 15)
            out.append(Reading(device.id, "gas", base + i, value))
    return out


def bare(replay: list[Reading], limits: dict[str, float]) -> float:
    start = time.perf_counter()
    crossed = 0
    for reading in replay:
        if reading.value >= limits.get(reading.device_id, 1e9):
            crossed += 1
    elapsed = time.perf_counter() - start
    assert crossed >= 0
    return len(replay) / elapsed


async def engine_rate(
    devices: list[Device], rules: list[AnyRule], replay: list[Reading]
) -> tuple[float, dict[str, Any]]:
    store = MemoryIncidents()
    registry: Any = Registry(devices)  # start() is not called: only its list() would be used
    engine = RulesEngine(bus=MemoryBus(), store=store, devices=registry, clock=SystemClock(), rules=rules)
    engine.know_devices(devices)  # what start() loads, without starting the tasks
    start = time.perf_counter()
    # As the engine takes them from the stream: entries of up to 200 events.
    for i in range(0, len(replay), 200):
        await engine.handle_many(replay[i : i + 200])
    elapsed = time.perf_counter() - start
    return len(replay) / elapsed, {**engine.stats(), "open": len(store.open), "made": store.made}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    devices, rules = city(args.devices, args.rules)
    replay = readings(devices, args.n)
    limits = {d.id: float(d.attributes.get("warning_level_m", 20.0)) for d in devices}
    bare_rates, engine_rates = [], []
    stats: dict[str, Any] = {}
    for _ in range(args.rounds):
        bare_rates.append(bare(replay, limits))
        rate, stats = asyncio.run(engine_rate(devices, rules, [replace(r) for r in replay]))
        engine_rates.append(rate)
    print(
        f"== bench/rules: {args.n:,} readings, {args.devices:,} devices, {len(rules):,} rules, {args.rounds} rounds =="
    )
    print(f"  bare loop (lookup + compare)    {statistics.median(bare_rates):>12,.0f} readings/s")
    print(
        f"  rules engine, no I/O            {statistics.median(engine_rates):>12,.0f} readings/s"
        f"  (min {min(engine_rates):,.0f}, max {max(engine_rates):,.0f})"
    )
    print(f"  ratio engine / bare loop        {statistics.median(engine_rates) / statistics.median(bare_rates):>12.3f}")
    print(f"  last round: {stats}")


if __name__ == "__main__":
    main()
