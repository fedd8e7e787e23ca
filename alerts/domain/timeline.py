"""A device's own clock: late readings told apart from a clock that jumped back.

Every rule ignores a reading not newer than the last one it judged: a duplicate, or a reading
that arrived late, must not undo what a newer one decided. But a device whose clock jumps back
(an RTC reset, a wrong NTP answer) then sends nothing but "old" readings, and every rule would
ignore it until its clock caught up again: an hour's jump, an hour of blindness. So a device that
keeps sending readings behind its newest one, several in a row and over a stretch of real time
(a late backlog arrives in a burst, a jumped clock keeps ticking at the device's pace), is judged
to have jumped: its rules start again from the new time, keeping their raised state.

Pure: (timeline, reading's ts, arrival time) -> (timeline, jumped?).
"""

from __future__ import annotations

from typing import NamedTuple

JUMP_READINGS = 3  # readings behind in a row...
JUMP_CONFIRM_MS = 60_000  # ...arriving over at least this long (real time)


class Timeline(NamedTuple):
    newest_ts_ms: int = -1
    behind: int = 0  # readings behind the newest in a row
    behind_since_ms: int = 0  # when the first of them arrived


def timeline_step(
    timeline: Timeline, ts_ms: int, arrived_ms: int, confirm_ms: int = JUMP_CONFIRM_MS
) -> tuple[Timeline, bool]:
    if ts_ms > timeline.newest_ts_ms:
        return Timeline(ts_ms), False
    if ts_ms == timeline.newest_ts_ms:
        return timeline, False  # a duplicate: says nothing about the clock
    if timeline.behind == 0:
        return Timeline(timeline.newest_ts_ms, 1, arrived_ms), False
    behind = timeline.behind + 1
    if behind >= JUMP_READINGS and arrived_ms - timeline.behind_since_ms >= confirm_ms:
        return Timeline(ts_ms), True
    return timeline._replace(behind=behind), False
