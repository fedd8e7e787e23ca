"""Incidents, their history and API-managed rules as records (SQLite embedded, PostgreSQL in production).

One open incident per rule and subject is the database's own rule: `open_key` is
"rule_id|subject" while the incident is not resolved (NULL once resolved) and is unique, so
two rules processes that raise the same incident at the same instant end with one incident,
the second raise becoming an update of it. Every change is a transaction with its history rows.
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kernel import outbox
from kernel.errors import StoreError

from ..domain.evaluate import Clear, Raise
from ..domain.hygiene import Silence
from ..domain.incidents import HistoryEntry, Incident, actor_of, clear_incident, open_incident, update_incident

metadata = MetaData()

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("rule_id", String(64), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("category", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("escalation_tier", Integer, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("title", Text, nullable=False),
    Column("opened_at_ms", BigInteger, nullable=False, index=True),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("resolved_at_ms", BigInteger, nullable=True),
    Column("acknowledged_at_ms", BigInteger, nullable=True),
    Column("lat", Float, nullable=True),
    Column("lon", Float, nullable=True),
    Column("grid_id", String(64), nullable=True),
    Column("device_ids", JSON, nullable=False),
    Column("camera_ids", JSON, nullable=False),
    Column("ticket_id", String(64), nullable=True),
    Column("cleared", Boolean, nullable=False),
    Column("open_key", String(200), nullable=True),
    UniqueConstraint("open_key", name="uq_incidents_open_key"),
)

incident_history = Table(
    "incident_history",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("incident_id", String(32), ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(32), nullable=False),
    Column("detail", Text, nullable=False),
)

rules = Table(
    "rules",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

silences = Table(
    "silences",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("device_ids", JSON, nullable=False),
    Column("grid_ids", JSON, nullable=False),
    Column("rule_ids", JSON, nullable=False),
    Column("starts_at_ms", BigInteger, nullable=False),
    Column("ends_at_ms", BigInteger, nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("created_by", String(100), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)


def open_key(rule_id: str, subject: str) -> str:
    return f"{rule_id}|{subject}"


def _row(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.id,
        "rule_id": incident.rule_id,
        "subject": incident.subject,
        "category": incident.category,
        "severity": incident.severity,
        "escalation_tier": incident.escalation_tier,
        "status": incident.status,
        "title": incident.title,
        "opened_at_ms": incident.opened_at_ms,
        "updated_at_ms": incident.updated_at_ms,
        "resolved_at_ms": incident.resolved_at_ms,
        "acknowledged_at_ms": incident.acknowledged_at_ms,
        "lat": incident.lat,
        "lon": incident.lon,
        "grid_id": incident.grid_id,
        "device_ids": list(incident.device_ids),
        "camera_ids": list(incident.camera_ids),
        "ticket_id": incident.ticket_id,
        "cleared": incident.cleared,
        "open_key": None if incident.status == "resolved" else open_key(incident.rule_id, incident.subject),
    }


def _incident(row: Any) -> Incident:
    return Incident(
        id=row.id,
        rule_id=row.rule_id,
        subject=row.subject,
        category=row.category,
        severity=row.severity,
        escalation_tier=row.escalation_tier,
        status=row.status,
        title=row.title,
        opened_at_ms=row.opened_at_ms,
        updated_at_ms=row.updated_at_ms,
        resolved_at_ms=row.resolved_at_ms,
        acknowledged_at_ms=row.acknowledged_at_ms,
        lat=row.lat,
        lon=row.lon,
        grid_id=row.grid_id,
        device_ids=tuple(row.device_ids or ()),
        camera_ids=tuple(row.camera_ids or ()),
        ticket_id=row.ticket_id,
        cleared=bool(row.cleared),
    )


def outbox_state(incident: Incident) -> dict[str, Any]:
    """The incident as the outbox carries it (what a notification policy looks at)."""
    row = _row(incident)
    del row["open_key"], row["cleared"], row["subject"]
    return row


def new_incident_id() -> str:
    return "inc-" + secrets.token_hex(6)


Action = Callable[[Incident], tuple[Incident, HistoryEntry]]


class SqlIncidents:
    """The incident store. Async face; the SQLAlchemy work runs in a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- async face --------------------------------------------------------------------

    async def raised(self, raise_: Raise, category: str) -> tuple[Incident, bool]:
        """Open the incident, or update the open one; (it, whether anything changed)."""
        return await asyncio.to_thread(self._raised, raise_, category)

    async def correlated(
        self, raise_: Raise, category: str, member_rules: builtins.list[str]
    ) -> tuple[Incident, builtins.list[Incident]]:
        """A correlation rule fired: one incident for the group, never one per device.

        The open incident of the group is updated; or else the oldest open incident the member
        devices have from `member_rules` (a smoke alarm raised a moment ago) becomes the group's
        incident, severity raised and devices added; the members' other open incidents are
        resolved as merged into it. Returns (the group's incident, the ones merged)."""
        return await asyncio.to_thread(self._correlated, raise_, category, member_rules)

    async def cleared(self, clear: Clear, resolve: Literal["auto", "manual"]) -> Incident | None:
        """The rule cleared: the open incident resolved or marked cleared (None if none changed)."""
        return await asyncio.to_thread(self._cleared, clear, resolve)

    async def act(self, incident_id: str, action: Action) -> Incident | None:
        """A person's (or the policy's) action, in one transaction on the current row; None if unknown.
        The action raises TransitionError when the state does not allow it."""
        return await asyncio.to_thread(self._act, incident_id, action)

    async def set_ticket(self, incident_id: str, ticket_id: str) -> bool:
        """Record the incident's ticket; False when there is no such incident."""
        return await asyncio.to_thread(self._set_ticket, incident_id, ticket_id)

    async def get(self, incident_id: str) -> Incident | None:
        return await asyncio.to_thread(self._get, incident_id)

    async def history(self, incident_id: str) -> list[HistoryEntry]:
        return await asyncio.to_thread(self._history, incident_id)

    async def list(
        self, status: str | None = None, limit: int = 100, offset: int = 0, rule_id: str | None = None
    ) -> builtins.list[Incident]:
        return await asyncio.to_thread(self._list, status, limit, offset, rule_id)

    async def open_incidents(self) -> builtins.list[Incident]:
        return await asyncio.to_thread(self._open)

    async def resolved_since(self, since_ms: int, rule_ids: Sequence[str]) -> builtins.list[Incident]:
        """Incidents of these rules resolved at or after `since_ms` (what a rebuilt window must respect)."""
        return await asyncio.to_thread(self._resolved_since, since_ms, list(rule_ids))

    async def add_silence(self, silence: Silence, now_ms: int) -> None:
        await asyncio.to_thread(self._add_silence, silence, now_ms)

    async def silences(self, ending_after_ms: int | None = None) -> builtins.list[Silence]:
        """Silences not yet over at `ending_after_ms` (every one when None), soonest start first."""
        return await asyncio.to_thread(self._silences, ending_after_ms)

    async def remove_silence(self, silence_id: str) -> bool:
        return await asyncio.to_thread(self._remove_silence, silence_id)

    async def saved_rules(self) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self._saved_rules)

    async def save_rule(self, spec: dict[str, Any], now_ms: int) -> None:
        await asyncio.to_thread(self._save_rule, spec, now_ms)

    # --- blocking implementations ------------------------------------------------------

    def _raised(self, raise_: Raise, category: str) -> tuple[Incident, bool]:
        for _attempt in range(3):
            try:
                with self._engine.begin() as conn:
                    current = self._open_one(conn, raise_.rule_id, raise_.subject)
                    if current is None:
                        incident, entry = open_incident(new_incident_id(), category, raise_)
                        conn.execute(insert(incidents).values(**_row(incident)))
                        self._log(conn, [entry], incident)
                        return incident, True
                    changed, entries = update_incident(current, raise_)
                    if not entries:
                        return current, False
                    self._write(conn, changed, entries)
                    return changed, True
            except IntegrityError:
                continue  # another process opened it at the same instant: update that one
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot record incident: {exc}") from exc
        raise StoreError(f"incident {raise_.rule_id}/{raise_.subject} kept colliding")

    def _correlated(
        self, raise_: Raise, category: str, member_rules: builtins.list[str]
    ) -> tuple[Incident, builtins.list[Incident]]:
        for _attempt in range(3):
            try:
                with self._engine.begin() as conn:
                    keys = [open_key(rule_id, device) for rule_id in member_rules for device in raise_.device_ids]
                    query = select(incidents).where(incidents.c.open_key.in_(keys)).order_by(incidents.c.opened_at_ms)
                    if conn.dialect.name == "postgresql":
                        query = query.with_for_update()
                    members = [_incident(r) for r in conn.execute(query)]
                    group = self._open_one(conn, raise_.rule_id, raise_.subject)
                    merged: builtins.list[Incident] = []
                    if group is None and members:
                        # The first member's incident becomes the group's: people already look at it.
                        first, members = members[0], members[1:]
                        group = replace(first, rule_id=raise_.rule_id, subject=raise_.subject, category=category)
                        entry = HistoryEntry(
                            first.id, raise_.at_ms, actor_of(raise_.rule_id), "correlated", raise_.title
                        )
                        self._write(conn, group, [entry])
                    if group is None:
                        incident, opened = open_incident(new_incident_id(), category, raise_)
                        conn.execute(insert(incidents).values(**_row(incident)))
                        self._log(conn, [opened], incident)
                        group = incident
                    else:
                        changed, entries = update_incident(group, raise_)
                        if entries:
                            self._write(conn, changed, entries)
                        group = changed
                    for member in members:
                        done = replace(
                            member, status="resolved", resolved_at_ms=raise_.at_ms, updated_at_ms=raise_.at_ms
                        )
                        note = f"merged into {group.id} ({raise_.title})"
                        self._write(
                            conn,
                            done,
                            [HistoryEntry(member.id, raise_.at_ms, actor_of(raise_.rule_id), "merged", note)],
                        )
                        merged.append(done)
                    return group, merged
            except IntegrityError:
                continue
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot record incident: {exc}") from exc
        raise StoreError(f"incident {raise_.rule_id}/{raise_.subject} kept colliding")

    def _cleared(self, clear: Clear, resolve: Literal["auto", "manual"]) -> Incident | None:
        try:
            with self._engine.begin() as conn:
                current = self._open_one(conn, clear.rule_id, clear.subject)
                if current is None:
                    return None
                changed, entries = clear_incident(current, clear, resolve)
                if not entries:
                    return None
                self._write(conn, changed, entries)
                return changed
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record incident: {exc}") from exc

    def _act(self, incident_id: str, action: Action) -> Incident | None:
        try:
            with self._engine.begin() as conn:
                query = select(incidents).where(incidents.c.id == incident_id)
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update()
                row = conn.execute(query).first()
                if row is None:
                    return None
                changed, entry = action(_incident(row))
                self._write(conn, changed, [entry])
                return changed
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot change incident {incident_id}: {exc}") from exc

    @staticmethod
    def _open_one(conn: Connection, rule_id: str, subject: str) -> Incident | None:
        query = select(incidents).where(incidents.c.open_key == open_key(rule_id, subject))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        return None if row is None else _incident(row)

    def _write(self, conn: Connection, incident: Incident, entries: builtins.list[HistoryEntry]) -> None:
        values = _row(incident)
        del values["id"]
        # The ticket is attached by the ticket policy (set_ticket), not by whoever changes the
        # incident: a rules process's copy may not know it yet and must not erase it.
        del values["ticket_id"]
        conn.execute(update(incidents).where(incidents.c.id == incident.id).values(**values))
        self._log(conn, entries, incident)

    @staticmethod
    def _log(conn: Connection, entries: builtins.list[HistoryEntry], incident: Incident) -> None:
        # The outbox row goes with the change (notifications follow from it); a plain "updated"
        # (the rule raised again, nothing anyone is told about changed) is left out of it.
        state = outbox_state(incident)
        outbox.append(
            conn,
            [
                outbox.OutboxEntry(e.at_ms, "incident", e.incident_id, e.action, e.actor, state, {"note": e.detail})
                for e in entries
                if e.action != "updated"
            ],
        )
        if entries:
            conn.execute(
                insert(incident_history),
                [
                    {
                        "incident_id": e.incident_id,
                        "at_ms": e.at_ms,
                        "actor": e.actor[:100],
                        "action": e.action,
                        "detail": e.detail,
                    }
                    for e in entries
                ],
            )

    def _set_ticket(self, incident_id: str, ticket_id: str) -> bool:
        try:
            with self._engine.begin() as conn:
                done = conn.execute(update(incidents).where(incidents.c.id == incident_id).values(ticket_id=ticket_id))
                return done.rowcount == 1
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot attach the ticket to the incident: {exc}") from exc

    def _get(self, incident_id: str) -> Incident | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read incident {incident_id}: {exc}") from exc
        return None if row is None else _incident(row)

    def _history(self, incident_id: str) -> builtins.list[HistoryEntry]:
        query = (
            select(incident_history)
            .where(incident_history.c.incident_id == incident_id)
            .order_by(incident_history.c.id)
        )
        try:
            with self._engine.connect() as conn:
                return [HistoryEntry(r.incident_id, r.at_ms, r.actor, r.action, r.detail) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read incident history: {exc}") from exc

    def _list(self, status: str | None, limit: int, offset: int, rule_id: str | None) -> builtins.list[Incident]:
        # Newest first; the wall sorts by severity itself.
        query = select(incidents).order_by(incidents.c.opened_at_ms.desc(), incidents.c.id).limit(limit).offset(offset)
        if status is not None:
            query = query.where(incidents.c.status == status)
        if rule_id is not None:
            query = query.where(incidents.c.rule_id == rule_id)
        try:
            with self._engine.connect() as conn:
                return [_incident(r) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list incidents: {exc}") from exc

    def _open(self) -> builtins.list[Incident]:
        query = select(incidents).where(incidents.c.open_key.is_not(None))
        try:
            with self._engine.connect() as conn:
                return [_incident(r) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list open incidents: {exc}") from exc

    def _resolved_since(self, since_ms: int, rule_ids: builtins.list[str]) -> builtins.list[Incident]:
        if not rule_ids:
            return []
        query = select(incidents).where(incidents.c.resolved_at_ms >= since_ms, incidents.c.rule_id.in_(rule_ids))
        try:
            with self._engine.connect() as conn:
                return [_incident(r) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list resolved incidents: {exc}") from exc

    def _add_silence(self, silence: Silence, now_ms: int) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    insert(silences).values(
                        id=silence.id,
                        device_ids=list(silence.device_ids),
                        grid_ids=list(silence.grid_ids),
                        rule_ids=list(silence.rule_ids),
                        starts_at_ms=silence.starts_at_ms,
                        ends_at_ms=silence.ends_at_ms,
                        reason=silence.reason,
                        created_by=silence.created_by[:100],
                        created_at_ms=now_ms,
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save silence: {exc}") from exc

    def _silences(self, ending_after_ms: int | None) -> builtins.list[Silence]:
        query = select(silences).order_by(silences.c.starts_at_ms, silences.c.id)
        if ending_after_ms is not None:
            query = query.where(silences.c.ends_at_ms > ending_after_ms)
        try:
            with self._engine.connect() as conn:
                return [
                    Silence(
                        r.id,
                        tuple(r.device_ids),
                        tuple(r.grid_ids),
                        tuple(r.rule_ids),
                        r.starts_at_ms,
                        r.ends_at_ms,
                        r.reason,
                        r.created_by,
                    )
                    for r in conn.execute(query)
                ]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read silences: {exc}") from exc

    def _remove_silence(self, silence_id: str) -> bool:
        try:
            with self._engine.begin() as conn:
                return bool(conn.execute(delete(silences).where(silences.c.id == silence_id)).rowcount)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot remove silence: {exc}") from exc

    def _saved_rules(self) -> builtins.list[dict[str, Any]]:
        try:
            with self._engine.connect() as conn:
                return [dict(r.spec) for r in conn.execute(select(rules).order_by(rules.c.id))]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read rules: {exc}") from exc

    def _save_rule(self, spec: dict[str, Any], now_ms: int) -> None:
        try:
            with self._engine.begin() as conn:
                found = conn.execute(select(rules.c.id).where(rules.c.id == spec["id"])).first()
                if found is None:
                    conn.execute(insert(rules).values(id=spec["id"], spec=spec, updated_at_ms=now_ms))
                else:
                    conn.execute(update(rules).where(rules.c.id == spec["id"]).values(spec=spec, updated_at_ms=now_ms))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save rule {spec.get('id')!r}: {exc}") from exc
