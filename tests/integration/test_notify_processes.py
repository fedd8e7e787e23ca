"""Notifier processes (`cityops notifier`) on one PostgreSQL and one Redis: they share the
deliveries without sending any twice, and one killed with SIGKILL in the middle of a send loses
nothing: its notification goes again after the lease, under the same id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from notify.adapters.notify_sql import notification_attempts, notifications
from tests.helpers import GAUGE, eventually
from tests.receivers import receiving

from .conftest import Center, open_center

PEOPLE = 20
INCIDENTS = 5


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "command_center.cli", "notifier"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def _rows(center: Center, table: Any) -> list[dict[str, Any]]:
    def read() -> list[dict[str, Any]]:
        with center.runtime.engine.connect() as conn:
            return [dict(row) for row in conn.execute(select(table)).mappings()]

    import asyncio

    return await asyncio.to_thread(read)


async def test_notifier_processes_share_the_work_and_a_kill_mid_send_loses_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The API process here runs no notifier: the two processes below are the only ones.
    async with receiving() as receiver, open_center(request, tmp_path, "production", notify_enabled=False) as center:
        s = center.runtime.settings
        env = {
            **os.environ,
            "CITYOPS_REDIS_URL": str(s.redis_url),
            "CITYOPS_REDIS_PREFIX": s.redis_prefix,
            "CITYOPS_DATABASE_URL": str(s.database_url),
            "CITYOPS_INFLUX_URL": str(s.influx_url),
            "CITYOPS_INFLUX_DATABASE": s.influx_database,
            "CITYOPS_NOTIFY_CONCURRENCY": "1",  # one send at a time: the one killed is the one hung
            "CITYOPS_NOTIFY_LEASE_S": "4",
            "CITYOPS_NOTIFY_SEND_TIMEOUT_S": "3",
            "CITYOPS_NOTIFY_POLL_S": "0.05",
            "CITYOPS_NOTIFY_MAX_PER_WINDOW": "1000",
        }
        logs = [tmp_path / "notifier-a.log", tmp_path / "notifier-b.log"]
        procs = [_spawn({**env, "CITYOPS_DATA_DIR": str(tmp_path / f"n{n}")}, log) for n, log in enumerate(logs)]
        try:
            people = [
                {"id": f"p{n:02d}", "name": f"值班{n}", "contacts": {"webhook": receiver.url(f"/hook/p{n:02d}")}}
                for n in range(PEOPLE)
            ]
            policies = [
                {"id": "all", "on": "incident", "events": ["opened"], "to": [f"person:p{n:02d}" for n in range(PEOPLE)]}
            ]
            assert (await center.api.put("/api/duty", json={"people": people})).status_code == 200
            assert (await center.api.put("/api/notify/policies", json=policies)).status_code == 200
            # The first message to p07 hangs at the receiver: its worker is killed mid-send.
            receiver.hang["/hook/p07"] = 30
            for n in range(INCIDENTS):
                await center.register({**GAUGE, "id": f"res-{n}", "lat": 19.93 + n / 1000})

            async def all_open() -> bool:
                # Published until each gauge has its incident: a reading that reaches the gateway
                # before it has heard of a new device is refused (a dead letter), not held.
                listed = (await center.api.get("/api/incidents", params={"status": "open"})).json()
                opened = {d for i in listed for d in i["device_ids"]}
                for n in range(INCIDENTS):
                    if f"res-{n}" not in opened:
                        body = {"ts": int(time.time() * 1000), "value": 26.0}
                        await center.sensor.publish(f"city/sensors/water_level/res-{n}", json.dumps(body))
                return len(opened) == INCIDENTS

            await eventually(all_open, timeout_s=60, interval_s=0.5)
            [hung] = await receiver.wait_for("/hook/p07", 1, timeout_s=60)
            receiver.hang.pop("/hook/p07")
            hung_id = hung.headers["x-cityops-notification"]
            [row] = [r for r in await _rows(center, notifications) if r["id"] == hung_id]
            pid = int(str(row["lease_owner"]).rsplit(":", 1)[1])
            victim = next(p for p in procs if p.pid == pid)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)

            total = PEOPLE * INCIDENTS

            async def all_sent() -> bool:
                rows = await _rows(center, notifications)
                return len(rows) == total and all(r["status"] == "sent" for r in rows)

            await eventually(all_sent, timeout_s=90)
            ids = [r.headers["x-cityops-notification"] for r in receiver.received]
            counts = Counter(ids)
            assert len(counts) == total, "no notification lost"
            attempts = await _rows(center, notification_attempts)
            twice = {i for i, n in counts.items() if n > 1}
            debug = [a for a in attempts if a["notification_id"] in twice][:12]
            assert twice == {hung_id}, f"only the one in flight at the kill went twice: {debug}"
            assert counts[hung_id] == 2
            attempts = await _rows(center, notification_attempts)
            of_hung = sorted((a for a in attempts if a["notification_id"] == hung_id), key=lambda a: a["n"])
            assert [(a["n"], a["outcome"], a["finished_at_ms"] is None) for a in of_hung] == [
                (1, "sending", True),  # the killed worker never finished it
                (2, "sent", False),
            ]
            sent_by = Counter(a["worker"] for a in attempts if a["outcome"] == "sent")
            assert len(sent_by) == 2, f"both processes delivered: {sent_by}"
            assert sum(sent_by.values()) == total, "each notification sent (and recorded sent) once"
            detail = (await center.api.get(f"/api/notifications/{hung_id}")).json()
            assert [a["outcome"] for a in detail["attempt_log"]] == ["interrupted", "sent"]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
        survivor = next(p for p in procs if p is not victim)
        assert survivor.returncode == 0, logs[procs.index(survivor)].read_text()[-3000:]
        assert "notifier stopped cleanly" in logs[procs.index(survivor)].read_text()
