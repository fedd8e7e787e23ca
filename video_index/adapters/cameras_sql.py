"""The camera catalog in the records database (SQLite embedded, PostgreSQL in production).

Async face; the SQLAlchemy work runs in a thread, so the event loop never waits on the database.
A camera's health (status, reason, when checked) is kept on its row by the watch; each change of
status is also a row of `camera_checks`, from which availability over a day is worked out.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import SQLAlchemyError

from kernel.errors import StoreError

from ..domain.cameras import Camera

metadata = MetaData()

cameras = Table(
    "cameras",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("department", String(100), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("stream_url", Text, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("last_checked_ms", BigInteger, nullable=True),
    Column("status_since_ms", BigInteger, nullable=True),
    Column("updated_at_ms", BigInteger, nullable=False),
    # What text search looks in, lower-cased: id, name, department and tags (JSON would keep
    # Chinese tags as \u escapes on SQLite, where LIKE cannot find them).
    Column("search", Text, nullable=False),
    Index("ix_cameras_department", "department"),
    Index("ix_cameras_status", "status"),
)

camera_checks = Table(
    "camera_checks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("camera_id", String(64), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(500), nullable=False),
    Index("ix_camera_checks_camera_at", "camera_id", "at_ms"),
)

Cameras = list[Camera]


@dataclass(frozen=True, slots=True)
class Health:
    """A judged check to record: shown status and reason; `raw` when the raw result changed."""

    camera_id: str
    status: str
    reason: str
    checked_ms: int
    shown_changed: bool
    raw: str | None


_CHUNK = 500  # rows per statement: well under SQLite's and PostgreSQL's parameter limits


def _camera(row: Row[Any]) -> Camera:
    return Camera(
        id=row.id,
        name=row.name,
        department=row.department,
        lat=row.lat,
        lon=row.lon,
        stream_url=row.stream_url,
        tags=tuple(row.tags or ()),
        status=row.status,
        reason=row.reason,
        last_checked_ms=row.last_checked_ms,
        status_since_ms=row.status_since_ms,
    )


def _values(camera: Camera, now_ms: int) -> dict[str, Any]:
    return {
        "id": camera.id,
        "name": camera.name,
        "department": camera.department,
        "lat": camera.lat,
        "lon": camera.lon,
        "stream_url": camera.stream_url,
        "tags": list(camera.tags),
        "status": camera.status,
        "reason": camera.reason,
        "last_checked_ms": camera.last_checked_ms,
        "status_since_ms": camera.status_since_ms,
        "updated_at_ms": now_ms,
        "search": "\n".join((camera.id, camera.name, camera.department, *camera.tags)).lower(),
    }


class SqlCameras:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def upsert_many(self, batch: Sequence[Camera], now_ms: int) -> tuple[list[Camera], list[Camera]]:
        """Add new cameras and update known ones; (added, updated) as stored.

        An updated camera keeps its health unless its stream URL changed: then it is `unknown`
        again, for the judgement was about another stream."""
        return await asyncio.to_thread(self._upsert_many, list(batch), now_ms)

    async def get(self, camera_id: str) -> Camera | None:
        return await asyncio.to_thread(self._get, camera_id)

    async def remove(self, camera_id: str) -> bool:
        return await asyncio.to_thread(self._remove, camera_id)

    async def list(
        self,
        *,
        q: str | None = None,
        department: str | None = None,
        status: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Camera]:
        return await asyncio.to_thread(self._list, q, department, status, ids, limit, offset)

    async def count(self, *, q: str | None = None, department: str | None = None, status: str | None = None) -> int:
        return await asyncio.to_thread(self._count, q, department, status)

    async def all(self) -> builtins.list[Camera]:
        return await asyncio.to_thread(self._list, None, None, None, None, 10**9, 0)

    async def set_health(
        self, camera_id: str, status: str, reason: str, checked_ms: int, *, shown_changed: bool, raw: str | None
    ) -> Camera | None:
        """Record a check whose shown status or reason changed; `raw` (the check's own result,
        when that changed) is also a row of the camera's history."""
        return await asyncio.to_thread(self._set_health, camera_id, status, reason, checked_ms, shown_changed, raw)

    async def checks(self, camera_id: str, since_ms: int) -> builtins.list[tuple[int, str, str]]:
        """The camera's changes of status since `since_ms` (and the last one before), oldest first."""
        return await asyncio.to_thread(self._checks, camera_id, since_ms)

    async def set_health_many(self, rows: Sequence[Health]) -> None:
        """Record many judged checks in one transaction (a sweep's changes)."""
        await asyncio.to_thread(self._set_health_many, list(rows))

    async def touch(self, camera_ids: Sequence[str], checked_ms: int) -> None:
        """Checked again with the same result: only `last_checked` moves (one statement per batch)."""
        await asyncio.to_thread(self._touch, list(camera_ids), checked_ms)

    async def all_checks(self, since_ms: int) -> dict[str, builtins.list[tuple[int, str]]]:
        """Every camera's changes of raw result since `since_ms`, oldest first (the watch's memory)."""
        return await asyncio.to_thread(self._all_checks, since_ms)

    async def prune_checks(self, before_ms: int) -> int:
        return await asyncio.to_thread(self._prune_checks, before_ms)

    # --- blocking implementations ------------------------------------------------------

    def _upsert_many(
        self, batch: builtins.list[Camera], now_ms: int
    ) -> tuple[builtins.list[Camera], builtins.list[Camera]]:
        added: builtins.list[Camera] = []
        updated: builtins.list[Camera] = []
        try:
            with self._engine.begin() as conn:
                for start in range(0, len(batch), _CHUNK):
                    chunk = batch[start : start + _CHUNK]
                    known = {
                        r.id: r
                        for r in conn.execute(
                            select(
                                cameras.c.id,
                                cameras.c.stream_url,
                                cameras.c.status,
                                cameras.c.reason,
                                cameras.c.last_checked_ms,
                                cameras.c.status_since_ms,
                            ).where(cameras.c.id.in_([c.id for c in chunk]))
                        )
                    }
                    new = [c for c in chunk if c.id not in known]
                    if new:
                        conn.execute(insert(cameras), [_values(c, now_ms) for c in new])
                        added.extend(new)
                    changes = []
                    for camera in chunk:
                        row = known.get(camera.id)
                        if row is None:
                            continue
                        if row.stream_url == camera.stream_url:
                            camera = replace(
                                camera,
                                status=row.status,
                                reason=row.reason,
                                last_checked_ms=row.last_checked_ms,
                                status_since_ms=row.status_since_ms,
                            )
                        values = _values(camera, now_ms)
                        values["b_id"] = values.pop("id")
                        changes.append(values)
                        updated.append(camera)
                    if changes:
                        conn.execute(update(cameras).where(cameras.c.id == bindparam("b_id")), changes)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot save cameras: {exc}") from exc
        return added, updated

    def _get(self, camera_id: str) -> Camera | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(cameras).where(cameras.c.id == camera_id)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read camera: {exc}") from exc
        return None if row is None else _camera(row)

    def _remove(self, camera_id: str) -> bool:
        try:
            with self._engine.begin() as conn:
                gone = conn.execute(delete(cameras).where(cameras.c.id == camera_id)).rowcount
                conn.execute(delete(camera_checks).where(camera_checks.c.camera_id == camera_id))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot remove camera: {exc}") from exc
        return bool(gone)

    @staticmethod
    def _where(query: Any, q: str | None, department: str | None, status: str | None) -> Any:
        if status == "intermittent":
            return SqlCameras._where(query, q, department, "degraded").where(
                cameras.c.reason.startswith("intermittent", autoescape=True)
            )
        if q:
            needle = q.lower()
            # Text search over id, name, department and tags; LIKE's own wildcards in q are literal.
            query = query.where(cameras.c.search.contains(needle, autoescape=True))
        if department:
            query = query.where(cameras.c.department == department)
        if status:
            query = query.where(cameras.c.status == status)
        return query

    def _list(
        self,
        q: str | None,
        department: str | None,
        status: str | None,
        ids: Sequence[str] | None,
        limit: int,
        offset: int,
    ) -> builtins.list[Camera]:
        query = self._where(select(cameras), q, department, status)
        if ids is not None:
            query = query.where(cameras.c.id.in_(list(ids)))
        query = query.order_by(cameras.c.id).limit(limit).offset(offset)
        try:
            with self._engine.connect() as conn:
                return [_camera(r) for r in conn.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list cameras: {exc}") from exc

    def _count(self, q: str | None, department: str | None, status: str | None) -> int:
        query = self._where(select(func.count()).select_from(cameras), q, department, status)
        try:
            with self._engine.connect() as conn:
                return int(conn.execute(query).scalar_one())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot count cameras: {exc}") from exc

    def _set_health(
        self, camera_id: str, status: str, reason: str, checked_ms: int, shown_changed: bool, raw: str | None
    ) -> Camera | None:
        values: dict[str, Any] = {"status": status, "reason": reason[:500], "last_checked_ms": checked_ms}
        if shown_changed:
            values["status_since_ms"] = checked_ms
        try:
            with self._engine.begin() as conn:
                done = conn.execute(update(cameras).where(cameras.c.id == camera_id).values(**values)).rowcount
                if not done:
                    return None
                if raw is not None:
                    conn.execute(
                        insert(camera_checks).values(
                            camera_id=camera_id, at_ms=checked_ms, status=raw, reason=reason[:500]
                        )
                    )
                row = conn.execute(select(cameras).where(cameras.c.id == camera_id)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the camera's check: {exc}") from exc
        return None if row is None else _camera(row)

    def _checks(self, camera_id: str, since_ms: int) -> builtins.list[tuple[int, str, str]]:
        c = camera_checks.c
        recent = select(c.at_ms, c.status, c.reason).where(c.camera_id == camera_id, c.at_ms >= since_ms)
        before = (
            select(c.at_ms, c.status, c.reason)
            .where(c.camera_id == camera_id, c.at_ms < since_ms)
            .order_by(c.at_ms.desc())
            .limit(1)
        )
        try:
            with self._engine.connect() as conn:
                rows = [*conn.execute(before), *conn.execute(recent.order_by(c.at_ms))]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the camera's history: {exc}") from exc
        return [(int(r.at_ms), str(r.status), str(r.reason)) for r in rows]

    def _set_health_many(self, rows: builtins.list[Health]) -> None:
        c = cameras.c
        plain = [
            {"b_id": r.camera_id, "status": r.status, "reason": r.reason[:500], "last_checked_ms": r.checked_ms}
            for r in rows
            if not r.shown_changed
        ]
        moved = [
            {
                "b_id": r.camera_id,
                "status": r.status,
                "reason": r.reason[:500],
                "last_checked_ms": r.checked_ms,
                "status_since_ms": r.checked_ms,
            }
            for r in rows
            if r.shown_changed
        ]
        history = [
            {"camera_id": r.camera_id, "at_ms": r.checked_ms, "status": r.raw, "reason": r.reason[:500]}
            for r in rows
            if r.raw is not None
        ]
        try:
            with self._engine.begin() as conn:
                if plain:
                    conn.execute(update(cameras).where(c.id == bindparam("b_id")), plain)
                if moved:
                    conn.execute(update(cameras).where(c.id == bindparam("b_id")), moved)
                if history:
                    conn.execute(insert(camera_checks), history)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the cameras' checks: {exc}") from exc

    def _touch(self, camera_ids: builtins.list[str], checked_ms: int) -> None:
        try:
            with self._engine.begin() as conn:
                for start in range(0, len(camera_ids), _CHUNK):
                    chunk = camera_ids[start : start + _CHUNK]
                    conn.execute(update(cameras).where(cameras.c.id.in_(chunk)).values(last_checked_ms=checked_ms))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record checks: {exc}") from exc

    def _all_checks(self, since_ms: int) -> dict[str, builtins.list[tuple[int, str]]]:
        c = camera_checks.c
        query = select(c.camera_id, c.at_ms, c.status).where(c.at_ms >= since_ms).order_by(c.camera_id, c.at_ms)
        out: dict[str, builtins.list[tuple[int, str]]] = {}
        try:
            with self._engine.connect() as conn:
                for row in conn.execute(query):
                    out.setdefault(row.camera_id, []).append((int(row.at_ms), str(row.status)))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read camera history: {exc}") from exc
        return out

    def _prune_checks(self, before_ms: int) -> int:
        try:
            with self._engine.begin() as conn:
                return int(conn.execute(delete(camera_checks).where(camera_checks.c.at_ms < before_ms)).rowcount)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot prune camera history: {exc}") from exc
