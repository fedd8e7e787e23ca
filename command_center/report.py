"""`cityops report --period day|week|month`: the leaders' report (DOMAIN.md: daily, weekly and
monthly statistics and hot spots) as CSV files and one HTML page with charts.

The page is self-contained (inline SVG, no script, nothing fetched: it is mailed and printed),
the CSVs are for spreadsheets: the KPIs per department, the hot spots by category and by grid,
and the tickets taken in per day.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from jinja2 import Environment, select_autoescape

from hotline.adapters.tickets_sql import SqlTickets
from hotline.domain.kpis import Kpis, counts_json

Period = Literal["day", "week", "month"]
HOT_SPOTS: Final = 10


def period_bounds(period: Period, day: date) -> tuple[date, date]:
    """[first day, day after the last) of the day, ISO week (Monday first) or month holding `day`."""
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


def _ms(day: date, tz: ZoneInfo) -> int:
    return int(datetime.combine(day, time(0), tzinfo=tz).timestamp() * 1000)


@dataclass
class Report:
    period: Period
    start: date
    end: date  # exclusive
    kpis: Kpis
    names: dict[str, str]
    by_category: list[tuple[str, int]]
    by_grid: list[tuple[str, int]]
    per_day: list[tuple[date, int]]

    @property
    def title(self) -> str:
        last = self.end - timedelta(days=1)
        span = self.start.isoformat() if last == self.start else f"{self.start.isoformat()} – {last.isoformat()}"
        return f"12345 {dict(day='日报', week='周报', month='月报')[self.period]} {span}"


async def build_report(store: SqlTickets, period: Period, day: date, tz: ZoneInfo, now_ms: int) -> Report:
    start, end = period_bounds(period, day)
    start_ms, end_ms = _ms(start, tz), _ms(end, tz)
    kpis = await store.kpis(start_ms, end_ms, now_ms)
    names = {d.id: d.name for d in await store.departments()}
    by_category = await store.hot_spots("category", start_ms, end_ms, HOT_SPOTS)
    by_grid = await store.hot_spots("grid_id", start_ms, end_ms, HOT_SPOTS)
    offset_ms = int((tz.utcoffset(datetime.combine(start, time(12))) or timedelta()).total_seconds() * 1000)
    counts = dict(await store.per_day(start_ms, end_ms, offset_ms))
    days = [start + timedelta(days=n) for n in range((end - start).days)]
    per_day = [(d, counts.get(d.toordinal(), 0)) for d in days]
    return Report(period, start, end, kpis, names, by_category, by_grid, per_day)


KPI_COLUMNS: Final = (
    "accepted",
    "closed",
    "on_time",
    "replied",
    "called_back",
    "satisfied",
    "completion_rate",
    "on_time_rate",
    "satisfaction_rate",
    "callback_rate",
    "overdue_open",
)


def kpi_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for entry in report.kpis.as_json()["by_department"]:
        dep = entry["department_id"]
        rows.append(
            {
                "department_id": dep or "",
                "department": report.names.get(dep or "", "（未派遣 not dispatched）"),
                **{k: entry[k] for k in KPI_COLUMNS},
            }
        )
    total = counts_json(report.kpis.total)
    rows.append({"department_id": "*", "department": "合计 total", **{k: total[k] for k in KPI_COLUMNS}})
    return rows


def write_csvs(report: Report, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    kpis_path = out / "kpis.csv"
    with kpis_path.open("w", newline="", encoding="utf-8-sig") as f:  # -sig: Excel reads the Chinese right
        writer = csv.DictWriter(f, ["department_id", "department", *KPI_COLUMNS])
        writer.writeheader()
        writer.writerows(kpi_rows(report))
    written.append(kpis_path)
    spots_path = out / "hotspots.csv"
    with spots_path.open("w", newline="", encoding="utf-8-sig") as f:
        writer2 = csv.writer(f)
        writer2.writerow(["dimension", "key", "tickets"])
        writer2.writerows(("category", k, n) for k, n in report.by_category)
        writer2.writerows(("grid", k, n) for k, n in report.by_grid)
    written.append(spots_path)
    days_path = out / "per_day.csv"
    with days_path.open("w", newline="", encoding="utf-8-sig") as f:
        writer3 = csv.writer(f)
        writer3.writerow(["day", "tickets"])
        writer3.writerows((d.isoformat(), n) for d, n in report.per_day)
    written.append(days_path)
    return written


def _bars(items: list[tuple[str, float]], *, percent: bool = False, width: int = 560) -> dict[str, Any]:
    """An SVG horizontal bar chart's geometry (drawn by the template)."""
    top = max((v for _, v in items), default=0) or 1
    scale = 1.0 if percent else top
    bars = []
    for n, (label, value) in enumerate(items):
        length = int((width - 220) * (value / scale if scale else 0))
        shown = f"{value * 100:.1f}%" if percent else f"{int(value)}"
        bars.append({"y": 8 + n * 26, "label": label, "length": max(length, 1), "shown": shown})
    return {"bars": bars, "height": 16 + 26 * len(items), "width": width}


