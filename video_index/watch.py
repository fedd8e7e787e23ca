"""The camera health watch: liveness sweeps, round-robin full checks, statuses on the bus.

- Every `liveness_every_s` every camera of this process gets a liveness probe (asyncio, at most
  `liveness_concurrency` at once, each bounded by `liveness_timeout_s`): a sweep of 10,000
  cameras with a tenth of them hanging takes seconds, not minutes.
- Meanwhile the full checks go round: the camera whose last full check is oldest (and older than
  `full_every_s`) next, at most `full_workers` at a time, in worker processes (probe.py). Cameras
  found down by liveness are not opened (it could only time out).
- Each result goes through `domain/health.judge`: the status shown never says online when the
  last check failed, and an intermittent camera is shown degraded instead of flapping. A change
  of what is shown is written to the records and published as `camera.status`; a change of the
  raw result is a row of the camera's history (availability over 24 hours comes from those).
- Several `cityops prober` processes share the cameras: each says it is alive in the group
  `probers` on the bus and takes the cameras whose id hashes to its place in the sorted list of
  live members. When one dies, the others take its cameras at their next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from kernel.clock import Clock
from kernel.errors import StoreError
from kernel.events import CameraChanged, CameraStatusChanged
from kernel.ports import Bus

from .adapters.cameras_sql import Health, SqlCameras
from .adapters.probe import FrameChecker, Liveness, liveness
from .catalog import CameraCatalog
from .domain.cameras import Camera
from .domain.health import DAY_MS, Check, HealthPolicy, HealthState, classify, judge
from .ports import SnapshotStore

log = logging.getLogger(__name__)

GROUP = "probers"


@dataclass(frozen=True, slots=True)
class WatchOptions:
    liveness_every_s: float = 30.0
    liveness_timeout_s: float = 3.0
    liveness_concurrency: int = 500
    full_every_s: float = 300.0
    full_workers: int = 2
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    frame_interval_s: float = 1.5
    member_ttl_s: float = 15.0
    # Unique per watch (two in one process, in tests, are two members).
    name: str = field(default_factory=lambda: f"prober-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")


@dataclass(slots=True)
class _Watched:
    camera: Camera
    state: HealthState
    live: Liveness | None = None
    full: Check | None = None  # the last full check's verdict
    full_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Sweep:
    cameras: int
    up: int
    down: int
    seconds: float


def _restored(camera: Camera, changes: Sequence[tuple[int, str]], policy: HealthPolicy) -> HealthState:
    """The judge's state from the records: shown status, last raw result, its flips in the window."""
    raw = changes[-1][1] if changes else camera.status
    flips: list[int] = []
    for (_, before), (when, after) in itertools.pairwise(changes):
        if (before in ("online", "degraded")) != (after in ("online", "degraded")):
            flips.append(when)
    return HealthState(
        status=camera.status,
        reason=camera.reason,
        raw=raw,  # type: ignore[arg-type]
        raw_since_ms=changes[-1][0] if changes else camera.status_since_ms,
        flips=tuple(flips),
        intermittent=camera.status == "degraded" and camera.reason.startswith("intermittent"),
    )


