"""The duty roster: who is on duty for which post, and when (CONTRACT.md `/api/duty`).

Posts are `tier1` (the hotline office), `tier2` (the deputy mayor in charge), `tier3` (the party
secretary and the mayor) and `dept:DEPARTMENT_ID`. Two kinds of shift put a person on a post:
- **patterns**, the standing rota: days of the week and hours of the day in the city's time zone
  (`{"post", "person_id", "days": [1..7], "start": "08:00", "end": "20:00"}`, an end at or before
  the start runs past midnight into the next day);
- **shifts**, dated with an offset (`{"post", "person_id", "start", "end"}`): exceptions, swaps
  and handovers. While a dated shift covers an instant, it is who is on duty for its post then,
  whatever the rota says.
A shift runs from its start up to, not including, its end: at a handover the next person is on
duty from the first instant. One person per post at a time: overlapping shifts of one post are
refused, as is a shift with no one.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from email.utils import parseaddr
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

TIERS: Final = ("tier1", "tier2", "tier3")
CONTACT_TYPES: Final = ("webhook", "email", "wecom", "dingtalk", "sms")
DAY_NAMES: Final = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 7}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_EMAIL = re.compile(
    r"^[^@\s<>,;]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
_PHONE = re.compile(r"^\+?[0-9]{5,20}$")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class RosterError(ValueError):
    """A roster refused: `loc` is the path of the field at fault (as in a 422's `loc`)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time

    def covers(self, local: datetime) -> bool:
        now = local.time()
        if self.start <= self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end

    def ends_after(self, local: datetime) -> datetime:
        """The first instant after `local` at which the quiet hours are over."""
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        return end if end > local else end + timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Person:
    id: str
    name: str
    contacts: Mapping[str, str] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None


@dataclass(frozen=True, slots=True)
class Shift:
    """A dated shift (an exception to the rota, a swap, a handover)."""

    post: str
    person_id: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Pattern:
    """A standing shift: these days of the week, these hours of the day (the city's zone)."""

    post: str
    person_id: str
    days: frozenset[int]
    start: time
    end: time

    @property
    def overnight(self) -> bool:
        return self.end <= self.start

    def covers(self, local: datetime) -> bool:
        day = local.isoweekday()
        now = local.time()
        if not self.overnight:
            return day in self.days and self.start <= now < self.end
        yesterday = 7 if day == 1 else day - 1
        return (day in self.days and now >= self.start) or (yesterday in self.days and now < self.end)

    def minutes(self) -> list[tuple[int, int]]:
        """The week's minutes it covers, as [from, to) ranges counted from Monday 00:00."""
        start = self.start.hour * 60 + self.start.minute
        end = self.end.hour * 60 + self.end.minute
        week = 7 * 24 * 60
        out: list[tuple[int, int]] = []
        for day in sorted(self.days):
            begin = (day - 1) * 24 * 60 + start
            length = (end - start) if not self.overnight else (24 * 60 - start + end)
            stop = begin + length
            if stop <= week:
                out.append((begin, stop))
            else:
                out += [(begin, week), (0, stop - week)]
        return out


@dataclass(frozen=True, slots=True)
class Roster:
    people: Mapping[str, Person] = field(default_factory=dict)
    shifts: tuple[Shift, ...] = ()
    patterns: tuple[Pattern, ...] = ()

    def on_duty(self, post: str, at_ms: int, tz: ZoneInfo) -> list[Person]:
        """Who is on duty for a post at an instant (nobody: an empty list)."""
        dated = [s for s in self.shifts if s.post == post and s.start_ms <= at_ms < s.end_ms]
        if dated:
            return [self.people[s.person_id] for s in dated if s.person_id in self.people]
        local = datetime.fromtimestamp(at_ms / 1000, tz)
        return [self.people[p.person_id] for p in self.patterns if p.post == post and p.covers(local)]

    def posts(self) -> list[str]:
        return sorted({s.post for s in self.shifts} | {p.post for p in self.patterns})


def is_post(post: str, departments: Iterable[str] | None = None) -> bool:
    if post in TIERS:
        return True
    if post.startswith("dept:"):
        department = post[5:]
        return bool(department) and (departments is None or department in set(departments))
    return False


def check_contact(kind: str, value: Any) -> str:
    """A contact's address, checked for its type; ValueError says what is wrong."""
    if kind not in CONTACT_TYPES:
        raise ValueError(f"unknown contact type {kind!r}: one of {', '.join(CONTACT_TYPES)}")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"the {kind} contact must be a non-empty string")
    text: str = value.strip()
    if kind in ("webhook", "wecom", "dingtalk"):
        check_url(text, f"the {kind} contact")
    elif kind == "email":
        _name, address = parseaddr(text)
        if address != text or not _EMAIL.match(text):
            raise ValueError(f"{text!r} is not an e-mail address")
    elif kind == "sms" and not _PHONE.match(text):
        raise ValueError(f"{text!r} is not a phone number (digits, optionally a leading +)")
    return text


