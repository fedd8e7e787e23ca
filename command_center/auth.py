"""API tokens and roles. Tokens are stored as SHA-256 digests, never in clear."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from sqlalchemy import BigInteger, Column, Engine, MetaData, String, Table, insert, select
from sqlalchemy.exc import SQLAlchemyError

from kernel.errors import StoreError

Role = Literal["admin", "operator", "leader", "agent", "handler", "viewer"]
ROLES: Final[tuple[Role, ...]] = ("admin", "operator", "leader", "agent", "handler", "viewer")
# Who may change the device registry.
DEVICE_WRITERS: Final = frozenset({"admin", "operator"})

metadata = MetaData()
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    name: str
    role: Role


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Tokens in the records database, with an in-memory cache of the ones seen."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, Principal] = {}

    def create_schema(self) -> None:
        metadata.create_all(self._engine)

    def _store(self, token: str, name: str, role: Role, now_ms: int) -> None:
        with self._engine.begin() as conn:
            exists = conn.execute(select(api_tokens.c.digest).where(api_tokens.c.digest == digest(token))).first()
            if exists is None:
                conn.execute(
                    insert(api_tokens).values(digest=digest(token), name=name, role=role, created_at_ms=now_ms)
                )

    def issue(self, name: str, role: Role, now_ms: int) -> str:
        """A new random token for `role`."""
        token = secrets.token_urlsafe(32)
        try:
            self._store(token, name, role, now_ms)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot store token: {exc}") from exc
        return token

    def lookup(self, token: str) -> Principal | None:
        key = digest(token)
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._engine.connect() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.digest == key)).first()
        if row is None:
            return None
        principal = Principal(row.name, row.role)
        self._cache[key] = principal
        return principal

    def ensure_admin(self, token_file: Path, configured: str | None, now_ms: int) -> str:
        """The admin token: the configured one, else the one in `token_file`, else a new one written there."""
        if configured is not None:
            token = configured
        elif token_file.exists():
            token = token_file.read_text(encoding="utf-8").strip()
        else:
            token = secrets.token_urlsafe(32)
        self._store(token, "admin", "admin", now_ms)
        if not token_file.exists() or token_file.read_text(encoding="utf-8").strip() != token:
            token_file.parent.mkdir(parents=True, exist_ok=True)
            # Written owner-only: the token opens every call.
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(token + "\n")
        return token
