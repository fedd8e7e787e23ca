"""Dead letters cannot fill the disk (retention by count and age) while their counts stay exact,
and a records outage pauses intake (backpressure) instead of piling dead letters up in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import eventually

from .conftest import Center, open_center


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_retention_keeps_the_newest_rows_and_exact_counts(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    async with open_center(request, tmp_path, mode, dead_letter_max_rows=10) as center:
        for i in range(60):
            await center.sensor.publish(f"city/sensors/gas/ghost-{i}", b'{"ts": 1795000000000, "value": 1}')

        async def counted(c: Center = center) -> bool:
            health = (await c.api.get("/api/health")).json()
            return bool(health["dead_letters"]["unknown_device"] == 60)

        await eventually(counted)

        async def pruned(c: Center = center) -> list[str]:
            letters = (await c.api.get("/api/dead-letters", params={"limit": 1000})).json()
            return [letter["topic"] for letter in letters] if len(letters) <= 10 else []

        topics = await eventually(pruned)
        assert topics[0] == "city/sensors/gas/ghost-59"  # the newest are kept


async def test_old_dead_letters_expire_by_age(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # An age limit of about a second: what was refused earlier goes once newer letters arrive.
    async with open_center(request, tmp_path, "embedded", dead_letter_max_age_days=1.5 / 86_400) as center:
        await center.sensor.publish("city/sensors/gas/ghost-old", b"{}")
        await eventually(lambda: _topics(center, ["city/sensors/gas/ghost-old"]))
        await _sleep(6)
        await center.sensor.publish("city/sensors/gas/ghost-new", b"{}")
        await eventually(lambda: _topics(center, ["city/sensors/gas/ghost-new"]))
        health = (await center.api.get("/api/health")).json()
        assert health["dead_letters"]["unknown_device"] == 2


async def _topics(center: Center, expected: list[str]) -> bool:
    letters = (await center.api.get("/api/dead-letters")).json()
    return [letter["topic"] for letter in letters] == expected


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
