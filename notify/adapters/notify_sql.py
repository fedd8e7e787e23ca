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
import contextlib
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
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
    bindparam,
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


@dataclass(frozen=True, slots=True)
class Finished:
    """How one claimed send ended: sent (no error), to retry at `retry_at_ms`, or failed for good."""

    claimed: Claimed
    now_ms: int
    error: str | None
    retry_at_ms: int | None


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _digest_row(digest_id: str, p: Planned, not_before_ms: int, now_ms: int) -> dict[str, Any]:
    """A digest: sent when the person's window has passed, listing what was grouped into it."""
    return {
        "id": digest_id,
        "dedup": f"digest:{digest_id}",
        "kind": "digest",
        "event": "digest",
        "person_id": p.person_id,
        "person_name": p.person_name[:200],
        "channel": p.channel,
        "address": p.address[:500],
        "post": p.post,
        "incident_id": None,
        "ticket_id": None,
        "grid_id": None,
        "title": "digest",
        "lines": [],
        "link_id": None,
        "link_expires_ms": None,
        "digest_id": None,
        "status": PENDING,
        "attempts": 0,
        "not_before_ms": not_before_ms,
        "lease_until_ms": None,
        "lease_owner": None,
        "created_at_ms": now_ms,
        "sent_at_ms": None,
        "last_error": None,
        "acknowledged_at_ms": None,
    }


def new_notification_id() -> str:
    return "nt-" + secrets.token_hex(8)


def _wrap(what: str, exc: SQLAlchemyError) -> StoreError:
    return StoreError(f"cannot {what}: {exc}")