def check_url(value: str, what: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{what} is not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL with a host, not {value!r}")
    if any(c.isspace() for c in value):
        raise ValueError(f"{what} must not contain spaces")
    return value


def _instant(value: Any, loc: tuple[str | int, ...]) -> int:
    if not isinstance(value, str):
        raise RosterError(loc, "a time with an offset, such as 2026-11-23T08:00:00+08:00")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RosterError(loc, f"{value!r} is not an ISO-8601 time") from exc
    if parsed.tzinfo is None:
        raise RosterError(loc, f"{value!r} has no offset: write it as 2026-11-23T08:00:00+08:00")
    return int(parsed.timestamp() * 1000)


def _clock(value: Any, loc: tuple[str | int, ...]) -> time:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if match is None:
        raise RosterError(loc, "a time of day as HH:MM, such as 08:00")
    return time(int(match.group(1)), int(match.group(2)))


def parse_days(value: Any, loc: tuple[str | int, ...]) -> frozenset[int]:
    """Days of the week: a list of 1 (Monday) to 7, or text such as `mon-fri`, `sat,sun`, `daily`."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("daily", "every day", "*"):
            return frozenset(range(1, 8))
        days: set[int] = set()
        for part in filter(None, (p.strip() for p in text.split(","))):
            ends = [e.strip() for e in part.split("-")]
            try:
                numbers = [int(e) if e.isdigit() else DAY_NAMES[e[:3]] for e in ends]
            except KeyError as exc:
                raise RosterError(loc, f"{part!r} is not a day (mon..sun or 1..7)") from exc
            if len(numbers) == 1:
                days.add(numbers[0])
            elif len(numbers) == 2 and numbers[0] <= numbers[1]:
                days.update(range(numbers[0], numbers[1] + 1))
            else:
                raise RosterError(loc, f"{part!r} is not a range of days")
        value = sorted(days)
    if not isinstance(value, list) or not value:
        raise RosterError(loc, "days: a non-empty list of 1 (Monday) to 7 (Sunday), or text such as mon-fri")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 7 for d in value):
        raise RosterError(loc, "days are 1 (Monday) to 7 (Sunday)")
    return frozenset(value)


def _str(value: Any, loc: tuple[str | int, ...], what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RosterError(loc, f"{what} is required")
    return value.strip()


def parse_person(raw: Any, loc: tuple[str | int, ...]) -> Person:
    if not isinstance(raw, dict):
        raise RosterError(loc, "a person is an object {id, name, contacts}")
    unknown = set(raw) - {"id", "name", "contacts", "quiet_hours"}
    if unknown:
        raise RosterError((*loc, sorted(unknown)[0]), "unknown field")
    person_id = _str(raw.get("id"), (*loc, "id"), "id")
    if not _ID.match(person_id):
        raise RosterError((*loc, "id"), "letters, digits and _ . : - only, up to 64")
    name = _str(raw.get("name"), (*loc, "name"), "name")
    contacts_raw = raw.get("contacts") or {}
    if not isinstance(contacts_raw, dict):
        raise RosterError((*loc, "contacts"), 'contacts are an object such as {"email": "..."}')
    contacts: dict[str, str] = {}
    for kind, value in contacts_raw.items():
        if value is None:
            continue
        try:
            contacts[kind] = check_contact(kind, value)
        except ValueError as exc:
            raise RosterError((*loc, "contacts", kind), str(exc)) from exc
    quiet = None
    if raw.get("quiet_hours") is not None:
        q = raw["quiet_hours"]
        if not isinstance(q, dict):
            raise RosterError((*loc, "quiet_hours"), 'quiet hours are {"start": "22:00", "end": "07:00"}')
        quiet = QuietHours(
            _clock(q.get("start"), (*loc, "quiet_hours", "start")), _clock(q.get("end"), (*loc, "quiet_hours", "end"))
        )
        if quiet.start == quiet.end:
            raise RosterError((*loc, "quiet_hours", "end"), "quiet hours end where they start")
    return Person(person_id, name, contacts, quiet)


def _post(value: Any, loc: tuple[str | int, ...], departments: Iterable[str] | None) -> str:
    post = _str(value, loc, "post")
    if not is_post(post, departments):
        if post.startswith("dept:"):
            raise RosterError(loc, f"unknown department in {post!r}")
        raise RosterError(loc, f"post {post!r}: one of tier1, tier2, tier3 or dept:DEPARTMENT_ID")
    return post


def _person_ref(raw: dict[str, Any], loc: tuple[str | int, ...], people: Mapping[str, Person]) -> str:
    person_id = raw.get("person_id")
    if not isinstance(person_id, str) or not person_id.strip():
        raise RosterError((*loc, "person_id"), "a shift with no one: person_id is required")
    if person_id not in people:
        raise RosterError((*loc, "person_id"), f"no person {person_id!r} in the roster's people")
    return person_id


def parse_roster(raw: Any, departments: Iterable[str] | None = None) -> Roster:
    """A roster from its JSON form; RosterError names the first field at fault."""
    if not isinstance(raw, dict):
        raise RosterError((), 'the roster is an object {"people": [...], "shifts": [...], "patterns": [...]}')
    unknown = set(raw) - {"people", "shifts", "patterns"}
    if unknown:
        raise RosterError((sorted(unknown)[0],), "unknown field")
    departments = None if departments is None else set(departments)
    people: dict[str, Person] = {}
    for n, item in enumerate(_list(raw, "people")):
        person = parse_person(item, ("people", n))
        if person.id in people:
            raise RosterError(("people", n, "id"), f"person {person.id!r} is listed twice")
        people[person.id] = person
    shifts: list[Shift] = []
    for n, item in enumerate(_list(raw, "shifts")):
        loc: tuple[str | int, ...] = ("shifts", n)
        if not isinstance(item, dict):
            raise RosterError(loc, "a shift is an object {post, person_id, start, end}")
        post = _post(item.get("post"), (*loc, "post"), departments)
        person_id = _person_ref(item, loc, people)
        start, end = _instant(item.get("start"), (*loc, "start")), _instant(item.get("end"), (*loc, "end"))
        if end <= start:
            raise RosterError((*loc, "end"), "a shift ends after it starts")
        shifts.append(Shift(post, person_id, start, end))
    patterns: list[Pattern] = []
    for n, item in enumerate(_list(raw, "patterns")):
        loc = ("patterns", n)
        if not isinstance(item, dict):
            raise RosterError(loc, "a pattern is an object {post, person_id, days, start, end}")
        post = _post(item.get("post"), (*loc, "post"), departments)
        person_id = _person_ref(item, loc, people)
        pattern = Pattern(
            post,
            person_id,
            parse_days(item.get("days"), (*loc, "days")),
            _clock(item.get("start"), (*loc, "start")),
            _clock(item.get("end"), (*loc, "end")),
        )
        patterns.append(pattern)
    _no_overlaps(shifts, patterns)
    return Roster(people, tuple(shifts), tuple(patterns))


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise RosterError((key,), f"{key} is a list")
    return value


def _first_overlap(spans: list[tuple[int, int, int]]) -> tuple[int, int] | None:
    """Two different owners whose [start, end) spans overlap, as (earlier, later), or None."""
    reach, owner = -1, -1
    for start, end, n in sorted(spans):
        if start < reach and n != owner:
            return owner, n
        if end > reach:
            reach, owner = end, n
    return None


def _no_overlaps(shifts: Sequence[Shift], patterns: Sequence[Pattern]) -> None:
    dated: dict[str, list[tuple[int, int, int]]] = {}
    for n, s in enumerate(shifts):
        dated.setdefault(s.post, []).append((s.start_ms, s.end_ms, n))
    for post, spans in dated.items():
        found = _first_overlap(spans)
        if found is not None:
            first, second = sorted(found)
            raise RosterError(
                ("shifts", second, "start"), f"overlaps shift {first} of {post}: one person per post at a time"
            )
    rota: dict[str, list[tuple[int, int, int]]] = {}
    for n, p in enumerate(patterns):
        rota.setdefault(p.post, []).extend((a, b, n) for a, b in p.minutes())
    for post, spans in rota.items():
        found = _first_overlap(spans)
        if found is not None:
            first, second = sorted(found)
            raise RosterError(
                ("patterns", second, "start"), f"overlaps pattern {first} of {post}: one person per post at a time"
            )


def person_json(p: Person) -> dict[str, Any]:
    out: dict[str, Any] = {"id": p.id, "name": p.name, "contacts": dict(p.contacts)}
    if p.quiet_hours is not None:
        out["quiet_hours"] = {
            "start": p.quiet_hours.start.strftime("%H:%M"),
            "end": p.quiet_hours.end.strftime("%H:%M"),
        }
    return out


CSV_COLUMNS: Final = ("post", "person_id", "start", "end", "days", "name", *CONTACT_TYPES)


def merge_csv(current: dict[str, Any], text: str) -> dict[str, Any]:
    """The roster's JSON form with a CSV's rows added (the form rosters are kept in, a sheet).

    Columns: `post,person_id,start,end` and optionally `days` (with `days`, start and end are
    hours of the day: a rota pattern; without, times with an offset: a dated shift), `name` and
    the contact columns (a person not in the roster yet is added with them, one already there has
    them updated). RosterError names the line (1 is the header) and column at fault."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = reader.fieldnames or []
    missing = [c for c in ("post", "person_id", "start", "end") if c not in header]
    if missing:
        raise RosterError(("csv", 1), f"the header needs the columns {', '.join(missing)}")
    extra = [c for c in header if c not in CSV_COLUMNS]
    if extra:
        raise RosterError(("csv", 1, extra[0]), f"unknown column; the columns are {', '.join(CSV_COLUMNS)}")
    people = {p["id"]: dict(p) for p in current.get("people", [])}
    shifts = list(current.get("shifts", []))
    patterns = list(current.get("patterns", []))
    for line, row in enumerate(reader, start=2):
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        person_id = values.get("person_id", "")
        contacts = {k: values[k] for k in CONTACT_TYPES if values.get(k)}
        if person_id and (values.get("name") or contacts):
            person = people.setdefault(person_id, {"id": person_id, "name": values.get("name") or person_id})
            if values.get("name"):
                person["name"] = values["name"]
            person["contacts"] = {**person.get("contacts", {}), **contacts}
            try:
                parse_person(person, ("csv", line))
            except RosterError as exc:
                raise RosterError(("csv", line, *exc.loc[2:]), str(exc)) from exc
        entry = {
            "post": values.get("post", ""),
            "person_id": person_id,
            "start": values.get("start"),
            "end": values.get("end"),
        }
        if values.get("days"):
            patterns.append({**entry, "days": values["days"], "_line": line})
        else:
            shifts.append({**entry, "_line": line})
    merged = {"people": list(people.values()), "shifts": shifts, "patterns": patterns}
    return merged


def parse_merged(merged: dict[str, Any], departments: Iterable[str] | None = None) -> tuple[Roster, dict[str, Any]]:
    """Parse a roster merged from a CSV: an error on a CSV row names its line; returns the roster
    and its JSON form to store (without the line numbers)."""
    lines: dict[tuple[str | int, str | int], int] = {
        (key, n): item.pop("_line")
        for key in ("shifts", "patterns")
        for n, item in enumerate(merged[key])
        if isinstance(item, dict) and "_line" in item
    }
    try:
        return parse_roster(merged, departments), merged
    except RosterError as exc:
        if len(exc.loc) >= 2 and (exc.loc[0], exc.loc[1]) in lines:
            raise RosterError(("csv", lines[(exc.loc[0], exc.loc[1])], *exc.loc[2:]), str(exc)) from exc
        raise
