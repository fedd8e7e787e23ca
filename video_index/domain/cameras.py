"""Cameras in the catalog, and what a camera (or an import line) must carry (pure).

A stream URL may hold credentials (`rtsp://admin:pass@10.1.2.3/...`): it is stored as given, for
the watch and the live view to use, and shown everywhere else (API, logs, events) redacted.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from kernel.redact import redact_url

CameraStatus = Literal["unknown", "online", "offline", "degraded"]
STATUSES: Final = ("unknown", "online", "offline", "degraded")
SCHEMES: Final = ("rtsp", "rtsps", "http", "https", "file")
CAMERA_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
CSV_FIELDS: Final = ("id", "name", "department", "lat", "lon", "stream_url")
MAX_TAGS: Final = 32

_ID_RE = re.compile(CAMERA_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Camera:
    """A camera of the catalog with its health as the watch last judged it."""

    id: str
    name: str
    department: str
    lat: float
    lon: float
    stream_url: str
    tags: tuple[str, ...] = ()
    status: CameraStatus = "unknown"
    reason: str = ""
    last_checked_ms: int | None = None
    # Where the watch last changed its judgement (availability and flapping come from the history).
    status_since_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shown_url(self) -> str:
        return redact_url(self.stream_url)

    @property
    def scheme(self) -> str:
        return urlsplit(self.stream_url).scheme.lower()


class CameraProblem(ValueError):
    """Why a camera (or an import line) is refused; `field` names what is wrong."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _text(data: Mapping[str, Any], name: str, max_len: int) -> str:
    raw = data.get(name)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise CameraProblem(name, "is required")
    if not isinstance(raw, str):
        raise CameraProblem(name, "must be text")
    value = raw.strip()
    if len(value) > max_len:
        raise CameraProblem(name, f"is longer than {max_len} characters")
    if any(ord(c) < 32 for c in value):
        raise CameraProblem(name, "has control characters")
    return value


def _coordinate(data: Mapping[str, Any], name: str, limit: float) -> float:
    raw = data.get(name)
    if raw is None or raw == "":
        raise CameraProblem(name, "is required")
    if isinstance(raw, bool):
        raise CameraProblem(name, "must be a number")
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise CameraProblem(name, f"must be a number, not {str(raw)[:40]!r}") from None
    if not math.isfinite(value) or not -limit <= value <= limit:
        raise CameraProblem(name, f"{value:g} is out of range (-{limit:g} to {limit:g})")
    return value


def check_stream_url(url: str) -> str:
    """The URL if the watch and the live view can use it; CameraProblem('stream_url', why) if not."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as exc:
        raise CameraProblem("stream_url", f"is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme!r}" if scheme else "none"
        raise CameraProblem("stream_url", f"scheme {shown} is not one of {', '.join(SCHEMES)}")
    if scheme == "file":
        if not parts.path:
            raise CameraProblem("stream_url", "a file URL needs a path")
    elif not parts.hostname:
        raise CameraProblem("stream_url", "has no host")
    if any(c.isspace() for c in url):
        raise CameraProblem("stream_url", "has spaces")
    return url


def _tags(raw: Any) -> tuple[str, ...]:
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        items = [t.strip() for t in re.split(r"[;|,]", raw)]
    elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
        items = [t.strip() for t in raw]
    else:
        raise CameraProblem("tags", "must be a list of text (or, in CSV, text separated by ';')")
    tags = tuple(dict.fromkeys(t for t in items if t))
    if len(tags) > MAX_TAGS or any(len(t) > 64 for t in tags):
        raise CameraProblem("tags", f"at most {MAX_TAGS} tags of at most 64 characters")
    return tags


def camera_from(data: Mapping[str, Any]) -> Camera:
    """A catalog camera from a request body, a CSV row or a JSON object; CameraProblem if not."""
    if not isinstance(data, Mapping):
        raise CameraProblem("camera", "must be an object")
    camera_id = _text(data, "id", 64)
    if not _ID_RE.match(camera_id):
        raise CameraProblem("id", "letters, digits and _ . : - only, starting with a letter or digit, at most 64")
    name = _text(data, "name", 200)
    department = _text(data, "department", 100)
    lat = _coordinate(data, "lat", 90)
    lon = _coordinate(data, "lon", 180)
    url = check_stream_url(_text(data, "stream_url", 2000))
    return Camera(camera_id, name, department, lat, lon, url, _tags(data.get("tags")))


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str


@dataclass(slots=True)
class ImportResult:
    cameras: list[Camera] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _collect(rows: Iterable[tuple[int, Any]]) -> ImportResult:
    """Each row judged on its own; an id seen on an earlier accepted line is refused on later ones."""
    result = ImportResult()
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            if isinstance(row, CameraProblem):
                raise row
            camera = camera_from(row)
        except CameraProblem as problem:
            result.rejected.append(Rejected(line, str(problem)))
            continue
        if camera.id in seen:
            result.rejected.append(Rejected(line, f"id: {camera.id!r} repeats line {seen[camera.id]} of this import"))
            continue
        seen[camera.id] = line
        result.cameras.append(camera)
    return result


def parse_csv(text: str) -> ImportResult:
    """CSV with the header `id,name,department,lat,lon,stream_url` (and optional `tags`).
    Lines are numbered as in the file, the header being line 1."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), strict=False)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [name for name in CSV_FIELDS if name not in header]
    if missing:
        raise CameraProblem("header", f"the CSV header lacks {', '.join(missing)} (it needs {','.join(CSV_FIELDS)})")
    reader.fieldnames = header

    def rows() -> Iterable[tuple[int, Any]]:
        for row in reader:
            if None in row:
                yield reader.line_num, CameraProblem("line", "has more cells than the header")
            else:
                yield reader.line_num, {k: (v if v is not None else "") for k, v in row.items()}

    return _collect(rows())


def parse_json(data: Any) -> ImportResult:
    """A JSON list of camera objects; `line` is the 1-based position in the list."""
    if not isinstance(data, list):
        raise CameraProblem("body", "a JSON import is a list of cameras")
    return _collect((i, row) for i, row in enumerate(data, start=1))
