"""Hotline tickets and the actions on them: a pure state machine (no I/O, `now` passed in).

The flow every source describes (DOMAIN.md): intake, then either a direct answer (close at
intake) or dispatch to a department, which accepts or returns it (with a reason, reviewed by
the hotline office), replies, and the hotline calls the citizen back for a satisfaction rating
before closing. Reminders and supervision press a department that is late; a ticket returned
more than twice waits for a leader to coordinate instead of bouncing between units.

`act` returns the new ticket and its history entry, or raises: `NotAllowed` (the state does
not allow the action: HTTP 409), `Forbidden` (this person may not: 403), `Invalid` (a field is
missing or wrong: 422).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from kernel.errors import CityOpsError

from .calendar import WorkCalendar

Status = Literal["new", "dispatched", "accepted", "returned", "replied", "closed"]
Urgency = Literal["normal", "urgent"]
Satisfaction = Literal["satisfied", "basically_satisfied", "dissatisfied"]
CHANNELS: Final = ("phone", "wechat", "web", "mailbox", "grid", "sensor")
STATUSES: Final[tuple[Status, ...]] = ("new", "dispatched", "accepted", "returned", "replied", "closed")
SATISFACTIONS: Final[tuple[Satisfaction, ...]] = ("satisfied", "basically_satisfied", "dissatisfied")
ACTIONS: Final = (
    "dispatch",
    "accept",
    "return",
    "reply",
    "callback",
    "close",
    "remind",
    "supervise",
    "extend",
    "coordinate",
)
# Ordinary tickets: due at the end of this many working days after the day of intake.
ORDINARY_WORKDAYS: Final = 5
# Urgent tickets: a department answers (accepts) within this long, and handles it the same day.
URGENT_RESPONSE_MS: Final = 30 * 60_000
URGENT_MIN_HANDLING_MS: Final = 12 * 3_600_000
# A ticket returned more than this many times goes to a leader instead of back to the queue.
MAX_RETURNS: Final = 2
MAX_EXTENSION_WORKDAYS: Final = 30
OPEN_FOR_DEPARTMENT: Final = frozenset({"dispatched", "accepted"})


class TicketError(CityOpsError):
    """An action refused; `field` names what was wrong, when one thing was."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotAllowed(TicketError):
    """The ticket's state does not allow the action (409)."""


class Forbidden(TicketError):
    """This person may not do this to this ticket (403)."""


class Invalid(TicketError):
    """The request is incomplete or wrong (422, naming the field)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a person's token (role, and for a handler the department) or the system."""

    name: str
    role: str  # admin, agent, handler, leader, operator, viewer, intake, system
    department_id: str | None = None


SYSTEM: Final = Actor("system", "system")


@dataclass(frozen=True, slots=True)
class Ticket:
    id: str
    number: str
    channel: str
    category: str
    urgency: Urgency
    status: Status
    description: str
    created_at_ms: int
    updated_at_ms: int
    deadline_ms: int
    called_number: str | None = None
    # The hotline line's sub-platform (a department group) that the called number routes to.
    line: str | None = None
    title: str = ""
    address: str = ""
    lat: float | None = None
    lon: float | None = None
    grid_id: str | None = None
    street: str | None = None
    department_id: str | None = None
    incident_id: str | None = None
    camera_ids: tuple[str, ...] = ()
    response_deadline_ms: int | None = None
    caller_name: str = ""
    caller_phone: str = ""
    satisfaction: Satisfaction | None = None
    dispatched_at_ms: int | None = None
    accepted_at_ms: int | None = None
    replied_at_ms: int | None = None
    callback_at_ms: int | None = None
    closed_at_ms: int | None = None
    reply_text: str = ""
    close_text: str = ""
    returns: int = 0
    # Returned more than MAX_RETURNS times: waits for a leader (coordinate), not the queue.
    coordination: bool = False
    coordinated: bool = False
    supervised: bool = False
    overdue: bool = False
    reminders: int = 0
    extension_requested_days: int | None = None
    extension_reason: str = ""
    extensions: int = 0
    # Where it came from besides the channel: open311, incident, knowledge:<id>, ...
    source: str = ""
    route_note: str = ""
    created_by: str = ""

    @property
    def on_time(self) -> bool | None:
        """Closed within its deadline (None while open)."""
        return None if self.closed_at_ms is None else self.closed_at_ms <= self.deadline_ms


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    ticket_id: str
    at_ms: int
    actor: str
    role: str
    action: str
    from_status: Status | None
    to_status: Status
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """One action with its arguments (CONTRACT.md's `POST /api/tickets/{id}/actions` body)."""

    action: str
    department_id: str | None = None
    reason: str = ""
    text: str = ""
    satisfaction: str | None = None
    days: int | None = None
    approve: bool | None = None
    note: str = ""


