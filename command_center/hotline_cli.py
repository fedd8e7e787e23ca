"""`cityops report` and `cityops verify`: the leaders' report and the slip check, straight on the
records database (no running center needed; the schema must be current)."""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hotline.adapters.tickets_sql import SqlTickets
from kernel.clock import SystemClock
from kernel.db import database_url, make_engine
from kernel.settings import Settings

from .api_tickets import verify_slip
from .report import Period, build_report, write_report
from .schema import require_current


def _store(settings: Settings) -> SqlTickets:
    engine = make_engine(database_url(settings.database_url, settings.data_dir))
    require_current(engine)
    return SqlTickets(engine)


def report(settings: Settings, period: Period, day: date | None, out: Path | None) -> int:
    """Write the report's CSVs and HTML page; print the files written."""
    tz = ZoneInfo(settings.timezone)

    async def go() -> list[Path]:
        store = _store(settings)
        now = SystemClock().now_ms()
        built = await build_report(store, period, day or datetime.now(tz).date(), tz, now)
        target = out or Path("reports") / f"{period}-{built.start.isoformat()}"
        return write_report(built, target, datetime.now(tz).isoformat(timespec="seconds"))

    for path in asyncio.run(go()):
        print(path)
    return 0


def verify(settings: Settings, code: str) -> int:
    """Print what the code is the slip of; exit 0 when genuine, 1 when not."""

    async def go() -> dict[str, object]:
        return await verify_slip(_store(settings), ZoneInfo(settings.timezone), code)

    answer = asyncio.run(go())
    print(json.dumps(answer, ensure_ascii=False))
    return 0 if answer["valid"] else 1
