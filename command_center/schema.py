"""The records schema: Alembic migrations, run by `cityops migrate` (and by `cityops run` for itself).

Other processes never create or change tables: they check that the database is at the
revision this code needs and refuse to start otherwise, naming the command to run. A database
made by an earlier release with `create_all` (no `alembic_version` table) is recognised by its
tables and stamped with the revision it matches before upgrading, so its data is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from alerts.adapters import incidents_sql
from hotline.adapters import tickets_sql
from iot_gateway.adapters import records_sql
from kernel import outbox
from kernel.errors import ConfigError, StoreError
from notify.adapters import notify_sql
from video_index.adapters import cameras_sql

from . import auth

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any constant shared by every cityops process: the key of the advisory lock for schema work.
_LOCK_KEY = 0x0C17_0125_345


def _config(conn: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if conn is not None:
        config.attributes["connection"] = conn
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema revision: {exc}") from exc


def _legacy_revision(conn: Connection) -> str | None:
    """The revision an unversioned database made by create_all matches, or None if it is empty."""
    tables = set(inspect(conn).get_table_names())
    if "devices" not in tables:
        return None
    token_columns = {c["name"] for c in inspect(conn).get_columns("api_tokens")} if "api_tokens" in tables else set()
    # Issue 5's release added token ids and the dead-letter counts table.
    return "0002" if "id" in token_columns and "dead_letter_counts" in tables else "0001"


def migrate(engine: Engine) -> tuple[str | None, str]:
    """Bring the schema to the newest revision; (revision before, revision after).

    Several processes may call this at once on one PostgreSQL: a session advisory lock makes
    them take turns, and the later ones find nothing left to do.
    """
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
                conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                if before is None:
                    legacy = _legacy_revision(conn)
                    if legacy is not None:
                        log.info("database made by an earlier release without migrations: it matches %s", legacy)
                        command.stamp(_config(conn), legacy)
                        conn.commit()
                        before = legacy
                command.upgrade(_config(conn), "head")
                conn.commit()
                after = MigrationContext.configure(conn).get_current_revision()
            finally:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
                    conn.commit()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the records database: {exc}") from exc
    if before != after:
        log.info("records schema migrated from %s to %s", before or "empty", after)
    return before, after or ""


def require_current(engine: Engine) -> None:
    """Refuse to start on a database that `cityops migrate` has not brought up to date."""
    have, need = current_revision(engine), head_revision()
    if have != need:
        raise ConfigError(
            f"the records database is at schema revision {have or 'none (empty or made before migrations)'}, "
            f"this release needs {need}: run `cityops migrate` first"
        )


def metadata() -> MetaData:
    """Every table the code uses, as one MetaData (to check the migrations against the code)."""
    merged = MetaData()
    for source in (
        records_sql.metadata,
        auth.metadata,
        incidents_sql.metadata,
        cameras_sql.metadata,
        tickets_sql.metadata,
        outbox.metadata,
        notify_sql.metadata,
    ):
        for table in source.tables.values():
            table.to_metadata(merged)
    return merged
