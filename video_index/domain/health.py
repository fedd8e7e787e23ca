"""Judging a camera's health (pure): frames to a verdict, checks to a status shown on the wall.

- `classify(frames)`: statistics of frames grabbed over an interval -> online, or degraded with
  why: black, frozen (no change between the first and the last frame), covered or blurred (little
  detail: the variance of the Laplacian, as in Frigate's and most NVRs' blur checks).
- `judge(state, check, now)`: each check's raw result (online, degraded, offline) -> the status
  shown. A failed check is never shown as online. A camera that keeps going up and down (the
  ones that "sometimes can't be opened") is shown `degraded` as intermittent, with its current
  result in the reason, instead of flapping between online and offline on the wall; it is shown
  as it is again once it has held one result for `settle_ms`.
- `availability(changes, since, now)`: the share of the time it was up, from its changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Status = Literal["unknown", "online", "offline", "degraded"]

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class FrameStats:
    """What a full check measured of one frame (computed by the adapter with OpenCV)."""

    at_ms: int
    mean: float  # mean luminance, 0-255
    std: float  # its standard deviation: near 0 for a uniform picture
    sharpness: float  # variance of the Laplacian: low for blur, fog, a covered lens
    diff_from_first: float  # mean absolute difference from the first frame grabbed


@dataclass(frozen=True, slots=True)
class Thresholds:
    black_mean: float = 20.0
    black_std: float = 8.0
    frozen_diff: float = 0.5
    blurred_sharpness: float = 15.0
    min_interval_ms: int = 1000  # frozen is only judged over at least this long


def classify(frames: Sequence[FrameStats], limits: Thresholds = Thresholds()) -> tuple[Status, str]:
    """online, or degraded with the reason, from the frames of one full check (oldest first)."""
    if not frames:
        return "offline", "no frames"
    last = frames[-1]
    if last.mean < limits.black_mean and last.std < limits.black_std:
        return "degraded", f"black picture (mean luminance {last.mean:.0f})"
    if last.std < limits.black_std or last.sharpness < limits.blurred_sharpness:
        return "degraded", f"covered or blurred (detail {last.sharpness:.1f})"
    span = last.at_ms - frames[0].at_ms
    if (
        len(frames) >= 2
        and span >= limits.min_interval_ms
        and max(f.diff_from_first for f in frames[1:]) < limits.frozen_diff
    ):
        return "degraded", f"frozen picture (no change in {span / 1000:.1f} s)"
    return "online", "frames ok"


@dataclass(frozen=True, slots=True)
class Check:
    """One check's raw result: what it found now, before any smoothing."""

    at_ms: int
    status: Status
    reason: str


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    flip_window_ms: int = DAY_MS
    intermittent_flips: int = 6  # changes between up and down within the window (3 outages)
    settle_ms: int = 2 * 3_600_000  # one result held this long: shown as it is again


@dataclass(frozen=True, slots=True)
class HealthState:
    status: Status = "unknown"  # shown
    reason: str = ""
    raw: Status = "unknown"  # the last check's own result
    raw_since_ms: int | None = None
    flips: tuple[int, ...] = field(default=())  # when the raw result went between up and down
    intermittent: bool = False


def _up(status: Status) -> bool:
    return status in ("online", "degraded")


def judge(state: HealthState, check: Check, policy: HealthPolicy = HealthPolicy()) -> tuple[HealthState, bool]:
    """The new state and whether the raw result changed (a row of the camera's history)."""
    raw_changed = check.status != state.raw
    flips = state.flips
    if state.raw != "unknown" and _up(check.status) != _up(state.raw):
        flips = (*flips, check.at_ms)
    flips = tuple(t for t in flips if check.at_ms - t <= policy.flip_window_ms)
    raw_since = check.at_ms if raw_changed or state.raw_since_ms is None else state.raw_since_ms
    intermittent = state.intermittent
    if intermittent and check.at_ms - raw_since >= policy.settle_ms:
        intermittent, flips = False, ()  # settled: its outages are counted afresh
    elif len(flips) >= policy.intermittent_flips:
        intermittent = True
    if intermittent:
        now = "up" if _up(check.status) else "down"
        status: Status = "degraded"
        reason = f"intermittent: {len(flips) // 2} outages in 24 h (now {now}: {check.reason})"
    else:
        status, reason = check.status, check.reason
    return HealthState(status, reason, check.status, raw_since, flips, intermittent), raw_changed


def availability(changes: Sequence[tuple[int, str]], since_ms: int, now_ms: int) -> float | None:
    """The share of [since, now] the camera was up (online or degraded), from its raw changes
    (time, status), oldest first; a change before `since` gives the status at the start. None
    when nothing is known of the period."""
    if now_ms <= since_ms or not changes:
        return None
    up_ms = known_ms = 0
    current: str | None = None
    at = since_ms
    for when, status in changes:
        if when > now_ms:
            break
        if when <= since_ms:
            current = status
            continue
        if current is not None:
            known_ms += when - at
            up_ms += (when - at) if current in ("online", "degraded") else 0
        current, at = status, when
    if current is not None:
        known_ms += now_ms - at
        up_ms += (now_ms - at) if current in ("online", "degraded") else 0
    return None if known_ms == 0 else up_ms / known_ms
