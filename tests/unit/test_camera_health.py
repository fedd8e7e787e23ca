"""Judging camera health, by tables: frames to a verdict, checks to what the wall shows, availability."""

from __future__ import annotations

import pytest

from video_index.domain.health import (
    Check,
    FrameStats,
    HealthPolicy,
    HealthState,
    Status,
    availability,
    classify,
    judge,
)


def frames(*stats: tuple[int, float, float, float, float]) -> list[FrameStats]:
    return [FrameStats(*s) for s in stats]


@pytest.mark.parametrize(
    ("grabbed", "status", "reason"),
    [
        (frames((0, 110, 70, 900, 0), (1500, 112, 71, 880, 6.0)), "online", "frames ok"),
        (frames((0, 3, 1, 0, 0), (1500, 3, 1, 0, 0)), "degraded", "black"),
        (frames((0, 110, 70, 900, 0), (1600, 110, 70, 900, 0.1)), "degraded", "frozen"),
        (frames((0, 118, 2, 0.5, 0), (1500, 118, 2, 0.4, 0.3)), "degraded", "covered or blurred"),
        (frames((0, 120, 40, 6.0, 0), (1500, 121, 40, 5.0, 3.0)), "degraded", "covered or blurred"),
        # Still, but over too short an interval to call it frozen.
        (frames((0, 110, 70, 900, 0), (300, 110, 70, 900, 0)), "online", "frames ok"),
        ([], "offline", "no frames"),
    ],
)
def test_frames_to_a_verdict(grabbed: list[FrameStats], status: Status, reason: str) -> None:
    got = classify(grabbed)
    assert got[0] == status
    assert got[1].startswith(reason)


MIN = 60_000
POLICY = HealthPolicy(flip_window_ms=24 * 60 * MIN, intermittent_flips=4, settle_ms=30 * MIN)


def run(checks: list[tuple[int, Status, str]]) -> list[tuple[Status, bool]]:
    state = HealthState()
    shown = []
    for at, status, reason in checks:
        state, _raw_changed = judge(state, Check(at * MIN, status, reason), POLICY)
        shown.append((state.status, state.intermittent))
    return shown


def test_a_failed_check_is_never_shown_online() -> None:
    shown = run([(0, "online", "ok"), (1, "offline", "refused"), (2, "online", "ok"), (3, "degraded", "black")])
    assert [s for s, _ in shown] == ["online", "offline", "online", "degraded"]


def test_a_camera_that_keeps_going_up_and_down_is_intermittent_not_flapping() -> None:
    checks: list[tuple[int, Status, str]] = []
    for n in range(6):  # down and up again three times within minutes
        checks += [(2 * n, "online", "ok"), (2 * n + 1, "offline", "no answer")]
    shown = run(checks)
    statuses = [s for s, _ in shown]
    assert statuses[:4] == ["online", "offline", "online", "offline"], "as it is, until the 4th change"
    assert set(statuses[5:]) == {"degraded"}, "then degraded, up or down"
    assert all(intermittent for _, intermittent in shown[5:])


def test_an_intermittent_camera_is_shown_as_it_is_once_it_holds() -> None:
    checks: list[tuple[int, Status, str]] = [
        (n, "online" if n % 2 == 0 else "offline", "x") for n in range(6)
    ]  # intermittent by the 5th
    checks += [(6, "online", "ok"), (20, "online", "ok"), (37, "online", "ok")]
    state = HealthState()
    for at, status, reason in checks:
        state, _ = judge(state, Check(at * MIN, status, reason), POLICY)
    assert state.status == "online", "held for 31 minutes: settled"
    assert not state.intermittent


def test_the_reason_of_an_intermittent_camera_says_how_it_is_now() -> None:
    state = HealthState()
    for n in range(6):
        state, _ = judge(state, Check(n * MIN, "online" if n % 2 == 0 else "offline", "no answer"), POLICY)
    assert state.reason.startswith("intermittent")
    assert "now down: no answer" in state.reason


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ([(0, "online")], 1.0),
        ([(0, "online"), (60, "offline")], 0.6),  # up 60 of 100
        ([(-50, "offline"), (50, "online")], 0.5),  # down from before the window, up half way
        ([(50, "degraded")], 1.0),  # up for all that is known (the first half is unknown)
        ([(-10, "offline"), (20, "online"), (30, "offline"), (90, "online")], 0.2),
        ([], None),
    ],
)
def test_availability_over_a_window(changes: list[tuple[int, str]], expected: float | None) -> None:
    got = availability(changes, 0, 100)
    assert got == (pytest.approx(expected) if expected is not None else None)
