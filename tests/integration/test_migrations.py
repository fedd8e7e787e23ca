"""Schema migrations on SQLite and PostgreSQL: from empty, and from the schemas earlier releases
made with create_all (their DDL is in tests/fixtures, generated from those releases' code)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text

from command_center.auth import TokenStore, digest
from command_center.schema import current_revision, head_revision, metadata, migrate, require_current
from iot_gateway.adapters.records_sql import SqlDeadLetters, SqlDevices
from kernel.db import database_url, make_engine
from kernel.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OLD_TOKEN = "an-old-admin-token-from-release-one-0123456789"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    configured = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    eng = make_engine(database_url(configured, tmp_path))
    yield eng
    eng.dispose()


# The knowledge base's full-text index is made by the migration in each database's own terms
# (an FTS5 table and its shadow tables in SQLite, a GIN expression index in PostgreSQL), which
# SQLAlchemy's metadata cannot describe: the comparison leaves exactly those out.
FULL_TEXT_OBJECTS = ("knowledge_fts", "ix_knowledge_search")


def _not_full_text(diff: object) -> bool:
    item = diff[1] if isinstance(diff, tuple) and len(diff) > 1 else None
    name = str(getattr(item, "name", ""))
    return not name.startswith(FULL_TEXT_OBJECTS)


def differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        diffs: list[object] = compare_metadata(MigrationContext.configure(conn), metadata())
    return [d for d in diffs if _not_full_text(d)]


def load_release(engine: Engine, release: str) -> None:
    ddl = (FIXTURES / f"schema_{release}.{engine.dialect.name}.sql").read_text(encoding="utf-8")
    ddl = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    with engine.begin() as conn:
        for statement in filter(None, (s.strip() for s in ddl.split(";"))):
            conn.execute(text(statement))


def test_from_empty_the_schema_is_exactly_what_the_code_uses(engine: Engine) -> None:
    assert current_revision(engine) is None
    before, after = migrate(engine)
    assert (before, after) == (None, head_revision())
    assert differences(engine) == []
    assert migrate(engine) == (head_revision(), head_revision()), "a second run has nothing to do"
    require_current(engine)


def test_a_process_refuses_a_database_that_was_not_migrated(engine: Engine) -> None:
    with pytest.raises(ConfigError, match="run `cityops migrate` first"):
        require_current(engine)


def test_the_first_releases_database_keeps_its_data(engine: Engine) -> None:
    load_release(engine, "issue2")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO devices (id, kind, name, lat, lon, grid_id, attributes) VALUES "
                "('res-1', 'water_level', '铁炉水库', 19.9, 110.2, NULL, :attrs)"
            ),
            {"attrs": '{"warning_level_m": 25.5, "danger_level_m": 26.8}'},
        )
        for i, reason in enumerate(["bad_json", "bad_json", "unknown_device"]):
            conn.execute(
                text(
                    "INSERT INTO dead_letters (topic, payload, reason, detail, received_at_ms) "
                    "VALUES ('city/sensors/gas/x', :p, :r, 'why', :t)"
                ),
                {"p": b"{", "r": reason, "t": i},
            )
        conn.execute(
            text("INSERT INTO api_tokens (digest, name, role, created_at_ms) VALUES (:d, 'admin', 'admin', 1)"),
            {"d": digest(OLD_TOKEN)},
        )
    before, after = migrate(engine)
    assert (before, after) == ("0001", head_revision())
    assert differences(engine) == []

    async def check() -> None:
        device = await SqlDevices(engine).get("res-1")
        assert device is not None
        assert device.attributes["danger_level_m"] == 26.8
        letters = SqlDeadLetters(engine)
        assert await letters.counts() == {"bad_json": 2, "unknown_device": 1}
        assert [letter.refused for letter in await letters.recent()] == [
            {"unknown_device": 1},
            {"bad_json": 1},
            {"bad_json": 1},
        ]
        tokens = TokenStore(engine)
        who = await tokens.lookup(OLD_TOKEN, 2)
        assert who is not None, "a token issued before still opens the API"
        assert who.role == "admin"
        [info] = await tokens.list()
        assert len(info.id) == 16, "it got a public id, so it can be listed and revoked"
        assert await tokens.revoke(info.id, 3)

    asyncio.run(check())


def test_the_unversioned_database_of_release_two_is_recognised(engine: Engine) -> None:
    load_release(engine, "issue5")
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO dead_letter_counts (reason, count) VALUES ('bad_json', 41)"),
        )
    assert migrate(engine) == ("0002", head_revision())
    assert asyncio.run(SqlDeadLetters(engine).counts()) == {"bad_json": 41}


def test_cityops_migrate_on_the_command_line(tmp_path: Path, postgres_url: str) -> None:
    env = {**os.environ, "CITYOPS_DATABASE_URL": postgres_url}
    command = [sys.executable, "-m", "command_center.cli", "migrate", "--data-dir", str(tmp_path)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"at {head_revision()}" in first.stdout
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0
    assert "already" in again.stdout
    down = {**env, "CITYOPS_DATABASE_URL": "postgresql://nobody:secret-pw@127.0.0.1:1/none"}
    failed = subprocess.run(command, env=down, capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 2
    assert "cannot migrate" in failed.stderr
    assert "secret-pw" not in failed.stderr
