"""The camera catalog through the API, on the embedded default and on the real servers."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from kernel.events import CAMERA_CHANGED, CameraChanged
from tests.helpers import eventually
from video_index.domain.spatial import haversine_m

from .conftest import Center, api_client, open_center

CAM = {
    "id": "cam-dam",
    "name": "铁炉水库大坝",
    "department": "水务局",
    "lat": 19.93,
    "lon": 110.25,
    "stream_url": "rtsp://admin:s3cret@10.1.2.3:554/ch1",
    "tags": ["水库"],
}


def grid_csv(n: int, *, header: bool = True) -> str:
    """n cameras on a grid around Haikou, 100 per row."""
    lines = ["id,name,department,lat,lon,stream_url,tags"] if header else []
    for i in range(n):
        lat, lon = 20.0 + (i // 100) * 0.001, 110.3 + (i % 100) * 0.001
        department = ("公安", "交警", "城管")[i % 3]
        url = f"http://user:pw@10.9.{i // 250}.{i % 250}/mjpeg"
        lines.append(f"cam-{i:05d},摄像机{i},{department},{lat:.6f},{lon:.6f},{url},点位{i % 7}")
    return "\n".join(lines) + "\n"


async def test_a_camera_is_added_changed_found_and_removed_and_its_password_never_shown(
    center: Center, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen = center.runtime.bus.live([CAMERA_CHANGED])
    made = await center.api.post("/api/cameras", json=CAM)
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["stream_url"] == "rtsp://***@10.1.2.3:554/ch1"
    assert body["status"] == "unknown"
    got = await center.api.get("/api/cameras/cam-dam")
    assert got.json()["name"] == "铁炉水库大坝"
    moved = await center.api.put("/api/cameras/cam-dam", json={**CAM, "lat": 19.95, "name": "大坝"})
    assert moved.status_code == 200, moved.text
    [near] = (await center.api.get("/api/cameras", params={"near": "19.95,110.25"})).json()
    assert near["id"] == "cam-dam"
    assert near["distance_m"] == 0.0
    events: list[Any] = []

    async def announced() -> bool:
        events.extend(await seen.take(timeout_s=0.2))
        return any(isinstance(e, CameraChanged) and e.change == "changed" for e in events)

    await eventually(announced)
    assert (await center.api.delete("/api/cameras/cam-dam")).status_code == 204
    assert (await center.api.get("/api/cameras/cam-dam")).status_code == 404
    assert (await center.api.delete("/api/cameras/cam-dam")).status_code == 404
    assert (await center.api.get("/api/cameras", params={"near": "19.95,110.25"})).json() == []
    await seen.close()
    everything = caplog.text + json.dumps([repr(e) for e in events]) + moved.text + got.text
    assert "s3cret" not in everything


async def test_an_import_takes_the_good_lines_and_names_each_bad_one(center: Center) -> None:
    text = grid_csv(300)
    text += "cam-bad1,x,公安,95,110.3,http://10.0.0.1/m,\n"  # line 302
    text += "cam-00001,dup,公安,20,110.3,http://10.0.0.1/m,\n"  # line 303: repeats line 3
    text += "cam-bad2,x,公安,20,110.3,ftp://10.0.0.1/m,\n"  # line 304
    text += "cam-bad3,,公安,20,110.3,http://10.0.0.1/m,\n"  # line 305
    answer = await center.api.post("/api/cameras/import", content=text.encode(), headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["imported"] == 300
    assert [(r["line"], r["reason"].split(":")[0]) for r in result["rejected"]] == [
        (302, "lat"),
        (303, "id"),
        (304, "stream_url"),
        (305, "name"),
    ]
    # Importing again updates (an id already in the catalog), and JSON works the same way.
    again = await center.api.post("/api/cameras/import", json=[{**CAM, "id": "cam-00000", "name": "改名"}, {"id": 1}])
    assert again.json()["updated"] == 1
    assert again.json()["rejected"][0]["line"] == 2
    assert (await center.api.get("/api/cameras/cam-00000")).json()["name"] == "改名"
    # Search: text, department, paging with the total.
    page = await center.api.get("/api/cameras", params={"department": "交警", "limit": 10, "offset": 10})
    assert page.headers["X-Total-Count"] == "100"
    assert [c["id"] for c in page.json()] == [f"cam-{i:05d}" for i in range(31, 300, 3)][:10]
    found = (await center.api.get("/api/cameras", params={"q": "点位3", "limit": 1000})).json()
    assert {c["id"] for c in found} == {f"cam-{i:05d}" for i in range(1, 300) if i % 7 == 3}
    assert (await center.api.get("/api/cameras", params={"q": "100%_"})).json() == [], "LIKE wildcards are literal"
    # Nearest with distances, filtered by department, and within a radius.
    near = (await center.api.get("/api/cameras", params={"near": "20.0005,110.3005", "limit": 4})).json()
    assert [c["id"] for c in near][:1] in (["cam-00000"], ["cam-00001"], ["cam-00100"], ["cam-00101"])
    for camera in near:
        assert camera["distance_m"] == pytest.approx(
            haversine_m(20.0005, 110.3005, camera["lat"], camera["lon"]), abs=0.1
        )
    assert [c["distance_m"] for c in near] == sorted(c["distance_m"] for c in near)
    police = (
        await center.api.get("/api/cameras", params={"near": "20.0,110.3", "department": "公安", "limit": 5})
    ).json()
    assert len(police) == 5
    assert all(c["department"] == "公安" for c in police)
    close = (await center.api.get("/api/cameras", params={"near": "20.0,110.3", "within_m": 160, "limit": 100})).json()
    # cam-00000 moved away with the JSON import; cam-00101 is 152 m off.
    assert {c["id"] for c in close} == {"cam-00001", "cam-00100", "cam-00101"}


@pytest.mark.parametrize(
    ("request_args", "status", "where"),
    [
        ({"json": {**CAM, "lat": 200}}, 422, ["body", "lat"]),
        ({"json": {**CAM, "stream_url": "gopher://x/1"}}, 422, ["body", "stream_url"]),
        ({"json": {k: v for k, v in CAM.items() if k != "department"}}, 422, ["body", "department"]),
        ({"json": [CAM]}, 422, ["body", "camera"]),
    ],
)
async def test_a_bad_camera_is_a_422_naming_the_field_and_nothing_is_stored(
    center: Center, request_args: dict[str, Any], status: int, where: list[str]
) -> None:
    answer = await center.api.post("/api/cameras", **request_args)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"][0]["loc"] == where
    assert (await center.api.get("/api/cameras")).json() == []


async def test_bad_imports_and_queries_are_refused_clearly(center: Center) -> None:
    no_header = await center.api.post(
        "/api/cameras/import", content=b"id,name\ncam-1,x\n", headers={"Content-Type": "text/csv"}
    )
    assert no_header.status_code == 422
    assert "stream_url" in no_header.text
    not_utf8 = await center.api.post(
        "/api/cameras/import", content="id,name\n".encode("utf-16"), headers={"Content-Type": "text/csv"}
    )
    assert not_utf8.status_code == 422
    assert "UTF-8" in not_utf8.text
    wrong_type = await center.api.post("/api/cameras/import", content=b"<xml/>", headers={"Content-Type": "text/xml"})
    assert wrong_type.status_code == 415
    bad_json = await center.api.post("/api/cameras/import", content=b"[{", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422
    cases: list[tuple[dict[str, Any], str]] = [
        ({"near": "north"}, "near"),
        ({"near": "95,110"}, "near"),
        ({"status": "sleepy"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
    ]
    for params, name in cases:
        answer = await center.api.get("/api/cameras", params=params)
        assert answer.status_code == 422, params
        assert answer.json()["detail"][0]["loc"] == ["query", name]
    viewer_token = (await center.api.post("/api/tokens", json={"name": "wall", "role": "viewer"})).json()["token"]
    denied = await center.api.post("/api/cameras", json=CAM, headers={"Authorization": f"Bearer {viewer_token}"})
    assert denied.status_code == 403
    assert (await center.api.get("/api/cameras/nope")).status_code == 404
    without_id = {k: v for k, v in CAM.items() if k != "id"}
    assert (await center.api.put("/api/cameras/nope", json=without_id)).status_code == 404
    mismatch = await center.api.put("/api/cameras/cam-x", json=CAM)
    assert mismatch.status_code == 422
    assert mismatch.json()["detail"][0]["loc"] == ["body", "id"]


async def test_a_camera_added_in_one_api_process_is_found_by_another(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with open_center(request, tmp_path, "production") as first:
        from command_center.runtime import start_runtime, stop_runtime
        from kernel.clock import SystemClock

        other = await start_runtime(first.runtime.settings, SystemClock(), ingest=False)
        try:
            async with api_client(other) as second:
                assert (await first.api.post("/api/cameras", json=CAM)).status_code == 201

                async def found() -> list[Any]:
                    listed: list[Any] = (await second.get("/api/cameras", params={"near": "19.93,110.25"})).json()
                    return listed

                [camera] = await eventually(found)
                assert camera["id"] == "cam-dam"
                assert (await first.api.delete("/api/cameras/cam-dam")).status_code == 204

                async def gone() -> bool:
                    return await found() == []

                await eventually(gone)
        finally:
            await stop_runtime(other)


async def test_ten_thousand_cameras_import_through_the_api(center: Center) -> None:
    text = grid_csv(10_000)
    answer = await center.api.post("/api/cameras/import", content=text.encode(), headers={"Content-Type": "text/csv"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["imported"] == 10_000
    assert answer.json()["rejected"] == []
    total = await center.api.get("/api/cameras", params={"limit": 1})
    assert total.headers["X-Total-Count"] == "10000"
    assert len(center.runtime.catalog().index) == 10_000
    await asyncio.sleep(0)


async def test_camera_history_is_kept_and_pruned(center: Center) -> None:
    store = center.runtime.catalog().store
    assert (await center.api.post("/api/cameras", json=CAM)).status_code == 201
    day = 86_400_000
    for at, status in ((1 * day, "online"), (2 * day, "offline"), (3 * day, "online")):
        await store.set_health("cam-dam", status, status, at, shown_changed=True, raw=status)
    assert [s for _, s, _ in await store.checks("cam-dam", 0)] == ["online", "offline", "online"]
    assert [s for _, s, _ in await store.checks("cam-dam", int(2.5 * day))] == ["offline", "online"], (
        "the last change before the window gives the status at its start"
    )
    assert await store.prune_checks(int(2.5 * day)) == 2
    assert [s for _, s, _ in await store.checks("cam-dam", 0)] == ["online"]
