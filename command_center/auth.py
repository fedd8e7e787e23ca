"""API tokens and roles. Tokens are stored as SHA-256 digests, never in clear.

A token has a public id (to list and revoke it), a role, for department handlers a department,
and optionally an expiry. Revocation takes effect at once in the process that revoked it and
within CACHE_TTL_S in every other process (each caches what it looked up for that long).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, UniqueConstraint, select, update
from sqlalchemy.exc import SQLAlchemyError

from kernel.db import dialect_insert
from kernel.errors import ConfigError, StoreError

# intake: a token that only files tickets (a city app through Open311).
Role = Literal["admin", "operator", "leader", "agent", "handler", "viewer", "intake"]
ROLES: Final[tuple[Role, ...]] = ("admin", "operator", "leader", "agent", "handler", "viewer", "intake")
# Who may change the device registry.
DEVICE_WRITERS: Final = frozenset({"admin", "operator"})
# A token given to us (file or setting) shorter than this is refused: it could be guessed.
MIN_TOKEN_CHARS: Final = 24
CACHE_TTL_S: Final = 5.0

metadata = MetaData()
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("id", String(32), nullable=False),
    Column("name", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("department_id", String(64), nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=True),
    Column("revoked_at_ms", BigInteger, nullable=True),
    UniqueConstraint("id", name="uq_api_tokens_id"),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    name: str
    role: Role
    department_id: str | None = None
    token_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as an admin sees it: never the secret."""

    id: str
    name: str
    role: Role
    department_id: str | None
    created_at_ms: int
    expires_at_ms: int | None
    revoked_at_ms: int | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_text(token: str, where: str) -> str:
    """The token without surrounding space; refused when empty or too short to be safe."""
    token = token.strip()
    if not token:
        raise ConfigError(f"{where} is empty: put a random token of {MIN_TOKEN_CHARS}+ characters there, or remove it")
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where} is {len(token)} characters long; a token needs at least {MIN_TOKEN_CHARS}")
    return token


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        role=row.role,
        department_id=row.department_id,
        created_at_ms=row.created_at_ms,
        expires_at_ms=row.expires_at_ms,
        revoked_at_ms=row.revoked_at_ms,
    )


