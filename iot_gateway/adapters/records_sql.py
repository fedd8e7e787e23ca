"""Devices and dead letters as records, through SQLAlchemy (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kernel.db import dialect_insert
from kernel.errors import DuplicateError, StoreError
from kernel.model import DeadLetter, Device, DeviceKind

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("grid_id", String(64), nullable=True),
    Column("attributes", JSON, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    # SQLite only autoincrements a plain INTEGER primary key.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("topic", String(1024), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("reason", String(32), nullable=False, index=True),
    Column("detail", Text, nullable=False),
    Column("received_at_ms", BigInteger, nullable=False, index=True),
    # How many items of the message were refused, and how many for each reason.
    Column("refused_items", Integer, nullable=False, default=1),
    Column("reasons", JSON, nullable=False, default=dict),
)

# Exact counts of refused items by reason: rows of dead_letters expire, these never do.
dead_letter_counts = Table(
    "dead_letter_counts",
    metadata,
    Column("reason", String(32), primary_key=True),
    Column("count", BigInteger, nullable=False),
)


def _device(row: Any) -> Device:
    return Device(row.id, row.kind, row.name, row.lat, row.lon, row.grid_id, dict(row.attributes or {}))


def _values(device: Device) -> dict[str, Any]:
    # The table's columns are the dataclass's fields, name for name.
    return dataclasses.asdict(device)


class SqlDevices:
    """The device registry."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # The async face of the port: each call runs its blocking SQLAlchemy work in a thread.

    async def add(self, device: Device) -> None:
        await asyncio.to_thread(self._add, device)

    async def add_many(self, batch: Sequence[Device]) -> None:
        await asyncio.to_thread(self._add_many, batch)

    async def upsert(self, device: Device) -> None:
        await asyncio.to_thread(self._upsert, device)

    async def upsert_many(self, batch: Sequence[Device]) -> None:
        await asyncio.to_thread(self._upsert_many, batch)

    async def get(self, device_id: str) -> Device | None:
        return await asyncio.to_thread(self._get, device_id)

    async def list(self, kind: str | None = None, limit: int = 1000, offset: int = 0) -> list[Device]:
        return await asyncio.to_thread(self._list, kind, limit, offset)

    async def kinds(self) -> dict[str, DeviceKind]:
        return await asyncio.to_thread(self._kinds)

    async def count(self) -> int:
        return await asyncio.to_thread(self._count)

    async def remove(self, device_id: str) -> bool:
        return await asyncio.to_thread(self._remove, device_id)

    # Blocking implementations.

    def _add(self, device: Device) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(devices).values(**_values(device)))
        except IntegrityError as exc:
            raise DuplicateError(f"device {device.id!r} exists already") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot register device {device.id!r}: {exc}") from exc

    def _add_many(self, batch: Sequence[Device]) -> None:
        if not batch:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(devices), [_values(d) for d in batch])
        except IntegrityError as exc:
            raise DuplicateError("a device in the batch exists already") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot register devices: {exc}") from exc

    def _upsert(self, device: Device) -> None:
        self._upsert_many([device])

    def _upsert_many(self, batch: Sequence[Device]) -> None:
        """Create or change each device, all in one transaction (a city config at start-up).

        One INSERT ... ON CONFLICT DO UPDATE: several processes loading the same city config
        at once never collide, as select-then-insert did.
        """
        if not batch:
            return
        try:
            with self._engine.begin() as conn:
                stmt = dialect_insert(conn, devices)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[devices.c.id],
                    set_={c.name: stmt.excluded[c.name] for c in devices.columns if c.name != "id"},
                )
                conn.execute(stmt, [_values(d) for d in batch])
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save {len(batch)} devices: {exc}") from exc

    def _get(self, device_id: str) -> Device | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(devices).where(devices.c.id == device_id)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read device {device_id!r}: {exc}") from exc
        return None if row is None else _device(row)

    def _list(self, kind: str | None = None, limit: int = 1000, offset: int = 0) -> builtins.list[Device]:
        query = select(devices).order_by(devices.c.id).limit(limit).offset(offset)
        if kind is not None:
            query = query.where(devices.c.kind == kind)
        try:
            with self._engine.connect() as conn:
                return [_device(row) for row in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list devices: {exc}") from exc

    def _kinds(self) -> dict[str, DeviceKind]:
        try:
            with self._engine.connect() as conn:
                return {row.id: row.kind for row in conn.execute(select(devices.c.id, devices.c.kind))}
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot load device kinds: {exc}") from exc

    def _count(self) -> int:
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(devices)).scalar_one())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot count devices: {exc}") from exc

    def _remove(self, device_id: str) -> bool:
        try:
            with self._engine.begin() as conn:
                return bool(conn.execute(delete(devices).where(devices.c.id == device_id)).rowcount)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot remove device {device_id!r}: {exc}") from exc


