"""Windows and timers rebuilt from history, when a rules process takes over.

Pure: the stored samples of a device go through a rule's own step from an empty state (the
window as it stands now, however the incidents read). What is left is the change the history
calls for that no incident records, judged against whether an incident is raised now: a raise
the process that died never recorded, or a clear it never saw. The caller applies it, unless a
person resolved the incident after that raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kernel.model import Device, Sample

from .evaluate import Change, Clear, Raise

S = TypeVar("S")


def replay(
    step: Callable[[Any, S, Any, Device], tuple[S, list[Change]]],
    rule: Any,
    empty: S,
    samples: Sequence[Sample],
    device: Device,
    sample_type: type[Any],
    *,
    raised_now: bool,
    is_raised: Callable[[S], bool],
) -> tuple[S, Raise | Clear | None]:
    """The state after the samples (only those of `sample_type`, in time order), and the change
    that brings the incidents in line with it (None: they already are)."""
    state = empty
    last_raise: Raise | None = None
    last_ts = None
    for sample in sorted((s for s in samples if isinstance(s, sample_type)), key=lambda s: s.ts_ms):
        state, changes = step(rule, state, sample, device)
        last_ts = sample.ts_ms
        for change in changes:
            if isinstance(change, Raise):
                last_raise = change
            elif isinstance(change, Clear):
                last_raise = None
    holds = is_raised(state)
    if holds and not raised_now:
        return state, last_raise
    if raised_now and not holds and last_ts is not None:
        return state, Clear(rule.id, device.id, last_ts, "cleared while no rules process was watching")
    return state, None
