"""The ticket flow's pure parts: the calendar and deadlines, the state machine, routing, slips,
KPIs and Chinese segmentation."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hotline.domain.calendar import PACKAGE_COVERS_UNTIL, WorkCalendar
from hotline.domain.kpis import kpis_of
from hotline.domain.routing import Department, GridError, GridIndex, Line, Router, parse_grids
from hotline.domain.search import index_text, query_terms, segment
from hotline.domain.slips import slip_code, split_code, verify
from hotline.domain.tickets import (
    Actor,
    Context,
    Forbidden,
    Invalid,
    NotAllowed,
    Request,
    Ticket,
    act,
    allowed_actions,
    deadlines,
    mark_overdue,
    mask_phone,
)

SH = ZoneInfo("Asia/Shanghai")
CAL = WorkCalendar.build("Asia/Shanghai")


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=SH).isoformat(timespec="milliseconds")


# ---- calendar and deadlines -------------------------------------------------------------------


def test_the_package_covers_2026_and_a_make_up_saturday_is_a_working_day() -> None:
    assert date(2026, 12, 31) <= PACKAGE_COVERS_UNTIL
    assert CAL.is_workday(date(2026, 10, 10))  # Saturday, made up for the National Day week
    assert not CAL.is_workday(date(2026, 10, 5))  # Monday inside the National Day holiday
    assert not CAL.is_workday(date(2026, 10, 11))  # an ordinary Sunday


def test_ordinary_deadline_skips_the_national_day_holiday() -> None:
    # Taken in on Wednesday 30 Sep: 1-7 Oct are holidays; the 5 working days are
    # Thu 8, Fri 9, Sat 10 (make-up), Mon 12, Tue 13.
    response, due = deadlines(at("2026-09-30T10:00:00+08:00"), "normal", CAL)
    assert response is None
    assert local(due) == "2026-10-13T23:59:59.999+08:00"


def test_ordinary_deadline_counts_the_make_up_saturday() -> None:
    # Taken in on Friday 9 Oct: Sat 10 (make-up), Mon 12 .. Thu 15. Without the make-up day it would be Fri 16.
    _, due = deadlines(at("2026-10-09T16:30:00+08:00"), "normal", CAL)
    assert local(due) == "2026-10-15T23:59:59.999+08:00"


def test_intake_late_at_night_counts_from_that_local_day() -> None:
    # 23:30 in Shanghai is still Monday 23 Nov there (15:30 UTC): due Monday 30 Nov.
    _, due = deadlines(at("2026-11-23T23:30:00+08:00"), "normal", CAL)
    assert local(due) == "2026-11-30T23:59:59.999+08:00"


def test_urgent_tickets_need_a_response_in_30_minutes_and_same_day_handling() -> None:
    taken = at("2026-11-23T09:00:00+08:00")
    response, due = deadlines(taken, "urgent", CAL)
    assert response == taken + 30 * 60_000
    assert local(due) == "2026-11-23T23:59:59.999+08:00"
    late = at("2026-11-23T22:00:00+08:00")
    _, due_late = deadlines(late, "urgent", CAL)
    assert due_late == late + 12 * 3_600_000, "never less than 12 hours to handle it"


def test_past_the_package_configured_holidays_and_make_up_days_count() -> None:
    intake = at("2026-12-31T10:00:00+08:00")  # Thursday
    # Unconfigured 2027: plain weekdays. Fri 1 Jan counts.
    assert local(deadlines(intake, "normal", CAL)[1]).startswith("2027-01-07")
    configured = WorkCalendar.build("Asia/Shanghai", holidays=[date(2027, 1, 1)], workdays=[date(2027, 1, 9)])
    # 1 Jan is a holiday, Saturday 9 Jan a make-up day: Mon 4 .. Fri 8 are 1-5.
    assert local(deadlines(intake, "normal", configured)[1]).startswith("2027-01-08")
    assert configured.is_workday(date(2027, 1, 9))
    assert CAL.coverage_end() == PACKAGE_COVERS_UNTIL
    assert configured.coverage_end() == date(2027, 12, 31)


def test_a_day_cannot_be_both_holiday_and_working_day() -> None:
    with pytest.raises(ValueError, match="both"):
        WorkCalendar.build("Asia/Shanghai", holidays=[date(2027, 2, 6)], workdays=[date(2027, 2, 6)])


# ---- the state machine ------------------------------------------------------------------------

DEPTS = {"water": object(), "urban": object(), "fire": object()}
CTX = Context(DEPTS, CAL)
AGENT = Actor("agent-li", "agent")
LEADER = Actor("leader-wang", "leader")
WATER = Actor("handler-water", "handler", "water")
URBAN = Actor("handler-urban", "handler", "urban")
T0 = at("2026-11-23T09:00:00+08:00")


def new_ticket(**changes: object) -> Ticket:
    _, due = deadlines(T0, "normal", CAL)
    base = Ticket("tk-1", "20261123000001", "phone", "flood", "normal", "new", "路面积水", T0, T0, due)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def run(ticket: Ticket, request: Request, actor: Actor, dt_s: float = 60) -> Ticket:
    changed, entry = act(ticket, request, actor, ticket.updated_at_ms + int(dt_s * 1000), CTX)
    assert entry.action == request.action
    assert entry.actor == actor.name
    assert entry.from_status == ticket.status
    assert entry.to_status == changed.status
    return changed


def test_dispatch_accept_reply_callback_close() -> None:
    t = run(new_ticket(), Request("dispatch", department_id="water"), AGENT)
    assert (t.status, t.department_id) == ("dispatched", "water")
    t = run(t, Request("accept"), WATER)
    t = run(t, Request("reply", text="已排水"), WATER)
    assert t.status == "replied"
    assert t.reply_text == "已排水"
    assert allowed_actions(t) == ["callback"]
    t = run(t, Request("callback", satisfaction="basically_satisfied"), AGENT)
    assert t.status == "replied"
    assert t.satisfaction == "basically_satisfied"
    t = run(t, Request("close"), AGENT)
    assert t.status == "closed"
    assert t.on_time is True
    with pytest.raises(NotAllowed, match="closed"):
        run(t, Request("extend", approve=True), AGENT)


def test_direct_closure_at_intake_needs_the_answer() -> None:
    with pytest.raises(Invalid) as refused:
        run(new_ticket(), Request("close"), AGENT)
    assert refused.value.field == "text"
    t = run(new_ticket(), Request("close", text="持身份证到派出所办理"), AGENT)
    assert t.status == "closed"
    assert t.close_text


@pytest.mark.parametrize(
    ("status", "action", "actor"),
    [
        ("new", "accept", WATER),
        ("new", "reply", WATER),
        ("new", "callback", AGENT),
        ("dispatched", "reply", WATER),
        ("dispatched", "callback", AGENT),
        ("dispatched", "close", AGENT),
        ("accepted", "accept", WATER),
        ("accepted", "dispatch", AGENT),
        ("replied", "reply", WATER),
        ("replied", "return", WATER),
        ("returned", "accept", WATER),
        ("new", "remind", AGENT),
    ],
)
def test_actions_the_state_does_not_allow_are_refused(status: str, action: str, actor: Actor) -> None:
    ticket = new_ticket(status=status, department_id="water" if status != "new" else None)
    with pytest.raises(NotAllowed):
        act(
            ticket,
            Request(action, text="x", reason="x", satisfaction="satisfied", department_id="water"),
            actor,
            T0,
            CTX,
        )


def test_callback_before_reply_and_close_before_callback_are_refused() -> None:
    accepted = new_ticket(status="accepted", department_id="water")
    with pytest.raises(NotAllowed, match="replies first"):
        act(accepted, Request("callback", satisfaction="satisfied"), AGENT, T0, CTX)
    replied = new_ticket(status="replied", department_id="water", replied_at_ms=T0)
    with pytest.raises(NotAllowed, match="call the citizen back"):
        act(replied, Request("close"), AGENT, T0, CTX)
    with pytest.raises(Invalid) as bad:
        act(replied, Request("callback", satisfaction="happy"), AGENT, T0, CTX)
    assert bad.value.field == "satisfaction"


def test_roles_and_a_handler_of_another_department() -> None:
    dispatched = new_ticket(status="dispatched", department_id="water")
    with pytest.raises(Forbidden, match="urban"):
        act(dispatched, Request("accept"), URBAN, T0, CTX)
    with pytest.raises(Forbidden):
        act(dispatched, Request("accept"), AGENT, T0, CTX)
    with pytest.raises(Forbidden):
        act(new_ticket(), Request("dispatch", department_id="water"), WATER, T0, CTX)
    with pytest.raises(Forbidden):
        act(dispatched, Request("supervise"), AGENT, T0, CTX)
    with pytest.raises(Invalid) as unknown:
        act(new_ticket(), Request("dispatch", department_id="police"), AGENT, T0, CTX)
    assert unknown.value.field == "department_id"


def test_returns_need_a_reason_are_reviewed_and_the_third_goes_to_a_leader() -> None:
    t = run(new_ticket(), Request("dispatch", department_id="water"), AGENT)
    with pytest.raises(Invalid) as no_reason:
        run(t, Request("return", reason="  "), WATER)
    assert no_reason.value.field == "reason"
    t = run(t, Request("return", reason="不属于水务职责"), WATER)
    assert (t.status, t.returns, t.department_id) == ("returned", 1, None)
    t = run(t, Request("dispatch", department_id="urban"), AGENT)
    t = run(t, Request("return", reason="应由水务处理"), URBAN)
    t2 = run(t, Request("dispatch", department_id="water"), AGENT)
    t3 = run(t2, Request("return", reason="仍不属于"), WATER)
    assert t3.returns == 3
    assert t3.coordination
    with pytest.raises(NotAllowed, match="leader"):
        run(t3, Request("dispatch", department_id="urban"), AGENT)
    with pytest.raises(Forbidden):
        run(t3, Request("coordinate", department_id="urban"), AGENT)
    t4 = run(t3, Request("coordinate", department_id="urban", note="城管牵头"), LEADER)
    assert (t4.status, t4.coordinated, t4.coordination) == ("dispatched", True, False)
    with pytest.raises(NotAllowed, match="coordinated"):
        run(t4, Request("return", reason="again"), URBAN)


def test_the_review_of_a_return_is_recorded() -> None:
    t = run(new_ticket(), Request("dispatch", department_id="water"), AGENT)
    t = run(t, Request("return", reason="不属于"), WATER)
    _, entry = act(t, Request("dispatch", department_id="water"), AGENT, T0 + 1000, CTX)
    assert entry.detail["return_review"] == "refused"
    _, entry = act(t, Request("dispatch", department_id="urban"), AGENT, T0 + 1000, CTX)
    assert entry.detail["return_review"] == "approved"


def test_extension_is_requested_by_the_department_and_approved() -> None:
    t = run(new_ticket(), Request("dispatch", department_id="water"), AGENT)
    t = run(t, Request("accept"), WATER)
    with pytest.raises(NotAllowed, match="no extension"):
        run(t, Request("extend", approve=True), AGENT)
    with pytest.raises(Invalid) as bad_days:
        run(t, Request("extend", days=0, reason="需要采购"), WATER)
    assert bad_days.value.field == "days"
    t = run(t, Request("extend", days=3, reason="需要采购配件"), WATER)
    assert t.extension_requested_days == 3
    with pytest.raises(NotAllowed, match="already"):
        run(t, Request("extend", days=2, reason="again"), WATER)
    before = t.deadline_ms
    t = run(t, Request("extend", approve=True), LEADER)
    assert t.extensions == 1
    assert t.extension_requested_days is None
    # Due Mon 30 Nov; 3 more working days: Thu 3 Dec.
    assert local(before).startswith("2026-11-30")
    assert local(t.deadline_ms).startswith("2026-12-03")


def test_overdue_marks_and_supervises_once() -> None:
    t = new_ticket(status="accepted", department_id="water")
    assert mark_overdue(t, t.deadline_ms) is None, "due at the deadline itself, not overdue yet"
    marked = mark_overdue(t, t.deadline_ms + 1)
    assert marked is not None
    changed, entry = marked
    assert changed.overdue
    assert changed.supervised
    assert entry.action == "overdue"
    assert mark_overdue(changed, t.deadline_ms + 5000) is None
    assert mark_overdue(dataclasses.replace(t, status="replied"), t.deadline_ms + 1) is None


def test_dissatisfied_citizen_can_have_the_ticket_handled_again() -> None:
    t = new_ticket(status="replied", department_id="water", replied_at_ms=T0)
    t = run(t, Request("callback", satisfaction="dissatisfied"), AGENT)
    assert "dispatch" in allowed_actions(t)
    t = run(t, Request("dispatch", department_id="water"), AGENT)
    assert t.status == "dispatched"
    assert t.satisfaction is None


def test_phone_masking() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("0898-66668888") == "089******8888"
    assert mask_phone("110") == "***"
    assert mask_phone("") == ""


# ---- slips ------------------------------------------------------------------------------------


def test_slip_codes_verify_and_catch_forgery() -> None:
    key = b"k" * 32
    t = new_ticket(caller_phone="13812345678")
    code = slip_code(key, t)
    parts = split_code(code.lower() + "  ")
    assert parts is not None
    assert parts[0] == t.number
    assert verify(key, t, parts[1])
    assert not verify(b"other-key" * 4, t, parts[1])
    altered = dataclasses.replace(t, category="noise")
    assert not verify(key, altered, parts[1])
    assert split_code("nonsense") is None


# ---- routing ----------------------------------------------------------------------------------

GRIDS: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"id": "g1", "name": "一网格", "street": "海甸街道", "department_id": "urban"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[110.0, 20.0], [110.1, 20.0], [110.1, 20.1], [110.0, 20.1], [110.0, 20.0]]],
            },
        },
        {
            "type": "Feature",
            "properties": {"id": "g2", "name": "二网格", "street": "滨海街道", "department_id": "water"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[110.1, 20.0], [110.2, 20.0], [110.2, 20.1], [110.1, 20.1], [110.1, 20.0]]],
            },
        },
    ],
}
DEPARTMENTS = [
    Department("water", "水务局", ("flood",)),
    Department("urban", "城管", ("noise", "urban_management")),
    Department("env", "生态环境局", ("noise", "pollution")),
    Department("hotline", "热线办", ("consultation",)),
]


def router() -> Router:
    depts = {d.id: d for d in DEPARTMENTS}
    return Router(
        DEPARTMENTS, GridIndex(parse_grids(GRIDS, depts)), [Line("12345", "市民热线"), Line("12369", "环保", ("env",))]
    )


def test_grid_lookup_by_point_in_polygon() -> None:
    r = router()
    g = r.grids.locate(20.05, 110.05)
    assert g is not None
    assert (g.id, g.street) == ("g1", "海甸街道")
    g2 = r.grids.locate(20.05, 110.15)
    assert g2 is not None
    assert g2.id == "g2"
    assert r.grids.locate(21.0, 110.05) is None
    assert [x.id if x else None for x in r.grids.locate_many([(20.05, 110.05), (21, 110), (20.05, 110.15)])] == [
        "g1",
        None,
        "g2",
    ]


def test_routing_is_automatic_only_where_clear() -> None:
    r = router()
    assert r.route("flood").department_id == "water"
    two = r.route("noise")
    assert two.department_id is None
    assert "2 departments" in two.note
    # The grid's street office takes it when it is one of those that can.
    assert r.route("noise", grid=r.grids.get("g1")).department_id == "urban"
    # The called line's own sub-platform decides between them.
    assert r.route("noise", called_number="12369").department_id == "env"
    # No department takes the category: the grid's street office.
    assert r.route("pothole", grid=r.grids.get("g2")).department_id == "water"
    assert r.route("pothole").department_id is None
    consult = r.route("consultation")
    assert consult.department_id is None
    assert "intake" in consult.note


def test_bad_grids_name_the_field() -> None:
    depts = {d.id: d for d in DEPARTMENTS}
    first: dict[str, Any] = GRIDS["features"][0]
    bad_dept = {
        "type": "FeatureCollection",
        "features": [{**first, "properties": {"id": "g1", "department_id": "nobody"}}],
    }
    with pytest.raises(GridError) as refused:
        parse_grids(bad_dept, depts)
    assert refused.value.loc == ("features", 0, "properties", "department_id")
    twice = {"type": "FeatureCollection", "features": [first, first]}
    with pytest.raises(GridError, match="twice"):
        parse_grids(twice, depts)
    point = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"id": "p"}, "geometry": {"type": "Point", "coordinates": [1, 2]}}
        ],
    }
    with pytest.raises(GridError) as not_polygon:
        parse_grids(point, depts)
    assert not_polygon.value.loc == ("features", 0, "geometry")
    with pytest.raises(GridError):
        parse_grids({"type": "Feature"}, depts)


# ---- KPIs -------------------------------------------------------------------------------------


def test_kpis_by_hand() -> None:
    start, end = at("2026-11-01T00:00:00+08:00"), at("2026-12-01T00:00:00+08:00")
    now = at("2026-11-23T12:00:00+08:00")
    base = new_ticket(department_id="water")
    tickets = [
        # closed on time, satisfied
        dataclasses.replace(
            base,
            id="a",
            status="closed",
            replied_at_ms=T0,
            callback_at_ms=T0,
            satisfaction="satisfied",
            closed_at_ms=T0,
        ),
        # closed late, dissatisfied
        dataclasses.replace(
            base,
            id="b",
            status="closed",
            replied_at_ms=T0,
            callback_at_ms=T0,
            satisfaction="dissatisfied",
            closed_at_ms=base.deadline_ms + 1,
        ),
        # replied, waiting for the callback
        dataclasses.replace(base, id="c", status="replied", replied_at_ms=T0),
        # accepted and overdue
        dataclasses.replace(base, id="d", status="accepted", deadline_ms=now - 1),
        # direct answer at intake, another department
        dataclasses.replace(base, id="e", status="closed", department_id=None, closed_at_ms=T0),
        # last month's: outside the period, but overdue and open
        dataclasses.replace(base, id="f", status="dispatched", created_at_ms=start - 1, deadline_ms=start + 1),
    ]
    k = kpis_of(tickets, start, end, now).as_json()
    assert (k["accepted"], k["closed"], k["overdue_open"]) == (5, 3, 2)
    assert k["completion_rate"] == 0.6
    assert k["on_time_rate"] == round(2 / 3, 4)
    assert k["satisfaction_rate"] == 0.5
    assert k["callback_rate"] == round(2 / 3, 4)
    water = next(d for d in k["by_department"] if d["department_id"] == "water")
    assert (water["accepted"], water["closed"], water["overdue_open"]) == (4, 2, 2)


def test_rates_with_nothing_to_count_are_null() -> None:
    k = kpis_of([], 0, 1, 1).as_json()
    assert k["completion_rate"] is None
    assert k["accepted"] == 0
    assert k["by_department"] == []


# ---- segmentation -----------------------------------------------------------------------------


def test_chinese_is_cut_into_words_and_their_parts() -> None:
    words = segment("如何办理居住证？")
    assert "居住证" in words
    assert "居住" in words
    assert "？" not in words
    assert index_text("燃气泄漏", "Gas LEAK") == "燃气 泄漏 gas leak"
    assert query_terms("居住证 居住证") == ["居住", "居住证"], "each term once"
