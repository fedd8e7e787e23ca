"""Notifications as records (SQLite embedded, PostgreSQL in production).

- `notify_config`: the roster, the policies and the channels' settings, each one JSON document.
- `notifications`: one row per message to one person on one channel; `dedup` is unique, so an
  outbox row expanded twice (two processes, a retry after a crash) makes its notifications once.
- `notification_attempts`: every send, when, by which worker, how it ended (the audit).
- `ack_links`: the signed acknowledgement links, and when each was used (single use).
- `incident_watch`: open incidents as the outbox told them, for the repeats of unacknowledged
  critical ones (read each pass: no timers to lose on restart).

Delivery claims rows with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one
writer at a time): two workers never hold one notification; one that dies mid-send leaves its
lease to run out, and the next worker sends it again under the same id.
"""

from __future__ import annotations

import asyncio
import builtins
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from kernel.db import dialect_insert
from kernel.errors import StoreError
from kernel.outbox import OutboxEntry, entry_of, outbox

from ..domain.links import new_link_id

metadata = MetaData()

notify_config = Table(
    "notify_config",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("updated_by", String(100), nullable=False),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("dedup", String(200), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # incident, ticket, repeat, digest, test
    Column("event", String(32), nullable=False),
    Column("person_id", String(64), nullable=False, index=True),
    Column("person_name", String(200), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("address", String(500), nullable=False),
    Column("post", String(80), nullable=True),
    Column("incident_id", String(32), nullable=True, index=True),
    Column("ticket_id", String(32), nullable=True, index=True),
    Column("grid_id", String(64), nullable=True),
    Column("title", Text, nullable=False),
    Column("lines", JSON, nullable=False),
    Column("link_id", String(32), nullable=True),
    Column("link_expires_ms", BigInteger, nullable=True),
    Column("digest_id", String(32), nullable=True, index=True),
    Column("status", String(16), nullable=False),  # pending, sent, failed, grouped
    Column("attempts", Integer, nullable=False),
    Column("not_before_ms", BigInteger, nullable=False, index=True),
    Column("lease_until_ms", BigInteger, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False, index=True),
    Column("sent_at_ms", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("acknowledged_at_ms", BigInteger, nullable=True),
)

notification_attempts = Table(
    "notification_attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("notification_id", String(32), nullable=False, index=True),
    Column("n", Integer, nullable=False),
    Column("worker", String(64), nullable=False),
    Column("started_at_ms", BigInteger, nullable=False),
    Column("finished_at_ms", BigInteger, nullable=True),
    Column("outcome", String(16), nullable=False),  # sending, sent, error
    Column("error", Text, nullable=True),
)

ack_links = Table(
    "ack_links",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("notification_id", String(32), nullable=False),
    Column("incident_id", String(32), nullable=False, index=True),
    Column("person_id", String(64), nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("used_at_ms", BigInteger, nullable=True),
    Column("used_by", String(200), nullable=True),
)

incident_watch = Table(
    "incident_watch",
    metadata,
    Column("incident_id", String(32), primary_key=True),
    Column("state", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("rounds", Integer, nullable=False),
    Column("next_round_at_ms", BigInteger, nullable=True, index=True),
    Column("updated_at_ms", BigInteger, nullable=False),
)

PENDING, SENT, FAILED, GROUPED = "pending", "sent", "failed", "grouped"


@dataclass(frozen=True, slots=True)
class Planned:
    """One notification to make (the notifier's plan for an outbox entry, a repeat or a test)."""

    dedup: str
    kind: str
    event: str
    person_id: str
    person_name: str
    channel: str
    address: str
    post: str | None
    title: str
    lines: tuple[str, ...]
    not_before_ms: int
    incident_id: str | None = None
    ticket_id: str | None = None
    grid_id: str | None = None
    link_expires_ms: int | None = None  # an acknowledgement link goes with it
    groupable: bool = True


@dataclass(frozen=True, slots=True)
class Grouping:
    """At most `max_per_window` notifications to one person on one channel within `window_ms`;
    the ones beyond wait in one digest sent when the window has passed."""

    max_per_window: int
    window_ms: int


@dataclass(slots=True)
class Claimed:
    row: dict[str, Any]
    attempt_id: int
    members: list[dict[str, Any]] = field(default_factory=list)  # a digest's grouped notifications


def new_notification_id() -> str:
    return "nt-" + secrets.token_hex(8)


def _wrap(what: str, exc: SQLAlchemyError) -> StoreError:
    return StoreError(f"cannot {what}: {exc}")


class SqlNotify:
    """The notification store. Async face; the SQLAlchemy work runs in a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # ----- configuration ---------------------------------------------------------------

    async def config(self, key: str) -> tuple[Any, int] | None:
        """A configuration document and when it was last changed (None: never set)."""
        return await asyncio.to_thread(self._config, key)

    async def put_config(self, key: str, value: Any, who: str, now_ms: int) -> None:
        await asyncio.to_thread(self._put_config, key, value, who, now_ms)

    async def config_version(self) -> int:
        """The latest change of any configuration document (a cheap look before reloading)."""
        return await asyncio.to_thread(self._config_version)

    async def link_key(self) -> bytes:
        return await asyncio.to_thread(self._link_key)

    # ----- outbox to notifications ------------------------------------------------------

    async def expand(
        self,
        limit: int,
        plan: Callable[[OutboxEntry], builtins.list[Planned]],
        watch: Callable[[OutboxEntry], int | None],
        grouping: Grouping,
        now_ms: int,
    ) -> tuple[int, int]:
        """Take up to `limit` outbox rows, make their notifications and mark them taken, all in
        one transaction. `watch` gives an incident entry's next repeat time (None: no repeats).
        Returns (rows taken, notifications made)."""
        return await asyncio.to_thread(self._expand, limit, plan, watch, grouping, now_ms)

    async def due_repeats(self, now_ms: int, limit: int = 100) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self._due_repeats, now_ms, limit)

    async def repeat(
        self,
        incident_id: str,
        rounds: int,
        planned: Sequence[Planned],
        next_at_ms: int | None,
        grouping: Grouping,
        now_ms: int,
    ) -> int:
        """Make a repeat's notifications and move the watch to its next round, in one transaction
        (only if the watch is still at `rounds`: another process may have done it)."""
        return await asyncio.to_thread(self._repeat, incident_id, rounds, planned, next_at_ms, grouping, now_ms)

    async def add(self, planned: Sequence[Planned], grouping: Grouping | None, now_ms: int) -> builtins.list[str]:
        return await asyncio.to_thread(self._add_many, planned, grouping, now_ms)

    # ----- delivery --------------------------------------------------------------------

    async def claim(
        self, worker: str, now_ms: int, lease_ms: int, limit: int, ids: Sequence[str] = ()
    ) -> builtins.list[Claimed]:
        return await asyncio.to_thread(self._claim, worker, now_ms, lease_ms, limit, tuple(ids))

    async def finish(self, claimed: Claimed, now_ms: int, error: str | None, retry_at_ms: int | None) -> str:
        """Record the attempt's end: sent, retried at `retry_at_ms`, or failed for good (None)."""
        return await asyncio.to_thread(self._finish, claimed, now_ms, error, retry_at_ms)

    async def next_due_ms(self) -> int | None:
        return await asyncio.to_thread(self._next_due_ms)

    # ----- reading ---------------------------------------------------------------------

    async def list(
        self,
        *,
        incident_id: str | None = None,
        ticket_id: str | None = None,
        status: str | None = None,
        person_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[dict[str, Any]]:
        return await asyncio.to_thread(self._list, incident_id, ticket_id, status, person_id, limit, offset)

    async def get(self, notification_id: str) -> tuple[dict[str, Any], builtins.list[dict[str, Any]]] | None:
        return await asyncio.to_thread(self._get, notification_id)

    async def counts(self) -> dict[str, int]:
        return await asyncio.to_thread(self._counts)

    # ----- acknowledgement links -------------------------------------------------------

    async def link(self, link_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._link, link_id)

    async def use_link(self, link_id: str, who: str, now_ms: int) -> bool:
        """Mark a link used (and its notification acknowledged); False if it was used before."""
        return await asyncio.to_thread(self._use_link, link_id, who, now_ms)

    async def purge(self, before_ms: int) -> int:
        """Forget outbox rows taken before `before_ms` (the notifications keep what they said)."""
        return await asyncio.to_thread(self._purge, before_ms)

    # ----- blocking implementations ----------------------------------------------------

    def _config(self, key: str) -> tuple[Any, int] | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(notify_config).where(notify_config.c.key == key)).first()
        except SQLAlchemyError as exc:
            raise _wrap("read the notification settings", exc) from exc
        return None if row is None else (row.value, row.updated_at_ms)

    def _put_config(self, key: str, value: Any, who: str, now_ms: int) -> None:
        try:
            with self._engine.begin() as conn:
                stmt = dialect_insert(conn, notify_config).values(
                    key=key, value=value, updated_at_ms=now_ms, updated_by=who
                )
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[notify_config.c.key],
                        set_={"value": value, "updated_at_ms": now_ms, "updated_by": who},
                    )
                )
        except SQLAlchemyError as exc:
            raise _wrap("store the notification settings", exc) from exc

    def _config_version(self) -> int:
        try:
            with self._engine.connect() as conn:
                found = conn.execute(
                    select(func.max(notify_config.c.updated_at_ms)).where(notify_config.c.key != "link_key")
                ).scalar()
        except SQLAlchemyError as exc:
            raise _wrap("read the notification settings", exc) from exc
        return int(found or 0)

    def _link_key(self) -> bytes:
        try:
            with self._engine.begin() as conn:
                stmt = dialect_insert(conn, notify_config).values(
                    key="link_key", value=secrets.token_urlsafe(48), updated_at_ms=0, updated_by="system"
                )
                conn.execute(stmt.on_conflict_do_nothing(index_elements=[notify_config.c.key]))
                value = conn.execute(
                    select(notify_config.c.value).where(notify_config.c.key == "link_key")
                ).scalar_one()
        except SQLAlchemyError as exc:
            raise _wrap("read the link key", exc) from exc
        return str(value).encode()

    def _expand(
        self,
        limit: int,
        plan: Callable[[OutboxEntry], builtins.list[Planned]],
        watch: Callable[[OutboxEntry], int | None],
        grouping: Grouping,
        now_ms: int,
    ) -> tuple[int, int]:
        try:
            with self._engine.begin() as conn:
                query = select(outbox).where(outbox.c.taken_at_ms.is_(None)).order_by(outbox.c.id).limit(limit)
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                entries = [entry_of(r) for r in conn.execute(query)]
                if not entries:
                    return 0, 0
                made = 0
                for entry in entries:
                    for planned in plan(entry):
                        made += self._add(conn, planned, grouping, now_ms) is not None
                    if entry.subject == "incident":
                        self._watch(conn, entry, watch(entry))
                conn.execute(update(outbox).where(outbox.c.id.in_([e.id for e in entries])).values(taken_at_ms=now_ms))
                return len(entries), made
        except SQLAlchemyError as exc:
            raise _wrap("turn the outbox into notifications", exc) from exc

    @staticmethod
    def _watch(conn: Connection, entry: OutboxEntry, next_at_ms: int | None) -> None:
        status = str(entry.state.get("status", "open"))
        values = {"state": entry.state, "status": status, "updated_at_ms": entry.at_ms}
        current = conn.execute(select(incident_watch).where(incident_watch.c.incident_id == entry.subject_id)).first()
        if status != "open":
            next_at_ms = None
        elif (
            current is not None
            and current.next_round_at_ms is not None
            and entry.action not in ("escalated", "severity_raised", "opened")
        ):
            next_at_ms = current.next_round_at_ms  # a change that notifies no one keeps the rhythm
        if current is None:
            if status == "resolved":
                return
            conn.execute(
                insert(incident_watch).values(
                    incident_id=entry.subject_id, rounds=0, next_round_at_ms=next_at_ms, **values
                )
            )
        elif status == "resolved":
            conn.execute(delete(incident_watch).where(incident_watch.c.incident_id == entry.subject_id))
        else:
            conn.execute(
                update(incident_watch)
                .where(incident_watch.c.incident_id == entry.subject_id)
                .values(next_round_at_ms=next_at_ms, **values)
            )

    def _add(self, conn: Connection, p: Planned, grouping: Grouping | None, now_ms: int) -> str | None:
        """Insert one planned notification (nothing if its dedup key exists); beyond the
        person's rate on that channel it joins (or opens) a digest instead."""
        if conn.execute(select(notifications.c.id).where(notifications.c.dedup == p.dedup)).first() is not None:
            return None
        notification_id = new_notification_id()
        status, digest_id = PENDING, None
        if grouping is not None and p.groupable:
            since = now_ms - grouping.window_ms
            recent = conn.execute(
                select(func.count())
                .select_from(notifications)
                .where(
                    notifications.c.person_id == p.person_id,
                    notifications.c.channel == p.channel,
                    notifications.c.created_at_ms >= since,
                    notifications.c.status != GROUPED,
                    notifications.c.kind != "digest",
                )
            ).scalar_one()
            if recent >= grouping.max_per_window:
                status = GROUPED
                digest_id = self._open_digest(conn, p, grouping, now_ms)
        values: dict[str, Any] = {
            "id": notification_id,
            "dedup": p.dedup[:200],
            "kind": p.kind,
            "event": p.event,
            "person_id": p.person_id,
            "person_name": p.person_name[:200],
            "channel": p.channel,
            "address": p.address[:500],
            "post": p.post,
            "incident_id": p.incident_id,
            "ticket_id": p.ticket_id,
            "grid_id": p.grid_id,
            "title": p.title,
            "lines": list(p.lines),
            "link_id": None,
            "digest_id": digest_id,
            "status": status,
            "attempts": 0,
            "not_before_ms": p.not_before_ms,
            "created_at_ms": now_ms,
        }
        if p.link_expires_ms is not None and p.incident_id is not None:
            values["link_id"] = new_link_id()
            values["link_expires_ms"] = p.link_expires_ms
            conn.execute(
                insert(ack_links).values(
                    id=values["link_id"],
                    notification_id=notification_id,
                    incident_id=p.incident_id,
                    person_id=p.person_id,
                    expires_at_ms=p.link_expires_ms,
                )
            )
        conn.execute(insert(notifications).values(**values))
        return notification_id

    @staticmethod
    def _open_digest(conn: Connection, p: Planned, grouping: Grouping, now_ms: int) -> str:
        found = conn.execute(
            select(notifications.c.id).where(
                notifications.c.person_id == p.person_id,
                notifications.c.channel == p.channel,
                notifications.c.kind == "digest",
                notifications.c.status == PENDING,
                notifications.c.attempts == 0,
                notifications.c.lease_until_ms.is_(None),
            )
        ).first()
        if found is not None:
            return str(found.id)
        digest_id = new_notification_id()
        conn.execute(
            insert(notifications).values(
                id=digest_id,
                dedup=f"digest:{digest_id}",
                kind="digest",
                event="digest",
                person_id=p.person_id,
                person_name=p.person_name[:200],
                channel=p.channel,
                address=p.address[:500],
                post=p.post,
                title="digest",
                lines=[],
                status=PENDING,
                attempts=0,
                not_before_ms=now_ms + grouping.window_ms,
                created_at_ms=now_ms,
            )
        )
        return digest_id

    def _add_many(self, planned: Sequence[Planned], grouping: Grouping | None, now_ms: int) -> builtins.list[str]:
        try:
            with self._engine.begin() as conn:
                return [i for i in (self._add(conn, p, grouping, now_ms) for p in planned) if i is not None]
        except SQLAlchemyError as exc:
            raise _wrap("store notifications", exc) from exc

    def _due_repeats(self, now_ms: int, limit: int) -> builtins.list[dict[str, Any]]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(incident_watch)
                    .where(incident_watch.c.status == "open", incident_watch.c.next_round_at_ms <= now_ms)
                    .order_by(incident_watch.c.next_round_at_ms)
                    .limit(limit)
                )
                return [dict(r._mapping) for r in rows]
        except SQLAlchemyError as exc:
            raise _wrap("read the incidents to notify again", exc) from exc

    def _repeat(
        self,
        incident_id: str,
        rounds: int,
        planned: Sequence[Planned],
        next_at_ms: int | None,
        grouping: Grouping,
        now_ms: int,
    ) -> int:
        try:
            with self._engine.begin() as conn:
                moved = conn.execute(
                    update(incident_watch)
                    .where(incident_watch.c.incident_id == incident_id, incident_watch.c.rounds == rounds)
                    .values(rounds=rounds + 1, next_round_at_ms=next_at_ms)
                )
                if moved.rowcount != 1:
                    return 0
                return sum(self._add(conn, p, grouping, now_ms) is not None for p in planned)
        except SQLAlchemyError as exc:
            raise _wrap("notify again", exc) from exc

    def _claim(
        self, worker: str, now_ms: int, lease_ms: int, limit: int, ids: tuple[str, ...]
    ) -> builtins.list[Claimed]:
        c = notifications.c
        try:
            with self._engine.begin() as conn:
                query = select(notifications).where(
                    c.status == PENDING,
                    or_(c.lease_until_ms.is_(None), c.lease_until_ms < now_ms),
                )
                query = query.where(c.id.in_(ids)) if ids else query.where(c.not_before_ms <= now_ms)
                query = query.order_by(c.not_before_ms).limit(limit)
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                rows = [dict(r._mapping) for r in conn.execute(query)]
                out: list[Claimed] = []
                for row in rows:
                    done = conn.execute(
                        update(notifications)
                        .where(
                            c.id == row["id"],
                            c.status == PENDING,
                            or_(c.lease_until_ms.is_(None), c.lease_until_ms < now_ms),
                        )
                        .values(lease_until_ms=now_ms + lease_ms, lease_owner=worker[:64], attempts=c.attempts + 1)
                    )
                    if done.rowcount != 1:
                        continue  # SQLite: another process's claim came first
                    row["attempts"] += 1
                    attempt = conn.execute(
                        insert(notification_attempts)
                        .values(
                            notification_id=row["id"],
                            n=row["attempts"],
                            worker=worker[:64],
                            started_at_ms=now_ms,
                            outcome="sending",
                        )
                        .returning(notification_attempts.c.id)
                    ).scalar_one()
                    claimed = Claimed(row, int(attempt))
                    if row["kind"] == "digest":
                        members = conn.execute(
                            select(notifications).where(c.digest_id == row["id"]).order_by(c.created_at_ms)
                        )
                        claimed.members = [dict(m._mapping) for m in members]
                    out.append(claimed)
                return out
        except SQLAlchemyError as exc:
            raise _wrap("claim notifications", exc) from exc

    def _finish(self, claimed: Claimed, now_ms: int, error: str | None, retry_at_ms: int | None) -> str:
        c = notifications.c
        row = claimed.row
        if error is None:
            status, values = SENT, {"status": SENT, "sent_at_ms": now_ms, "last_error": None}
        elif retry_at_ms is not None:
            status, values = PENDING, {"not_before_ms": retry_at_ms, "last_error": error[:2000]}
        else:
            status, values = FAILED, {"status": FAILED, "last_error": error[:2000]}
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    update(notification_attempts)
                    .where(notification_attempts.c.id == claimed.attempt_id)
                    .values(
                        finished_at_ms=now_ms,
                        outcome="sent" if error is None else "error",
                        error=None if error is None else error[:2000],
                    )
                )
                # Only while the claim is ours: past its lease, another worker may have claimed it
                # (its attempt then decides the notification's state).
                done = conn.execute(
                    update(notifications)
                    .where(c.id == row["id"], c.attempts == row["attempts"])
                    .values(lease_until_ms=None, lease_owner=None, **values)
                )
                if done.rowcount != 1:
                    return "superseded"
                if status == SENT and row["kind"] == "digest":
                    conn.execute(update(notifications).where(c.digest_id == row["id"]).values(sent_at_ms=now_ms))
                return status
        except SQLAlchemyError as exc:
            raise _wrap("record the delivery", exc) from exc

    def _next_due_ms(self) -> int | None:
        try:
            with self._engine.connect() as conn:
                found = conn.execute(
                    select(func.min(notifications.c.not_before_ms)).where(notifications.c.status == PENDING)
                ).scalar()
        except SQLAlchemyError as exc:
            raise _wrap("read the next delivery", exc) from exc
        return None if found is None else int(found)

    def _list(
        self,
        incident_id: str | None,
        ticket_id: str | None,
        status: str | None,
        person_id: str | None,
        limit: int,
        offset: int,
    ) -> builtins.list[dict[str, Any]]:
        c = notifications.c
        conditions = []
        if incident_id is not None:
            conditions.append(c.incident_id == incident_id)
        if ticket_id is not None:
            conditions.append(c.ticket_id == ticket_id)
        if status is not None:
            conditions.append(c.status == status)
        if person_id is not None:
            conditions.append(c.person_id == person_id)
        query = (
            select(notifications)
            .where(and_(*conditions))
            .order_by(c.created_at_ms.desc(), c.id)
            .limit(limit)
            .offset(offset)
        )
        try:
            with self._engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise _wrap("list notifications", exc) from exc

    def _get(self, notification_id: str) -> tuple[dict[str, Any], builtins.list[dict[str, Any]]] | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(notifications).where(notifications.c.id == notification_id)).first()
                if row is None:
                    return None
                attempts = conn.execute(
                    select(notification_attempts)
                    .where(notification_attempts.c.notification_id == notification_id)
                    .order_by(notification_attempts.c.id)
                )
                return dict(row._mapping), [dict(a._mapping) for a in attempts]
        except SQLAlchemyError as exc:
            raise _wrap("read the notification", exc) from exc

    def _counts(self) -> dict[str, int]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(notifications.c.status, func.count()).group_by(notifications.c.status))
                counts = {str(status): int(n) for status, n in rows}
                counts["outbox_waiting"] = int(
                    conn.execute(
                        select(func.count()).select_from(outbox).where(outbox.c.taken_at_ms.is_(None))
                    ).scalar_one()
                )
                return counts
        except SQLAlchemyError as exc:
            raise _wrap("count notifications", exc) from exc

    def _link(self, link_id: str) -> dict[str, Any] | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(ack_links).where(ack_links.c.id == link_id)).first()
        except SQLAlchemyError as exc:
            raise _wrap("read the link", exc) from exc
        return None if row is None else dict(row._mapping)

    def _use_link(self, link_id: str, who: str, now_ms: int) -> bool:
        try:
            with self._engine.begin() as conn:
                done = conn.execute(
                    update(ack_links)
                    .where(ack_links.c.id == link_id, ack_links.c.used_at_ms.is_(None))
                    .values(used_at_ms=now_ms, used_by=who[:200])
                )
                if done.rowcount != 1:
                    return False
                conn.execute(
                    update(notifications).where(notifications.c.link_id == link_id).values(acknowledged_at_ms=now_ms)
                )
                return True
        except SQLAlchemyError as exc:
            raise _wrap("use the link", exc) from exc

    def _purge(self, before_ms: int) -> int:
        try:
            with self._engine.begin() as conn:
                done = conn.execute(delete(outbox).where(outbox.c.taken_at_ms < before_ms))
                return int(done.rowcount or 0)
        except SQLAlchemyError as exc:
            raise _wrap("purge the outbox", exc) from exc