class SqlNotify:
    """The notification store. Async face; the SQLAlchemy work runs in a thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # SQLite has one writer at a time and makes the others wait in its busy handler, which
        # sleeps in steps of up to 100 ms: the notifier's loops (expand, claim, record) would
        # queue there. They take turns on this lock instead. PostgreSQL locks rows; no lock.
        self._lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self._lock, self._engine.begin() as conn:
            yield conn

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

    async def finish_many(self, batch: Sequence[Finished]) -> builtins.list[str]:
        """Record many attempts' ends in one transaction (the notifier's sends end in bursts)."""
        return await asyncio.to_thread(self._finish_many, batch)

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
            with self._writing() as conn:
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
            with self._writing() as conn:
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
            with self._writing() as conn:
                query = select(outbox).where(outbox.c.taken_at_ms.is_(None)).order_by(outbox.c.id).limit(limit)
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                entries = [entry_of(r) for r in conn.execute(query)]
                if not entries:
                    return 0, 0
                planned = [p for entry in entries for p in plan(entry)]
                made = len(self._add_batch(conn, planned, grouping, now_ms))
                for entry in entries:
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

    def _add_batch(
        self, conn: Connection, planned: Sequence[Planned], grouping: Grouping | None, now_ms: int
    ) -> builtins.list[str]:
        """Insert planned notifications (those whose dedup key exists are skipped) in a few
        statements whatever their number; beyond a person's rate on a channel, a notification
        joins (or opens) that person's digest instead. Returns the ids inserted."""
        if not planned:
            return []
        c = notifications.c
        keys = [p.dedup[:200] for p in planned]
        existing = {
            k for chunk in _chunks(keys, 500) for (k,) in conn.execute(select(c.dedup).where(c.dedup.in_(chunk)))
        }
        fresh: list[Planned] = []
        for p, key in zip(planned, keys, strict=True):
            if key not in existing:
                existing.add(key)
                fresh.append(p)
        if not fresh:
            return []
        recent: dict[tuple[str, str], int] = {}
        digests: dict[tuple[str, str], str] = {}
        if grouping is not None:
            people = sorted({p.person_id for p in fresh if p.groupable})
            for chunk in _chunks(people, 500):
                counted = conn.execute(
                    select(c.person_id, c.channel, func.count())
                    .where(
                        c.person_id.in_(chunk),
                        c.created_at_ms >= now_ms - grouping.window_ms,
                        c.status != GROUPED,
                        c.kind != "digest",
                    )
                    .group_by(c.person_id, c.channel)
                )
                recent.update({(person, channel): int(n) for person, channel, n in counted})
                opened = conn.execute(
                    select(c.id, c.person_id, c.channel).where(
                        c.person_id.in_(chunk),
                        c.kind == "digest",
                        c.status == PENDING,
                        c.attempts == 0,
                        c.lease_until_ms.is_(None),
                    )
                )
                digests.update({(person, channel): str(i) for i, person, channel in opened})
        rows: list[dict[str, Any]] = []
        links: list[dict[str, Any]] = []
        for p in fresh:
            notification_id = new_notification_id()
            status, digest_id = PENDING, None
            slot = (p.person_id, p.channel)
            if grouping is not None and p.groupable:
                if recent.get(slot, 0) >= grouping.max_per_window:
                    status = GROUPED
                    digest_id = digests.get(slot)
                    if digest_id is None:
                        digest_id = digests[slot] = new_notification_id()
                        rows.append(_digest_row(digest_id, p, now_ms + grouping.window_ms, now_ms))
                else:
                    recent[slot] = recent.get(slot, 0) + 1
            link_id = None
            if p.link_expires_ms is not None and p.incident_id is not None:
                link_id = new_link_id()
                links.append(
                    {
                        "id": link_id,
                        "notification_id": notification_id,
                        "incident_id": p.incident_id,
                        "person_id": p.person_id,
                        "expires_at_ms": p.link_expires_ms,
                        "used_at_ms": None,
                        "used_by": None,
                    }
                )
            rows.append(
                {
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
                    "link_id": link_id,
                    "link_expires_ms": p.link_expires_ms if link_id else None,
                    "digest_id": digest_id,
                    "status": status,
                    "attempts": 0,
                    "not_before_ms": p.not_before_ms,
                    "lease_until_ms": None,
                    "lease_owner": None,
                    "created_at_ms": now_ms,
                    "sent_at_ms": None,
                    "last_error": None,
                    "acknowledged_at_ms": None,
                }
            )
        conn.execute(insert(notifications), rows)
        if links:
            conn.execute(insert(ack_links), links)
        return [r["id"] for r in rows if r["kind"] != "digest"]

    def _add_many(self, planned: Sequence[Planned], grouping: Grouping | None, now_ms: int) -> builtins.list[str]:
        try:
            with self._writing() as conn:
                return self._add_batch(conn, planned, grouping, now_ms)
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
            with self._writing() as conn:
                moved = conn.execute(
                    update(incident_watch)
                    .where(incident_watch.c.incident_id == incident_id, incident_watch.c.rounds == rounds)
                    .values(rounds=rounds + 1, next_round_at_ms=next_at_ms)
                )
                if moved.rowcount != 1:
                    return 0
                return len(self._add_batch(conn, planned, grouping, now_ms))
        except SQLAlchemyError as exc:
            raise _wrap("notify again", exc) from exc

    def _claim(
        self, worker: str, now_ms: int, lease_ms: int, limit: int, ids: tuple[str, ...]
    ) -> builtins.list[Claimed]:
        # Few statements whatever the batch (one UPDATE ... RETURNING, one INSERT of many rows):
        # the notifier's thread competes for the GIL with a busy event loop, and each statement
        # is a chance to wait for it.
        c = notifications.c
        free = [c.status == PENDING, or_(c.lease_until_ms.is_(None), c.lease_until_ms < now_ms)]
        pick = select(c.id).where(*free, c.id.in_(ids) if ids else c.not_before_ms <= now_ms)
        pick = pick.order_by(c.not_before_ms).limit(limit)
        try:
            with self._writing() as conn:
                if conn.dialect.name == "postgresql":
                    pick = pick.with_for_update(skip_locked=True)
                # Picked (and row-locked on PostgreSQL) first, then leased by id: an UPDATE whose
                # IN holds a LIMIT ... SKIP LOCKED subquery can be planned to run that subquery
                # more than once, leasing more rows than asked.
                picked = [i for (i,) in conn.execute(pick)]
                if not picked:
                    return []
                rows = [
                    dict(r._mapping)
                    for r in conn.execute(
                        update(notifications)
                        .where(c.id.in_(picked), *free)
                        .values(lease_until_ms=now_ms + lease_ms, lease_owner=worker[:64], attempts=c.attempts + 1)
                        .returning(*notifications.c)
                    )
                ]
                if not rows:
                    return []
                conn.execute(
                    insert(notification_attempts),
                    [
                        {
                            "notification_id": r["id"],
                            "n": r["attempts"],
                            "worker": worker[:64],
                            "started_at_ms": now_ms,
                            "outcome": "sending",
                        }
                        for r in rows
                    ],
                )
                out = [Claimed(row, 0) for row in sorted(rows, key=lambda r: r["not_before_ms"])]
                for claimed in out:
                    if claimed.row["kind"] == "digest":
                        members = conn.execute(
                            select(notifications).where(c.digest_id == claimed.row["id"]).order_by(c.created_at_ms)
                        )
                        claimed.members = [dict(m._mapping) for m in members]
                return out
        except SQLAlchemyError as exc:
            raise _wrap("claim notifications", exc) from exc

    def _finish(self, claimed: Claimed, now_ms: int, error: str | None, retry_at_ms: int | None) -> str:
        return self._finish_many([Finished(claimed, now_ms, error, retry_at_ms)])[0]

    def _finish_many(self, batch: Sequence[Finished]) -> builtins.list[str]:
        """One executemany per kind of change, whatever the batch (see `_claim` on why)."""
        a, c = notification_attempts.c, notifications.c
        statuses: list[str] = []
        attempts: list[dict[str, Any]] = []
        by_status: dict[str, list[dict[str, Any]]] = {SENT: [], PENDING: [], FAILED: []}
        digests: list[dict[str, Any]] = []
        for f in batch:
            row, error = f.claimed.row, f.error
            status = SENT if error is None else PENDING if f.retry_at_ms is not None else FAILED
            statuses.append(status)
            attempts.append(
                {
                    "b_id": row["id"],
                    "b_n": row["attempts"],
                    "b_at": f.now_ms,
                    "b_outcome": "sent" if error is None else "error",
                    "b_error": None if error is None else error[:2000],
                }
            )
            by_status[status].append(
                {
                    "b_id": row["id"],
                    "b_n": row["attempts"],
                    "b_at": f.now_ms,
                    "b_retry": f.retry_at_ms,
                    "b_error": None if error is None else error[:2000],
                }
            )
            if status == SENT and row["kind"] == "digest":
                digests.append({"b_id": row["id"], "b_at": f.now_ms})
        mine = [c.id == bindparam("b_id"), c.attempts == bindparam("b_n")]  # only while the claim is ours
        values: dict[str, dict[str, Any]] = {
            SENT: {"status": SENT, "sent_at_ms": bindparam("b_at"), "last_error": None},
            PENDING: {"not_before_ms": bindparam("b_retry"), "last_error": bindparam("b_error")},
            FAILED: {"status": FAILED, "last_error": bindparam("b_error")},
        }
        try:
            with self._writing() as conn:
                conn.execute(
                    update(notification_attempts)
                    .where(a.notification_id == bindparam("b_id"), a.n == bindparam("b_n"))
                    .values(
                        finished_at_ms=bindparam("b_at"), outcome=bindparam("b_outcome"), error=bindparam("b_error")
                    ),
                    attempts,
                )
                for status, params in by_status.items():
                    if params:
                        conn.execute(
                            update(notifications)
                            .where(*mine)
                            .values(lease_until_ms=None, lease_owner=None, **values[status]),
                            params,
                        )
                if digests:
                    conn.execute(
                        update(notifications)
                        .where(c.digest_id == bindparam("b_id"))
                        .values(sent_at_ms=bindparam("b_at")),
                        digests,
                    )
        except SQLAlchemyError as exc:
            raise _wrap("record the delivery", exc) from exc
        return statuses

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
            with self._writing() as conn:
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
            with self._writing() as conn:
                done = conn.execute(delete(outbox).where(outbox.c.taken_at_ms < before_ms))
                return int(done.rowcount or 0)
        except SQLAlchemyError as exc:
            raise _wrap("purge the outbox", exc) from exc