def deadlines(created_at_ms: int, urgency: Urgency, calendar: WorkCalendar) -> tuple[int | None, int]:
    """(response deadline, handling deadline) for a ticket taken in at `created_at_ms`.

    Ordinary: no response deadline; due at the end of the 5th working day after the day of
    intake. Urgent: answered within 30 minutes and handled the same day (the end of the intake
    day, but never less than 12 hours: a call at 23:00 is not due at midnight).
    """
    if urgency == "urgent":
        end_of_day = calendar.end_of_day_ms(calendar.local_day(created_at_ms))
        return created_at_ms + URGENT_RESPONSE_MS, max(end_of_day, created_at_ms + URGENT_MIN_HANDLING_MS)
    return None, calendar.due_after(created_at_ms, ORDINARY_WORKDAYS)


def mask_phone(phone: str) -> str:
    """`13812345678` -> `138****5678`: enough to recognise, not enough to call."""
    digits = phone.strip()
    if not digits:
        return ""
    if len(digits) < 8:
        return "*" * len(digits)
    return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


Handler = Callable[[Ticket, Request, Actor, int, "Context"], tuple[Ticket, dict[str, Any]]]


@dataclass(frozen=True)
class Context:
    """What actions need to know beyond the ticket: departments and the calendar."""

    departments: Mapping[str, object]
    calendar: WorkCalendar


def _need_role(actor: Actor, roles: frozenset[str], what: str) -> None:
    if actor.role not in roles:
        raise Forbidden(f"role {actor.role!r} may not {what} a ticket")


def _own_department(ticket: Ticket, actor: Actor, what: str) -> None:
    """Handlers act on their own department's tickets only."""
    if actor.role == "handler" and actor.department_id != ticket.department_id:
        raise Forbidden(
            f"this ticket is with department {ticket.department_id!r}; a handler of "
            f"{actor.department_id!r} may not {what} it"
        )


def _state(ticket: Ticket, allowed: frozenset[str], action: str, hint: str = "") -> None:
    if ticket.status not in allowed:
        extra = f": {hint}" if hint else ""
        raise NotAllowed(f"cannot {action} a ticket that is {ticket.status}{extra}")


def _text(value: str, field_name: str, what: str) -> str:
    cleaned = value.strip()
    if not cleaned:
        raise Invalid(f"{field_name} is required to {what}", field_name)
    return cleaned


DISPATCHERS: Final = frozenset({"agent", "leader", "admin", "system"})
HANDLERS: Final = frozenset({"handler", "admin"})
CALLBACKERS: Final = frozenset({"agent", "admin"})
SUPERVISORS: Final = frozenset({"leader", "admin", "system"})
REMINDERS: Final = frozenset({"agent", "leader", "admin", "system"})
APPROVERS: Final = frozenset({"agent", "leader", "admin"})
COORDINATORS: Final = frozenset({"leader", "admin"})


def _known_department(request: Request, ctx: Context) -> str:
    department_id = (request.department_id or "").strip()
    if not department_id:
        raise Invalid("department_id is required to dispatch", "department_id")
    if department_id not in ctx.departments:
        raise Invalid(f"unknown department {department_id!r}", "department_id")
    return department_id


def _dispatch(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, DISPATCHERS, "dispatch")
    redo = ticket.status == "replied" and ticket.satisfaction == "dissatisfied"
    if not redo:
        _state(
            ticket,
            frozenset({"new", "returned"}),
            "dispatch",
            "dispatch takes new and returned tickets (and replied ones the citizen was dissatisfied with)",
        )
    if ticket.coordination:
        raise NotAllowed(
            f"returned {ticket.returns} times: a leader coordinates it (action coordinate), it is not dispatched again"
        )
    department_id = _known_department(request, ctx)
    detail: dict[str, Any] = {"department_id": department_id}
    if ticket.status == "returned":
        # Dispatching a returned ticket is the review of the return: to the same department
        # means the return was refused, to another that it was accepted.
        detail["return_review"] = "refused" if department_id == _last_department(ticket) else "approved"
    if redo:
        detail["rehandle"] = "the citizen was dissatisfied"
    if request.note:
        detail["note"] = request.note
    changed = dataclasses.replace(
        ticket,
        status="dispatched",
        department_id=department_id,
        dispatched_at_ms=now,
        accepted_at_ms=None if redo else ticket.accepted_at_ms,
        satisfaction=None if redo else ticket.satisfaction,
        callback_at_ms=None if redo else ticket.callback_at_ms,
    )
    return changed, detail


