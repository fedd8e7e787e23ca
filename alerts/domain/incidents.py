"""Incidents: pure transitions with their history. One open incident per rule and subject.

`open` -> `acknowledged` -> `resolved`. A rule's Raise opens an incident or updates the open one
(severity only rises; devices are added); its Clear resolves it when the rule resolves by itself
(`resolve: auto`), else marks it cleared for a person to resolve. Escalation tiers go 1 -> 2 -> 3
(hotline office, deputy mayor in charge, party secretary and mayor), by a person or by time left
unacknowledged (`EscalationPolicy`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .evaluate import Clear, Raise
from .rules import Severity, rank

IncidentStatus = Literal["open", "acknowledged", "resolved"]
MAX_TIER = 3


class TransitionError(Exception):
    """The action is not allowed in the incident's state (the API answers 409)."""


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    rule_id: str
    subject: str
    category: str
    severity: Severity
    escalation_tier: int
    status: IncidentStatus
    title: str
    opened_at_ms: int
    updated_at_ms: int
    resolved_at_ms: int | None = None
    acknowledged_at_ms: int | None = None
    lat: float | None = None
    lon: float | None = None
    grid_id: str | None = None
    device_ids: tuple[str, ...] = ()
    camera_ids: tuple[str, ...] = ()
    ticket_id: str | None = None
    # The rule's condition is over (an incident a person must resolve stays open until then).
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    incident_id: str
    at_ms: int
    actor: str  # "rule:<id>", "escalation policy", or the token's name
    action: str  # opened, updated, severity_raised, cleared, acknowledged, escalated, resolved
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """Tier by severity when opened, and by time left unacknowledged (seconds; None: never)."""

    critical_to_tier2_s: float | None = 600.0
    critical_to_tier3_s: float | None = 1800.0
    high_to_tier2_s: float | None = 1800.0

    def tier_due(self, incident: Incident, now_ms: int) -> int:
        if incident.status != "open":
            return incident.escalation_tier
        waited_s = (now_ms - incident.opened_at_ms) / 1000
        tier = incident.escalation_tier
        if incident.severity == "critical":
            if self.critical_to_tier3_s is not None and waited_s >= self.critical_to_tier3_s:
                tier = max(tier, 3)
            elif self.critical_to_tier2_s is not None and waited_s >= self.critical_to_tier2_s:
                tier = max(tier, 2)
        elif incident.severity == "high" and self.high_to_tier2_s is not None and waited_s >= self.high_to_tier2_s:
            tier = max(tier, 2)
        return tier


def actor_of(rule_id: str) -> str:
    return f"rule:{rule_id}"


def open_incident(new_id: str, category: str, raised: Raise) -> tuple[Incident, HistoryEntry]:
    incident = Incident(
        id=new_id,
        rule_id=raised.rule_id,
        subject=raised.subject,
        category=category,
        severity=raised.severity,
        escalation_tier=1,
        status="open",
        title=raised.title,
        opened_at_ms=raised.at_ms,
        updated_at_ms=raised.at_ms,
        lat=raised.lat,
        lon=raised.lon,
        grid_id=raised.grid_id,
        device_ids=raised.device_ids,
        camera_ids=raised.camera_ids,
    )
    return incident, HistoryEntry(new_id, raised.at_ms, actor_of(raised.rule_id), "opened", raised.title)


def update_incident(incident: Incident, raised: Raise) -> tuple[Incident, list[HistoryEntry]]:
    """The rule raised again while the incident is open: never a second incident."""
    if incident.status == "resolved":
        raise TransitionError(f"incident {incident.id} is resolved; a new raise opens a new incident")
    devices = tuple(dict.fromkeys((*incident.device_ids, *raised.device_ids)))
    higher = rank(raised.severity) > rank(incident.severity)
    changed = replace(
        incident,
        severity=raised.severity if higher else incident.severity,
        title=raised.title if higher else incident.title,
        device_ids=devices,
        updated_at_ms=max(incident.updated_at_ms, raised.at_ms),
        cleared=False,
    )
    if changed == incident:
        return incident, []
    actor = actor_of(raised.rule_id)
    if higher:
        entry = HistoryEntry(
            incident.id, raised.at_ms, actor, "severity_raised", f"{incident.severity} -> {raised.severity}"
        )
    else:
        entry = HistoryEntry(incident.id, raised.at_ms, actor, "updated", raised.title)
    return changed, [entry]


def clear_incident(
    incident: Incident, cleared: Clear, resolve: Literal["auto", "manual"]
) -> tuple[Incident, list[HistoryEntry]]:
    if incident.status == "resolved" or incident.cleared:
        return incident, []
    actor = actor_of(cleared.rule_id)
    at = max(incident.updated_at_ms, cleared.at_ms)
    if resolve == "auto":
        done = replace(incident, status="resolved", resolved_at_ms=at, updated_at_ms=at, cleared=True)
        return done, [HistoryEntry(incident.id, at, actor, "resolved", cleared.detail or "the rule cleared")]
    marked = replace(incident, cleared=True, updated_at_ms=at)
    return marked, [HistoryEntry(incident.id, at, actor, "cleared", cleared.detail or "the condition is over")]


def acknowledge(incident: Incident, actor: str, now_ms: int) -> tuple[Incident, HistoryEntry]:
    if incident.status != "open":
        raise TransitionError(f"incident {incident.id} is {incident.status}; only an open incident is acknowledged")
    done = replace(incident, status="acknowledged", acknowledged_at_ms=now_ms, updated_at_ms=now_ms)
    return done, HistoryEntry(incident.id, now_ms, actor, "acknowledged")


def escalate(
    incident: Incident, actor: str, now_ms: int, reason: str = "", to_tier: int | None = None
) -> tuple[Incident, HistoryEntry]:
    if incident.status == "resolved":
        raise TransitionError(f"incident {incident.id} is resolved")
    tier = incident.escalation_tier + 1 if to_tier is None else to_tier
    if tier > MAX_TIER:
        raise TransitionError(f"incident {incident.id} is at tier {incident.escalation_tier}, the highest")
    if tier <= incident.escalation_tier:
        raise TransitionError(f"incident {incident.id} is at tier {incident.escalation_tier} already")
    done = replace(incident, escalation_tier=tier, updated_at_ms=now_ms)
    detail = f"tier {incident.escalation_tier} -> {tier}" + (f": {reason}" if reason else "")
    return done, HistoryEntry(incident.id, now_ms, actor, "escalated", detail)


def resolve(incident: Incident, actor: str, now_ms: int, note: str = "") -> tuple[Incident, HistoryEntry]:
    if incident.status == "resolved":
        raise TransitionError(f"incident {incident.id} is resolved already")
    done = replace(incident, status="resolved", resolved_at_ms=now_ms, updated_at_ms=now_ms)
    return done, HistoryEntry(incident.id, now_ms, actor, "resolved", note)


def escalate_by_time(incident: Incident, policy: EscalationPolicy, now_ms: int) -> tuple[Incident, HistoryEntry] | None:
    """The escalation the policy calls for now, if any."""
    due = policy.tier_due(incident, now_ms)
    if due <= incident.escalation_tier:
        return None
    return escalate(incident, "escalation policy", now_ms, "unacknowledged too long", to_tier=due)
