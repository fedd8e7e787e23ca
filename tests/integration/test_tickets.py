"""The 12345 ticket flow over the HTTP API, on the embedded default and on the real servers, with
the demo city's departments, grids, hotline lines and knowledge base: every path a ticket takes,
deadlines across the National Day holiday and its make-up Saturday, KPIs against hand-computed
numbers, privacy, slips, and tickets made from incidents."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from command_center.city import demo_city_path
from kernel.events import CameraStatusChanged
from tests.helpers import SettableClock, eventually

from .conftest import Center, open_center


@dataclass
class Hotline:
    center: Center
    clock: SettableClock
    tokens: dict[str, str]
    mode: str

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def call(self, method: str, path: str, who: str = "agent", **kwargs: Any) -> httpx.Response:
        return await self.center.api.request(method, path, headers=self.as_(who), **kwargs)

    async def new(self, who: str = "agent", **fields: Any) -> dict[str, Any]:
        body = {"channel": "phone", "category": "flood", "description": "小区门口道路积水严重", **fields}
        answer = await self.call("POST", "/api/tickets", who, json=body)
        assert answer.status_code == 201, answer.text
        created: dict[str, Any] = answer.json()
        return created

    async def do(self, ticket_id: str, who: str, expect: int = 200, **body: Any) -> dict[str, Any]:
        answer = await self.call("POST", f"/api/tickets/{ticket_id}/actions", who, json=body)
        assert answer.status_code == expect, answer.text
        out: dict[str, Any] = answer.json()
        return out

    async def get(self, ticket_id: str, who: str = "admin") -> dict[str, Any]:
        answer = await self.call("GET", f"/api/tickets/{ticket_id}", who)
        assert answer.status_code == 200, answer.text
        out: dict[str, Any] = answer.json()
        return out

    async def history(self, ticket_id: str) -> list[dict[str, Any]]:
        answer = await self.call("GET", f"/api/tickets/{ticket_id}/history", "admin")
        assert answer.status_code == 200, answer.text
        out: list[dict[str, Any]] = answer.json()
        return out


ROLES = {
    "agent": {"role": "agent"},
    "leader": {"role": "leader"},
    "viewer": {"role": "viewer"},
    "water": {"role": "handler", "department_id": "water"},
    "urban": {"role": "handler", "department_id": "urban"},
    "housing": {"role": "handler", "department_id": "housing"},
    "intake": {"role": "intake"},
}


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


@asynccontextmanager
async def open_hotline(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str, clock: SettableClock | None = None, **extra: Any
) -> AsyncIterator[Hotline]:
    clock = clock or SettableClock()
    settings = {"config_file": demo_city_path(), "tickets_tick_s": 3600.0, "rules_tick_s": 0.1, **extra}
    async with open_center(request, tmp_path, mode, clock=clock, **settings) as center:
        tokens = {"admin": center.runtime.admin_token}
        for name, spec in ROLES.items():
            answer = await center.api.post("/api/tokens", json={"name": f"{name}-{mode}", **spec})
            assert answer.status_code == 201, answer.text
            tokens[name] = answer.json()["token"]
        yield Hotline(center, clock, tokens, mode)


@pytest.fixture(params=["embedded", "production"])
async def hotline(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Hotline]:
    async with open_hotline(request, tmp_path, request.param) as started:
        yield started


# ---- every path -------------------------------------------------------------------------------


async def test_a_consultation_is_closed_at_intake_from_the_knowledge_base(hotline: Hotline) -> None:
    found = (await hotline.call("GET", "/api/knowledge", params={"q": "居住证怎么办"})).json()
    assert found, "the demo's entry on residence permits is found by a word inside its question"
    assert "居住证" in found[0]["question"]
    ticket = await hotline.new(category="consultation", description="咨询居住证办理", knowledge_id=found[0]["id"])
    assert ticket["status"] == "closed"
    assert ticket["close_text"] == found[0]["answer"]
    assert [h["action"] for h in await hotline.history(ticket["id"])] == ["created", "close"]


async def test_dispatch_accept_reply_callback_close_with_who_and_when(hotline: Hotline) -> None:
    ticket = await hotline.new(auto_dispatch=False, caller_phone="13812345678")
    assert ticket["status"] == "new"
    assert ticket["called_number"] == "12345", "a phone call without a number came in on 12345"
    tid = ticket["id"]
    await hotline.do(tid, "agent", action="dispatch", department_id="water")
    await hotline.do(tid, "water", action="accept")
    await hotline.do(tid, "water", action="reply", text="已安排抽水车，积水已排除")
    await hotline.do(tid, "agent", action="callback", satisfaction="satisfied")
    closed = await hotline.do(tid, "agent", action="close")
    assert closed["status"] == "closed"
    assert closed["on_time"] is True
    assert closed["satisfaction"] == "satisfied"
    history = await hotline.history(tid)
    assert [h["action"] for h in history] == ["created", "dispatch", "accept", "reply", "callback", "close"]
    agent, water = f"agent-{hotline.mode}", f"water-{hotline.mode}"
    assert [h["who"] for h in history[1:]] == [agent, water, water, agent, agent]
    assert history[2]["role"] == "handler"
    assert history[3]["detail"]["text"] == "已安排抽水车，积水已排除"
    assert all(h["at"].endswith("+08:00") for h in history), "times in the city's zone, with the offset"


async def test_return_review_and_redispatch_then_a_leader_coordinates(hotline: Hotline) -> None:
    tid = (await hotline.new(auto_dispatch=False))["id"]
    await hotline.do(tid, "agent", action="dispatch", department_id="water")
    refused = await hotline.do(tid, "water", expect=422, action="return")
    assert refused["detail"][0]["loc"] == ["body", "reason"]
    await hotline.do(tid, "water", action="return", reason="属于市政道路排水，非水库")
    returned = await hotline.get(tid)
    assert (returned["status"], returned["returns"], returned["department_id"]) == ("returned", 1, None)
    await hotline.do(tid, "agent", action="dispatch", department_id="urban")
    await hotline.do(tid, "urban", action="return", reason="应由住建部门处理")
    await hotline.do(tid, "agent", action="dispatch", department_id="housing")
    third = await hotline.do(tid, "housing", action="return", reason="不属于本部门")
    assert third["coordination"] is True
    blocked = await hotline.do(tid, "agent", expect=409, action="dispatch", department_id="water")
    assert "leader" in blocked["detail"]["message"]
    assert blocked["detail"]["allowed"] == ["coordinate"]
    coordinated = await hotline.do(tid, "leader", action="coordinate", department_id="urban", note="城管牵头，住建配合")
    assert (coordinated["status"], coordinated["coordinated"]) == ("dispatched", True)
    again = await hotline.do(tid, "urban", expect=409, action="return", reason="还是不归我们")
    assert "coordinated" in again["detail"]["message"]
    reviews = [h["detail"].get("return_review") for h in await hotline.history(tid) if h["action"] == "dispatch"]
    assert reviews == [None, "approved", "approved"]


async def test_an_extension_is_requested_and_approved(hotline: Hotline) -> None:
    tid = (await hotline.new(department_id="water"))["id"]
    await hotline.do(tid, "water", action="accept")
    before = (await hotline.get(tid))["deadline"]
    await hotline.do(tid, "water", action="extend", days=2, reason="需要采购水泵配件")
    pending = await hotline.get(tid)
    assert pending["extension_requested_days"] == 2
    assert pending["deadline"] == before
    approved = await hotline.do(tid, "leader", action="extend", approve=True)
    assert approved["deadline"] > before
    assert approved["extensions"] == 1


async def test_refusals_leave_the_ticket_unchanged(hotline: Hotline) -> None:
    tid = (await hotline.new(department_id="water"))["id"]
    before = await hotline.get(tid)
    # a handler of another department
    other = await hotline.do(tid, "urban", expect=403, action="accept")
    assert "water" in other["detail"]
    assert (await hotline.call("GET", f"/api/tickets/{tid}", "urban")).status_code == 403
    # a callback before the reply
    early = await hotline.do(tid, "agent", expect=409, action="callback", satisfaction="satisfied")
    assert "replies first" in early["detail"]["message"]
    # an unknown department
    unknown = await hotline.do(tid, "agent", expect=409, action="dispatch", department_id="police")
    assert unknown["detail"]["status"] == "dispatched"
    new_tid = (await hotline.new(auto_dispatch=False))["id"]
    bad_dept = await hotline.do(new_tid, "agent", expect=422, action="dispatch", department_id="police")
    assert bad_dept["detail"][0]["loc"] == ["body", "department_id"]
    # an unknown action
    assert (await hotline.do(tid, "agent", expect=422, action="explode"))["detail"][0]["loc"] == ["body", "action"]
    # a viewer may not act
    await hotline.do(tid, "viewer", expect=403, action="remind")
    after = await hotline.get(tid)
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"
    }
    assert after["updated_at"] == before["updated_at"]
    # an extension of a closed ticket
    closed = await hotline.new(category="consultation", description="问", answer="答")
    refused = await hotline.do(closed["id"], "water", expect=409, action="extend", days=1, reason="x")
    assert "closed" in refused["detail"]["message"]
    assert [h["action"] for h in await hotline.history(tid)] == ["created", "dispatch"]


@pytest.mark.parametrize(
    ("field", "value", "loc"),
    [
        ("channel", "fax", "channel"),
        ("category", "ufo", "category"),
        ("called_number", "99999", "called_number"),
        ("department_id", "police", "department_id"),
        ("urgency", "whenever", "urgency"),
    ],
)
async def test_bad_intake_is_422_naming_the_field(hotline: Hotline, field: str, value: str, loc: str) -> None:
    body = {"channel": "phone", "category": "flood", "description": "积水", field: value}
    answer = await hotline.call("POST", "/api/tickets", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == loc
    assert (await hotline.call("GET", "/api/tickets")).headers["X-Total-Count"] == "0"


async def test_a_position_outside_every_grid_is_refused_and_inside_finds_the_street(hotline: Hotline) -> None:
    outside = await hotline.call(
        "POST",
        "/api/tickets",
        json={"channel": "wechat", "category": "noise", "description": "噪音", "lat": 30.0, "lon": 120.0},
    )
    assert outside.status_code == 422, outside.text
    assert outside.json()["detail"][0]["loc"] == ["body", "lat"]
    inside = await hotline.new(channel="wechat", category="noise", description="夜间施工噪音", lat=20.06, lon=110.325)
    assert (inside["grid_id"], inside["street"]) == ("g-haidian-01", "海甸街道")
    assert inside["status"] == "dispatched"
    assert inside["department_id"] == "urban", "noise in Haidian: the one department for it"


async def test_called_numbers_keep_their_identity_and_route_to_their_sub_platform(hotline: Hotline) -> None:
    price = await hotline.new(category="price", description="超市价签与结算价不符", called_number="12358")
    assert (price["called_number"], price["line"], price["department_id"]) == ("12358", "12358", "market")
    noise = await hotline.new(category="noise", description="工地噪音", called_number="12319")
    assert noise["department_id"] == "urban"
    lines = (await hotline.call("GET", "/api/hotline/lines")).json()
    assert {line["number"] for line in lines} >= {"12345", "12319", "12358", "12350", "12369"}
    listed = await hotline.call("GET", "/api/tickets", params={"department_id": "market"})
    assert [t["number"] for t in listed.json()] == [price["number"]]


async def test_overdue_tickets_are_marked_and_supervised_by_the_scheduler(hotline: Hotline) -> None:
    late = await hotline.new(department_id="water")
    ok = await hotline.new(department_id="urban", category="noise", description="噪音")
    await hotline.do(ok["id"], "urban", action="accept")
    await hotline.do(ok["id"], "urban", action="reply", text="已处理")
    scheduler = hotline.center.runtime.ticket_scheduler
    assert scheduler is not None
    deadline = datetime.fromisoformat(late["deadline"]).timestamp()
    hotline.clock.advance(deadline - time.time() - 3600)  # an hour before: reminded
    await scheduler.tick()
    reminded = await hotline.get(late["id"])
    assert (reminded["reminders"], reminded["overdue"]) == (1, False)
    hotline.clock.advance(7200)  # an hour past
    await scheduler.tick()
    await scheduler.tick()
    marked = await hotline.get(late["id"])
    assert (marked["overdue"], marked["supervised"]) == (True, True)
    assert (await hotline.get(ok["id"]))["overdue"] is False, "a replied ticket is not overdue"
    actions = [h["action"] for h in await hotline.history(late["id"])]
    assert actions == ["created", "dispatch", "remind", "overdue"], "each once, however often it ticks"
    listed = await hotline.call("GET", "/api/tickets", params={"overdue": "true"})
    assert [t["id"] for t in listed.json()] == [late["id"]]
    assert (await hotline.call("GET", "/api/kpis")).json()["overdue_open"] == 1


async def test_an_urgent_ticket_nobody_answers_in_30_minutes_is_supervised(hotline: Hotline) -> None:
    urgent = await hotline.new(department_id="water", urgency="urgent", description="水库下游有人被困")
    response = datetime.fromisoformat(urgent["response_deadline"]).timestamp()
    assert 1799 <= response - datetime.fromisoformat(urgent["created_at"]).timestamp() <= 1801
    scheduler = hotline.center.runtime.ticket_scheduler
    assert scheduler is not None
    hotline.clock.advance(31 * 60)
    await scheduler.tick()
    assert (await hotline.get(urgent["id"]))["supervised"] is True
    supervised = [h for h in await hotline.history(urgent["id"]) if h["action"] == "supervise"]
    assert len(supervised) == 1
    assert supervised[0]["who"] == "system:scheduler"
    assert "30 minutes" in supervised[0]["detail"]["note"]


# ---- deadlines across the National Day holiday and its make-up Saturday ------------------------


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_deadlines_follow_the_official_calendar(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    clock = SettableClock(at("2026-09-30T10:00:00+08:00"))
    async with open_hotline(request, tmp_path, mode, clock) as h:
        before_holiday = await h.new()
        assert before_holiday["deadline"] == "2026-10-13T23:59:59.999+08:00"
        clock.set(at("2026-10-09T16:30:00+08:00"))
        friday = await h.new()
        assert friday["deadline"] == "2026-10-15T23:59:59.999+08:00", "Saturday 10 Oct is a working day"
        clock.set(at("2026-10-09T16:30:00+08:00"))
        urgent = await h.new(urgency="urgent")
        assert urgent["response_deadline"].startswith("2026-10-09T17:00:00.")
        clock.set(at("2026-09-30T23:30:00+08:00"))  # 15:30 UTC: still 30 Sep in the city
        late = await h.new()
        assert late["number"].startswith("20260930")
        assert late["deadline"] == "2026-10-13T23:59:59.999+08:00"


# ---- KPIs against hand-computed numbers -------------------------------------------------------


async def test_kpis_match_hand_computed_numbers(hotline: Hotline) -> None:
    async def through(department: str, category: str, satisfaction: str | None, close: bool) -> str:
        tid = (await hotline.new(department_id=department, category=category, description=category))["id"]
        await hotline.do(tid, department, action="accept")
        await hotline.do(tid, department, action="reply", text="done")
        if satisfaction is not None:
            await hotline.do(tid, "agent", action="callback", satisfaction=satisfaction)
        if close:
            await hotline.do(tid, "agent", action="close")
        return str(tid)

    await through("water", "flood", "satisfied", True)
    await through("water", "flood", "dissatisfied", True)
    await through("water", "flood", None, False)  # replied, no callback yet
    await through("urban", "noise", "basically_satisfied", True)
    await hotline.new(department_id="urban", category="noise", description="still open")
    await hotline.new(category="consultation", description="问", answer="答")  # closed at intake, no department
    k = (await hotline.call("GET", "/api/kpis")).json()
    # accepted 6; closed 4 (3 after callback + 1 at intake); all on time; 3 called back of 4 replied;
    # satisfied or basically satisfied: 2 of 3.
    assert (k["accepted"], k["closed"], k["replied"], k["called_back"]) == (6, 4, 4, 3)
    assert k["completion_rate"] == round(4 / 6, 4)
    assert k["on_time_rate"] == 1.0
    assert k["satisfaction_rate"] == round(2 / 3, 4)
    assert k["callback_rate"] == 0.75
    assert k["overdue_open"] == 0
    water = next(d for d in k["by_department"] if d["department_id"] == "water")
    assert (water["accepted"], water["closed"], water["completion_rate"], water["satisfaction_rate"]) == (
        3,
        2,
        round(2 / 3, 4),
        0.5,
    )
    only_urban = (await hotline.call("GET", "/api/kpis", params={"department_id": "urban"})).json()
    assert (only_urban["accepted"], only_urban["closed"], only_urban["satisfaction_rate"]) == (2, 1, 1.0)
    empty = (
        await hotline.call(
            "GET", "/api/kpis", params={"start": "2020-01-01T00:00:00+08:00", "end": "2020-02-01T00:00:00+08:00"}
        )
    ).json()
    assert (empty["accepted"], empty["completion_rate"]) == (0, None)
    bad = await hotline.call("GET", "/api/kpis", params={"start": "yesterday"})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["query", "start"]


# ---- privacy and slips ------------------------------------------------------------------------


async def test_the_callers_number_is_masked_and_every_full_read_audited(hotline: Hotline) -> None:
    tid = (await hotline.new(department_id="water", caller_phone="13812345678", caller_name="张三"))["id"]
    assert (await hotline.get(tid, "viewer"))["caller_phone"] == "138****5678"
    assert (await hotline.get(tid, "leader"))["caller_phone"] == "138****5678"
    assert (await hotline.get(tid, "agent"))["caller_phone"] == "13812345678"
    assert (await hotline.get(tid, "water"))["caller_phone"] == "13812345678", "the handling department calls back"
    listed = (await hotline.call("GET", "/api/tickets", "agent")).json()
    assert listed[0]["caller_phone"] == "138****5678", "lists never show it"
    assert listed[0]["caller_name"] == "张*"
    reads = (await hotline.call("GET", "/api/audit/phone-reads", "admin", params={"ticket_id": tid})).json()
    assert sorted(r["role"] for r in reads) == ["agent", "handler"]
    assert (await hotline.call("GET", "/api/audit/phone-reads", "agent")).status_code == 403


async def test_a_slip_verifies_and_a_forged_one_does_not(hotline: Hotline) -> None:
    tid = (await hotline.new(department_id="water", caller_phone="13812345678"))["id"]
    slip = await hotline.call("GET", f"/api/tickets/{tid}/slip")
    assert slip.status_code == 200
    assert "13812345678" not in slip.text
    assert "138****5678" in slip.text
    code = slip.text.split("<code>")[1].split("</code>")[0]
    genuine = (await hotline.call("GET", f"/api/slips/{code}")).json()
    assert genuine["valid"] is True
    assert genuine["number"] == code.rsplit("-", 1)[0]
    number, mac = code.rsplit("-", 1)
    forged_mac = (await hotline.call("GET", f"/api/slips/{number}-{'A' * len(mac)}")).json()
    other = await hotline.new(department_id="water")
    swapped = (await hotline.call("GET", f"/api/slips/{other['number']}-{mac}")).json()
    assert forged_mac["valid"] is False
    assert swapped["valid"] is False


# ---- Open311 ----------------------------------------------------------------------------------


async def test_open311_services_and_requests(hotline: Hotline) -> None:
    api = hotline.center.api
    services = (await api.get("/open311/v2/services.json", headers={"Authorization": ""})).json()
    noise = next(s for s in services if s["service_code"] == "noise")
    assert set(noise) >= {"service_code", "service_name", "description", "metadata", "type", "keywords", "group"}
    assert (noise["metadata"], noise["type"]) == (False, "realtime")
    form = {
        "api_key": hotline.tokens["intake"],
        "service_code": "noise",
        "lat": "20.06",
        "long": "110.325",
        "description": "凌晨两点工地还在施工",
        "first_name": "Li",
        "phone": "13900001111",
        "email": "li@example.org",
    }
    missing = await api.post("/open311/v2/requests.json", data={k: v for k, v in form.items() if k != "service_code"})
    assert missing.status_code == 400
    assert missing.json() == [{"code": 400, "description": "service_code is required"}]
    bad_key = await api.post("/open311/v2/requests.json", data={**form, "api_key": "not-a-key"})
    assert bad_key.status_code == 403
    assert bad_key.json()[0]["code"] == 403
    viewer_key = await api.post("/open311/v2/requests.json", data={**form, "api_key": hotline.tokens["viewer"]})
    assert viewer_key.status_code == 403
    filed = await api.post("/open311/v2/requests.json", data=form)
    assert filed.status_code == 200, filed.text
    (created,) = filed.json()
    assert set(created) == {"service_request_id", "service_notice", "account_id"}
    request_id = created["service_request_id"]
    one = (await api.get(f"/open311/v2/requests/{request_id}.json", headers={"Authorization": ""})).json()
    assert len(one) == 1
    shown = one[0]
    assert (shown["service_code"], shown["status"], shown["lat"], shown["long"]) == ("noise", "open", 20.06, 110.325)
    assert shown["agency_responsible"] == "综合行政执法局"
    assert "13900001111" not in json.dumps(one)
    assert "li@example.org" not in json.dumps(one)
    assert "Li" not in json.dumps(one)
    listed = (await api.get("/open311/v2/requests.json", params={"service_code": "noise", "status": "open"})).json()
    assert [r["service_request_id"] for r in listed] == [request_id]
    assert (await api.get("/open311/v2/requests.json", params={"status": "closed"})).json() == []
    missing_one = await api.get("/open311/v2/requests/19990101000001.json")
    assert missing_one.status_code == 404
    # The same ticket through our own API, channel web, from Open311.
    ticket = (await hotline.call("GET", "/api/tickets", params={"q": request_id})).json()[0]
    assert (ticket["channel"], ticket["source"], ticket["department_id"]) == ("web", "open311", "urban")


# ---- departments and grids --------------------------------------------------------------------


async def test_departments_and_grids_through_the_api(hotline: Hotline) -> None:
    made = await hotline.call(
        "POST", "/api/departments", "admin", json={"id": "parks", "name": "园林局", "categories": ["trees"]}
    )
    assert made.status_code == 201, made.text
    assert (await hotline.call("POST", "/api/departments", "agent", json={"id": "x", "name": "x"})).status_code == 403
    tree = await hotline.new(category="trees", description="树倒了")
    assert tree["department_id"] == "parks"
    grids = (await hotline.call("GET", "/api/grids")).json()
    assert {f["properties"]["id"] for f in grids["features"]} >= {"g-haidian-01", "g-binhai-01"}
    broken = json.loads(json.dumps(grids))
    broken["features"][1]["properties"]["department_id"] = "nobody"
    refused = await hotline.call("PUT", "/api/grids", "admin", json=broken)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "features", 1, "properties", "department_id"]
    assert (await hotline.call("GET", "/api/grids")).json() == grids, "nothing changed"
    smaller = {"type": "FeatureCollection", "features": grids["features"][:1]}
    assert (await hotline.call("PUT", "/api/grids", "admin", json=smaller)).json() == {"grids": 1}
    now_outside = await hotline.call(
        "POST",
        "/api/tickets",
        json={"channel": "web", "category": "noise", "description": "x", "lat": 20.03, "lon": 110.33},
    )
    assert now_outside.status_code == 422, "Binhai's grid is gone"
    bad_token = await hotline.call(
        "POST", "/api/tokens", "admin", json={"name": "h", "role": "handler", "department_id": "nobody"}
    )
    assert bad_token.status_code == 422


async def test_the_knowledge_base_takes_new_entries_and_finds_chinese_words(hotline: Hotline) -> None:
    made = await hotline.call(
        "POST",
        "/api/knowledge",
        json={
            "question": "共享单车乱停放找哪个部门？",
            "answer": "由综合行政执法局负责清理。",
            "department_id": "urban",
            "tags": ["单车"],
        },
    )
    assert made.status_code == 201, made.text
    found = (await hotline.call("GET", "/api/knowledge", params={"q": "单车停放"})).json()
    assert found[0]["id"] == made.json()["id"]
    gas = (await hotline.call("GET", "/api/knowledge", params={"q": "燃气泄漏怎么处理"})).json()
    assert "燃气" in gas[0]["question"]
    assert (await hotline.call("GET", "/api/knowledge", params={"q": "火星移民"})).json() == []
    bad = await hotline.call("POST", "/api/knowledge", json={"question": "q", "answer": "a", "department_id": "nobody"})
    assert bad.status_code == 422
    assert (
        await hotline.call("POST", "/api/knowledge", "viewer", json={"question": "q", "answer": "a"})
    ).status_code == 403


# ---- tickets made from incidents --------------------------------------------------------------


async def send(center: Center, device: str, value: float) -> None:
    await center.sensor.publish(
        f"city/sensors/water_level/{device}", json.dumps({"ts": int(time.time() * 1000), "value": value})
    )
    await asyncio.sleep(0.002)


async def test_an_incident_makes_one_urgent_ticket_with_cameras_and_its_story(hotline: Hotline) -> None:
    center = hotline.center
    for n, camera_id in enumerate(["cam-a", "cam-b", "cam-c", "cam-d"], start=1):
        body = {
            "id": camera_id,
            "name": camera_id,
            "department": "水务局",
            "lat": 19.930 + n * 0.0008,
            "lon": 110.252,
            "stream_url": f"http://10.0.0.1/{camera_id}.mjpg",
        }
        assert (await center.api.post("/api/cameras", json=body)).status_code == 201
        await center.runtime.bus.publish(
            CameraStatusChanged(camera_id, "online", "unknown", "frames ok", int(time.time() * 1000))
        )

    async def indexed() -> bool:
        return center.runtime.catalog().index.status("cam-d") == "online"

    await eventually(indexed)
    await send(center, "res-tielu", 25.9)  # above warning: high

    async def ticket_of_incident() -> dict[str, Any]:
        answer = (await hotline.call("GET", "/api/tickets", params={"channel": "sensor"})).json()
        return answer[0] if answer else {}

    ticket = await eventually(ticket_of_incident)
    assert (ticket["channel"], ticket["urgency"], ticket["category"]) == ("sensor", "urgent", "flood")
    assert ticket["department_id"] == "water"
    assert ticket["status"] == "dispatched"
    assert ticket["grid_id"] == "g-yongxing-01"
    assert ticket["camera_ids"] == ["cam-a", "cam-b", "cam-c"]
    incident_id = ticket["incident_id"]

    async def linked() -> bool:
        shown: dict[str, Any] = (await center.api.get(f"/api/incidents/{incident_id}")).json()
        return bool(shown["ticket_id"] == ticket["id"])

    await eventually(linked)
    await send(center, "res-tielu", 27.0)  # above danger: critical

    async def raised() -> bool:
        history = await hotline.history(ticket["id"])
        return [h["detail"]["severity"] for h in history if h["action"] == "incident_severity"] == ["high", "critical"]

    await eventually(raised)
    # The same incident's events again (a redelivery, another process): still one ticket.
    policy = center.runtime.incident_tickets
    assert policy is not None
    events = await center.runtime.bus.latest("incident.changed")
    event = events[incident_id]
    again = await asyncio.gather(policy.handle(event), policy.handle(event))
    assert {t.id for t in again if t is not None} == {ticket["id"]}
    assert (await hotline.call("GET", "/api/tickets", params={"incident_id": incident_id})).headers[
        "X-Total-Count"
    ] == "1"
    # Closing the ticket leaves the still-firing incident open, and says so.
    tid = ticket["id"]
    await hotline.do(tid, "water", action="accept")
    await hotline.do(tid, "water", action="reply", text="已开闸泄洪，加强巡查")
    await hotline.do(tid, "agent", action="callback", satisfaction="satisfied")
    await hotline.do(tid, "agent", action="close")
    assert (await center.api.get(f"/api/incidents/{incident_id}")).json()["status"] == "open"
    assert "incident_still_open" in [h["action"] for h in await hotline.history(tid)]
    # The water goes down: the incident resolves itself, and the ticket's history says that too.
    await send(center, "res-tielu", 24.0)

    async def resolved() -> bool:
        return any(h["action"] == "incident_resolved" for h in await hotline.history(tid))

    await eventually(resolved)


async def test_a_low_incident_makes_no_ticket_and_a_rule_can_ask_for_one(hotline: Hotline) -> None:
    policy = hotline.center.runtime.incident_tickets
    assert policy is not None
    from kernel.events import IncidentChanged

    now = int(time.time() * 1000)
    low = IncidentChanged(
        "inc-low", "opened", "device-silent", "device", "low", 1, "open", "设备离线", now, now, lat=20.06, lon=110.325
    )
    assert await policy.handle(low) is None
    assert (await hotline.call("GET", "/api/tickets")).headers["X-Total-Count"] == "0"
    unknown_rule_high = IncidentChanged(
        "inc-h", "opened", "custom", "noise", "high", 1, "open", "噪音超标", now, now, lat=20.06, lon=110.325
    )
    made = await policy.handle(unknown_rule_high)
    assert made is not None
    assert (made.channel, made.urgency, made.department_id) == ("sensor", "urgent", "urban")


async def test_deadlines_survive_a_restart(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    clock = SettableClock()
    async with open_hotline(request, tmp_path, "embedded", clock) as h:
        ticket = await h.new(department_id="water")
    deadline = datetime.fromisoformat(ticket["deadline"]).timestamp()
    clock.advance(deadline - time.time() + 60)  # while the center was down, the deadline passed
    async with open_hotline(request, tmp_path, "embedded", clock, tickets_tick_s=0.05) as again:

        async def marked() -> bool:
            return (await again.get(ticket["id"]))["overdue"] is True

        await eventually(marked)


async def test_health_warns_when_the_official_calendar_runs_out(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    # 23 Nov 2026: the package's data ends 31 Dec 2026, 38 days on.
    clock = SettableClock(at("2026-11-23T10:00:00+08:00"))
    async with open_hotline(request, tmp_path / "a", "embedded", clock) as h:
        health = (await h.center.api.get("/api/health")).json()
        calendar = health["components"]["tickets"]["calendar"]
        assert (calendar["covered_until"], calendar["days_left"]) == ("2026-12-31", 38)
        assert any("calendar_holidays" in w for w in health["warnings"])
        assert health["status"] == "ok", "a warning, not an outage"
    configured = {"calendar_holidays": ["2027-01-01"], "calendar_workdays": []}
    async with open_hotline(request, tmp_path / "b", "embedded", clock, **configured) as h:
        health = (await h.center.api.get("/api/health")).json()
        assert health["components"]["tickets"]["calendar"]["covered_until"] == "2027-12-31"
        assert [w for w in health["warnings"] if "calendar" in w] == []
    clock.set(at("2026-06-01T10:00:00+08:00"))
    async with open_hotline(request, tmp_path / "c", "embedded", clock) as h:
        warnings = (await h.center.api.get("/api/health")).json()["warnings"]
        assert [w for w in warnings if "calendar" in w] == []


def cli(*args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"CITYOPS_DATABASE_URL": database_url} if database_url else {})}
    return subprocess.run(
        [sys.executable, "-m", "command_center.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.mark.parametrize("mode", ["embedded", "production"])
async def test_the_leaders_report_and_the_slip_check_on_the_command_line(
    request: pytest.FixtureRequest, tmp_path: Path, mode: str
) -> None:
    async with open_hotline(request, tmp_path, mode) as h:
        done = await h.new(department_id="water", caller_phone="13812345678")
        await h.do(done["id"], "water", action="accept")
        await h.do(done["id"], "water", action="reply", text="已处理")
        await h.do(done["id"], "agent", action="callback", satisfaction="satisfied")
        await h.do(done["id"], "agent", action="close")
        for _ in range(3):
            await h.new(category="noise", description="噪音", lat=20.06, lon=110.325)
        kpis = (await h.call("GET", "/api/kpis")).json()
        slip = (await h.call("GET", f"/api/tickets/{done['id']}/slip")).text
        code = slip.split("<code>")[1].split("</code>")[0]
        settings = h.center.runtime.settings
        where = ["--data-dir", str(settings.data_dir)]
        url = settings.database_url
    out = tmp_path / "report"
    made = cli("report", "--period", "month", "--out", str(out), *where, database_url=url)
    assert made.returncode == 0, made.stderr
    assert {Path(line).name for line in made.stdout.split()} == {
        "kpis.csv",
        "hotspots.csv",
        "per_day.csv",
        "report.html",
    }
    with (out / "kpis.csv").open(encoding="utf-8-sig") as f:
        rows = {r["department_id"]: r for r in csv.DictReader(f)}
    assert rows["*"]["accepted"] == str(kpis["accepted"]) == "4"
    assert rows["water"]["department"] == "水务局"
    assert (rows["water"]["closed"], rows["water"]["satisfaction_rate"]) == ("1", "1.0")
    assert rows["urban"]["accepted"] == "3"
    with (out / "hotspots.csv").open(encoding="utf-8-sig") as f:
        spots = list(csv.reader(f))
    assert ["category", "noise", "3"] in spots
    assert ["grid", "g-haidian-01", "3"] in spots
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") >= 5
    assert "水务局" in page
    assert "http://" not in page.replace("http://cityops", "")
    assert "https://" not in page
    assert "13812345678" not in page
    genuine = cli("verify", code, *where, database_url=url)
    assert genuine.returncode == 0, genuine.stdout + genuine.stderr
    assert json.loads(genuine.stdout)["valid"] is True
    forged = cli("verify", code[:-1] + ("A" if code[-1] != "A" else "B"), *where, database_url=url)
    assert forged.returncode == 1
    assert json.loads(forged.stdout)["valid"] is False
    bad_period = cli("report", "--period", "year", *where, database_url=url)
    assert bad_period.returncode == 2
    assert "invalid choice" in bad_period.stderr


async def test_a_handler_lists_only_its_own_departments_tickets(hotline: Hotline) -> None:
    water = await hotline.new(department_id="water")
    await hotline.new(department_id="urban", category="noise", description="噪音")
    mine = await hotline.call("GET", "/api/tickets", "water")
    assert [t["id"] for t in mine.json()] == [water["id"]]
    assert mine.headers["X-Total-Count"] == "1"
    other = await hotline.call("GET", "/api/tickets", "water", params={"department_id": "urban"})
    assert other.status_code == 403
    everyone = await hotline.call("GET", "/api/tickets", "viewer")
    assert everyone.headers["X-Total-Count"] == "2"
    bad_status = await hotline.call("GET", "/api/tickets", params={"status": "lost"})
    assert bad_status.status_code == 422
    assert bad_status.json()["detail"][0]["loc"] == ["query", "status"]