class CameraWatch:
    def __init__(
        self,
        *,
        catalog: CameraCatalog,
        bus: Bus,
        snapshots: SnapshotStore,
        clock: Clock,
        options: WatchOptions | None = None,
        policy: HealthPolicy | None = None,
    ) -> None:
        self._catalog = catalog
        self._store: SqlCameras = catalog.store
        self._bus = bus
        self._snapshots = snapshots
        self._clock = clock
        self._opts = options or WatchOptions()
        self._policy = policy or HealthPolicy()
        self._watched: dict[str, _Watched] = {}
        self._members: list[str] = [self._opts.name]
        self._checker = FrameChecker(self._opts.full_workers)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._busy: set[str] = set()  # cameras a full check is running on
        self.sweeps: list[Sweep] = []
        self.full_checks = 0
        self.published = 0
        self.last_error: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._reload()
        self._catalog.on_change(self._changed)
        self._tasks = [
            asyncio.create_task(self._membership(), name="watch-members"),
            asyncio.create_task(self._liveness_loop(), name="watch-liveness"),
            *(asyncio.create_task(self._full_loop(), name=f"watch-full-{i}") for i in range(self._opts.full_workers)),
        ]
        log.info("camera watch %s started: %d cameras", self._opts.name, len(self._watched))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a stop never hangs on a check in flight (it is logged and left behind).
            _done, stuck = await asyncio.wait(self._tasks, timeout=10)
            for task in stuck:
                log.error("camera watch task %s did not stop", task.get_name())
        self._tasks = []
        with contextlib.suppress(StoreError):  # else it drops out after its time to live
            await self._bus.leave(GROUP, self._opts.name)
        self._checker.close()

    async def load(self) -> None:
        """Load this process's share of the cameras with their judged state (start() does)."""
        await self._reload()

    async def _reload(self) -> None:
        now = self._clock.now_ms()
        cameras = await self._store.all()
        history = await self._store.all_checks(now - self._policy.flip_window_ms)
        self._watched = {
            c.id: _Watched(c, _restored(c, history.get(c.id, []), self._policy)) for c in cameras if self.mine(c.id)
        }

    def mine(self, camera_id: str) -> bool:
        members = self._members
        if len(members) <= 1:
            return True
        return members[zlib.crc32(camera_id.encode()) % len(members)] == self._opts.name

    def _changed(self, event: CameraChanged) -> None:
        """A camera added, changed or removed anywhere: watched from now on, or no longer."""
        if event.change == "removed":
            self._watched.pop(event.camera_id, None)
            return
        if self.mine(event.camera_id):
            asyncio.get_running_loop().create_task(self._adopt(event.camera_id))

    async def _adopt(self, camera_id: str) -> None:
        try:
            camera = await self._store.get(camera_id)
        except StoreError as exc:
            self.last_error = str(exc)
            return
        if camera is None:
            return
        held = self._watched.get(camera_id)
        if held is not None and held.camera.stream_url == camera.stream_url:
            held.camera = camera  # renamed or moved: the judgement stands
            return
        self._watched[camera_id] = _Watched(camera, _restored(camera, [], self._policy))
        self._wake.set()

    async def _membership(self) -> None:
        while True:
            try:
                members = await self._bus.members(GROUP, self._opts.name, self._opts.member_ttl_s)
                if members != self._members:
                    log.info("probers now %s: sharing the cameras anew", members)
                    self._members = members
                    await self._reload()
            except StoreError as exc:
                self.last_error = str(exc)
            await asyncio.sleep(self._opts.member_ttl_s / 3)

    # --- liveness -----------------------------------------------------------------------------

    async def _liveness_loop(self) -> None:
        loop = asyncio.get_running_loop()
        pruned = loop.time()
        while True:
            started = loop.time()
            try:
                await self.sweep()
                if started - pruned > 3600:
                    # History older than two days is no longer needed (availability looks back a day).
                    pruned = started
                    gone = await self._store.prune_checks(self._clock.now_ms() - 2 * DAY_MS)
                    log.info("camera history: %d old changes pruned", gone)
            except StoreError as exc:
                self.last_error = str(exc)
                log.warning("camera watch: %s", exc)
            left = self._opts.liveness_every_s - (loop.time() - started)
            if left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)  # a new camera: sweep now
            self._wake.clear()

    async def sweep(self) -> Sweep:
        """Probe every camera of this process once; record what changed."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        limit = asyncio.Semaphore(self._opts.liveness_concurrency)
        watched = list(self._watched.values())

        async def probe(item: _Watched) -> None:
            async with limit:
                live = await liveness(item.camera.stream_url, self._opts.liveness_timeout_s)
            if live.up and item.live is not None and not item.live.up:
                # Back: what the last full check saw (no frames) is over; look again soon.
                item.full, item.full_at_ms = None, 0
            item.live = live

        await asyncio.gather(*(probe(w) for w in watched))
        now = self._clock.now_ms()
        present = [w for w in watched if w.camera.id in self._watched]  # some removed meanwhile
        changed = await self._observe_many([(w, self._combined(w)) for w in present], now)
        unchanged = [w.camera.id for w in present if w.camera.id not in changed]
        if unchanged:
            await self._store.touch(unchanged, now)
        up = sum(1 for w in watched if w.live is not None and w.live.up)
        result = Sweep(len(watched), up, len(watched) - up, loop.time() - started)
        self.sweeps = [*self.sweeps[-9:], result]
        return result

    def _combined(self, item: _Watched) -> Check:
        """One raw result from the last liveness probe and the last full check: down if the
        liveness probe failed; else what the last full check saw (it stands until the next one:
        a frozen picture does not come back to life because the camera still answers); else up."""
        now = self._clock.now_ms()
        live = item.live
        if live is not None and not live.up:
            return Check(now, "offline", live.reason)
        if item.full is not None:
            return Check(now, item.full.status, item.full.reason)
        return Check(now, "online", live.reason if live is not None else "answers")

    async def _observe(self, item: _Watched, check: Check, now: int) -> bool:
        """Judge one check; record and publish what changed. Whether anything was written."""
        return bool(await self._observe_many([(item, check)], now))

    async def _observe_many(self, checked: Sequence[tuple[_Watched, Check]], now: int) -> set[str]:
        """Judge checks; what changed is written in one transaction and published in one batch
        (the first sweep of 10,000 cameras changes them all). The ids of those that changed."""
        rows: list[Health] = []
        events: list[CameraStatusChanged] = []
        for item, check in checked:
            state, raw_changed = judge(item.state, check, self._policy)
            before = item.state
            item.state = state
            shown_changed = state.status != before.status
            if not (shown_changed or raw_changed or state.reason != before.reason):
                continue
            raw = state.raw if raw_changed else None
            rows.append(Health(item.camera.id, state.status, state.reason, now, shown_changed, raw))
            if shown_changed or state.reason != before.reason:
                camera = item.camera
                events.append(
                    CameraStatusChanged(
                        camera.id,
                        state.status,
                        before.status,
                        state.reason,
                        now,
                        camera.lat,
                        camera.lon,
                        camera.department,
                    )
                )
        if rows:
            await self._store.set_health_many(rows)
        for start in range(0, len(events), 1000):
            await self._bus.publish_many(events[start : start + 1000])
        self.published += len(events)
        return {row.camera_id for row in rows}

    # --- full checks --------------------------------------------------------------------------

    def _next_full(self, busy: set[str]) -> _Watched | None:
        now = self._clock.now_ms()
        due = [
            w
            for w in self._watched.values()
            if w.camera.id not in busy
            and now - w.full_at_ms >= self._opts.full_every_s * 1000
            and (w.live is None or w.live.up)
        ]
        return min(due, key=lambda w: w.full_at_ms, default=None)

    async def _full_loop(self) -> None:
        while True:
            item = self._next_full(self._busy)
            if item is None:
                await asyncio.sleep(0.5)
                continue
            self._busy.add(item.camera.id)
            try:
                await self.full_check(item.camera.id)
            except StoreError as exc:
                self.last_error = str(exc)
                await asyncio.sleep(1)
            finally:
                self._busy.discard(item.camera.id)

    async def full_check(self, camera_id: str) -> Check | None:
        """Open the camera's stream, judge its frames, keep a good frame as its snapshot."""
        item = self._watched.get(camera_id)
        if item is None:
            return None
        opts = self._opts
        result = await self._checker.check(
            item.camera.stream_url, opts.open_timeout_s, opts.read_timeout_s, opts.frame_interval_s
        )
        now = self._clock.now_ms()
        self.full_checks += 1
        if result.error is not None:
            verdict = Check(now, "offline", result.error)
        else:
            status, reason = classify(result.frames)
            verdict = Check(now, status, reason)
            if status == "online" and result.jpeg is not None:
                await self._snapshots.put(camera_id, result.jpeg, now)
        item.full, item.full_at_ms = verdict, now
        if verdict.status == "offline":
            # It answers but shows no frames (a relay still waiting for its source, a stream
            # restarting): look again after a liveness interval, not a full-check interval.
            retry_ms = min(opts.full_every_s, opts.liveness_every_s) * 1000
            item.full_at_ms = int(now - opts.full_every_s * 1000 + retry_ms)
        if camera_id in self._watched:
            await self._observe(item, self._combined(item), now)
        return verdict

    def stats(self) -> dict[str, object]:
        last = self.sweeps[-1] if self.sweeps else None
        return {
            "name": self._opts.name,
            "members": list(self._members),
            "cameras": len(self._watched),
            "last_sweep_s": None if last is None else round(last.seconds, 2),
            "last_sweep_up": None if last is None else last.up,
            "full_checks": self.full_checks,
            "decoder_crashes": self._checker.crashes,
            "published": self.published,
            "last_error": self.last_error,
        }
