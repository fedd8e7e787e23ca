"""Tickets, their history, departments, grids, the knowledge base and the phone-read audit as
records (SQLite embedded, PostgreSQL in production, one SQLAlchemy code path).

Every action is one transaction: the ticket row is updated only if it is still the version the
action was computed from (`version`), and its history row is written with it; a lost race is
retried from the new state, so two processes acting at once never overwrite each other. A
ticket made from an incident is unique by `incident_id`: repeated events, restarts and several
processes end with one ticket.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    case,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kernel import outbox
from kernel.db import dialect_insert
from kernel.errors import StoreError

from ..domain.kpis import SATISFIED, Counts, Kpis
from ..domain.routing import Department
from ..domain.search import index_text, query_terms
from ..domain.tickets import HistoryEntry, Ticket

metadata = MetaData()

tickets = Table(
    "tickets",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("number", String(32), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("called_number", String(16), nullable=True),
    Column("line", String(16), nullable=True),
    Column("category", String(64), nullable=False),
    Column("urgency", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("title", String(200), nullable=False),
    Column("description", Text, nullable=False),
    Column("address", String(500), nullable=False),
    Column("lat", Float, nullable=True),
    Column("lon", Float, nullable=True),
    Column("grid_id", String(64), nullable=True),
    Column("street", String(200), nullable=True),
    Column("department_id", String(64), nullable=True),
    Column("incident_id", String(32), nullable=True),
    Column("camera_ids", JSON, nullable=False),
    Column("response_deadline_ms", BigInteger, nullable=True),
    Column("deadline_ms", BigInteger, nullable=False),
    Column("caller_name", String(100), nullable=False),
    Column("caller_phone", String(32), nullable=False),
    Column("satisfaction", String(24), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("dispatched_at_ms", BigInteger, nullable=True),
    Column("accepted_at_ms", BigInteger, nullable=True),
    Column("replied_at_ms", BigInteger, nullable=True),
    Column("callback_at_ms", BigInteger, nullable=True),
    Column("closed_at_ms", BigInteger, nullable=True),
    Column("reply_text", Text, nullable=False),
    Column("close_text", Text, nullable=False),
    Column("returns", Integer, nullable=False),
    Column("coordination", Boolean, nullable=False),
    Column("coordinated", Boolean, nullable=False),
    Column("supervised", Boolean, nullable=False),
    Column("overdue", Boolean, nullable=False),
    Column("reminders", Integer, nullable=False),
    Column("extension_requested_days", Integer, nullable=True),
    Column("extension_reason", Text, nullable=False),
    Column("extensions", Integer, nullable=False),
    Column("source", String(100), nullable=False),
    Column("route_note", String(300), nullable=False),
    Column("created_by", String(100), nullable=False),
    # The scheduler's near-deadline reminder, sent once per deadline.
    Column("reminded_for_ms", BigInteger, nullable=True),
    Column("version", Integer, nullable=False),
    UniqueConstraint("number", name="uq_tickets_number"),
    UniqueConstraint("incident_id", name="uq_tickets_incident_id"),
    Index("ix_tickets_created", "created_at_ms"),
    Index("ix_tickets_status_created", "status", "created_at_ms"),
    # Department and period first, then every column the KPIs count: SQLite answers a year's
    # KPIs from this index alone (0.1 s instead of 0.6 s for 150,000 tickets).
    Index(
        "ix_tickets_department_created",
        "department_id",
        "created_at_ms",
        "status",
        "closed_at_ms",
        "deadline_ms",
        "replied_at_ms",
        "callback_at_ms",
        "satisfaction",
    ),
    Index("ix_tickets_deadline", "deadline_ms"),
)

ticket_history = Table(
    "ticket_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", String(32), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(32), nullable=False),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("detail", JSON, nullable=False),
    # Entries written from events that may come twice (an incident's escalation) carry a key.
    Column("dedup", String(200), nullable=True),
    UniqueConstraint("dedup", name="uq_ticket_history_dedup"),
)

ticket_numbers = Table(
    "ticket_numbers",
    metadata,
    Column("day", String(8), primary_key=True),
    Column("last", Integer, nullable=False),
)

departments = Table(
    "departments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("categories", JSON, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# City-wide documents edited through the API (the grids' GeoJSON).
city_docs = Table(
    "city_docs",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

knowledge = Table(
    "knowledge",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("question", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("department_id", String(64), nullable=True),
    Column("tags", JSON, nullable=False),
    # The segmented text (hotline.domain.search) the full-text index is built on.
    Column("search", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

# Who saw a caller's full phone number, when (DOMAIN.md: only those who need it, and audited).
phone_reads = Table(
    "phone_reads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", String(32), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("token_id", String(32), nullable=False),
    Column("purpose", String(100), nullable=False),
)

# Keys the processes share (the slip key): made once by whoever comes first.
app_secrets = Table(
    "app_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)

# SQLite's FTS5 table over knowledge.search (made by the migration; PostgreSQL uses a GIN index
# on to_tsvector('simple', search) instead). Not in `metadata`: SQLAlchemy cannot describe it.
KNOWLEDGE_FTS: Final = "knowledge_fts"
OPEN_STATUSES: Final = ("new", "dispatched", "accepted", "returned")
_BOOLS: Final = ("coordination", "coordinated", "supervised", "overdue")


def _row(t: Ticket) -> dict[str, Any]:
    row = dataclasses.asdict(t)
    row["camera_ids"] = list(t.camera_ids)
    return row


_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Ticket))


def ticket_of(row: Any) -> Ticket:
    values = {name: getattr(row, name) for name in _FIELDS}
    values["camera_ids"] = tuple(values["camera_ids"] or ())
    for name in _BOOLS:
        values[name] = bool(values[name])
    return Ticket(**values)


def _history_of(row: Any) -> HistoryEntry:
    return HistoryEntry(
        row.ticket_id,
        row.at_ms,
        row.actor,
        row.role,
        row.action,
        row.from_status,
        row.to_status,
        dict(row.detail or {}),
    )


def _entry_row(e: HistoryEntry, dedup: str | None = None) -> dict[str, Any]:
    return {
        "ticket_id": e.ticket_id,
        "at_ms": e.at_ms,
        "actor": e.actor[:100],
        "role": e.role,
        "action": e.action,
        "from_status": e.from_status,
        "to_status": e.to_status,
        "detail": e.detail,
        "dedup": dedup,
    }


OUTBOX_FIELDS: Final = (
    "id",
    "number",
    "channel",
    "category",
    "urgency",
    "status",
    "title",
    "grid_id",
    "street",
    "department_id",
    "incident_id",
    "lat",
    "lon",
    "camera_ids",
    "deadline_ms",
    "response_deadline_ms",
    "supervised",
    "overdue",
)


def _outbox(conn: Connection, ticket: Ticket, entry: HistoryEntry) -> None:
    """The change's outbox row, in its transaction (no caller's personal data in it)."""
    row = _row(ticket)
    state = {k: row[k] for k in OUTBOX_FIELDS}
    detail = {k: v for k, v in entry.detail.items() if k not in ("caller_phone", "caller_name")}
    outbox.append(
        conn,
        [
            outbox.OutboxEntry(
                entry.at_ms, "ticket", ticket.id, entry.action, entry.actor, state, {**detail, "role": entry.role}
            )
        ],
    )


def new_ticket_id() -> str:
    return "tk-" + secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class TicketFilter:
    status: Sequence[str] = ()
    department_id: str | None = None
    category: str | None = None
    channel: str | None = None
    urgency: str | None = None
    grid_id: str | None = None
    incident_id: str | None = None
    overdue: bool | None = None
    supervised: bool | None = None
    coordination: bool | None = None
    created_from_ms: int | None = None
    created_to_ms: int | None = None
    q: str | None = None


@dataclass(frozen=True, slots=True)
class KnowledgeEntry:
    id: int
    question: str
    answer: str
    department_id: str | None
    tags: tuple[str, ...]
    score: float = 0.0


class ConcurrentChange(StoreError):
    """The ticket changed under an action too many times in a row."""


Apply = Callable[[Ticket], tuple[Ticket, HistoryEntry]]


def _wrap(what: str, exc: SQLAlchemyError) -> StoreError:
    return StoreError(f"cannot {what}: {exc}")


class SqlTickets:
    """The ticket store. Async face; the SQLAlchemy work runs in a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ----- async face -----

    async def create(
        self, draft: Ticket, actor: tuple[str, str], detail: dict[str, Any], then: Apply | None = None
    ) -> tuple[Ticket, bool]:
        """Store a new ticket and its "created" entry by `actor` (name, role): (ticket, True), or for an
        incident that has a ticket already, (that ticket, False). The id is given here; so is the
        number, which starts with `draft.number`, the city's day of intake (YYYYMMDD).

        `then`: an action taken at intake (dispatch by the router, close with the answer) in the
        same transaction, so nobody ever sees the ticket between the two; if it is refused,
        nothing is stored.
        """
        return await asyncio.to_thread(self._create, draft, actor, detail, then)

    async def apply(self, ticket_id: str, step: Apply) -> tuple[Ticket, HistoryEntry] | None:
        """Run `step` on the current ticket and store the result with its history entry (None: no such ticket)."""
        return await asyncio.to_thread(self._apply, ticket_id, step)

    async def get(self, ticket_id: str) -> Ticket | None:
        return await asyncio.to_thread(self._get, ticket_id)

    async def by_number(self, number: str) -> Ticket | None:
        return await asyncio.to_thread(self._by_number, number)

    async def by_incident(self, incident_id: str) -> Ticket | None:
        return await asyncio.to_thread(self._by_incident, incident_id)

    async def ids_for_incidents(self, incident_ids: Sequence[str]) -> dict[str, str]:
        return await asyncio.to_thread(self._ids_for_incidents, list(incident_ids))

    async def list(self, where: TicketFilter, limit: int, offset: int) -> tuple[builtins.list[Ticket], int]:
        return await asyncio.to_thread(self._list, where, limit, offset)

    async def history(self, ticket_id: str) -> builtins.list[HistoryEntry]:
        return await asyncio.to_thread(self._history, ticket_id)

    async def note(self, entry: HistoryEntry, dedup: str) -> bool:
        """A history entry that does not change the ticket (an incident's escalation), once per `dedup`."""
        return await asyncio.to_thread(self._note, entry, dedup)

    async def kpis(self, start_ms: int, end_ms: int, now_ms: int, department_id: str | None = None) -> Kpis:
        return await asyncio.to_thread(self._kpis, start_ms, end_ms, now_ms, department_id)

    async def hot_spots(self, column: str, start_ms: int, end_ms: int, limit: int) -> builtins.list[tuple[str, int]]:
        """The most frequent values of `column` (category, grid_id, department_id) among tickets taken in."""
        return await asyncio.to_thread(self._hot_spots, column, start_ms, end_ms, limit)

    async def per_day(self, start_ms: int, end_ms: int, offset_ms: int) -> builtins.list[tuple[int, int]]:
        """(proleptic ordinal of the local day, tickets taken in) for each day with any; `offset_ms`
        is the zone's offset from UTC (the city's zone has no daylight saving)."""
        return await asyncio.to_thread(self._per_day, start_ms, end_ms, offset_ms)

    async def due(self, before_ms: int, limit: int = 500) -> builtins.list[Ticket]:
        """Open tickets not yet marked overdue whose deadline is before `before_ms`."""
        return await asyncio.to_thread(self._due, before_ms, limit)

    async def to_remind(self, now_ms: int, window_ms: int, limit: int = 500) -> builtins.list[Ticket]:
        return await asyncio.to_thread(self._to_remind, now_ms, window_ms, limit)

    async def late_responses(self, now_ms: int, limit: int = 500) -> builtins.list[Ticket]:
        """Urgent tickets dispatched and not accepted past their response deadline, not yet supervised."""
        return await asyncio.to_thread(self._late_responses, now_ms, limit)

    async def mark_reminded(self, ticket_id: str, deadline_ms: int) -> bool:
        """Claim the near-deadline reminder for this deadline; False if another process had it."""
        return await asyncio.to_thread(self._mark_reminded, ticket_id, deadline_ms)

    async def departments(self) -> builtins.list[Department]:
        return await asyncio.to_thread(self._departments)

    async def save_department(self, department: Department, now_ms: int) -> bool:
        """Insert or replace; True when it is new."""
        return await asyncio.to_thread(self._save_department, department, now_ms)

    async def seed_departments(self, found: Sequence[Department], now_ms: int) -> None:
        """The city config's departments, added when missing (the API's changes are kept)."""
        await asyncio.to_thread(self._seed_departments, list(found), now_ms)

    async def doc(self, key: str) -> Any:
        return await asyncio.to_thread(self._doc, key)

    async def save_doc(self, key: str, body: Any, now_ms: int, *, only_if_missing: bool = False) -> None:
        await asyncio.to_thread(self._save_doc, key, body, now_ms, only_if_missing)

    async def add_knowledge(
        self, question: str, answer: str, department_id: str | None, tags: Sequence[str], now_ms: int
    ) -> KnowledgeEntry:
        return await asyncio.to_thread(self._add_knowledge, question, answer, department_id, list(tags), now_ms)

    async def search_knowledge(self, query: str, limit: int) -> builtins.list[KnowledgeEntry]:
        return await asyncio.to_thread(self._search_knowledge, query, limit)

    async def knowledge_entry(self, entry_id: int) -> KnowledgeEntry | None:
        return await asyncio.to_thread(self._knowledge_entry, entry_id)

    async def knowledge_count(self) -> int:
        return await asyncio.to_thread(self._knowledge_count)

    async def log_phone_read(
        self, ticket_id: str, at_ms: int, actor: str, role: str, token_id: str, purpose: str
    ) -> None:
        await asyncio.to_thread(self._log_phone_read, ticket_id, at_ms, actor, role, token_id, purpose)

    async def phone_reads(self, ticket_id: str | None = None, limit: int = 1000) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self._phone_reads, ticket_id, limit)

    async def secret(self, name: str) -> str:
        """A shared random secret by name, made by the first process that asks."""
        return await asyncio.to_thread(self._secret, name)

    # ----- blocking implementations -----

    def _next_number(self, conn: Connection, day: str) -> str:
        """`day` (YYYYMMDD, the city's day of intake) and that day's next sequence number."""
        stmt = dialect_insert(conn, ticket_numbers).values(day=day, last=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ticket_numbers.c.day], set_={"last": ticket_numbers.c.last + 1}
        ).returning(ticket_numbers.c.last)
        last = conn.execute(stmt).scalar_one()
        return f"{day}{last:06d}"

    def _create(
        self, draft: Ticket, actor: tuple[str, str], detail: dict[str, Any], then: Apply | None
    ) -> tuple[Ticket, bool]:
        try:
            with self._engine.begin() as conn:
                if draft.incident_id is not None:
                    found = conn.execute(select(tickets).where(tickets.c.incident_id == draft.incident_id)).first()
                    if found is not None:
                        return ticket_of(found), False
                # The draft's number is its day of intake in the city (the desk knows the zone).
                number = self._next_number(conn, draft.number)
                ticket = dataclasses.replace(draft, id=new_ticket_id(), number=number)
                conn.execute(insert(tickets).values(**_row(ticket), reminded_for_ms=None, version=1))
                entry = HistoryEntry(
                    ticket.id, ticket.created_at_ms, actor[0], actor[1], "created", None, ticket.status, detail
                )
                conn.execute(insert(ticket_history).values(**_entry_row(entry)))
                _outbox(conn, ticket, entry)
                if then is not None:
                    ticket, entry = then(ticket)
                    values = _row(ticket)
                    del values["id"]
                    conn.execute(update(tickets).where(tickets.c.id == ticket.id).values(**values, version=2))
                    conn.execute(insert(ticket_history).values(**_entry_row(entry)))
                    _outbox(conn, ticket, entry)
                return ticket, True
        except IntegrityError:
            # Another process made the incident's ticket between our look and our insert.
            if draft.incident_id is None:
                raise
            found_ticket = self._by_incident(draft.incident_id)
            if found_ticket is None:
                raise
            return found_ticket, False
        except SQLAlchemyError as exc:
            raise _wrap("store the ticket", exc) from exc

    def _apply(self, ticket_id: str, step: Apply) -> tuple[Ticket, HistoryEntry] | None:
        for _attempt in range(10):
            try:
                with self._engine.begin() as conn:
                    row = conn.execute(select(tickets).where(tickets.c.id == ticket_id)).first()
                    if row is None:
                        return None
                    changed, entry = step(ticket_of(row))
                    values = _row(changed)
                    del values["id"]
                    done = conn.execute(
                        update(tickets)
                        .where(tickets.c.id == ticket_id, tickets.c.version == row.version)
                        .values(**values, version=row.version + 1)
                    )
                    if done.rowcount != 1:
                        continue  # someone else changed it first: recompute from the new state
                    conn.execute(insert(ticket_history).values(**_entry_row(entry)))
                    _outbox(conn, changed, entry)
                    return changed, entry
            except SQLAlchemyError as exc:
                raise _wrap("change the ticket", exc) from exc
        raise ConcurrentChange(f"ticket {ticket_id} kept changing under the action; try again")

    def _tickets(self, query: Any, what: str) -> builtins.list[Ticket]:
        try:
            with self._engine.connect() as conn:
                return [ticket_of(r) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise _wrap(what, exc) from exc

    def _one(self, query: Any) -> Ticket | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise _wrap("read the ticket", exc) from exc
        return None if row is None else ticket_of(row)

    def _get(self, ticket_id: str) -> Ticket | None:
        return self._one(select(tickets).where(tickets.c.id == ticket_id))

    def _by_number(self, number: str) -> Ticket | None:
        return self._one(select(tickets).where(tickets.c.number == number))

    def _by_incident(self, incident_id: str) -> Ticket | None:
        return self._one(select(tickets).where(tickets.c.incident_id == incident_id))

    def _ids_for_incidents(self, incident_ids: builtins.list[str]) -> dict[str, str]:
        if not incident_ids:
            return {}
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(tickets.c.incident_id, tickets.c.id).where(tickets.c.incident_id.in_(incident_ids))
                )
                return {r.incident_id: r.id for r in rows}
        except SQLAlchemyError as exc:
            raise _wrap("read tickets of incidents", exc) from exc

    @staticmethod
    def _conditions(where: TicketFilter) -> builtins.list[Any]:
        c = tickets.c
        out: builtins.list[Any] = []
        if where.status:
            out.append(c.status.in_(list(where.status)))
        for column, value in (
            (c.department_id, where.department_id),
            (c.category, where.category),
            (c.channel, where.channel),
            (c.urgency, where.urgency),
            (c.grid_id, where.grid_id),
            (c.incident_id, where.incident_id),
        ):
            if value is not None:
                out.append(column == value)
        for column, flag in (
            (c.overdue, where.overdue),
            (c.supervised, where.supervised),
            (c.coordination, where.coordination),
        ):
            if flag is not None:
                out.append(column.is_(flag))
        if where.created_from_ms is not None:
            out.append(c.created_at_ms >= where.created_from_ms)
        if where.created_to_ms is not None:
            out.append(c.created_at_ms < where.created_to_ms)
        if where.q:
            like = "%" + where.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            out.append(
                or_(
                    c.number == where.q,
                    c.title.like(like, escape="\\"),
                    c.description.like(like, escape="\\"),
                    c.address.like(like, escape="\\"),
                )
            )
        return out

    def _list(self, where: TicketFilter, limit: int, offset: int) -> tuple[builtins.list[Ticket], int]:
        conditions = self._conditions(where)
        query = select(tickets).where(*conditions).order_by(tickets.c.created_at_ms.desc(), tickets.c.id.desc())
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query.limit(limit).offset(offset)).all()
                total = conn.execute(select(func.count()).select_from(tickets).where(*conditions)).scalar_one()
        except SQLAlchemyError as exc:
            raise _wrap("list tickets", exc) from exc
        return [ticket_of(r) for r in rows], int(total)

    def _history(self, ticket_id: str) -> builtins.list[HistoryEntry]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(ticket_history)
                    .where(ticket_history.c.ticket_id == ticket_id)
                    .order_by(ticket_history.c.at_ms, ticket_history.c.id)
                )
                return [_history_of(r) for r in rows]
        except SQLAlchemyError as exc:
            raise _wrap("read the ticket's history", exc) from exc

    def _note(self, entry: HistoryEntry, dedup: str) -> bool:
        try:
            with self._engine.begin() as conn:
                stmt = dialect_insert(conn, ticket_history).values(**_entry_row(entry, dedup[:200]))
                done = conn.execute(stmt.on_conflict_do_nothing(index_elements=[ticket_history.c.dedup]))
                return bool(done.rowcount)
        except SQLAlchemyError as exc:
            raise _wrap("write the ticket's history", exc) from exc

    def _kpis(self, start_ms: int, end_ms: int, now_ms: int, department_id: str | None) -> Kpis:
        c = tickets.c

        def count_if(condition: Any) -> Any:
            return func.sum(case((condition, 1), else_=0))

        open_overdue = and_(c.status.in_(OPEN_STATUSES), c.deadline_ms < now_ms)
        in_period = and_(c.created_at_ms >= start_ms, c.created_at_ms < end_ms)
        scope = [c.department_id == department_id] if department_id is not None else []
        period = (
            select(
                c.department_id,
                func.count().label("accepted"),
                count_if(c.status == "closed").label("closed"),
                count_if(and_(c.status == "closed", c.closed_at_ms <= c.deadline_ms)).label("on_time"),
                count_if(c.replied_at_ms.is_not(None)).label("replied"),
                count_if(c.callback_at_ms.is_not(None)).label("called_back"),
                count_if(and_(c.callback_at_ms.is_not(None), c.satisfaction.in_(SATISFIED))).label("satisfied"),
            )
            .where(in_period, *scope)
            .group_by(c.department_id)
        )
        overdue = select(c.department_id, func.count().label("n")).where(open_overdue, *scope).group_by(c.department_id)
        out = Kpis()
        try:
            with self._engine.connect() as conn:
                for r in conn.execute(period):
                    out.by_department[r.department_id] = Counts(
                        int(r.accepted),
                        int(r.closed),
                        int(r.on_time),
                        int(r.replied),
                        int(r.called_back),
                        int(r.satisfied),
                    )
                for r in conn.execute(overdue):
                    out.by_department.setdefault(r.department_id, Counts()).overdue_open = int(r.n)
        except SQLAlchemyError as exc:
            raise _wrap("compute the KPIs", exc) from exc
        for counts in out.by_department.values():
            out.total.add(counts)
        return out

    def _hot_spots(self, column: str, start_ms: int, end_ms: int, limit: int) -> builtins.list[tuple[str, int]]:
        if column not in ("category", "grid_id", "department_id", "channel", "street"):
            raise ValueError(f"no hot spots by {column!r}")
        col = tickets.c[column]
        n = func.count().label("n")
        query = (
            select(col, n)
            .where(tickets.c.created_at_ms >= start_ms, tickets.c.created_at_ms < end_ms)
            .group_by(col)
            .order_by(n.desc(), col)
            .limit(limit)
        )
        try:
            with self._engine.connect() as conn:
                return [(r[0] or "", int(r[1])) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise _wrap("count hot spots", exc) from exc

    def _per_day(self, start_ms: int, end_ms: int, offset_ms: int) -> builtins.list[tuple[int, int]]:
        # Whole days since the epoch in local time; date(1970, 1, 1).toordinal() is 719163.
        day = ((tickets.c.created_at_ms + offset_ms) // 86_400_000).label("day")
        query = (
            select(day, func.count())
            .where(tickets.c.created_at_ms >= start_ms, tickets.c.created_at_ms < end_ms)
            .group_by(day)
            .order_by(day)
        )
        try:
            with self._engine.connect() as conn:
                return [(719_163 + int(r[0]), int(r[1])) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise _wrap("count tickets per day", exc) from exc

    def _due(self, before_ms: int, limit: int) -> builtins.list[Ticket]:
        c = tickets.c
        query = (
            select(tickets)
            .where(c.deadline_ms < before_ms, c.status.in_(OPEN_STATUSES), c.overdue.is_(False))
            .order_by(c.deadline_ms)
            .limit(limit)
        )
        return self._tickets(query, "find overdue tickets")

    def _to_remind(self, now_ms: int, window_ms: int, limit: int) -> builtins.list[Ticket]:
        c = tickets.c
        query = (
            select(tickets)
            .where(
                c.status.in_(("dispatched", "accepted")),
                c.deadline_ms >= now_ms,
                c.deadline_ms < now_ms + window_ms,
                or_(c.reminded_for_ms.is_(None), c.reminded_for_ms != c.deadline_ms),
            )
            .order_by(c.deadline_ms)
            .limit(limit)
        )
        return self._tickets(query, "find tickets near their deadline")

    def _late_responses(self, now_ms: int, limit: int) -> builtins.list[Ticket]:
        c = tickets.c
        query = (
            select(tickets)
            .where(c.status == "dispatched", c.response_deadline_ms < now_ms, c.supervised.is_(False))
            .order_by(c.response_deadline_ms)
            .limit(limit)
        )
        return self._tickets(query, "find unanswered urgent tickets")

    def _mark_reminded(self, ticket_id: str, deadline_ms: int) -> bool:
        c = tickets.c
        try:
            with self._engine.begin() as conn:
                done = conn.execute(
                    update(tickets)
                    .where(c.id == ticket_id, or_(c.reminded_for_ms.is_(None), c.reminded_for_ms != deadline_ms))
                    .values(reminded_for_ms=deadline_ms)
                )
                return done.rowcount == 1
        except SQLAlchemyError as exc:
            raise _wrap("mark the reminder", exc) from exc

    def _departments(self) -> builtins.list[Department]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(departments).order_by(departments.c.id))
                return [Department(r.id, r.name, tuple(r.categories or ())) for r in rows]
        except SQLAlchemyError as exc:
            raise _wrap("read departments", exc) from exc

    def _save_department(self, d: Department, now_ms: int) -> bool:
        try:
            with self._engine.begin() as conn:
                existed = conn.execute(select(departments.c.id).where(departments.c.id == d.id)).first() is not None
                stmt = dialect_insert(conn, departments).values(
                    id=d.id, name=d.name, categories=list(d.categories), updated_at_ms=now_ms
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[departments.c.id],
                        set_={"name": d.name, "categories": list(d.categories), "updated_at_ms": now_ms},
                    )
                )
                return not existed
        except SQLAlchemyError as exc:
            raise _wrap("save the department", exc) from exc

    def _seed_departments(self, found: builtins.list[Department], now_ms: int) -> None:
        if not found:
            return
        try:
            with self._engine.begin() as conn:
                stmt = dialect_insert(conn, departments).values(
                    [
                        {"id": d.id, "name": d.name, "categories": list(d.categories), "updated_at_ms": now_ms}
                        for d in found
                    ]
                )
                conn.execute(stmt.on_conflict_do_nothing(index_elements=[departments.c.id]))
        except SQLAlchemyError as exc:
            raise _wrap("seed departments", exc) from exc

    def _doc(self, key: str) -> Any:
        try:
            with self._engine.connect() as conn:
                return conn.execute(select(city_docs.c.body).where(city_docs.c.key == key)).scalar()
        except SQLAlchemyError as exc:
            raise _wrap(f"read {key}", exc) from exc

    def _save_doc(self, key: str, body: Any, now_ms: int, only_if_missing: bool) -> None:
        try:
            with self._engine.begin() as conn:
                stmt = dialect_insert(conn, city_docs).values(key=key, body=body, updated_at_ms=now_ms)
                if only_if_missing:
                    conn.execute(stmt.on_conflict_do_nothing(index_elements=[city_docs.c.key]))
                else:
                    conn.execute(
                        stmt.on_conflict_do_update(
                            index_elements=[city_docs.c.key], set_={"body": body, "updated_at_ms": now_ms}
                        )
                    )
        except SQLAlchemyError as exc:
            raise _wrap(f"save {key}", exc) from exc

    def _add_knowledge(
        self, question: str, answer: str, department_id: str | None, tags: builtins.list[str], now_ms: int
    ) -> KnowledgeEntry:
        search = index_text(question, " ".join(tags), answer)
        try:
            with self._engine.begin() as conn:
                entry_id = conn.execute(
                    insert(knowledge)
                    .values(
                        question=question,
                        answer=answer,
                        department_id=department_id,
                        tags=tags,
                        search=search,
                        created_at_ms=now_ms,
                        updated_at_ms=now_ms,
                    )
                    .returning(knowledge.c.id)
                ).scalar_one()
                if conn.dialect.name == "sqlite":
                    conn.execute(
                        text(f"INSERT INTO {KNOWLEDGE_FTS}(rowid, search) VALUES (:id, :search)"),
                        {"id": entry_id, "search": search},
                    )
        except SQLAlchemyError as exc:
            raise _wrap("save the knowledge entry", exc) from exc
        return KnowledgeEntry(int(entry_id), question, answer, department_id, tuple(tags))

    def _search_knowledge(self, query: str, limit: int) -> builtins.list[KnowledgeEntry]:
        terms = query_terms(query)
        if not terms:
            return []
        k = knowledge.c
        try:
            with self._engine.connect() as conn:
                if conn.dialect.name == "sqlite":
                    # Each term quoted (a phrase of one token): FTS5 syntax in the query cannot inject.
                    match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
                    rows = conn.execute(
                        text(
                            "SELECT k.id, k.question, k.answer, k.department_id, k.tags, "
                            f"bm25({KNOWLEDGE_FTS}) AS rank "
                            f"FROM {KNOWLEDGE_FTS} JOIN knowledge k ON k.id = {KNOWLEDGE_FTS}.rowid "
                            f"WHERE {KNOWLEDGE_FTS} MATCH :match ORDER BY rank LIMIT :limit"
                        ),
                        {"match": match, "limit": limit},
                    ).all()
                    return [
                        KnowledgeEntry(
                            r.id,
                            r.question,
                            r.answer,
                            r.department_id,
                            tuple(json.loads(r.tags or "[]")),
                            -float(r.rank),
                        )
                        for r in rows
                    ]
                # The 'simple' configuration as a constant, so the planner matches the GIN index
                # on to_tsvector('simple', search) made by the migration.
                simple: Any = literal_column("'simple'::regconfig")
                tsquery: Any = None
                for term in terms:
                    one = func.plainto_tsquery(simple, term)
                    tsquery = one if tsquery is None else tsquery.op("||")(one)
                vector = func.to_tsvector(simple, k.search)
                rank = func.ts_rank(vector, tsquery).label("rank")
                rows = conn.execute(
                    select(k.id, k.question, k.answer, k.department_id, k.tags, rank)
                    .where(vector.op("@@")(tsquery))
                    .order_by(rank.desc(), k.id)
                    .limit(limit)
                ).all()
                return [
                    KnowledgeEntry(r.id, r.question, r.answer, r.department_id, tuple(r.tags or ()), float(r.rank))
                    for r in rows
                ]
        except SQLAlchemyError as exc:
            raise _wrap("search the knowledge base", exc) from exc

    def _knowledge_entry(self, entry_id: int) -> KnowledgeEntry | None:
        try:
            with self._engine.connect() as conn:
                r = conn.execute(select(knowledge).where(knowledge.c.id == entry_id)).first()
        except SQLAlchemyError as exc:
            raise _wrap("read the knowledge entry", exc) from exc
        return None if r is None else KnowledgeEntry(r.id, r.question, r.answer, r.department_id, tuple(r.tags or ()))

    def _knowledge_count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(knowledge)).scalar_one())

    def _log_phone_read(self, ticket_id: str, at_ms: int, actor: str, role: str, token_id: str, purpose: str) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(phone_reads).values(
                        ticket_id=ticket_id,
                        at_ms=at_ms,
                        actor=actor[:100],
                        role=role,
                        token_id=token_id,
                        purpose=purpose[:100],
                    )
                )
        except SQLAlchemyError as exc:
            raise _wrap("audit the phone read", exc) from exc

    def _phone_reads(self, ticket_id: str | None, limit: int) -> builtins.list[dict[str, Any]]:
        query = select(phone_reads).order_by(phone_reads.c.id.desc()).limit(limit)
        if ticket_id is not None:
            query = query.where(phone_reads.c.ticket_id == ticket_id)
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def _secret(self, name: str) -> str:
        try:
            with self._engine.begin() as conn:
                stmt = dialect_insert(conn, app_secrets).values(name=name, value=secrets.token_urlsafe(48))
                conn.execute(stmt.on_conflict_do_nothing(index_elements=[app_secrets.c.name]))
                return str(conn.execute(select(app_secrets.c.value).where(app_secrets.c.name == name)).scalar_one())
        except SQLAlchemyError as exc:
            raise _wrap("read a shared key", exc) from exc
