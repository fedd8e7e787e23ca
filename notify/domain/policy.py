"""Notification policies: which incident and ticket events go to whom, by which channels.

A policy matches events of incidents (`opened`, `severity_raised`, `escalated`, `acknowledged`,
`resolved`) or of tickets (`created`, `dispatched`, `near_deadline`, `reminded`, `overdue`,
`supervised`, `returned`), narrowed by severity, category, grid, rule, urgency or department,
and names its recipients: posts (`tier1`..`tier3`, `dept:ID`), people (`person:ID`), or the post
the event itself points at (`incident_tier`: the incident's escalation tier now; `department`:
the ticket's department). Who holds a post is read from the roster at the instant of sending.

Out of the box (CONTRACT.md): a high or critical incident notifies tier1 on duty; an escalation
to tier N notifies tierN on duty; a dispatched ticket notifies its department on duty; and, from
issue 12, a ticket near its deadline, overdue or supervised notifies its department, and a
critical incident nobody acknowledged is notified again every 10 minutes to its tier.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from kernel.outbox import OutboxEntry

from .roster import CONTACT_TYPES, TIERS, RosterError, is_post

INCIDENT_EVENTS: Final = ("opened", "severity_raised", "escalated", "acknowledged", "resolved")
TICKET_EVENTS: Final = (
    "created",
    "dispatched",
    "near_deadline",
    "reminded",
    "overdue",
    "supervised",
    "returned",
)
SEVERITIES: Final = ("low", "medium", "high", "critical")
SCHEDULER_ACTOR: Final = "system:scheduler"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class PolicyError(RosterError):
    """A policy refused (`loc` names the field)."""


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    on: str  # "incident" or "ticket"
    events: frozenset[str]
    to: tuple[str, ...]
    severities: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    grids: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()
    urgencies: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()
    channels: tuple[str, ...] = ()  # empty: every contact the person has
    repeat_every_min: float | None = None  # incidents: again while nobody acknowledges

    def matches(self, event: str, entry: OutboxEntry) -> bool:
        return entry.subject == self.on and event in self.events and self.matches_state(entry.state)

    def matches_state(self, s: Mapping[str, Any]) -> bool:
        """The filters other than events (severity, category, grid, rule, urgency, department)."""
        checks = (
            (self.severities, s.get("severity")),
            (self.categories, s.get("category")),
            (self.grids, s.get("grid_id")),
            (self.rules, s.get("rule_id")),
            (self.urgencies, s.get("urgency")),
            (self.departments, s.get("department_id")),
        )
        return all(not wanted or value in wanted for wanted, value in checks)


DEFAULT_POLICIES: Final = (
    Policy(
        "incident-high",
        "incident",
        frozenset({"opened", "severity_raised"}),
        ("tier1",),
        frozenset({"high", "critical"}),
    ),
    Policy("incident-escalated", "incident", frozenset({"escalated"}), ("incident_tier",)),
    Policy(
        "incident-critical-repeat",
        "incident",
        frozenset(),
        ("incident_tier",),
        frozenset({"critical"}),
        repeat_every_min=10.0,
    ),
    Policy("ticket-dispatched", "ticket", frozenset({"dispatched"}), ("department",)),
    Policy("ticket-deadline", "ticket", frozenset({"near_deadline", "overdue", "supervised"}), ("department",)),
)


def event_of(entry: OutboxEntry) -> str | None:
    """The policy event an outbox entry is (None: nothing a policy speaks of)."""
    if entry.subject == "incident":
        return entry.action if entry.action in INCIDENT_EVENTS else None
    mapping = {
        "created": "created",
        "dispatch": "dispatched",
        "overdue": "overdue",
        "supervise": "supervised",
        "return": "returned",
    }
    if entry.action == "remind":
        return "near_deadline" if entry.actor == SCHEDULER_ACTOR else "reminded"
    return mapping.get(entry.action)


def is_urgent(entry: OutboxEntry) -> bool:
    """Urgent events ignore quiet hours: a critical incident, an urgent ticket."""
    return entry.state.get("severity") == "critical" or entry.state.get("urgency") == "urgent"


def target_post(target: str, entry: OutboxEntry) -> str | None:
    """The post (or `person:ID`) a policy's recipient names for this entry."""
    if target == "incident_tier":
        tier = entry.state.get("escalation_tier")
        return f"tier{tier}" if isinstance(tier, int) and 1 <= tier <= len(TIERS) else None
    if target == "department":
        department = entry.state.get("department_id")
        return f"dept:{department}" if department else None
    return target


def _names(raw: dict[str, Any], key: str, loc: tuple[str | int, ...], allowed: Iterable[str] | None) -> frozenset[str]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError((*loc, key), f"{key} is a list of names")
    if allowed is not None:
        known = set(allowed)
        for n, v in enumerate(value):
            if v not in known:
                raise PolicyError(
                    (*loc, key, n),
                    f"unknown {key[:-1] if key.endswith('s') else key} {v!r}: one of {', '.join(sorted(known))}",
                )
    return frozenset(value)


