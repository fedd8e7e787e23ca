"""The cameras part of the HTTP API (CONTRACT.md): catalog, import, search, nearest.

Stream URLs are shown with their credentials replaced by *** (`Camera.shown_url`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from kernel.clock import Clock, to_iso
from video_index.catalog import CameraCatalog
from video_index.domain.cameras import STATUSES, Camera, CameraProblem, camera_from, parse_csv, parse_json
from video_index.domain.health import DAY_MS, availability
from video_index.live import HLS_TYPE, LiveError, LiveViews, kind_of
from video_index.ports import SnapshotStore

from .auth import Principal

CAMERA_WRITERS = frozenset({"admin", "operator"})
MAX_IMPORT_BYTES = 32 * 1024 * 1024
MAX_LIMIT = 1000


def camera_json(camera: Camera, distance_m: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": camera.id,
        "name": camera.name,
        "department": camera.department,
        "lat": camera.lat,
        "lon": camera.lon,
        "stream_url": camera.shown_url,
        "tags": list(camera.tags),
        "status": camera.status,
        "reason": camera.reason,
        "last_checked": None if camera.last_checked_ms is None else to_iso(camera.last_checked_ms),
        "status_since": None if camera.status_since_ms is None else to_iso(camera.status_since_ms),
    }
    if distance_m is not None:
        out["distance_m"] = round(distance_m, 1)
    return out


def _problem(exc: CameraProblem, where: str = "body") -> RequestValidationError:
    return RequestValidationError([{"loc": (where, exc.field), "msg": exc.message, "type": "value_error"}])


def _bad_query(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("query", name), "msg": message, "type": "value_error"}])


def parse_near(raw: str) -> tuple[float, float]:
    parts = raw.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise _bad_query("near", "give near as LAT,LON in degrees, e.g. near=20.03,110.33") from None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise _bad_query("near", f"({lat}, {lon}) is not a WGS-84 point")
    return lat, lon


def camera_routes(
    catalog: CameraCatalog,
    role_in: Callable[[frozenset[str]], Callable[[Principal], Awaitable[Principal]]],
    anyone: Any,
    *,
    snapshots: SnapshotStore,
    live: LiveViews,
    grids: dict[str, list[tuple[float, float]]],
    authenticate: Callable[[str], Awaitable[Principal | None]],
    clock: Clock,
) -> APIRouter:
    api = APIRouter(prefix="/api")
    writer = Depends(role_in(CAMERA_WRITERS))
    store = catalog.store

    async def header_or_query(
        authorization: Annotated[str | None, Header()] = None, token: str | None = None
    ) -> Principal:
        """`<img>` and `<video>` cannot send headers: the snapshot and the live view take ?token=
        too (kept out of the access log by the log redaction)."""
        bearer = authorization and authorization.lower().startswith("bearer ")
        raw = authorization[7:].strip() if authorization and bearer else token
        if not raw:
            raise HTTPException(401, "missing token (Authorization: Bearer, or ?token=)")
        found = await authenticate(raw)
        if found is None:
            raise HTTPException(401, "unknown token")
        return found

    media_reader = Depends(header_or_query)

    @api.post("/cameras", status_code=201, dependencies=[writer])
    async def add_camera(response: Response, body: Annotated[Any, Body()]) -> dict[str, Any]:
        try:
            camera = camera_from(body)
        except CameraProblem as exc:
            raise _problem(exc) from exc
        saved, new = await catalog.save(camera)
        if not new:
            response.status_code = 200
        return camera_json(saved)

    @api.put("/cameras/{camera_id}", dependencies=[writer])
    async def change_camera(camera_id: str, body: Annotated[Any, Body()]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _problem(CameraProblem("camera", "must be an object"))
        if body.get("id", camera_id) != camera_id:
            raise _problem(CameraProblem("id", "differs from the camera in the path"))
        if await store.get(camera_id) is None:
            raise HTTPException(404, f"no camera {camera_id!r}")
        try:
            camera = camera_from({**body, "id": camera_id})
        except CameraProblem as exc:
            raise _problem(exc) from exc
        saved, _new = await catalog.save(camera)
        return camera_json(saved)

    @api.delete("/cameras/{camera_id}", status_code=204, dependencies=[writer])
    async def remove_camera(camera_id: str) -> Response:
        if not await catalog.remove(camera_id):
            raise HTTPException(404, f"no camera {camera_id!r}")
        return Response(status_code=204)

    @api.post("/cameras/import", dependencies=[writer])
    async def import_cameras(request: Request) -> dict[str, Any]:
        """CSV (`text/csv`) or a JSON list (`application/json`); each bad line rejected with its
        line number and reason, the good ones imported."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = bytearray()
        async for piece in request.stream():
            raw.extend(piece)
            if len(raw) > MAX_IMPORT_BYTES:
                raise HTTPException(413, f"an import is at most {MAX_IMPORT_BYTES // (1024 * 1024)} MiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _problem(CameraProblem("body", f"is not UTF-8 ({exc.reason} at byte {exc.start})")) from exc
        try:
            if kind in ("text/csv", "application/csv", "text/plain"):
                parsed = parse_csv(text)
            elif kind == "application/json":
                try:
                    data = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise CameraProblem("body", f"is not JSON ({exc})") from exc
                parsed = parse_json(data)
            else:
                raise HTTPException(415, "send text/csv or application/json")
        except CameraProblem as exc:
            raise _problem(exc) from exc
        done = await catalog.import_cameras(parsed)
        return {
            "imported": done.imported,
            "added": done.added,
            "updated": done.updated,
            "rejected": [{"line": r.line, "reason": r.reason} for r in done.rejected],
        }

    @api.get("/cameras", dependencies=[anyone])
    async def list_cameras(
        response: Response,
        near: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
        status: str | None = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
        department: Annotated[str | None, Query(max_length=100)] = None,
        within_m: Annotated[float | None, Query(gt=0, le=1_000_000)] = None,
        grid: Annotated[str | None, Query(max_length=64)] = None,
    ) -> list[dict[str, Any]]:
        if status is not None and status not in (*STATUSES, "intermittent"):
            raise _bad_query("status", f"one of {', '.join(STATUSES)}, intermittent")
        if grid is not None:
            # The cameras inside a grid's polygon (the spatial index, then the filters).
            if grid not in grids:
                raise _bad_query("grid", f"no grid {grid!r} in the city")
            inside = catalog.index.in_polygon(grids[grid])
            matching = await store.list(ids=inside, q=q, department=department, status=status, limit=len(inside))
            response.headers["X-Total-Count"] = str(len(matching))
            return [camera_json(c) for c in matching[offset : offset + limit]]
        if near is None:
            response.headers["X-Total-Count"] = str(await store.count(q=q, department=department, status=status))
            return [
                camera_json(c)
                for c in await store.list(q=q, department=department, status=status, limit=limit, offset=offset)
            ]
        lat, lon = parse_near(near)
        statuses = ["degraded"] if status == "intermittent" else [status] if status else None
        wanted = limit + offset
        asked = wanted
        while True:
            # Nearest from the index; the text and department filters need the records, so ask
            # for more until enough pass or the index has no more.
            nearest = catalog.nearest(lat, lon, asked, statuses=statuses, max_m=within_m)
            by_id = {
                c.id: c for c in await store.list(ids=[c for c, _ in nearest], q=q, department=department, limit=asked)
            }
            found = [(by_id[c], m) for c, m in nearest if c in by_id]
            if len(found) >= wanted or len(nearest) < asked:
                break
            asked *= 4
        return [camera_json(c, m) for c, m in found[offset:wanted]]

    @api.get("/cameras/{camera_id}", dependencies=[anyone])
    async def get_camera(camera_id: str) -> dict[str, Any]:
        camera = await store.get(camera_id)
        if camera is None:
            raise HTTPException(404, f"no camera {camera_id!r}")
        now = clock.now_ms()
        changes = await store.checks(camera_id, now - DAY_MS)
        share = availability([(at, status) for at, status, _ in changes], now - DAY_MS, now)
        return {
            **camera_json(camera),
            "availability_24h": None if share is None else round(share, 4),
            "intermittent": camera.status == "degraded" and camera.reason.startswith("intermittent"),
            "history": [{"at": to_iso(at), "status": status, "reason": reason} for at, status, reason in changes],
        }

    @api.get("/cameras/{camera_id}/snapshot", dependencies=[media_reader])
    async def snapshot(camera_id: str) -> Response:
        if await store.get(camera_id) is None:
            raise HTTPException(404, f"no camera {camera_id!r}")
        found = await snapshots.get(camera_id)
        if found is None:
            raise HTTPException(404, f"camera {camera_id!r} has no good frame yet")
        jpeg, at_ms = found
        headers = {"Cache-Control": "no-store", "X-Taken-At": to_iso(at_ms)}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    async def _playable(camera_id: str) -> Camera:
        camera = await store.get(camera_id)
        if camera is None:
            raise HTTPException(404, f"no camera {camera_id!r}")
        if camera.status == "offline":
            # Said at once: a viewer waiting on a dead camera's timeout helps no one.
            raise HTTPException(503, f"camera {camera_id} is offline: {camera.reason}")
        return camera

    def _query(token: str | None) -> str:
        return f"?token={quote(token)}" if token else ""

    @api.get("/cameras/{camera_id}/live", dependencies=[media_reader], response_model=None)
    async def live_view(camera_id: str, token: str | None = None) -> Response | StreamingResponse:
        """Something a browser plays: an MJPEG stream, or an HLS playlist whose parts come from here."""
        camera = await _playable(camera_id)
        base = f"/api/cameras/{quote(camera_id)}/live"
        try:
            kind = kind_of(camera)
            if kind == "mjpeg":
                content_type, body = await live.mjpeg(camera)
                return StreamingResponse(body, media_type=content_type, headers={"Cache-Control": "no-store"})
            if kind == "hls":
                text = await live.hls_playlist(camera, base, _query(token))
            else:
                text = await live.remux_playlist(camera, base, _query(token))
        except LiveError as exc:
            raise HTTPException(exc.status, exc.message) from exc
        return Response(text, media_type=HLS_TYPE, headers={"Cache-Control": "no-store"})

    @api.get("/cameras/{camera_id}/live/{part}", dependencies=[media_reader])
    async def live_part(camera_id: str, part: str, token: str | None = None) -> Response:
        camera = await _playable(camera_id)
        base = f"/api/cameras/{quote(camera_id)}/live"
        try:
            if kind_of(camera) == "hls":
                content_type, data = await live.hls_part(camera, part, base, _query(token))
            else:
                data = await live.remux_part(camera, part)
                content_type = HLS_TYPE if part.endswith(".m3u8") else "video/mp2t"
        except LiveError as exc:
            raise HTTPException(exc.status, exc.message) from exc
        return Response(data, media_type=content_type, headers={"Cache-Control": "no-store"})

    return api
