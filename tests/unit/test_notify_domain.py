"""The notify area's pure parts: the roster's shifts, the policies, the links, the messages."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from kernel.outbox import OutboxEntry
from notify.domain.links import LinkError, new_link_id, sign, verify
from notify.domain.messages import Message, render, render_digest, wecom_body
from notify.domain.policy import DEFAULT_POLICIES, event_of, parse_policies, recipients
from notify.domain.roster import RosterError, merge_csv, parse_merged, parse_roster

TZ = ZoneInfo("Asia/Shanghai")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def roster(**parts: object) -> dict[str, object]:
    people = [{"id": p, "name": p} for p in ("a", "b", "c")]
    return {"people": people, **parts}


def test_an_overnight_pattern_belongs_to_the_day_it_starts() -> None:
    r = parse_roster(
        roster(patterns=[{"post": "tier1", "person_id": "a", "days": "fri", "start": "22:00", "end": "06:00"}])
    )
    assert [p.id for p in r.on_duty("tier1", ms("2026-11-27T23:00:00+08:00"), TZ)] == ["a"]  # Friday night
    assert [p.id for p in r.on_duty("tier1", ms("2026-11-28T05:59:00+08:00"), TZ)] == ["a"]  # Saturday morning
    assert r.on_duty("tier1", ms("2026-11-28T06:00:00+08:00"), TZ) == []
    assert r.on_duty("tier1", ms("2026-11-26T23:00:00+08:00"), TZ) == []  # Thursday night


def test_a_sunday_night_shift_runs_into_monday() -> None:
    r = parse_roster(
        roster(patterns=[{"post": "tier2", "person_id": "b", "days": [7], "start": "20:00", "end": "08:00"}])
    )
    assert [p.id for p in r.on_duty("tier2", ms("2026-11-30T07:00:00+08:00"), TZ)] == ["b"]  # Monday 07:00


def test_overlapping_rota_across_the_week_boundary_is_refused() -> None:
    patterns = [
        {"post": "tier1", "person_id": "a", "days": "sun", "start": "20:00", "end": "08:00"},
        {"post": "tier1", "person_id": "b", "days": "mon", "start": "07:00", "end": "12:00"},
    ]
    with pytest.raises(RosterError) as refused:
        parse_roster(roster(patterns=patterns))
    assert refused.value.loc == ("patterns", 1, "start")


def test_back_to_back_shifts_are_a_handover_not_an_overlap() -> None:
    shifts = [
        {
            "post": "dept:water",
            "person_id": "a",
            "start": "2026-12-01T08:00:00+08:00",
            "end": "2026-12-01T20:00:00+08:00",
        },
        {
            "post": "dept:water",
            "person_id": "b",
            "start": "2026-12-01T20:00:00+08:00",
            "end": "2026-12-02T08:00:00+08:00",
        },
    ]
    r = parse_roster(roster(shifts=shifts), departments=["water"])
    assert [p.id for p in r.on_duty("dept:water", ms("2026-12-01T20:00:00+08:00"), TZ)] == ["b"]
    assert [p.id for p in r.on_duty("dept:water", ms("2026-12-01T19:59:59+08:00"), TZ)] == ["a"]


def test_the_same_hours_on_two_posts_are_fine() -> None:
    patterns = [
        {"post": "tier1", "person_id": "a", "days": "daily", "start": "00:00", "end": "00:00"},
        {"post": "tier2", "person_id": "b", "days": "daily", "start": "00:00", "end": "00:00"},
    ]
    r = parse_roster(roster(patterns=patterns))
    assert [p.id for p in r.on_duty("tier2", ms("2026-12-01T03:00:00+08:00"), TZ)] == ["b"]


@pytest.mark.parametrize("days", ["mon-", "funday", "5-2", [], [0], [8], ["mon"], True])
def test_bad_days_are_refused(days: object) -> None:
    with pytest.raises(RosterError) as refused:
        parse_roster(
            roster(patterns=[{"post": "tier1", "person_id": "a", "days": days, "start": "08:00", "end": "09:00"}])
        )
    assert refused.value.loc == ("patterns", 0, "days")


def test_a_csv_row_error_names_its_line() -> None:
    text = "post,person_id,start,end,days\ntier1,a,08:00,20:00,mon\ntier1,b,25:00,20:00,tue\n"
    with pytest.raises(RosterError) as refused:
        parse_merged(merge_csv(roster(), text))
    assert refused.value.loc == ("csv", 3, "start")
    with pytest.raises(RosterError) as unknown:
        merge_csv(roster(), "post,person_id,start,end,colour\n")
    assert unknown.value.loc == ("csv", 1, "colour")


def entry(subject: str, action: str, actor: str = "x", **state: object) -> OutboxEntry:
    return OutboxEntry(ms("2026-11-23T10:00:00+08:00"), subject, "id-1", action, actor, dict(state), {}, 1)  # type: ignore[arg-type]


def test_ticket_events_are_named_as_the_policies_speak_of_them() -> None:
    assert event_of(entry("ticket", "dispatch")) == "dispatched"
    assert event_of(entry("ticket", "remind", "system:scheduler")) == "near_deadline"
    assert event_of(entry("ticket", "remind", "agent-li")) == "reminded"
    assert event_of(entry("ticket", "accept")) is None
    assert event_of(entry("incident", "escalated")) == "escalated"
    assert event_of(entry("incident", "flapping")) is None


def test_the_default_policies_send_each_event_to_its_post() -> None:
    on_duty = {
        "tier1": [("a", {"webhook": "http://h/a"})],
        "tier2": [("b", {"email": "b@x.cn", "sms": "13800000000"})],
        "dept:water": [("c", {"webhook": "http://h/c"})],
    }
    opened = entry("incident", "opened", severity="high", escalation_tier=1, status="open")
    assert [(r.person_id, r.channels) for r in recipients(opened, DEFAULT_POLICIES, on_duty)] == [("a", ("webhook",))]
    low = entry("incident", "opened", severity="medium", escalation_tier=1, status="open")
    assert recipients(low, DEFAULT_POLICIES, on_duty) == []
    escalated = entry("incident", "escalated", severity="medium", escalation_tier=2, status="open")
    assert [(r.post, r.person_id, r.channels) for r in recipients(escalated, DEFAULT_POLICIES, on_duty)] == [
        ("tier2", "b", ("email", "sms"))
    ]
    dispatched = entry("ticket", "dispatch", department_id="water", urgency="normal")
    assert [r.person_id for r in recipients(dispatched, DEFAULT_POLICIES, on_duty)] == ["c"]


def test_a_policy_narrowed_to_a_grid_and_channel() -> None:
    [policy] = parse_policies(
        [{"id": "g", "on": "incident", "events": ["opened"], "grids": ["g-1"], "to": ["tier1"], "channels": ["sms"]}]
    )
    on_duty = {"tier1": [("a", {"webhook": "http://h/a", "sms": "13800000000"})]}
    inside = entry("incident", "opened", grid_id="g-1")
    outside = entry("incident", "opened", grid_id="g-2")
    assert [r.channels for r in recipients(inside, [policy], on_duty)] == [("sms",)]
    assert recipients(outside, [policy], on_duty) == []


def test_a_link_is_signed_expires_and_cannot_be_forged() -> None:
    key = b"k" * 32
    link_id = new_link_id()
    expires = 1_800_000_000_000
    token = sign(key, link_id, expires)
    assert verify(key, token, expires - 1) == link_id
    with pytest.raises(LinkError, match="expired"):
        verify(key, token, expires)
    with pytest.raises(LinkError, match="not an acknowledgement link"):
        verify(b"other" * 8, token, expires - 1)
    longer = token.replace(f".{expires}.", ".1900000000000.")
    with pytest.raises(LinkError, match="not an acknowledgement link"):
        verify(key, longer, expires - 1)  # a later expiry with the old signature


def test_messages_fit_their_channels() -> None:
    incident = entry("incident", "opened", severity="critical", escalation_tier=2, status="open", title="水库" * 3000)
    message = render(incident, "opened", TZ, link="http://h/ack/x")
    assert "紧急" in message.title
    assert "tier 2" in message.text
    assert message.text.endswith("http://h/ack/x")
    assert len(wecom_body(message)["markdown"]["content"].encode()) <= 4096
    digest = render_digest([("a", "g-1"), ("b", "g-1"), ("c", None)], 10)
    assert digest.title.startswith("【汇总】3 条通知")
    assert "网格 grid g-1: 2" in digest.text
    assert isinstance(digest, Message)
