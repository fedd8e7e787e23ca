"""Clocks, so domain code takes `now` as an argument and tests can drive time."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Source of the current time in epoch milliseconds."""

    def now_ms(self) -> int: ...


class SystemClock:
    """Wall-clock time."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def to_iso(ts_ms: int) -> str:
    """Epoch milliseconds as ISO-8601 UTC with millisecond precision."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> int:
    """ISO-8601 with an offset, or integer epoch milliseconds, as epoch milliseconds.

    Raises ValueError for anything else, naive ISO times included: a time without an
    offset is ambiguous across the city's devices.
    """
    stripped = text.strip()
    if stripped.lstrip("-").isdigit():
        return int(stripped)
    parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return int(parsed.timestamp() * 1000)
