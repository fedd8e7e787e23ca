"""Working days by the official Chinese calendar, and the deadlines counted in them.

The State Council publishes each year's public holidays and the make-up working weekends
(调休) that pay for them, usually in November for the next year. The `chinese-calendar`
package carries those arrangements up to the year it was released. Past that, a city
configures them itself (`holidays` and `workdays` in its calendar settings); without them a
later year counts plain weekdays, and `coverage_end` tells the health check how soon the
official data runs out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import chinese_calendar  # type: ignore[import-untyped]

# The last day the package has the State Council's arrangements for.
PACKAGE_COVERS_UNTIL: date = date(max(d.year for d in chinese_calendar.holidays), 12, 31)


@dataclass(frozen=True)
class WorkCalendar:
    """Which days are working days in the city, and what a number of working days from a time is."""

    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    # Configured days: they win over the package (a correction) and extend it past its data.
    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()

    @classmethod
    def build(cls, tz: str, holidays: Iterable[date] = (), workdays: Iterable[date] = ()) -> WorkCalendar:
        both = set(holidays) & set(workdays)
        if both:
            raise ValueError(f"a day cannot be both a holiday and a working day: {sorted(both)[0].isoformat()}")
        return cls(ZoneInfo(tz), frozenset(holidays), frozenset(workdays))

    def is_workday(self, day: date) -> bool:
        if day in self.workdays:
            return True
        if day in self.holidays:
            return False
        if day <= PACKAGE_COVERS_UNTIL:
            try:
                return bool(chinese_calendar.is_workday(day))
            except NotImplementedError:  # before 2004: the package has no data either
                pass
        return day.weekday() < 5

    def coverage_end(self) -> date:
        """The last day whose official arrangement is known: the package's, or the last year the
        city configured holidays or make-up days for."""
        configured = [d.year for d in self.holidays | self.workdays]
        last_year = max([PACKAGE_COVERS_UNTIL.year, *configured])
        return date(last_year, 12, 31)

    def local_day(self, at_ms: int) -> date:
        return datetime.fromtimestamp(at_ms / 1000, tz=self.tz).date()

    def end_of_day_ms(self, day: date) -> int:
        """The last millisecond of `day` in the city's time zone."""
        start_next = datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.tz)
        return int(start_next.astimezone(UTC).timestamp() * 1000) - 1

    def add_workdays(self, day: date, n: int) -> date:
        """The n-th working day after `day` (n >= 1)."""
        if n < 1:
            raise ValueError("count at least one working day")
        found = 0
        current = day
        while found < n:
            current += timedelta(days=1)
            if self.is_workday(current):
                found += 1
        return current

    def due_after(self, at_ms: int, workdays: int) -> int:
        """The end of the `workdays`-th working day after the day of `at_ms` (epoch ms)."""
        return self.end_of_day_ms(self.add_workdays(self.local_day(at_ms), workdays))

    def extend(self, deadline_ms: int, workdays: int) -> int:
        """A deadline moved on by `workdays` working days (counted from the deadline's own day)."""
        return self.due_after(deadline_ms, workdays)