def parse_policies(
    raw: Any, departments: Iterable[str] | None = None, people: Iterable[str] | None = None
) -> list[Policy]:
    """Policies from their JSON form (a list); PolicyError names the first field at fault."""
    if not isinstance(raw, list):
        raise PolicyError((), "policies are a list")
    departments = None if departments is None else set(departments)
    people = None if people is None else set(people)
    seen: set[str] = set()
    out: list[Policy] = []
    for n, item in enumerate(raw):
        loc: tuple[str | int, ...] = (n,)
        if not isinstance(item, dict):
            raise PolicyError(loc, "a policy is an object")
        known_fields = {
            "id", "on", "events", "to", "severities", "categories", "grids", "rules",
            "urgencies", "departments", "channels", "repeat_every_min",
        }  # fmt: skip
        unknown = set(item) - known_fields
        if unknown:
            raise PolicyError((*loc, sorted(unknown)[0]), "unknown field")
        policy_id = item.get("id")
        if not isinstance(policy_id, str) or not _ID.match(policy_id):
            raise PolicyError((*loc, "id"), "an id of letters, digits and _ . : - is required")
        if policy_id in seen:
            raise PolicyError((*loc, "id"), f"policy {policy_id!r} is listed twice")
        seen.add(policy_id)
        on = item.get("on")
        if on not in ("incident", "ticket"):
            raise PolicyError((*loc, "on"), "on is incident or ticket")
        events = _names(item, "events", loc, INCIDENT_EVENTS if on == "incident" else TICKET_EVENTS)
        to = item.get("to")
        if not isinstance(to, list) or not to:
            raise PolicyError(
                (*loc, "to"),
                "to: a non-empty list of posts (tier1..tier3, dept:ID), person:ID, incident_tier or department",
            )
        for k, target in enumerate(to):
            _check_target(target, on, (*loc, "to", k), departments, people)
        repeat = item.get("repeat_every_min")
        if repeat is not None and (
            isinstance(repeat, bool) or not isinstance(repeat, int | float) or not 0.01 <= repeat <= 24 * 60
        ):
            raise PolicyError((*loc, "repeat_every_min"), "minutes between 0.01 and 1440")
        if repeat is not None and on != "incident":
            raise PolicyError((*loc, "repeat_every_min"), "only incidents are notified again")
        if not events and repeat is None:
            raise PolicyError((*loc, "events"), "a policy needs events, or repeat_every_min")
        out.append(
            Policy(
                policy_id,
                on,
                events,
                tuple(to),
                severities=_names(item, "severities", loc, SEVERITIES),
                categories=_names(item, "categories", loc, None),
                grids=_names(item, "grids", loc, None),
                rules=_names(item, "rules", loc, None),
                urgencies=_names(item, "urgencies", loc, ("normal", "urgent")),
                departments=_names(item, "departments", loc, departments),
                channels=tuple(sorted(_names(item, "channels", loc, CONTACT_TYPES))),
                repeat_every_min=None if repeat is None else float(repeat),
            )
        )
    return out


def _check_target(
    target: Any, on: str, loc: tuple[str | int, ...], departments: set[str] | None, people: set[str] | None
) -> None:
    if not isinstance(target, str):
        raise PolicyError(loc, "a recipient is a string")
    if target == "incident_tier" and on == "incident":
        return
    if target == "department" and on == "ticket":
        return
    if target.startswith("person:"):
        if people is not None and target[7:] not in people:
            raise PolicyError(loc, f"no person {target[7:]!r} in the duty roster")
        return
    if target.startswith("tier"):
        if target not in TIERS:
            raise PolicyError(loc, f"there is no {target}: the tiers are {', '.join(TIERS)}")
        return
    if is_post(target, departments):
        return
    if target.startswith("dept:"):
        raise PolicyError(loc, f"unknown department in {target!r}")
    raise PolicyError(loc, f"unknown recipient {target!r}")


def policy_json(p: Policy) -> dict[str, Any]:
    out: dict[str, Any] = {"id": p.id, "on": p.on, "events": sorted(p.events), "to": list(p.to)}
    for key in ("severities", "categories", "grids", "rules", "urgencies", "departments"):
        value = getattr(p, key)
        if value:
            out[key] = sorted(value)
    if p.channels:
        out["channels"] = list(p.channels)
    if p.repeat_every_min is not None:
        out["repeat_every_min"] = p.repeat_every_min
    return out


@dataclass(frozen=True, slots=True)
class Recipient:
    post: str  # where it came from: tier2, dept:water, person:li
    person_id: str
    channels: tuple[str, ...]


def recipients(
    entry: OutboxEntry,
    policies: Sequence[Policy],
    on_duty: Mapping[str, Sequence[tuple[str, Mapping[str, str]]]],
) -> list[Recipient]:
    """Who an entry goes to, and by which of their contacts; one per person. `on_duty` maps each
    post (and `person:ID`) to the (person id, contacts) holding it now."""
    event = event_of(entry)
    if event is None:
        return []
    found: dict[str, Recipient] = {}
    for policy in policies:
        if not policy.matches(event, entry):
            continue
        for target in policy.to:
            post = target_post(target, entry)
            if post is None:
                continue
            for person_id, contacts in on_duty.get(post, ()):
                channels = [c for c in (policy.channels or CONTACT_TYPES) if c in contacts]
                before = found.get(person_id)
                merged = tuple(dict.fromkeys((*(before.channels if before else ()), *channels)))
                if merged:
                    found[person_id] = Recipient(before.post if before else post, person_id, merged)
    return list(found.values())


def posts_for(entry: OutboxEntry, policies: Sequence[Policy]) -> set[str]:
    """The posts whose holders `recipients` needs to know for this entry."""
    event = event_of(entry)
    if event is None:
        return set()
    posts: set[str] = set()
    for policy in policies:
        if policy.matches(event, entry):
            posts.update(p for p in (target_post(t, entry) for t in policy.to) if p is not None)
    return posts


def repeat_policy(state: Mapping[str, Any], policies: Sequence[Policy]) -> Policy | None:
    """The policy that has an unacknowledged incident notified again (the most frequent one)."""
    matching = [p for p in policies if p.repeat_every_min is not None and p.on == "incident" and p.matches_state(state)]
    return min(matching, key=lambda p: p.repeat_every_min or 0.0, default=None)