def _safe_text(text: str, limit: int) -> str:
    # PostgreSQL text holds neither NUL nor lone surrogates; a topic or detail may carry both.
    return text[:limit].encode("utf-8", errors="backslashreplace").decode("utf-8").replace("\x00", "\\x00")


class SqlDeadLetters:
    """Refused messages with their reasons; exact counts by reason; retention by age and count."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # The async face of the port: each call runs its blocking SQLAlchemy work in a thread.

    async def add_many(self, letters: Sequence[DeadLetter]) -> None:
        await asyncio.to_thread(self._add_many, letters)

    async def counts(self) -> dict[str, int]:
        return await asyncio.to_thread(self._counts)

    async def recent(self, limit: int = 100, reason: str | None = None) -> list[DeadLetter]:
        return await asyncio.to_thread(self._recent, limit, reason)

    async def prune(self, max_rows: int, older_than_ms: int) -> int:
        return await asyncio.to_thread(self._prune, max_rows, older_than_ms)

    # Blocking implementations.

    def _add_many(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows: list[dict[str, Any]] = [
            {
                "topic": _safe_text(letter.topic, 1024),
                "payload": letter.payload,
                "reason": letter.reason,
                "detail": _safe_text(letter.detail, 2000),
                "received_at_ms": letter.received_at_ms,
                "refused_items": letter.refused_items,
                "reasons": letter.refused or {letter.reason: 1},
            }
            for letter in letters
        ]
        by_reason: dict[str, int] = {}
        for row in rows:
            for reason, n in row["reasons"].items():
                by_reason[reason] = by_reason.get(reason, 0) + n
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(dead_letters), rows)
                stmt = dialect_insert(conn, dead_letter_counts)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[dead_letter_counts.c.reason],
                    set_={"count": dead_letter_counts.c.count + stmt.excluded["count"]},
                )
                conn.execute(stmt, [{"reason": r, "count": n} for r, n in sorted(by_reason.items())])
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot keep {len(rows)} dead letters: {exc}") from exc

    def _counts(self) -> dict[str, int]:
        try:
            with self._engine.connect() as conn:
                query = select(dead_letter_counts.c.reason, dead_letter_counts.c.count.label("n"))
                return {r.reason: int(r.n) for r in conn.execute(query)}
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot count dead letters: {exc}") from exc

    def _recent(self, limit: int = 100, reason: str | None = None) -> list[DeadLetter]:
        query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if reason is not None:
            query = query.where(dead_letters.c.reason == reason)
        try:
            with self._engine.connect() as conn:
                return [
                    DeadLetter(r.topic, bytes(r.payload), r.reason, r.detail, r.received_at_ms, dict(r.reasons or {}))
                    for r in conn.execute(query)
                ]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read dead letters: {exc}") from exc

    def _prune(self, max_rows: int, older_than_ms: int) -> int:
        try:
            with self._engine.begin() as conn:
                gone = conn.execute(delete(dead_letters).where(dead_letters.c.received_at_ms < older_than_ms)).rowcount
                newest = conn.execute(select(func.max(dead_letters.c.id))).scalar()
                if newest is not None and newest > max_rows:
                    gone += conn.execute(delete(dead_letters).where(dead_letters.c.id <= newest - max_rows)).rowcount
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prune dead letters: {exc}") from exc
        return int(gone)
