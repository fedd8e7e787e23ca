"""Time series in InfluxDB over the v1-compatible HTTP API (InfluxDB 1.x, 2.x and 3.x serve it).

`write` returns only once InfluxDB has stored the lines (the gateway acknowledges a reading to
the broker after that), so nothing is buffered here: while InfluxDB is down, or refuses our
credentials (401/403), `write` raises StoreError and the gateway keeps the batch and pushes back
onto the broker. Only lines InfluxDB rejects as malformed (400) are given back as refused, found
by halving the batch until the bad lines stand alone. Reads are InfluxQL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from kernel.errors import StoreError
from kernel.model import DeviceKind, Position, Reading, Sample, SensorKind
from kernel.redact import redact_url

log = logging.getLogger(__name__)


# Tag escaping as InfluxDB's line protocol (and influxdb-client) define it.
_ESCAPE_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})


def _escape_tag(value: str) -> str:
    escaped = value.translate(_ESCAPE_TAG)
    # A trailing backslash would escape the separator after it.
    return escaped + " " if escaped.endswith("\\") else escaped


def _num(value: float) -> str:
    # Floats always: a field's type is fixed by its first write, and integers would conflict.
    return repr(float(value))


def to_line(sample: Sample) -> str:
    """One sample as line protocol: measurement = kind, tag = device_id, time in ms.

    Built directly (the hot path: ~1 us against ~6 us through influxdb-client's Point);
    a test checks that it matches what Point writes, field for field.
    """
    fields: list[str]
    if isinstance(sample, Reading):
        fields = ["value=" + _num(sample.value)]
        if sample.battery_pct is not None:
            fields.append("battery_pct=" + _num(sample.battery_pct))
        if sample.alarm is not None:
            fields.append("alarm=true" if sample.alarm else "alarm=false")
    else:
        fields = ["lat=" + _num(sample.lat), "lon=" + _num(sample.lon)]
        if sample.speed_kmh is not None:
            fields.append("speed_kmh=" + _num(sample.speed_kmh))
        if sample.heading_deg is not None:
            fields.append("heading_deg=" + _num(sample.heading_deg))
    return f"{sample.kind},device_id={_escape_tag(sample.device_id)} {','.join(fields)} {sample.ts_ms}"


def to_line_with_point(sample: Sample) -> str:
    """The same line through influxdb-client's Point: the reference `to_line` is tested against."""
    point = Point(sample.kind).tag("device_id", sample.device_id)
    if isinstance(sample, Reading):
        point.field("value", sample.value)
        if sample.battery_pct is not None:
            point.field("battery_pct", sample.battery_pct)
        if sample.alarm is not None:
            point.field("alarm", sample.alarm)
    else:
        point.field("lat", sample.lat).field("lon", sample.lon)
        if sample.speed_kmh is not None:
            point.field("speed_kmh", sample.speed_kmh)
        if sample.heading_deg is not None:
            point.field("heading_deg", sample.heading_deg)
    line: str = point.time(sample.ts_ms, WritePrecision.MS).to_line_protocol()
    return line


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _from_row(kind: str, device_id: str, row: dict[str, Any]) -> Sample:
    def opt(name: str) -> float | None:
        value = row.get(name)
        return None if value is None else float(value)

    if kind == "vehicle":
        return Position(
            device_id,
            int(row["time"]),
            float(row["lat"]),
            float(row["lon"]),
            opt("speed_kmh"),
            opt("heading_deg"),
        )
    alarm = row.get("alarm")
    return Reading(
        device_id,
        cast(SensorKind, kind),
        int(row["time"]),
        float(row["value"]),
        opt("battery_pct"),
        None if alarm is None else bool(alarm),
    )


_DROPPED = re.compile(r"dropped=(\d+)")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its user-info, and the user-info as basic-auth credentials.

    Keeping the password out of the base URL keeps it out of every error message httpx builds.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url.rstrip("/"), None
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")
    return bare, (unquote(parts.username or ""), unquote(parts.password or ""))


class InfluxSeries:
    """InfluxDB time series, written through: `write` returns once the lines are stored."""

    def __init__(
        self,
        url: str,
        database: str = "cityops",
        *,
        batch_size: int = 5000,
        timeout_s: float = 10.0,
    ) -> None:
        base, auth = split_credentials(url)
        self._client = httpx.AsyncClient(base_url=base, auth=auth, timeout=timeout_s)
        self._where = redact_url(url)
        self._db = database
        self._batch_size = batch_size
        self.written = 0
        self.rejected = 0
        self.state = "unknown"
        self.last_error: str | None = None

    def _down(self, why: str) -> StoreError:
        self.state = "down"
        self.last_error = why
        return StoreError(f"influxdb at {self._where}: {why}")

    async def _post(self, lines: list[str]) -> httpx.Response:
        try:
            return await self._client.post(
                "/write", params={"db": self._db, "precision": "ms"}, content="\n".join(lines).encode()
            )
        except httpx.HTTPError as exc:
            raise self._down(f"{type(exc).__name__}: {exc}") from exc

    async def _create_database(self) -> None:
        try:
            response = await self._client.post("/query", params={"q": f'CREATE DATABASE "{self._db}"'})
        except httpx.HTTPError as exc:
            raise self._down(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in (401, 403):
            raise self._down(
                f"may not create database {self._db!r} ({response.status_code}): create it, or grant rights"
            )
        if response.status_code >= 400:
            raise self._down(f"cannot create database {self._db!r}: {response.status_code} {response.text[:200]}")

    async def _write_lines(self, lines: list[str], refused: list[tuple[int, str]], offset: int) -> None:
        """Write `lines` (the batch's lines from `offset`); note the malformed ones in `refused`."""
        response = await self._post(lines)
        if response.status_code == 404 and "database not found" in response.text:
            await self._create_database()
            response = await self._post(lines)
        status = response.status_code
        if status < 300:
            self.written += len(lines)
            return
        if status in (401, 403):
            # Wrong credentials or missing rights: an outage to fix, never a reason to throw data away.
            raise self._down(f"refused our credentials ({status}): {response.text[:200]}")
        if status in (400, 413):
            why = response.text[:300]
            dropped = _DROPPED.search(why)
            if len(lines) == 1 or (dropped is not None and int(dropped.group(1)) == len(lines)):
                refused.extend((offset + i, why) for i in range(len(lines)))
                return
            # Some lines are bad: halve until they stand alone (rewriting a good point is harmless).
            half = len(lines) // 2
            await self._write_lines(lines[:half], refused, offset)
            await self._write_lines(lines[half:], refused, offset + half)
            return
        raise self._down(f"answered {status}: {response.text[:200]}")

    async def write(self, samples: Sequence[Sample]) -> list[tuple[Sample, str]]:
        refused: list[tuple[int, str]] = []
        lines = [to_line(s) for s in samples]
        for start in range(0, len(lines), self._batch_size):
            await self._write_lines(lines[start : start + self._batch_size], refused, start)
        self.state = "up"
        if refused:
            self.rejected += len(refused)
            log.error("influxdb refused %d malformed lines: %s", len(refused), refused[0][1])
        return [(samples[i], f"influxdb refused the line: {why}") for i, why in refused]

    async def _query(self, q: str) -> list[dict[str, Any]]:
        try:
            response = await self._client.get("/query", params={"db": self._db, "q": q, "epoch": "ms"})
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise StoreError(f"influx query at {self._where} failed: {type(exc).__name__}") from exc
        rows: list[dict[str, Any]] = []
        for result in response.json().get("results", []):
            if "error" in result:
                if "database not found" in result["error"]:
                    return []
                raise StoreError(f"influx query failed: {result['error']}")
            for series in result.get("series", []):
                columns = series["columns"]
                rows.extend(dict(zip(columns, values, strict=True)) for values in series["values"])
        return rows

    async def read(self, device_id: str, kind: DeviceKind, start_ms: int, end_ms: int, limit: int) -> list[Sample]:
        rows = await self._query(
            f'SELECT * FROM "{kind}" WHERE "device_id" = {_quote(device_id)} '
            f"AND time >= {int(start_ms)}ms AND time <= {int(end_ms)}ms ORDER BY time ASC LIMIT {int(limit)}"
        )
        return [_from_row(kind, device_id, row) for row in rows]

    async def latest(self, device_id: str, kind: DeviceKind) -> Sample | None:
        rows = await self._query(
            f'SELECT * FROM "{kind}" WHERE "device_id" = {_quote(device_id)} ORDER BY time DESC LIMIT 1'
        )
        return _from_row(kind, device_id, rows[0]) if rows else None

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "influxdb",
            "state": self.state,
            "written": self.written,
            "rejected": self.rejected,
            "last_error": self.last_error,
        }

    async def close(self) -> None:
        await self._client.aclose()
