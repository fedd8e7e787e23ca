"""Alarm hygiene, pure: silences (maintenance windows), flapping, and flood control by area.

- A silence holds back new incidents of the devices, grids or rules it names between its start
  and end (clears still go through, so what was open before can resolve).
- Flapping: a rule and subject that raised `flap_max` times within `flap_window_s` is flapping:
  its incident stays open through clears (one flapping incident, not a stream of them) until it
  has been quiet for `flap_quiet_s`.
- Flood control (after ISA-18.2: about 10 new alarms per 10 minutes is what one operator can
  take): past `flood_max` new incidents in one grid within `flood_window_s`, further raises in
  that grid join one area incident that lists their devices instead of opening their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .evaluate import Raise


@dataclass(frozen=True, slots=True)
class Silence:
    id: str
    device_ids: tuple[str, ...]
    grid_ids: tuple[str, ...]
    rule_ids: tuple[str, ...]
    starts_at_ms: int
    ends_at_ms: int
    reason: str
    created_by: str = ""

    def covers(self, raised: Raise, now_ms: int) -> bool:
        if not (self.starts_at_ms <= now_ms < self.ends_at_ms):
            return False
        if self.rule_ids and raised.rule_id not in self.rule_ids:
            return False
        if self.device_ids and not set(raised.device_ids) & set(self.device_ids):
            return False
        return not self.grid_ids or raised.grid_id in self.grid_ids


def silenced(silences: Sequence[Silence], raised: Raise, now_ms: int) -> Silence | None:
    """The silence that holds this raise back, if any."""
    return next((s for s in silences if s.covers(raised, now_ms)), None)


@dataclass(frozen=True, slots=True)
class HygienePolicy:
    flap_max: int = 4
    flap_window_s: float = 3600.0
    flap_quiet_s: float = 900.0
    flood_max: int = 10
    flood_window_s: float = 600.0


def recent(times: Sequence[int], now_ms: int, window_s: float) -> list[int]:
    return [t for t in times if now_ms - t <= window_s * 1000]


def is_flapping(raises: Sequence[int], now_ms: int, policy: HygienePolicy) -> bool:
    """Raised `flap_max` times or more within the window (the newest raise included)."""
    return len(recent(raises, now_ms, policy.flap_window_s)) >= policy.flap_max


def flooded(opened_in_grid: Sequence[int], now_ms: int, policy: HygienePolicy) -> bool:
    """The grid had `flood_max` new incidents or more within the window."""
    return len(recent(opened_in_grid, now_ms, policy.flood_window_s)) >= policy.flood_max


FLOOD_RULE = "area-flood"


def area_raise(raised: Raise, count: int) -> Raise:
    """The area incident a flooded grid's raises join (one per grid while it is open)."""
    grid = raised.grid_id or "unknown"
    return Raise(
        FLOOD_RULE,
        grid,
        raised.severity,
        f"区域告警洪泛: 网格 {grid} 多个设备同时报警 ({count}+)",
        raised.at_ms,
        raised.device_ids,
        raised.lat,
        raised.lon,
        raised.grid_id,
    )
