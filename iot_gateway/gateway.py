"""The gateway service: MQTT messages in; checked samples to live state, time series and bus.

Each message is only checked (pure code) and queued where it arrives. Three asyncio writers
drain the queues: samples (time series, then live state, then bus), device statuses (live state,
bus) and dead letters (records). A QoS 1 message is acknowledged to the broker only once
everything it yielded is written, so a crash, `kill -9` or an outage loses nothing the broker
handed over: what was not acknowledged, the broker delivers again (and a repeat is stored once).
The writers retry on their own, so a dead-letter store outage never slows good readings. When
a queue is over its bound the MQTT reader pauses (see `backlogged`), which pushes back onto the
broker instead of growing without bound or dropping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kernel.clock import Clock
from kernel.events import DEVICE_CHANGED, DeviceChanged
from kernel.model import DeadLetter, DeviceKind, DeviceStatus, Sample
from kernel.ports import Bus, DeadLetterStore, DeviceRegistry, LiveState, TimeSeries

from .domain.kinds import DEAD_LETTER_PAYLOAD_BYTES
from .domain.validation import check_message

log = logging.getLogger(__name__)

DEDUP_WINDOW = 200_000
# Why a reading the time series refused is a dead letter.
STORE_REJECTED = "store_rejected"

Ack = Callable[[], None]


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """Batching, bounds and retention knobs (from the settings)."""

    batch_max: int = 5000
    flush_interval_s: float = 0.05
    # Samples held in memory before the MQTT reader pauses (backpressure onto the broker).
    pending_max: int = 200_000
    # Statuses and dead letters waiting for their store; past this the reader pauses too.
    side_pending_max: int = 10_000
    # Devices registered through another process (the API) reach this cache within this time.
    registry_refresh_s: float = 30.0
    dead_letter_max_rows: int = 10_000
    dead_letter_max_age_s: float = 7 * 86_400.0


class Delivery:
    """One MQTT message until all it yielded is written; then it is acknowledged (QoS 1)."""

    __slots__ = ("ack", "parts")

    def __init__(self, ack: Ack | None, parts: int) -> None:
        self.ack = ack
        self.parts = parts

    def done(self) -> None:
        self.parts -= 1
        if self.parts == 0 and self.ack is not None:
            self.ack()


@dataclass(slots=True)
class _Batch:
    """Samples taken from the queue, kept whole until every store has them (retried as one)."""

    entries: list[tuple[str, bytes, list[Sample], Delivery]]
    fresh: list[Sample] = field(default_factory=list)
    series_done: bool = False
    refused: list[DeadLetter] = field(default_factory=list)


def _backoff(attempt: int) -> float:
    return float(min(0.1 * 2**attempt, 5.0) * random.uniform(0.8, 1.2))


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
        # Per message: (topic, payload, its samples, its delivery); bounded by the sample count.
        self._pending: deque[tuple[str, bytes, list[Sample], Delivery]] = deque()
        self._pending_samples = 0
        self._batch: _Batch | None = None
        self._statuses: deque[tuple[DeviceStatus, Delivery]] = deque()
        self._dead: deque[tuple[DeadLetter, Delivery | None]] = deque()
        # Recently seen (device, ts): a redelivered reading is stored once and published once.
        self._seen: dict[tuple[str, int], None] = {}
        self._changes_during_reload: list[DeviceChanged] | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._last_prune_ms = 0
        self._since_prune = 0
        self.counts: Counter[str] = Counter()
        self.dead_counts: Counter[str] = Counter()
        self.errors: dict[str, str | None] = {"samples": None, "statuses": None, "dead_letters": None}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registry and start the writers; then feed them with `handle`."""
        self._kinds = await self._devices.kinds()
        with contextlib.suppress(Exception):  # counts are for display; a records outage must not stop start-up
            self.dead_counts.update(await self._dead_store.counts())
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._run("samples", self._write_samples, lambda: bool(self._pending or self._batch))),
            asyncio.create_task(self._run("statuses", self._write_statuses, lambda: bool(self._statuses))),
            asyncio.create_task(self._run("dead_letters", self._write_dead_letters, lambda: bool(self._dead))),
            asyncio.create_task(self._refresh_registry(), name="gateway-registry"),
            asyncio.create_task(self._follow_registry(), name="gateway-registry-changes"),
        ]
        log.info("gateway started with %d registered devices", len(self._kinds))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Write everything queued (acknowledging it), then stop. Call after the reader paused.

        A store that stays down past `timeout_s` must not hang the shutdown: what is still
        queued then stays unacknowledged, so the broker delivers it again to the next
        gateway (QoS 1); only QoS 0 items are lost, and they are counted as `lost`.
        """
        self._stopping = True
        self._wake.set()
        writers, others = self._tasks[:3], self._tasks[3:]
        for task in others:
            task.cancel()
        if writers:
            _done, waiting = await asyncio.wait(writers, timeout=timeout_s)
            for task in waiting:
                task.cancel()
            for task in (*waiting, *others):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if waiting:
                left, lost = self._unwritten()
                self.counts["unwritten_at_stop"] += left
                self.counts["lost"] += lost
                log.error(
                    "stores unreachable at shutdown (%s): %d queued items left unacknowledged for the broker "
                    "to deliver again, %d of them QoS 0 and so lost",
                    self.last_error,
                    left,
                    lost,
                )
        self._tasks = []

    def _unwritten(self) -> tuple[int, int]:
        entries = list(self._pending) + (self._batch.entries if self._batch else [])
        deliveries = [d for *_, d in entries] + [d for _, d in self._statuses] + [d for _, d in self._dead if d]
        return len(deliveries), sum(1 for d in deliveries if d.ack is None)

    def note_change(self, change: DeviceChanged) -> None:
        """A device was registered, changed or removed: check messages against that from now on."""
        self._apply_change(change)

    def _apply_change(self, change: DeviceChanged) -> None:
        if self._changes_during_reload is not None:
            self._changes_during_reload.append(change)
        if change.change == "removed" or change.device is None:
            self._kinds.pop(change.device_id, None)
        else:
            self._kinds[change.device_id] = change.device.kind
        self.counts["registry_changes"] += 1

    async def _follow_registry(self) -> None:
        """Registrations made by any process (the API) reach this gateway's cache at once.

        The live fan-out keeps the latest change per device, which is all the cache needs;
        the periodic reload stays as the safety net for a bus outage.
        """
        sub = self._bus.live([DEVICE_CHANGED])
        try:
            async for event in sub:
                if isinstance(event, DeviceChanged):
                    self._apply_change(event)
        finally:
            await sub.close()

    async def _refresh_registry(self) -> None:
        while True:
            await asyncio.sleep(self._opts.registry_refresh_s * random.uniform(0.9, 1.1))
            # A change that arrives while the reload reads may be missing from what it read.
            self._changes_during_reload = []
            try:
                fresh = await self._devices.kinds()
            except Exception:
                log.exception("cannot reload the device registry; keeping the cached one")
                continue
            finally:
                arrived, self._changes_during_reload = self._changes_during_reload, None
            for change in arrived:
                if change.change == "removed" or change.device is None:
                    fresh.pop(change.device_id, None)
                else:
                    fresh[change.device_id] = change.device.kind
            # One assignment: a message is checked against the old dict or the new one, never half.
            self._kinds = fresh

    # --- the MQTT side --------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, ack: Ack | None = None) -> None:
        """Check one message and queue the outcome (quick, no I/O: it runs as messages arrive).

        `ack` acknowledges the message to the broker (None for QoS 0); it is called once
        everything the message yielded is written.
        """
        now = self._clock.now_ms()
        checked = check_message(topic, payload, self._kinds, now)
        parts = bool(checked.samples) + (checked.status is not None) + bool(checked.refused)
        delivery = Delivery(ack, parts)
        if checked.samples:
            self._pending.append((topic, payload, checked.samples, delivery))
            self._pending_samples += len(checked.samples)
        if checked.status is not None:
            self._statuses.append((checked.status, delivery))
        if checked.refused:
            self._dead.append((self._letter(topic, payload, checked.rejections, checked.refused, now), delivery))
        if parts == 0 and ack is not None:  # cannot happen (a message yields something), but never hold one
            ack()
        self.counts["messages"] += 1

    @staticmethod
    def _letter(
        topic: str, payload: bytes, rejections: list[tuple[str, str]], refused: dict[str, int], now: int
    ) -> DeadLetter:
        total = sum(refused.values())
        detail = "; ".join(detail for _, detail in rejections)
        if total > len(rejections):
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items(), key=lambda kv: -kv[1]))
            detail = f"{total} items refused ({counts}); first: {detail}"
        return DeadLetter(topic, payload[:DEAD_LETTER_PAYLOAD_BYTES], rejections[0][0], detail, now, dict(refused))

    # --- the writers -----------------------------------------------------------------------

    def backlogged(self) -> bool:
        """True while more is queued than the writers should hold: the MQTT reader pauses."""
        side = self._opts.side_pending_max
        return self._pending_samples > self._opts.pending_max or len(self._statuses) > side or len(self._dead) > side

    def pending(self) -> int:
        """Messages' parts still to be written."""
        in_batch = len(self._batch.entries) if self._batch else 0
        return len(self._pending) + in_batch + len(self._statuses) + len(self._dead)

    @property
    def last_error(self) -> str | None:
        return next((f"{name}: {error}" for name, error in self.errors.items() if error), None)

    async def _run(self, name: str, write: Callable[[], Awaitable[None]], has_work: Callable[[], bool]) -> None:
        """One writer: write while there is work, retry with backoff on failure, stop when drained."""
        attempt = 0
        while True:
            if not has_work():
                if self._stopping:
                    return
                await asyncio.sleep(self._opts.flush_interval_s)
                continue
            try:
                await write()
                attempt = 0
                self.errors[name] = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a writer never dies: it logs, backs off and retries
                # What failed stays queued and is written again: an outage loses nothing.
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                delay = _backoff(attempt)
                attempt += 1
                log.warning("gateway %s write failed (%s); retrying in %.1fs", name, self.errors[name], delay)
                await asyncio.sleep(delay)

    def _take_batch(self) -> _Batch:
        entries = []
        count = 0
        while self._pending and count < self._opts.batch_max:
            entry = self._pending.popleft()
            entries.append(entry)
            count += len(entry[2])
        self._pending_samples -= count
        batch = _Batch(entries)
        seen = self._seen
        for _topic, _payload, samples, _delivery in entries:
            for sample in samples:
                key = (sample.device_id, sample.ts_ms)
                if key in seen:
                    self.counts["duplicate"] += 1
                    continue
                seen[key] = None
                batch.fresh.append(sample)
        overflow = len(seen) - DEDUP_WINDOW
        if overflow > 0:  # dicts keep insertion order: the first keys are the oldest
            for key in list(itertools.islice(seen, overflow)):
                del seen[key]
        return batch

    async def _write_samples(self) -> None:
        if self._batch is None:
            self._batch = self._take_batch()
        batch = self._batch
        if batch.fresh and not batch.series_done:
            refused = await self._series.write(batch.fresh)
            if refused:
                batch.refused = self._refused_letters(batch, refused)
                bad = {id(sample) for sample, _ in refused}
                batch.fresh = [s for s in batch.fresh if id(s) not in bad]
            batch.series_done = True
        if batch.fresh:
            await self._live.apply(batch.fresh)
            await self._bus.publish_many(batch.fresh)
        self._batch = None
        self.counts["accepted"] += len(batch.fresh)
        for letter in batch.refused:
            self._dead.append((letter, None))
        for *_, delivery in batch.entries:
            delivery.done()

    def _refused_letters(self, batch: _Batch, refused: list[tuple[Sample, str]]) -> list[DeadLetter]:
        now = self._clock.now_ms()
        origin = {id(s): (topic, payload) for topic, payload, samples, _ in batch.entries for s in samples}
        letters = []
        for sample, why in refused:
            topic, payload = origin.get(id(sample), ("", b""))
            letters.append(
                DeadLetter(
                    topic,
                    payload[:DEAD_LETTER_PAYLOAD_BYTES],
                    STORE_REJECTED,
                    f"reading at {sample.ts_ms}: {why}",
                    now,
                    {STORE_REJECTED: 1},
                )
            )
        return letters

    async def _write_statuses(self) -> None:
        # One at a time, in order: a status leaves the queue only once it is written.
        while self._statuses:
            status, delivery = self._statuses[0]
            await self._live.set_status(status)
            await self._bus.publish(status)
            self._statuses.popleft()
            self.counts["status"] += 1
            delivery.done()

    async def _write_dead_letters(self) -> None:
        taken = list(itertools.islice(self._dead, 1000))
        letters = [letter for letter, _ in taken]
        await self._dead_store.add_many(letters)
        for _ in taken:
            self._dead.popleft()
        for letter, delivery in taken:
            for reason, n in (letter.refused or {letter.reason: 1}).items():
                self.dead_counts[reason] += n
            if delivery is not None:
                delivery.done()
        self.counts["rejected"] += len(letters)
        self._since_prune += len(letters)
        await self._prune_dead_letters()

    async def _prune_dead_letters(self) -> None:
        # Every few seconds, or sooner in a flood: the table never grows far past its bound.
        now = self._clock.now_ms()
        if now - self._last_prune_ms < 5_000 and self._since_prune < max(1, self._opts.dead_letter_max_rows // 10):
            return
        self._last_prune_ms, self._since_prune = now, 0
        cutoff = now - int(self._opts.dead_letter_max_age_s * 1000)
        try:
            gone = await self._dead_store.prune(self._opts.dead_letter_max_rows, cutoff)
        except Exception:
            log.exception("cannot prune dead letters; trying again later")
            return
        if gone:
            log.info("dead-letter retention removed %d old letters", gone)

    def stats(self) -> dict[str, Any]:
        return {
            "registered_devices": len(self._kinds),
            "messages": self.counts["messages"],
            "accepted": self.counts["accepted"],
            "duplicates": self.counts["duplicate"],
            "rejected": self.counts["rejected"],
            "statuses": self.counts["status"],
            "registry_changes": self.counts["registry_changes"],
            "queued": self.pending(),
            "unwritten_at_stop": self.counts["unwritten_at_stop"],
            "lost": self.counts["lost"],
            "last_error": self.last_error,
        }