def _line(points: list[tuple[date, int]], width: int = 560, height: int = 160) -> dict[str, Any]:
    top = max((n for _, n in points), default=0) or 1
    step = (width - 40) / max(len(points) - 1, 1)
    coords = [(20 + i * step, height - 20 - (height - 40) * n / top) for i, (_, n) in enumerate(points)]
    return {
        "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in coords),
        "width": width,
        "height": height,
        "top": top,
        "first": points[0][0].isoformat() if points else "",
        "last": points[-1][0].isoformat() if points else "",
    }


TEMPLATE: Final = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:24px;color:#1b1f24}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse}td,th{border:1px solid #c9d1d9;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}.tiles{display:flex;gap:16px;flex-wrap:wrap}
.tile{border:1px solid #c9d1d9;border-radius:6px;padding:10px 16px;min-width:120px}
.tile b{display:block;font-size:24px}svg text{font-size:12px}
</style></head><body>
<h1>{{ title }}</h1>
<div class="tiles">
{% for label, value in tiles %}<div class="tile">{{ label }}<b>{{ value }}</b></div>{% endfor %}
</div>
<h2>各单位考核 KPIs by department</h2>
<table><tr><th>单位 department</th><th>受理 accepted</th><th>办结 closed</th><th>办结率 completion</th>
<th>按时率 on time</th><th>回访率 callback</th><th>满意率 satisfaction</th><th>超期未办 overdue</th></tr>
{% for r in rows %}<tr><td>{{ r.department }}</td><td>{{ r.accepted }}</td><td>{{ r.closed }}</td>
<td>{{ pct(r.completion_rate) }}</td><td>{{ pct(r.on_time_rate) }}</td><td>{{ pct(r.callback_rate) }}</td>
<td>{{ pct(r.satisfaction_rate) }}</td><td>{{ r.overdue_open }}</td></tr>{% endfor %}
</table>
{% for chart in charts %}
<h2>{{ chart.title }}</h2>
<svg width="{{ chart.width }}" height="{{ chart.height }}" role="img" aria-label="{{ chart.title }}">
{% for b in chart.bars %}<text x="0" y="{{ b.y + 13 }}">{{ b.label }}</text>
<rect x="160" y="{{ b.y }}" width="{{ b.length }}" height="18" fill="{{ chart.color }}"></rect>
<text x="{{ 166 + b.length }}" y="{{ b.y + 13 }}">{{ b.shown }}</text>{% endfor %}
</svg>
{% endfor %}
<h2>每日受理 Tickets taken in per day</h2>
<svg width="{{ line.width }}" height="{{ line.height }}" role="img" aria-label="per day">
<polyline points="{{ line.points }}" fill="none" stroke="#0969da" stroke-width="2"></polyline>
<text x="20" y="{{ line.height - 4 }}">{{ line.first }}</text>
<text x="{{ line.width - 90 }}" y="{{ line.height - 4 }}">{{ line.last }}</text>
<text x="0" y="12">max {{ line.top }}</text>
</svg>
<p>Generated {{ generated }} by cityops. Rates: completion = closed / accepted; on time = closed within
the deadline / closed; satisfaction = satisfied or basically satisfied / called back; callback = called
back / replied.</p>
</body></html>
"""


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def render_html(report: Report, generated: str) -> str:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    total = counts_json(report.kpis.total)
    rows = kpi_rows(report)
    dept_rows = [r for r in rows if r["department_id"] not in ("*", "")]
    charts = [
        {
            "title": "热点类别 Hot spots by category",
            "color": "#cf222e",
            **_bars([(k, float(n)) for k, n in report.by_category]),
        },
        {
            "title": "热点网格 Hot spots by grid",
            "color": "#bf8700",
            **_bars([(k or "（无网格）", float(n)) for k, n in report.by_grid]),
        },
        {
            "title": "办结率 Completion rate by department",
            "color": "#1a7f37",
            **_bars([(r["department"], r["completion_rate"] or 0.0) for r in dept_rows], percent=True),
        },
        {
            "title": "满意率 Satisfaction rate by department",
            "color": "#0969da",
            **_bars([(r["department"], r["satisfaction_rate"] or 0.0) for r in dept_rows], percent=True),
        },
    ]
    tiles = [
        ("受理 accepted", total["accepted"]),
        ("办结率 completion", _pct(total["completion_rate"])),
        ("按时率 on time", _pct(total["on_time_rate"])),
        ("满意率 satisfaction", _pct(total["satisfaction_rate"])),
        ("回访率 callback", _pct(total["callback_rate"])),
        ("超期未办 overdue", total["overdue_open"]),
    ]
    return env.from_string(TEMPLATE).render(
        title=report.title,
        tiles=tiles,
        rows=rows,
        charts=charts,
        line=_line(report.per_day),
        pct=_pct,
        generated=generated,
    )


def write_report(report: Report, out: Path, generated: str) -> list[Path]:
    written = write_csvs(report, out)
    page = out / "report.html"
    page.write_text(render_html(report, generated), encoding="utf-8")
    return [*written, page]
