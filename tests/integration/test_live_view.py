"""The live view as players see it: our API served over HTTP, read and decoded by OpenCV, for an
MJPEG camera (proxied), an HLS camera (passed through) and an RTSP camera (remuxed by ffmpeg)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest
import uvicorn

from command_center.api import build_app
from tests import servers
from tests.helpers import eventually
from video_index.simulator import CameraSimulator

from .conftest import Center, open_center


@pytest.fixture
async def simulator() -> AsyncIterator[CameraSimulator]:
    sim = CameraSimulator(fps=10)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture(params=["embedded", "production"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Center, str]]:
    """A center whose API listens on a real port (OpenCV is an HTTP client of its own)."""
    async with open_center(request, tmp_path, request.param, live_max_remuxes=1, live_idle_s=2.0) as center:
        port = servers.free_port()
        config = uvicorn.Config(build_app(center.runtime), host="127.0.0.1", port=port, lifespan="off", log_config=None)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        await eventually(lambda: _true(server.started))
        yield center, f"http://127.0.0.1:{port}"
        server.should_exit = True
        await task


async def _true(value: bool) -> bool:
    return value


def read_frames(url: str, n: int = 3) -> list[tuple[int, int]]:
    """What a third-party player makes of the URL: OpenCV (FFmpeg) opens it and decodes frames."""
    capture = cv2.VideoCapture(
        url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 20000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000]
    )
    shapes = []
    try:
        assert capture.isOpened(), f"OpenCV could not open {url.split('?')[0]}"
        for _ in range(n):
            ok, frame = capture.read()
            assert ok, "no frame"
            shapes.append(frame.shape[:2])
    finally:
        capture.release()
    return shapes


def camera(camera_id: str, url: str) -> dict[str, Any]:
    return {"id": camera_id, "name": camera_id, "department": "测试", "lat": 20.0, "lon": 110.3, "stream_url": url}


async def test_each_kind_of_camera_plays_live_through_the_api(
    served: tuple[Center, str], simulator: CameraSimulator, hls_url: str, rtsp_url: str
) -> None:
    center, base = served
    token = center.runtime.admin_token
    for camera_id, url in (("mjpeg", simulator.url("ok-1")), ("hls", hls_url), ("rtsp", rtsp_url)):
        assert (await center.api.post("/api/cameras", json=camera(camera_id, url))).status_code == 201
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        async with client.stream("GET", "/api/cameras/mjpeg/live", params={"token": token}) as mjpeg:
            assert mjpeg.status_code == 200
            assert mjpeg.headers["content-type"].startswith("multipart/x-mixed-replace")
        playlist = await client.get("/api/cameras/hls/live", params={"token": token})
        assert playlist.status_code == 200
        assert playlist.headers["content-type"] == "application/vnd.apple.mpegurl"
        assert "#EXTM3U" in playlist.text
        assert "/api/cameras/hls/live/u" in playlist.text, "segments come through us"
        # A part naming anything but the camera's own server is refused.
        foreign = base64.urlsafe_b64encode(b"http://127.0.0.1:1/etc/passwd").decode().rstrip("=")
        assert (await client.get(f"/api/cameras/hls/live/u{foreign}", params={"token": token})).status_code == 404
        assert (await client.get("/api/cameras/hls/live")).status_code == 401
    for camera_id in ("mjpeg", "hls", "rtsp"):
        shapes = await asyncio.to_thread(read_frames, f"{base}/api/cameras/{camera_id}/live?token={token}")
        assert shapes == [(240, 320)] * 3, camera_id
    live = center.runtime.live_view()
    assert live.stats()["remuxes"] == ["rtsp"], "one ffmpeg remux, for the RTSP camera"

    # Nobody watches any more: the remux stops.
    async def stopped() -> bool:
        return live.stats()["remuxes"] == []

    await eventually(stopped, timeout_s=20)


async def test_past_the_cap_and_for_an_offline_camera_a_clear_error_at_once(
    served: tuple[Center, str], rtsp_url: str
) -> None:
    center, base = served
    token = center.runtime.admin_token
    closed = servers.free_port()
    for camera_id, url in (("rtsp-a", rtsp_url), ("rtsp-b", rtsp_url), ("dead", f"http://127.0.0.1:{closed}/m")):
        await center.api.post("/api/cameras", json=camera(camera_id, url))
    async with httpx.AsyncClient(base_url=base, timeout=30, params={"token": token}) as client:
        first = await client.get("/api/cameras/rtsp-a/live")
        assert first.status_code == 200, first.text
        capped = await client.get("/api/cameras/rtsp-b/live")
        assert capped.status_code == 503
        assert "the most allowed" in capped.json()["detail"]
        # Not yet judged offline: the upstream refuses, and that is said within the connect timeout.
        dead = await client.get("/api/cameras/dead/live", timeout=10)
        assert dead.status_code == 503
        assert "does not answer" in dead.json()["detail"]
        assert (await client.get("/api/cameras/none/live")).status_code == 404
        assert (await client.get("/api/cameras/rtsp-a/live/../../etc/passwd")).status_code == 404
    # Judged offline by the watch: refused before trying.
    await center.runtime.catalog().store.set_health(
        "dead", "offline", "connection refused", 1, shown_changed=True, raw="offline"
    )
    async with httpx.AsyncClient(base_url=base, timeout=5, params={"token": token}) as client:
        said = await client.get("/api/cameras/dead/live")
    assert said.status_code == 503
    assert said.json()["detail"] == "camera dead is offline: connection refused"
