"""The figures units are judged by (CONTRACT.md `GET /api/kpis`), defined once.

- accepted: tickets taken in during the period (受理);
- completion rate = closed / accepted;
- on-time rate = closed within the deadline / closed;
- satisfaction rate = satisfied or basically satisfied / called back;
- callback rate = called back / replied (a direct answer at intake needs no callback);
- overdue open: tickets not yet replied whose deadline has passed (a state at `now`).
A rate whose denominator is zero is None: "no tickets" is not 0 % and not 100 %.

`kpis_of` computes them from tickets in memory; the SQL adapter computes the same counts in
the database (tests check one against the other and against hand-computed numbers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .tickets import Ticket

SATISFIED = ("satisfied", "basically_satisfied")


@dataclass(slots=True)
class Counts:
    accepted: int = 0
    closed: int = 0
    on_time: int = 0
    replied: int = 0
    called_back: int = 0
    satisfied: int = 0
    overdue_open: int = 0

    def add(self, other: Counts) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else round(num / den, 4)


def counts_json(c: Counts) -> dict[str, Any]:
    return {
        "accepted": c.accepted,
        "closed": c.closed,
        "on_time": c.on_time,
        "replied": c.replied,
        "called_back": c.called_back,
        "satisfied": c.satisfied,
        "completion_rate": _rate(c.closed, c.accepted),
        "on_time_rate": _rate(c.on_time, c.closed),
        "satisfaction_rate": _rate(c.satisfied, c.called_back),
        "callback_rate": _rate(c.called_back, c.replied),
        "overdue_open": c.overdue_open,
    }


@dataclass(slots=True)
class Kpis:
    total: Counts = field(default_factory=Counts)
    by_department: dict[str | None, Counts] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out = counts_json(self.total)
        out["by_department"] = [
            {"department_id": dep, **counts_json(c)}
            for dep, c in sorted(self.by_department.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
        ]
        return out


def kpis_of(tickets: Iterable[Ticket], start_ms: int, end_ms: int, now_ms: int) -> Kpis:
    """The KPIs of tickets taken in within [start_ms, end_ms); overdue_open over all tickets given."""
    out = Kpis()
    for t in tickets:
        c = out.by_department.setdefault(t.department_id, Counts())
        if t.status not in ("replied", "closed") and t.deadline_ms < now_ms:
            c.overdue_open += 1
        if not start_ms <= t.created_at_ms < end_ms:
            continue
        c.accepted += 1
        if t.status == "closed":
            c.closed += 1
            if t.closed_at_ms is not None and t.closed_at_ms <= t.deadline_ms:
                c.on_time += 1
        if t.replied_at_ms is not None:
            c.replied += 1
        if t.callback_at_ms is not None:
            c.called_back += 1
            if t.satisfaction in SATISFIED:
                c.satisfied += 1
    out.by_department = {k: v for k, v in out.by_department.items() if v.accepted or v.overdue_open}
    for c in out.by_department.values():
        out.total.add(c)
    return out