def _last_department(ticket: Ticket) -> str | None:
    # After a return the department is kept in `route_note` as "returned by X".
    prefix = "returned by "
    return ticket.route_note[len(prefix) :] if ticket.route_note.startswith(prefix) else None


def _coordinate(
    ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context
) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, COORDINATORS, "coordinate")
    if not ticket.coordination:
        raise NotAllowed("only a ticket returned more than twice waits for a leader's coordination")
    department_id = _known_department(request, ctx)
    changed = dataclasses.replace(
        ticket,
        status="dispatched",
        department_id=department_id,
        dispatched_at_ms=now,
        coordination=False,
        coordinated=True,
    )
    detail: dict[str, Any] = {"department_id": department_id}
    if request.note:
        detail["note"] = request.note
    return changed, detail


def _accept(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, HANDLERS, "accept")
    _state(ticket, frozenset({"dispatched"}), "accept")
    _own_department(ticket, actor, "accept")
    detail: dict[str, Any] = {}
    if ticket.response_deadline_ms is not None:
        detail["responded_in_time"] = now <= ticket.response_deadline_ms
    return dataclasses.replace(ticket, status="accepted", accepted_at_ms=now), detail


def _return(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, HANDLERS, "return")
    _state(ticket, OPEN_FOR_DEPARTMENT, "return")
    _own_department(ticket, actor, "return")
    if ticket.coordinated:
        raise NotAllowed("a leader coordinated this ticket to your department: it cannot be returned")
    reason = _text(request.reason, "reason", "return a ticket")
    returns = ticket.returns + 1
    changed = dataclasses.replace(
        ticket,
        status="returned",
        returns=returns,
        department_id=None,
        accepted_at_ms=None,
        route_note=f"returned by {ticket.department_id}",
        coordination=returns > MAX_RETURNS,
        extension_requested_days=None,
        extension_reason="",
    )
    detail: dict[str, Any] = {"reason": reason, "department_id": ticket.department_id, "returns": returns}
    if changed.coordination:
        detail["to_leader"] = f"returned {returns} times: a leader coordinates it"
    return changed, detail


def _reply(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, HANDLERS, "reply to")
    _state(ticket, frozenset({"accepted"}), "reply to", "a department accepts a ticket before replying")
    _own_department(ticket, actor, "reply to")
    text = _text(request.text, "text", "reply")
    changed = dataclasses.replace(ticket, status="replied", replied_at_ms=now, reply_text=text)
    return changed, {"text": text}


def _callback(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, CALLBACKERS, "call back for")
    _state(ticket, frozenset({"replied"}), "call back for", "the department replies first")
    if ticket.satisfaction is not None:
        raise NotAllowed("the citizen was called back already")
    if request.satisfaction not in SATISFACTIONS:
        raise Invalid(f"satisfaction must be one of {', '.join(SATISFACTIONS)}", "satisfaction")
    satisfaction: Satisfaction = request.satisfaction
    changed = dataclasses.replace(ticket, satisfaction=satisfaction, callback_at_ms=now)
    detail: dict[str, Any] = {"satisfaction": satisfaction}
    if request.note:
        detail["note"] = request.note
    return changed, detail


def _close(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, CALLBACKERS, "close")
    if ticket.status == "new":
        # Answered at intake (a consultation from the knowledge base): the answer is the record.
        text = _text(request.text, "text", "close a ticket at intake (the answer given)")
        return dataclasses.replace(ticket, status="closed", closed_at_ms=now, close_text=text), {
            "text": text,
            "direct": True,
        }
    _state(ticket, frozenset({"replied"}), "close", "the order is reply, then callback, then close")
    if ticket.satisfaction is None:
        raise NotAllowed("call the citizen back (action callback) before closing")
    detail: dict[str, Any] = {"on_time": now <= ticket.deadline_ms}
    if request.text:
        detail["text"] = request.text
    return dataclasses.replace(ticket, status="closed", closed_at_ms=now, close_text=request.text.strip()), detail


def _remind(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, REMINDERS, "remind about")
    _state(ticket, OPEN_FOR_DEPARTMENT, "remind about", "reminders go to the department handling it")
    detail: dict[str, Any] = {"department_id": ticket.department_id, "reminders": ticket.reminders + 1}
    if request.note:
        detail["note"] = request.note
    return dataclasses.replace(ticket, reminders=ticket.reminders + 1), detail


