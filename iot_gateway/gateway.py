"""The gateway service: MQTT messages in; checked samples to live state, time series and bus.

Each message is only checked (pure code) and queued where it arrives; an asyncio task writes
the queue in batches, so reading MQTT never waits on a store and the stores get few, large
writes. When the queue is full the MQTT reader pauses (see `backlogged`), which pushes back
onto the broker (it keeps the QoS 1 messages) instead of losing any.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from kernel.clock import Clock
from kernel.model import DeadLetter, Device, DeviceKind, DeviceStatus, Sample
from kernel.ports import Bus, DeadLetterStore, DeviceRegistry, LiveState, TimeSeries

from .domain.kinds import DEAD_LETTER_PAYLOAD_BYTES
from .domain.validation import check_message

log = logging.getLogger(__name__)

READING_TOPIC = "reading"
STATUS_TOPIC = "device_status"
DEDUP_WINDOW = 200_000


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """Batching knobs (from the settings)."""

    batch_max: int = 5000
    flush_interval_s: float = 0.05
    pending_max: int = 200_000
    # Devices registered through another process (the API) reach this cache within this time.
    registry_refresh_s: float = 30.0


class Gateway:
    """Checks messages and writes what passes; keeps what fails as dead letters."""

    def __init__(
        self,
        *,
        devices: DeviceRegistry,
        dead_letters: DeadLetterStore,
        live: LiveState,
        series: TimeSeries,
        bus: Bus,
        clock: Clock,
        options: GatewayOptions,
    ) -> None:
        self._devices = devices
        self._dead_store = dead_letters
        self._live = live
        self._series = series
        self._bus = bus
        self._clock = clock
        self._opts = options
        self._kinds: dict[str, DeviceKind] = {}
        self._pending: deque[Sample] = deque()
        self._statuses: deque[DeviceStatus] = deque()
        self._dead: deque[DeadLetter] = deque()
        self._retry: list[Sample] = []
        # Recently seen (device, ts): a redelivered reading is stored once and published once.
        self._seen: dict[tuple[str, int], None] = {}
        self._task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.counts: Counter[str] = Counter()
        self.dead_counts: Counter[str] = Counter()
        self.last_error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registry and start the writer; then feed it with `handle`."""
        self._kinds = await asyncio.to_thread(self._devices.kinds)
        self.dead_counts.update(await asyncio.to_thread(self._dead_store.counts))
        self._stopping = False
        self._task = asyncio.create_task(self._writer(), name="gateway-writer")
        self._refresh_task = asyncio.create_task(self._refresh_registry(), name="gateway-registry")
        log.info("gateway started with %d registered devices", len(self._kinds))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Hand everything queued to the stores, then stop. Call after the MQTT client stopped.

        A store that stays down past `timeout_s` must not hang the shutdown: what is still
        queued then is logged and counted as `lost`.
        """
        self._stopping = True
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                lost = self.pending()
                self.counts["lost"] += lost
                log.error("stores unreachable at shutdown: %d queued items not written (%s)", lost, self.last_error)
            self._task = None
        # The time series flushes its own buffer on close, with a time limit (InfluxDB may be down).

    def note_device(self, device: Device) -> None:
        """A device was registered in this process: accept its readings from now on."""
        self._kinds[device.id] = device.kind

    async def _refresh_registry(self) -> None:
        while True:
            await asyncio.sleep(self._opts.registry_refresh_s * random.uniform(0.9, 1.1))
            try:
                fresh = await asyncio.to_thread(self._devices.kinds)
            except Exception:
                log.exception("cannot reload the device registry; keeping the cached one")
                continue
            # One assignment: a message is checked against the old dict or the new one, never half.
            self._kinds = fresh

    # --- the MQTT side --------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """Check one message and queue the outcome (quick, no I/O: it runs as messages arrive)."""
        now = self._clock.now_ms()
        checked = check_message(topic, payload, self._kinds, now)
        if checked.samples:
            self._pending.extend(checked.samples)
        if checked.status is not None:
            self._statuses.append(checked.status)
        if checked.rejections:
            cut = payload[:DEAD_LETTER_PAYLOAD_BYTES]
            self._dead.extend(DeadLetter(topic, cut, reason, detail, now) for reason, detail in checked.rejections)

    # --- the writer ------------------------------------------------------------------------

    def backlogged(self) -> bool:
        """True while more is queued than the writer should hold: the MQTT reader pauses."""
        return len(self._pending) > self._opts.pending_max

    def pending(self) -> int:
        return len(self._pending) + len(self._retry) + len(self._statuses) + len(self._dead)

    async def _writer(self) -> None:
        backoff = 0.1
        while True:
            if not self.pending():
                if self._stopping:
                    return
                await asyncio.sleep(self._opts.flush_interval_s)
                continue
            try:
                await self._flush_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep the batch (it is in self._retry) and try again; a store outage loses nothing.
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("gateway write failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 5.0)

    def _take(self, queue: deque[Any], limit: int) -> list[Any]:
        taken = []
        popleft = queue.popleft
        for _ in range(min(limit, len(queue))):
            taken.append(popleft())
        return taken

    async def _flush_once(self) -> None:
        if not self._retry:
            batch = self._take(self._pending, self._opts.batch_max)
            fresh: list[Sample] = []
            seen = self._seen
            for sample in batch:
                key = (sample.device_id, sample.ts_ms)
                if key in seen:
                    self.counts["duplicate"] += 1
                    continue
                seen[key] = None
                fresh.append(sample)
            overflow = len(seen) - DEDUP_WINDOW
            if overflow > 0:  # dicts keep insertion order: the first keys are the oldest
                for key in list(itertools.islice(seen, overflow)):
                    del seen[key]
            self._retry = fresh
        if self._retry:
            await self._live.apply(self._retry)
            await self._series.write(self._retry)
            publish = self._bus.publish
            for sample in self._retry:
                await publish(READING_TOPIC, sample)
            self.counts["accepted"] += len(self._retry)
            self._retry = []
        for status in self._take(self._statuses, len(self._statuses)):
            await self._live.set_status(status)
            await self._bus.publish(STATUS_TOPIC, status)
            self.counts["status"] += 1
        if self._dead:
            letters = list(self._dead)
            await asyncio.to_thread(self._dead_store.add_many, letters)
            for _ in letters:
                self._dead.popleft()
            for letter in letters:
                self.dead_counts[letter.reason] += 1
            self.counts["rejected"] += len(letters)

    def stats(self) -> dict[str, Any]:
        return {
            "registered_devices": len(self._kinds),
            "accepted": self.counts["accepted"],
            "duplicates": self.counts["duplicate"],
            "rejected": self.counts["rejected"],
            "statuses": self.counts["status"],
            "queued": self.pending(),
            "lost": self.counts["lost"],
            "last_error": self.last_error,
        }
