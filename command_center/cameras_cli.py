"""`cityops cameras import FILE`: a CSV or JSON camera list into the catalog, with a progress bar.

When a command center answers at `--url` the file goes through its API in chunks (its index and
every other process's follow at once); with none running it goes straight into the records, and
the bus tells any other process. Either way each bad line is printed with its line number and
reason, the good ones are imported, and the exit status is 1 if any line was rejected.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from kernel.clock import SystemClock
from kernel.errors import ConfigError
from kernel.settings import Settings
from video_index.adapters.cameras_sql import SqlCameras
from video_index.catalog import CameraCatalog
from video_index.domain.cameras import CameraProblem, ImportResult, Rejected, parse_csv, parse_json

CHUNK_LINES = 1000


def _read(path: Path) -> tuple[str, str]:
    """(kind, text) of the file: csv or json, by its name or else its first character."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"no file {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if path.suffix.lower() == ".json" or (path.suffix.lower() != ".csv" and text.lstrip().startswith("[")):
        return "json", text
    return "csv", text


def _chunks(kind: str, text: str) -> list[tuple[int, str, bytes]]:
    """(line offset, content type, body) per chunk; the offset maps a chunk's lines back to the file's."""
    if kind == "json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
        if not isinstance(items, list):
            raise ConfigError("a JSON import is a list of cameras")
        return [
            (start, "application/json", json.dumps(items[start : start + CHUNK_LINES]).encode())
            for start in range(0, len(items), CHUNK_LINES)
        ]
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    header, body = lines[0], lines[1:]
    return [
        (start, "text/csv", (header + "".join(body[start : start + CHUNK_LINES])).encode())
        for start in range(0, len(body), CHUNK_LINES)
    ]


def _through_api(url: str, token: str, kind: str, text: str) -> tuple[int, list[Rejected]]:
    imported = 0
    rejected: list[Rejected] = []
    chunks = _chunks(kind, text)
    total = len(json.loads(text)) if kind == "json" else max(0, len(text.splitlines()) - 1)
    with (
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client,
        tqdm(total=total, unit="line", desc="cameras", file=sys.stderr) as bar,
    ):
        for offset, content_type, body in chunks:
            answer = client.post("/api/cameras/import", content=body, headers={"Content-Type": content_type})
            if answer.status_code != 200:
                raise ConfigError(f"the command center refused the import ({answer.status_code}): {answer.text[:500]}")
            result: dict[str, Any] = answer.json()
            imported += int(result["imported"])
            rejected.extend(Rejected(int(r["line"]) + offset, str(r["reason"])) for r in result["rejected"])
            bar.update(int(result["imported"]) + len(result["rejected"]))
    return imported, rejected


async def _into_records(settings: Settings, parsed: ImportResult) -> int:
    from kernel.db import database_url, make_engine

    from .runtime import make_bus
    from .schema import migrate, require_current

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(settings.database_url, settings.data_dir))
    # The embedded default's database is this machine's own; a production one is migrated by
    # `cityops migrate` only.
    await asyncio.to_thread(migrate if settings.database_url is None else require_current, engine)
    bus = make_bus(settings)
    catalog = CameraCatalog(SqlCameras(engine), bus, SystemClock())
    try:
        with tqdm(total=len(parsed.cameras), unit="camera", desc="cameras", file=sys.stderr) as bar:

            def advance(n: int) -> None:
                bar.update(n)

            done = await catalog.import_cameras(parsed, progress=advance)
    finally:
        await bus.close()
        engine.dispose()
    return done.imported


def import_cameras(settings: Settings, path: Path, url: str | None, token: str | None) -> int:
    kind, text = _read(path)
    base = url or f"http://{settings.http_host}:{settings.http_port}"
    admin = token or _admin_token(settings)
    running = admin is not None and _answers(base)
    if running and admin is not None:
        print(f"importing {path} through the command center at {base}", file=sys.stderr)
        imported, rejected = _through_api(base, admin, kind, text)
    else:
        print(f"no command center answers at {base}: importing {path} into the records", file=sys.stderr)
        try:
            parsed = parse_csv(text) if kind == "csv" else parse_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
        except CameraProblem as exc:
            raise ConfigError(str(exc)) from None
        imported = asyncio.run(_into_records(settings, parsed))
        rejected = parsed.rejected
    for item in sorted(rejected, key=lambda r: r.line):
        print(f"line {item.line}: {item.reason}")
    print(f"imported {imported}, rejected {len(rejected)}")
    return 1 if rejected else 0


def _admin_token(settings: Settings) -> str | None:
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value()
    saved = settings.data_dir / "admin.token"
    return saved.read_text().strip() if saved.exists() else None


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/health", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False