class TokenStore:
    """Tokens in the records database, with a short-lived cache of the ones looked up."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # digest -> (principal or None, expires_at_ms or None, cached until (monotonic s))
        self._cache: dict[str, tuple[Principal, int | None, float]] = {}

    # The async face: callers on the event loop; the database work runs in a thread.

    async def issue(
        self,
        name: str,
        role: Role,
        now_ms: int,
        *,
        department_id: str | None = None,
        expires_at_ms: int | None = None,
    ) -> tuple[str, str]:
        """A new random token for `role`: (its id, the token itself, shown only this once)."""
        return await asyncio.to_thread(self._issue, name, role, now_ms, department_id, expires_at_ms)

    async def lookup(self, token: str, now_ms: int) -> Principal | None:
        """Who holds this token, or None if it is unknown, revoked or expired."""
        cached = self._cached(digest(token), now_ms)
        if cached is not None:
            return cached[0]
        return await asyncio.to_thread(self._lookup, token, now_ms)

    async def list(self) -> list[TokenInfo]:
        return await asyncio.to_thread(self._list)

    async def revoke(self, token_id: str, now_ms: int) -> bool:
        """Revoke a token by its id; False if there is no such token."""
        return await asyncio.to_thread(self._revoke, token_id, now_ms)

    async def ensure_admin(self, token_file: Path, configured: str | None, now_ms: int) -> str:
        """The admin token: the configured one, else the one in `token_file`, else a new one written there.

        An empty or too short token (in the setting or the file) is refused with a clear error,
        never registered. A revoked admin token in the file is replaced by a new one; a revoked
        configured one is an error (its owner must set another).
        """
        return await asyncio.to_thread(self._ensure_admin, token_file, configured, now_ms)

    # Blocking implementations.

    def _store(
        self,
        token: str,
        name: str,
        role: Role,
        now_ms: int,
        department_id: str | None = None,
        expires_at_ms: int | None = None,
    ) -> str:
        """Store the token unless its digest is there already (several processes may start at once)."""
        token_id = secrets.token_hex(8)
        with self._engine.begin() as conn:
            stmt = dialect_insert(conn, api_tokens).values(
                digest=digest(token),
                id=token_id,
                name=name,
                role=role,
                department_id=department_id,
                created_at_ms=now_ms,
                expires_at_ms=expires_at_ms,
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[api_tokens.c.digest]))
            found = conn.execute(select(api_tokens.c.id).where(api_tokens.c.digest == digest(token))).scalar_one()
        return str(found)

    def _issue(
        self, name: str, role: Role, now_ms: int, department_id: str | None, expires_at_ms: int | None
    ) -> tuple[str, str]:
        token = secrets.token_urlsafe(32)
        try:
            token_id = self._store(token, name, role, now_ms, department_id, expires_at_ms)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store token: {exc}") from exc
        return token_id, token

    def _cached(self, key: str, now_ms: int) -> tuple[Principal | None] | None:
        """(the answer) when the cache knows it, else None."""
        cached = self._cache.get(key)
        if cached is None or cached[2] <= time.monotonic():
            return None
        principal, expires_at_ms, _ = cached
        return (None if expires_at_ms is not None and expires_at_ms <= now_ms else principal,)

    def _lookup(self, token: str, now_ms: int) -> Principal | None:
        key = digest(token)
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(api_tokens).where(api_tokens.c.digest == key)).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot look the token up: {exc}") from exc
        if row is None or row.revoked_at_ms is not None:
            self._cache.pop(key, None)
            return None
        principal = Principal(row.name, row.role, row.department_id, row.id)
        self._cache[key] = (principal, row.expires_at_ms, time.monotonic() + CACHE_TTL_S)
        if row.expires_at_ms is not None and row.expires_at_ms <= now_ms:
            return None
        return principal

    def _list(self) -> builtins.list[TokenInfo]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(api_tokens).order_by(api_tokens.c.created_at_ms, api_tokens.c.id))
                return [_info(row) for row in rows]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot list tokens: {exc}") from exc

    def _revoke(self, token_id: str, now_ms: int) -> bool:
        try:
            with self._engine.begin() as conn:
                found = conn.execute(select(api_tokens.c.digest).where(api_tokens.c.id == token_id)).scalar()
                if found is None:
                    return False
                conn.execute(
                    update(api_tokens)
                    .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at_ms.is_(None))
                    .values(revoked_at_ms=now_ms)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot revoke token: {exc}") from exc
        self._cache.pop(found, None)
        return True

    def _ensure_admin(self, token_file: Path, configured: str | None, now_ms: int) -> str:
        if configured is not None:
            token = check_token_text(configured, "the configured admin token (CITYOPS_ADMIN_TOKEN)")
        elif token_file.exists():
            token = check_token_text(token_file.read_text(encoding="utf-8"), f"the admin token file {token_file}")
        else:
            token = secrets.token_urlsafe(32)
        if self._revoked(token):
            if configured is not None:
                raise ConfigError("the configured admin token (CITYOPS_ADMIN_TOKEN) was revoked; set a new one")
            token = secrets.token_urlsafe(32)
        self._store(token, "admin", "admin", now_ms)
        if not token_file.exists() or token_file.read_text(encoding="utf-8").strip() != token:
            token_file.parent.mkdir(parents=True, exist_ok=True)
            # Written owner-only: the token opens every call.
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(token + "\n")
        return token

    def _revoked(self, token: str) -> bool:
        with self._engine.connect() as conn:
            revoked = conn.execute(
                select(api_tokens.c.revoked_at_ms).where(api_tokens.c.digest == digest(token))
            ).scalar()
        return revoked is not None