def _supervise(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _need_role(actor, SUPERVISORS, "supervise")
    _state(ticket, frozenset({"new", "dispatched", "accepted", "returned"}), "supervise")
    if ticket.supervised:
        raise NotAllowed("the ticket is under supervision already")
    detail: dict[str, Any] = {"department_id": ticket.department_id}
    if request.note:
        detail["note"] = request.note
    return dataclasses.replace(ticket, supervised=True), detail


def _extend(ticket: Ticket, request: Request, actor: Actor, now: int, ctx: Context) -> tuple[Ticket, dict[str, Any]]:
    _state(ticket, OPEN_FOR_DEPARTMENT, "extend the deadline of", "only a department's open ticket can be extended")
    if actor.role == "handler":
        _own_department(ticket, actor, "ask to extend")
        if ticket.extension_requested_days is not None:
            raise NotAllowed("an extension was requested already and waits for approval")
        if request.days is None or not 1 <= request.days <= MAX_EXTENSION_WORKDAYS:
            raise Invalid(f"days must be 1 to {MAX_EXTENSION_WORKDAYS} working days", "days")
        reason = _text(request.reason, "reason", "ask for an extension")
        changed = dataclasses.replace(ticket, extension_requested_days=request.days, extension_reason=reason)
        return changed, {"requested_days": request.days, "reason": reason}
    _need_role(actor, APPROVERS, "approve an extension of")
    if ticket.extension_requested_days is None:
        raise NotAllowed("no extension was requested for this ticket")
    if request.approve is None:
        raise Invalid("approve (true or false) is required to decide an extension", "approve")
    days = ticket.extension_requested_days
    if not request.approve:
        changed = dataclasses.replace(ticket, extension_requested_days=None, extension_reason="")
        return changed, {"approved": False, "requested_days": days, "note": request.note}
    deadline = ctx.calendar.extend(ticket.deadline_ms, days)
    changed = dataclasses.replace(
        ticket,
        deadline_ms=deadline,
        extension_requested_days=None,
        extension_reason="",
        extensions=ticket.extensions + 1,
        # A new deadline in the future: the ticket is no longer overdue.
        overdue=ticket.overdue and deadline < now,
    )
    return changed, {
        "approved": True,
        "days": days,
        "deadline_ms": deadline,
        "previous_deadline_ms": ticket.deadline_ms,
    }


_HANDLERS: Final[dict[str, Handler]] = {
    "dispatch": _dispatch,
    "coordinate": _coordinate,
    "accept": _accept,
    "return": _return,
    "reply": _reply,
    "callback": _callback,
    "close": _close,
    "remind": _remind,
    "supervise": _supervise,
    "extend": _extend,
}


def act(ticket: Ticket, request: Request, actor: Actor, now_ms: int, ctx: Context) -> tuple[Ticket, HistoryEntry]:
    """Apply one action: the ticket after it and the history entry that records it."""
    handler = _HANDLERS.get(request.action)
    if handler is None:
        raise Invalid(f"unknown action {request.action!r}; one of {', '.join(ACTIONS)}", "action")
    if ticket.status == "closed":
        raise NotAllowed(f"cannot {request.action} a closed ticket")
    changed, detail = handler(ticket, request, actor, now_ms, ctx)
    changed = dataclasses.replace(changed, updated_at_ms=now_ms)
    entry = HistoryEntry(
        ticket.id, now_ms, actor.name, actor.role, request.action, ticket.status, changed.status, detail
    )
    return changed, entry


def mark_overdue(ticket: Ticket, now_ms: int) -> tuple[Ticket, HistoryEntry] | None:
    """The scheduler's step for a ticket past its deadline and not yet replied: overdue, and
    under supervision (a formal escalation). None when there is nothing to do."""
    if ticket.overdue or ticket.status in ("replied", "closed") or now_ms <= ticket.deadline_ms:
        return None
    changed = dataclasses.replace(ticket, overdue=True, supervised=True, updated_at_ms=now_ms)
    detail = {"deadline_ms": ticket.deadline_ms, "department_id": ticket.department_id}
    return changed, HistoryEntry(
        ticket.id, now_ms, SYSTEM.name, SYSTEM.role, "overdue", ticket.status, ticket.status, detail
    )


def allowed_actions(ticket: Ticket) -> list[str]:
    """The actions the state allows (for someone with the right role), for a 409's hint and the consoles."""
    if ticket.status == "closed":
        return []
    found = {
        "new": ["dispatch", "close", "supervise"],
        "dispatched": ["accept", "return", "remind", "supervise", "extend"],
        "accepted": ["return", "reply", "remind", "supervise", "extend"],
        "returned": ["coordinate"] if ticket.coordination else ["dispatch", "supervise"],
        "replied": ["callback"] if ticket.satisfaction is None else ["close"],
    }[ticket.status]
    if ticket.status == "replied" and ticket.satisfaction == "dissatisfied":
        found = [*found, "dispatch"]
    if ticket.supervised:
        found = [a for a in found if a != "supervise"]
    return found
