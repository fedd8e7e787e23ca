"""Notifications and the duty roster through the real API, to real local receivers (issue 12)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from command_center.city import demo_city_path
from tests.helpers import GAUGE, eventually
from tests.receivers import Receiver, receiving

from .conftest import Center, open_center

ALL_DAY = {"days": "daily", "start": "00:00", "end": "00:00"}
SECRET = "whsec-0123456789abcdef"


def person(person_id: str, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {
        "id": person_id,
        "name": f"name-{person_id}",
        "contacts": {"webhook": receiver.url(f"/hook/{person_id}")},
        **extra,
    }


def rota(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"post": post, "person_id": person_id, **ALL_DAY} for post, person_id in pairs]


async def put_roster(center: Center, roster: dict[str, Any]) -> None:
    answer = await center.api.put("/api/duty", json=roster)
    assert answer.status_code == 200, answer.text


async def level(center: Center, value: float, device: str = "res-1") -> None:
    body = {"ts": int(time.time() * 1000), "value": value}
    await center.sensor.publish(f"city/sensors/water_level/{device}", json.dumps(body))


async def open_incident(center: Center, value: float = 25.9) -> dict[str, Any]:
    async def found() -> dict[str, Any]:
        listed: list[dict[str, Any]] = (await center.api.get("/api/incidents", params={"status": "open"})).json()
        if not listed:
            # Again until it opens: in production a reading can reach the gateway before the
            # device's registration does, and is refused (a dead letter), not held.
            await level(center, value)
        return next(iter(listed), {})

    return await eventually(found, interval_s=0.5)


def verify_signature(received: Any, secret: str) -> None:
    expected = hmac.new(
        secret.encode(), f"{received.headers['x-cityops-timestamp']}.".encode() + received.body, hashlib.sha256
    ).hexdigest()
    assert received.headers["x-cityops-signature"] == f"sha256={expected}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as r:
        yield r


FAST: dict[str, Any] = {"notify_poll_s": 0.05, "notify_repeat_check_s": 0.2, "rules_tick_s": 0.1}


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_an_escalation_walks_tier_1_2_3_with_the_people_on_duty_notified(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver, mode: str
) -> None:
    async with open_center(request, tmp_path, mode, tickets=True, **FAST) as center:
        await center.register(GAUGE)
        people = [person(p, receiver) for p in ("wang", "li", "zhao", "off-duty")]
        # off-duty holds tier1 only on a day long gone: never notified.
        shifts = [
            {
                "post": "tier1",
                "person_id": "off-duty",
                "start": "2020-01-01T08:00:00+08:00",
                "end": "2020-01-01T20:00:00+08:00",
            }
        ]
        await put_roster(
            center,
            {
                "people": people,
                "shifts": shifts,
                "patterns": rota(("tier1", "wang"), ("tier2", "li"), ("tier3", "zhao")),
            },
        )
        assert (await center.api.put("/api/channels/webhook", json={"secret": SECRET})).status_code == 200
        incident = await open_incident(center)
        [first] = await receiver.wait_for("/hook/wang")
        verify_signature(first, SECRET)
        body = first.json()
        assert body["incident_id"] == incident["id"]
        assert body["event"] == "opened"
        assert body["id"] == first.headers["x-cityops-notification"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/ack/lk-[0-9a-f]{16}\.\d+\.[\w-]{43}", body["ack_url"])
        assert receiver.on("/hook/li") == []
        assert receiver.on("/hook/zhao") == []
        # Escalated by a leader: tier 2's person on duty, then tier 3's.
        for tier, who in ((2, "li"), (3, "zhao")):
            answer = await center.api.post(f"/api/incidents/{incident['id']}/escalate", json={"note": f"to {tier}"})
            assert answer.status_code == 200
            assert answer.json()["escalation_tier"] == tier
            [message] = await receiver.wait_for(f"/hook/{who}")
            assert message.json()["event"] == "escalated"
            assert f"tier {tier}" in message.json()["text"]
        assert receiver.on("/hook/off-duty") == []

        async def all_sent() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (
                await center.api.get("/api/notifications", params={"incident_id": incident["id"]})
            ).json()
            return found if all(n["status"] == "sent" for n in found) else []

        log = await eventually(all_sent)
        assert sorted((n["person_id"], n["status"], n["attempts"]) for n in log) == [
            ("li", "sent", 1),
            ("wang", "sent", 1),
            ("zhao", "sent", 1),
        ]
        assert {n["channel"] for n in log} == {"webhook"}
        assert all(n["sent_at"] for n in log)


async def test_the_link_acknowledges_once_from_a_phone_and_is_audited(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        await center.register(GAUGE)
        await put_roster(center, {"people": [person("wang", receiver)], "patterns": rota(("tier1", "wang"))})
        incident = await open_incident(center)
        [message] = await receiver.wait_for("/hook/wang")
        link = message.json()["ack_url"]
        path = "/ack/" + link.rsplit("/ack/", 1)[1]
        # Opening the link (as a chat app's preview does) changes nothing.
        page = await center.api.get(path, headers={"Authorization": ""})
        assert page.status_code == 200
        assert "<form method=post>" in page.text
        assert (await center.api.get(f"/api/incidents/{incident['id']}")).json()["status"] == "open"
        done = await center.api.post(path, headers={"Authorization": ""})
        assert done.status_code == 200
        assert "已确认" in done.text
        after = (await center.api.get(f"/api/incidents/{incident['id']}")).json()
        assert after["status"] == "acknowledged"
        assert any(h["action"] == "acknowledged" and h["who"] == "name-wang (via link)" for h in after["history"])
        [notified] = (await center.api.get("/api/notifications", params={"incident_id": incident["id"]})).json()
        assert notified["acknowledged_at"] is not None
        # Single use; a changed signature and an unknown token are refused.
        assert (await center.api.post(path)).status_code == 410
        forged = path[:-4] + ("AAAA" if not path.endswith("AAAA") else "BBBB")
        assert (await center.api.post(forged)).status_code == 404
        assert (await center.api.get("/ack/not-a-token")).status_code == 404


async def test_an_expired_link_is_refused(request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, notify_link_ttl_s=1.0, **FAST) as center:
        await center.register(GAUGE)
        await put_roster(center, {"people": [person("wang", receiver)], "patterns": rota(("tier1", "wang"))})
        incident = await open_incident(center)
        [message] = await receiver.wait_for("/hook/wang")
        path = "/ack/" + message.json()["ack_url"].rsplit("/ack/", 1)[1]
        time.sleep(1.1)  # noqa: ASYNC251 - the link's second has to pass; nothing else runs meanwhile
        refused = await center.api.post(path)
        assert refused.status_code == 410
        assert "expired" in refused.text
        assert (await center.api.get(f"/api/incidents/{incident['id']}")).json()["status"] == "open"


async def test_a_critical_incident_nobody_acknowledges_is_notified_again_until_acknowledged(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        await center.register(GAUGE)
        await put_roster(center, {"people": [person("wang", receiver)], "patterns": rota(("tier1", "wang"))})
        policies = [
            {
                "id": "high",
                "on": "incident",
                "events": ["opened", "severity_raised"],
                "severities": ["high", "critical"],
                "to": ["tier1"],
            },
            {
                "id": "again",
                "on": "incident",
                "severities": ["critical"],
                "to": ["incident_tier"],
                "repeat_every_min": 0.02,
            },
        ]
        assert (await center.api.put("/api/notify/policies", json=policies)).status_code == 200
        incident = await open_incident(center, 27.0)  # past the danger level: critical
        messages = await receiver.wait_for("/hook/wang", 3)
        kinds = [m.json()["kind"] for m in messages]
        assert kinds[0] == "incident"
        assert kinds[1:] == ["repeat", "repeat"]
        assert "尚无人确认" in messages[1].json()["text"]
        assert (await center.api.post(f"/api/incidents/{incident['id']}/acknowledge", json={})).status_code == 200
        await eventually(lambda: _settled(receiver, "/hook/wang"))
        count = len(receiver.on("/hook/wang"))
        time.sleep(1.5)  # noqa: ASYNC251 - let a second and more pass while the loop would repeat
        await _yield()
        assert len(receiver.on("/hook/wang")) == count, "acknowledged: no more repeats"


async def _settled(receiver: Receiver, path: str) -> bool:
    before = len(receiver.on(path))
    await _yield(0.5)
    return len(receiver.on(path)) == before


async def _yield(seconds: float = 1.5) -> None:
    await asyncio.sleep(seconds)


async def test_failures_are_retried_with_backoff_then_a_dead_letter(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    settings = {"notify_max_attempts": 3, "notify_backoff_s": 0.1, **FAST}
    async with open_center(request, tmp_path, "embedded", tickets=True, **settings) as center:
        await center.register(GAUGE)
        await put_roster(
            center, {"people": [person("wang", receiver), person("li", receiver)], "patterns": rota(("tier1", "wang"))}
        )
        receiver.fail["/hook/wang"] = 99
        incident = await open_incident(center)
        await receiver.wait_for("/hook/wang", 3)

        async def failed() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (
                await center.api.get("/api/notifications", params={"status": "failed"})
            ).json()
            return found

        [dead] = await eventually(failed)
        health = (await center.api.get("/api/health")).json()
        assert health["components"]["notify"]["records"]["failed"] == 1
        assert any("failed for good" in w for w in health["warnings"])
        assert any("nobody is on duty for tier2, tier3" in w for w in health["warnings"])
        assert (dead["incident_id"], dead["attempts"]) == (incident["id"], 3)
        detail = (await center.api.get(f"/api/notifications/{dead['id']}")).json()
        assert [a["outcome"] for a in detail["attempt_log"]] == ["error", "error", "error"]
        assert "500" in detail["attempt_log"][0]["error"]
        gaps = [
            _ms(b["started_at"]) - _ms(a["finished_at"])
            for a, b in zip(detail["attempt_log"], detail["attempt_log"][1:], strict=False)
        ]
        assert gaps[1] > gaps[0] * 1.5 - 50, f"backoff grows: {gaps}"
        # A test-send goes through the same path and is logged too.
        sent = await center.api.post("/api/notifications/test", json={"person_id": "li", "channel": "webhook"})
        assert sent.status_code == 200
        assert sent.json()["status"] == "sent"
        assert (await receiver.wait_for("/hook/li"))[0].json()["kind"] == "test"
        assert (
            await center.api.post("/api/notifications/test", json={"person_id": "li", "channel": "fax"})
        ).status_code == 422
        assert (
            await center.api.post("/api/notifications/test", json={"person_id": "nobody", "channel": "webhook"})
        ).status_code == 404


def _ms(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp() * 1000


async def test_a_receiver_that_hangs_never_blocks_other_deliveries(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    settings = {"notify_send_timeout_s": 2.0, "notify_backoff_s": 30.0, **FAST}
    async with open_center(request, tmp_path, "embedded", tickets=True, **settings) as center:
        await center.register(GAUGE)
        people = [person("stuck", receiver), person("wang", receiver)]
        await put_roster(center, {"people": people, "patterns": rota(("tier1", "stuck"), ("tier2", "wang"))})
        receiver.hang["/hook/stuck"] = 60
        incident = await open_incident(center)
        await receiver.wait_for("/hook/stuck")
        began = time.monotonic()
        await center.api.post(f"/api/incidents/{incident['id']}/escalate", json={})
        await receiver.wait_for("/hook/wang")
        assert time.monotonic() - began < 2.0, "delivered while the other receiver still hangs"

        async def timed_out() -> dict[str, Any]:
            log: list[dict[str, Any]] = (
                await center.api.get("/api/notifications", params={"person_id": "stuck"})
            ).json()
            return next((n for n in log if n["last_error"]), {})

        stuck = await eventually(timed_out)
        assert stuck["status"] == "pending"
        assert "no answer within 2 s" in stuck["last_error"]


async def test_a_storm_in_one_area_becomes_one_grouped_message(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    settings = {"notify_max_per_window": 3, "notify_window_s": 2.0, **FAST}
    async with open_center(request, tmp_path, "embedded", tickets=True, **settings) as center:
        await put_roster(center, {"people": [person("wang", receiver)], "patterns": rota(("tier1", "wang"))})
        for n in range(12):
            await center.register({**GAUGE, "id": f"res-{n}", "name": f"水位{n}", "lat": 19.93 + n / 10000})
        for n in range(12):
            await level(center, 26.0, f"res-{n}")
        messages = await receiver.wait_for("/hook/wang", 4, timeout_s=30)
        time.sleep(0.5)  # noqa: ASYNC251 - nothing more should come
        await _yield(0.5)
        messages = receiver.on("/hook/wang")
        kinds = [m.json()["kind"] for m in messages]
        assert kinds == ["incident", "incident", "incident", "digest"], kinds
        digest = messages[-1].json()
        assert "9 条通知" in digest["text"]
        assert digest["incident_id"] is None
        grouped = (await center.api.get("/api/notifications", params={"status": "grouped"})).json()
        assert len(grouped) == 9
        assert {g["digest_id"] for g in grouped} == {digest["id"]}


async def test_quiet_hours_hold_a_high_incident_but_not_a_critical_one(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        for device in ("res-a", "res-b"):
            await center.register({**GAUGE, "id": device})
        # Quiet all day but one minute, five minutes from now, in the city's zone.
        city_now = datetime.now(ZoneInfo("Asia/Shanghai"))
        start = (city_now + timedelta(minutes=6)).strftime("%H:%M")
        end = (city_now + timedelta(minutes=5)).strftime("%H:%M")
        sleeper = person("wang", receiver, quiet_hours={"start": start, "end": end})
        await put_roster(center, {"people": [sleeper], "patterns": rota(("tier1", "wang"))})
        await level(center, 25.9, "res-a")  # high

        async def held() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = (
                await center.api.get("/api/notifications", params={"person_id": "wang"})
            ).json()
            return found

        [waiting] = await eventually(held)
        assert waiting["status"] == "pending"
        assert _ms(waiting["not_before"]) > time.time() * 1000 + 30_000
        await level(center, 27.0, "res-b")  # critical: rings through
        [message] = await receiver.wait_for("/hook/wang")
        assert "紧急" in message.json()["title"]


async def test_a_dispatched_ticket_notifies_its_department_on_duty(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, config_file=demo_city_path(), **FAST) as center:
        departments = (await center.api.get("/api/departments")).json()
        department = departments[0]["id"]
        await put_roster(
            center, {"people": [person("chen", receiver)], "patterns": rota((f"dept:{department}", "chen"))}
        )
        body = {
            "channel": "phone",
            "category": departments[0]["categories"][0],
            "description": "路灯不亮",
            "auto_dispatch": False,
        }
        ticket = (await center.api.post("/api/tickets", json=body)).json()
        assert receiver.on("/hook/chen") == []
        answer = await center.api.post(
            f"/api/tickets/{ticket['id']}/actions", json={"action": "dispatch", "department_id": department}
        )
        assert answer.status_code == 200, answer.text
        [message] = await receiver.wait_for("/hook/chen")
        assert (message.json()["event"], message.json()["ticket_id"]) == ("dispatched", ticket["id"])
        assert message.json()["ack_url"] is None


async def test_who_is_on_duty_now_and_at_a_handover(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        people = [person(p, receiver) for p in ("day", "night", "swap")]
        patterns = [
            {"post": "tier1", "person_id": "day", "days": "mon-sun", "start": "08:00", "end": "20:00"},
            {"post": "tier1", "person_id": "night", "days": [1, 2, 3, 4, 5, 6, 7], "start": "20:00", "end": "08:00"},
        ]
        # A swap: on 2026-12-01 "swap" takes the day shift (an exception to the rota).
        shifts = [
            {
                "post": "tier1",
                "person_id": "swap",
                "start": "2026-12-01T08:00:00+08:00",
                "end": "2026-12-01T20:00:00+08:00",
            }
        ]
        await put_roster(center, {"people": people, "patterns": patterns, "shifts": shifts})

        async def at(when: str) -> list[str]:
            answer = await center.api.get("/api/duty/now", params={"at": when})
            assert answer.status_code == 200, answer.text
            return [p["id"] for p in answer.json()["posts"]["tier1"]]

        assert await at("2026-11-30T07:59:59+08:00") == ["night"]
        assert await at("2026-11-30T08:00:00+08:00") == ["day"]  # the handover instant: the next person
        assert await at("2026-11-30T19:59:59+08:00") == ["day"]
        assert await at("2026-11-30T20:00:00+08:00") == ["night"]
        assert await at("2026-12-01T12:00:00+08:00") == ["swap"]
        assert await at("2026-12-01T20:30:00+08:00") == ["night"]
        now = (await center.api.get("/api/duty/now")).json()
        assert "tier2" in now["uncovered"]
        assert "tier1" not in now["uncovered"]


async def test_a_roster_is_imported_from_csv(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        csv = (
            "post,person_id,start,end,days,name,webhook,email,sms\n"
            f"tier1,wang,08:00,20:00,mon-fri,王值班,{receiver.url('/hook/wang')},wang@city.example.cn,13800000001\n"
            "tier1,li,20:00,08:00,mon-fri,李值班,,li@city.example.cn,\n"
            "tier2,zhao,2026-12-05T00:00:00+08:00,2026-12-06T00:00:00+08:00,,赵副市长,,,13800000003\n"
        )
        answer = await center.api.post("/api/duty/import", content=csv.encode(), headers={"Content-Type": "text/csv"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"people": 3, "shifts": 1, "patterns": 2}
        roster = (await center.api.get("/api/duty")).json()
        assert {p["id"]: p["contacts"].get("email") for p in roster["people"]} == {
            "wang": "wang@city.example.cn",
            "li": "li@city.example.cn",
            "zhao": None,
        }
        who = (await center.api.get("/api/duty/now", params={"at": "2026-12-04T21:00:00+08:00"})).json()
        assert [p["id"] for p in who["posts"]["tier1"]] == ["li"]
        # A bad line names itself and changes nothing.
        bad = "post,person_id,start,end,days\ntier1,wang,08:00,20:00,mon-fri\ntier9,wang,08:00,20:00,sat\n"
        refused = await center.api.post("/api/duty/import", content=bad.encode())
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["body", "csv", 3, "post"]
        assert (await center.api.get("/api/duty")).json() == roster


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        (
            {
                "shifts": [
                    {
                        "post": "tier1",
                        "person_id": "wang",
                        "start": "2026-12-01T08:00:00+08:00",
                        "end": "2026-12-01T20:00:00+08:00",
                    },
                    {
                        "post": "tier1",
                        "person_id": "li",
                        "start": "2026-12-01T19:00:00+08:00",
                        "end": "2026-12-02T08:00:00+08:00",
                    },
                ]
            },
            ["body", "shifts", 1, "start"],
            "overlaps",
        ),
        (
            {
                "patterns": [
                    {"post": "tier1", "person_id": "wang", "days": "mon-fri", "start": "08:00", "end": "20:00"},
                    {"post": "tier1", "person_id": "li", "days": "fri-sun", "start": "18:00", "end": "09:00"},
                ]
            },
            ["body", "patterns", 1, "start"],
            "overlaps",
        ),
        (
            {"shifts": [{"post": "tier1", "start": "2026-12-01T08:00:00+08:00", "end": "2026-12-01T20:00:00+08:00"}]},
            ["body", "shifts", 0, "person_id"],
            "no one",
        ),
        (
            {
                "shifts": [
                    {
                        "post": "tier1",
                        "person_id": "",
                        "start": "2026-12-01T08:00:00+08:00",
                        "end": "2026-12-01T20:00:00+08:00",
                    }
                ]
            },
            ["body", "shifts", 0, "person_id"],
            "no one",
        ),
        (
            {
                "shifts": [
                    {
                        "post": "tier1",
                        "person_id": "ghost",
                        "start": "2026-12-01T08:00:00+08:00",
                        "end": "2026-12-01T20:00:00+08:00",
                    }
                ]
            },
            ["body", "shifts", 0, "person_id"],
            "ghost",
        ),
        (
            {
                "shifts": [
                    {
                        "post": "tier4",
                        "person_id": "wang",
                        "start": "2026-12-01T08:00:00+08:00",
                        "end": "2026-12-01T20:00:00+08:00",
                    }
                ]
            },
            ["body", "shifts", 0, "post"],
            "tier4",
        ),
        (
            {
                "shifts": [
                    {
                        "post": "dept:nowhere",
                        "person_id": "wang",
                        "start": "2026-12-01T08:00:00+08:00",
                        "end": "2026-12-01T20:00:00+08:00",
                    }
                ]
            },
            ["body", "shifts", 0, "post"],
            "unknown department",
        ),
        (
            {
                "shifts": [
                    {
                        "post": "tier1",
                        "person_id": "wang",
                        "start": "2026-12-01T08:00:00",
                        "end": "2026-12-01T20:00:00+08:00",
                    }
                ]
            },
            ["body", "shifts", 0, "start"],
            "offset",
        ),
        (
            {"people": [{"id": "wang", "name": "王", "contacts": {"webhook": "not a url"}}]},
            ["body", "people", 0, "contacts", "webhook"],
            "URL",
        ),
        (
            {"people": [{"id": "wang", "name": "王", "contacts": {"webhook": "ftp://x.example/hook"}}]},
            ["body", "people", 0, "contacts", "webhook"],
            "http",
        ),
        (
            {"people": [{"id": "wang", "name": "王", "contacts": {"email": "wang at city"}}]},
            ["body", "people", 0, "contacts", "email"],
            "e-mail",
        ),
        (
            {"people": [{"id": "wang", "name": "王", "contacts": {"fax": "0898-1234"}}]},
            ["body", "people", 0, "contacts", "fax"],
            "unknown contact type",
        ),
        (
            {"people": [{"id": "wang", "name": "王", "contacts": {"sms": "call me"}}]},
            ["body", "people", 0, "contacts", "sms"],
            "phone",
        ),
    ],
)
async def test_a_bad_roster_is_refused_naming_the_field_and_nothing_changes(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    receiver: Receiver,
    change: dict[str, Any],
    loc: list[Any],
    message: str,
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        good = {"people": [person("wang", receiver), person("li", receiver)], "patterns": rota(("tier1", "wang"))}
        await put_roster(center, good)
        before = (await center.api.get("/api/duty")).json()
        refused = await center.api.put("/api/duty", json={**good, "patterns": [], **change})
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"][0]
        assert detail["loc"] == loc, detail
        assert message in detail["msg"], detail
        assert (await center.api.get("/api/duty")).json() == before


async def test_bad_policies_and_channels_are_refused_and_secrets_never_shown(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        await put_roster(center, {"people": [person("wang", receiver)], "patterns": rota(("tier1", "wang"))})
        before = (await center.api.get("/api/notify/policies")).json()
        assert {p["id"] for p in before} >= {"incident-high", "incident-escalated", "ticket-dispatched"}
        cases = [
            ([{"id": "p", "on": "incident", "events": ["opened"], "to": ["tier4"]}], [0, "to", 0], "no tier4"),
            ([{"id": "p", "on": "incident", "events": ["exploded"], "to": ["tier1"]}], [0, "events", 0], "unknown"),
            (
                [{"id": "p", "on": "incident", "events": ["opened"], "to": ["tier1"], "channels": ["fax"]}],
                [0, "channels", 0],
                "unknown",
            ),
            ([{"id": "p", "on": "incident", "events": ["opened"], "to": ["person:ghost"]}], [0, "to", 0], "ghost"),
            (
                [{"id": "p", "on": "ticket", "events": ["dispatched"], "to": ["dept:nowhere"]}],
                [0, "to", 0],
                "unknown department",
            ),
            ([{"id": "p", "on": "weather", "events": [], "to": ["tier1"]}], [0, "on"], "incident or ticket"),
        ]
        for body, loc, message in cases:
            refused = await center.api.put("/api/notify/policies", json=body)
            assert refused.status_code == 422, refused.text
            detail = refused.json()["detail"][0]
            assert detail["loc"] == ["body", *loc], detail
            assert message in detail["msg"], detail
        assert (await center.api.get("/api/notify/policies")).json() == before
        # Channels: an unknown type, a bad SMTP sender, a gateway URL that is not one.
        assert (await center.api.put("/api/channels/fax", json={})).status_code == 422
        bad_mail = await center.api.put("/api/channels/email", json={"host": "127.0.0.1", "from": "not-an-address"})
        assert bad_mail.status_code == 422
        assert bad_mail.json()["detail"][0]["loc"] == ["body", "from"]
        bad_sms = await center.api.put("/api/channels/sms", json={"url": "sms-gateway"})
        assert bad_sms.status_code == 422
        assert bad_sms.json()["detail"][0]["loc"] == ["body", "url"]
        # Secrets go in and never come back out; `***` keeps the stored one.
        put = await center.api.put("/api/channels/dingtalk", json={"secret": "SECabc123"})
        assert put.json() == {"secret": "***"}
        mail = {
            "host": "127.0.0.1",
            "port": 2525,
            "security": "none",
            "from": "ops@city.example.cn",
            "password": "p4ss",
        }
        assert (await center.api.put("/api/channels/email", json=mail)).json()["password"] == "***"
        assert (await center.api.put("/api/channels/email", json={**mail, "password": "***"})).status_code == 200
        shown = (await center.api.get("/api/channels")).json()
        assert shown["dingtalk"] == {"secret": "***"}
        assert shown["email"]["password"] == "***"
        assert "SECabc123" not in json.dumps(shown)
        assert "p4ss" not in json.dumps(shown)
        stored = await center.runtime.notify.config("channels")  # type: ignore[union-attr]
        assert stored is not None
        assert stored[0]["email"]["password"] == "p4ss"


async def test_one_person_is_reached_on_every_channel_they_have(
    request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    async with open_center(request, tmp_path, "embedded", tickets=True, **FAST) as center:
        await center.register(GAUGE)
        contacts = {
            "webhook": receiver.url("/hook/wang"),
            "wecom": receiver.url("/robot/wecom?key=k-1"),
            "dingtalk": receiver.url("/robot/dingtalk?access_token=t-1"),
            "sms": "13800000001",
        }
        await put_roster(
            center,
            {"people": [{"id": "wang", "name": "王", "contacts": contacts}], "patterns": rota(("tier1", "wang"))},
        )
        assert (await center.api.put("/api/channels/dingtalk", json={"secret": "SECx"})).status_code == 200
        assert (
            await center.api.put("/api/channels/sms", json={"url": receiver.url("/sms"), "api_key": "k"})
        ).status_code == 200
        incident = await open_incident(center)
        for path in ("/hook/wang", "/robot/wecom", "/robot/dingtalk", "/sms"):
            [got] = await receiver.wait_for(path)
            assert "水位" in got.body.decode() or "res-1" in got.body.decode(), got.body
        assert "sign" in receiver.on("/robot/dingtalk")[0].query
        assert receiver.on("/sms")[0].json()["to"] == "13800000001"

        async def four_sent() -> bool:
            log = (await center.api.get("/api/notifications", params={"incident_id": incident["id"]})).json()
            return sorted(n["channel"] for n in log if n["status"] == "sent") == ["dingtalk", "sms", "webhook", "wecom"]

        await eventually(four_sent)
