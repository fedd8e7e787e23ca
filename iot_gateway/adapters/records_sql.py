"""Devices and dead letters as records, through SQLAlchemy (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

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
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

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

    def create_schema(self) -> None:
        metadata.create_all(self._engine)

    def add(self, device: Device) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(devices).values(**_values(device)))
        except IntegrityError as exc:
            raise DuplicateError(f"device {device.id!r} exists already") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot register device {device.id!r}: {exc}") from exc

    def add_many(self, batch: Sequence[Device]) -> None:
        if not batch:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(devices), [_values(d) for d in batch])
        except IntegrityError as exc:
            raise DuplicateError("a device in the batch exists already") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot register devices: {exc}") from exc

    def upsert(self, device: Device) -> None:
        self.upsert_many([device])

    def upsert_many(self, batch: Sequence[Device]) -> None:
        """Create or change each device, all in one transaction (a city config at start-up)."""
        try:
            with self._engine.begin() as conn:
                for device in batch:
                    values = _values(device)
                    changed = conn.execute(update(devices).where(devices.c.id == device.id).values(**values))
                    if changed.rowcount == 0:
                        conn.execute(insert(devices).values(**values))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save {len(batch)} devices: {exc}") from exc

    def get(self, device_id: str) -> Device | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(devices).where(devices.c.id == device_id)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read device {device_id!r}: {exc}") from exc
        return None if row is None else _device(row)

    def list(self, kind: str | None = None, limit: int = 1000, offset: int = 0) -> list[Device]:
        query = select(devices).order_by(devices.c.id).limit(limit).offset(offset)
        if kind is not None:
            query = query.where(devices.c.kind == kind)
        try:
            with self._engine.connect() as conn:
                return [_device(row) for row in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list devices: {exc}") from exc

    def kinds(self) -> dict[str, DeviceKind]:
        try:
            with self._engine.connect() as conn:
                return {row.id: row.kind for row in conn.execute(select(devices.c.id, devices.c.kind))}
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot load device kinds: {exc}") from exc

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(devices)).scalar_one())


class SqlDeadLetters:
    """Refused messages with their reasons."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self._engine)

    def add_many(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        rows = [
            {
                "topic": letter.topic[:1024],
                "payload": letter.payload,
                "reason": letter.reason,
                "detail": letter.detail[:2000],
                "received_at_ms": letter.received_at_ms,
            }
            for letter in letters
        ]
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(dead_letters), rows)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot keep {len(rows)} dead letters: {exc}") from exc

    def counts(self) -> dict[str, int]:
        query = select(dead_letters.c.reason, func.count()).group_by(dead_letters.c.reason)
        with self._engine.connect() as conn:
            return {reason: int(n) for reason, n in conn.execute(query)}

    def recent(self, limit: int = 100, reason: str | None = None) -> list[DeadLetter]:
        query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if reason is not None:
            query = query.where(dead_letters.c.reason == reason)
        with self._engine.connect() as conn:
            return [
                DeadLetter(r.topic, bytes(r.payload), r.reason, r.detail, r.received_at_ms) for r in conn.execute(query)
            ]
