"""The transactional outbox: each change of an incident or a ticket, written in the same
transaction as the change itself, for the work that must follow it (notifying people on duty).

Why a table and not the bus: a process that commits the change and dies before publishing would
lose the event, and one that publishes before committing could announce a change that was rolled
back. A row committed with the change is there exactly when the change is. Its readers take rows
in id order and mark them taken in their own transaction (`FOR UPDATE SKIP LOCKED` on
PostgreSQL, so several readers never take the same row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, Column, Connection, Integer, MetaData, String, Table, insert

metadata = MetaData()

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("subject", String(16), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("actor", String(100), nullable=False),
    # The incident or ticket as it is after the change, and what the change said.
    Column("state", JSON, nullable=False),
    Column("detail", JSON, nullable=False),
    Column("taken_at_ms", BigInteger, nullable=True, index=True),
)

Subject = Literal["incident", "ticket"]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    at_ms: int
    subject: Subject
    subject_id: str
    action: str
    actor: str
    state: dict[str, Any]
    detail: dict[str, Any]
    id: int = 0


def append(conn: Connection, entries: Sequence[OutboxEntry]) -> None:
    """Write entries in the caller's transaction (the one that makes the change)."""
    if entries:
        conn.execute(
            insert(outbox),
            [
                {
                    "at_ms": e.at_ms,
                    "subject": e.subject,
                    "subject_id": e.subject_id,
                    "action": e.action,
                    "actor": e.actor[:100],
                    "state": e.state,
                    "detail": e.detail,
                }
                for e in entries
            ],
        )


def entry_of(row: Any) -> OutboxEntry:
    return OutboxEntry(
        row.at_ms, row.subject, row.subject_id, row.action, row.actor, dict(row.state), dict(row.detail), row.id
    )
