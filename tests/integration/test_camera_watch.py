"""The camera watch against real streams: MJPEG from the simulator, ffmpeg-made HLS over HTTP, RTSP
through Debian's rtsp-server-perl relay, and dead ones (refused, accept-and-hang, 404, garbage);
on the embedded default and on the real servers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from kernel.events import CAMERA_STATUS, CameraStatusChanged
from tests import servers
from tests.helpers import eventually
from video_index.simulator import CameraSimulator

from .conftest import Center, open_center

FAST: dict[str, Any] = {
    "camera_liveness_every_s": 0.5,
    "camera_liveness_timeout_s": 1.0,
    "camera_full_every_s": 1.0,
    "camera_open_timeout_s": 6.0,
    "camera_read_timeout_s": 3.0,
}


@pytest.fixture
async def simulator() -> AsyncIterator[CameraSimulator]:
    sim = CameraSimulator(fps=10, flaky_period_s=1.5)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
def hanging() -> Any:
    sock, port = servers.accept_and_hang()
    yield port
    sock.close()


@pytest.fixture(params=["embedded", "production"])
async def watching(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Center]:
    async with open_center(request, tmp_path, request.param, watch=True, **FAST) as center:
        yield center


def camera(camera_id: str, url: str, lat: float = 20.0) -> dict[str, Any]:
    return {"id": camera_id, "name": camera_id, "department": "测试", "lat": lat, "lon": 110.3, "stream_url": url}


async def status_of(center: Center, camera_id: str, status: str, reason: str = "") -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        got: dict[str, Any] = (await center.api.get(f"/api/cameras/{camera_id}")).json()
        return got if got["status"] == status and got["reason"].startswith(reason) else {}

    return await eventually(probe, timeout_s=40)


async def test_each_kind_of_stream_is_classified_within_its_timeout(
    watching: Center, simulator: CameraSimulator, hls_url: str, rtsp_url: str, hanging: int
) -> None:
    closed = servers.free_port()
    cameras = {
        "mjpeg-ok": (simulator.url("ok-1"), "online", "frames ok"),
        "hls": (hls_url, "online", "frames ok"),
        "rtsp": (rtsp_url, "online", "frames ok"),
        "black": (simulator.url("black-1"), "degraded", "black picture"),
        "frozen": (simulator.url("frozen-1"), "degraded", "frozen picture"),
        "blurred": (simulator.url("blur-1"), "degraded", "covered or blurred"),
        "garbage": (simulator.url("garbage-1"), "offline", "opened, but no frame"),
        "refused": (f"http://127.0.0.1:{closed}/mjpeg", "offline", "connection refused"),
        "hang-http": (simulator.url("hang-1"), "offline", "no answer within 1 s"),
        "hang-rtsp": (f"rtsp://127.0.0.1:{hanging}/ch1", "offline", "no answer within 1 s"),
        "missing": (simulator.url("nope-1"), "offline", "no such stream (404)"),
    }
    seen = watching.runtime.bus.live([CAMERA_STATUS])
    for n, (camera_id, (url, _status, _reason)) in enumerate(cameras.items()):
        made = await watching.api.post("/api/cameras", json=camera(camera_id, url, 20.0 + n * 0.001))
        assert made.status_code == 201, made.text
    for camera_id, (_url, status, reason) in cameras.items():
        got = await status_of(watching, camera_id, status, reason)
        assert got["last_checked"] is not None
    # Each change was a camera event on the bus.
    events: list[Any] = []

    async def announced() -> bool:
        events.extend(await seen.take(timeout_s=0.2))
        return {e.camera_id for e in events if isinstance(e, CameraStatusChanged)} >= set(cameras)

    await eventually(announced)
    await seen.close()
    # Good frames were kept as snapshots: a JPEG that OpenCV decodes, for MJPEG, HLS and RTSP alike.
    for camera_id in ("mjpeg-ok", "hls", "rtsp"):
        shot = await watching.api.get(f"/api/cameras/{camera_id}/snapshot")
        assert shot.status_code == 200
        assert shot.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(shot.content, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        assert image.shape[:2] == (240, 320)
    assert (await watching.api.get("/api/cameras/black/snapshot")).status_code == 404, "no good frame"
    # The watch survived the garbage stream; nearest online cameras leave the dead ones out.
    near = (
        await watching.api.get("/api/cameras", params={"near": "20.0,110.3", "status": "online", "limit": 10})
    ).json()
    assert {c["id"] for c in near} == {"mjpeg-ok", "hls", "rtsp"}
    health = (await watching.api.get("/api/health")).json()
    assert health["components"]["camera_watch"]["cameras"] == len(cameras)


async def test_a_camera_going_down_is_never_shown_online_and_comes_back(
    watching: Center, simulator: CameraSimulator
) -> None:
    await watching.api.post("/api/cameras", json=camera("cam-1", simulator.url("ok-1")))
    await status_of(watching, "cam-1", "online")
    await simulator.stop()  # the camera loses power: nothing listens any more
    down = await status_of(watching, "cam-1", "offline")
    assert down["reason"] in ("connection refused", "cannot open the stream within 6 s")
    await simulator.start()
    await status_of(watching, "cam-1", "online")
    detail = (await watching.api.get("/api/cameras/cam-1")).json()
    assert [h["status"] for h in detail["history"]] == ["online", "offline", "online"]
    assert 0.0 < detail["availability_24h"] < 1.0


async def test_an_intermittent_camera_is_listed_as_such_and_does_not_flap(
    request: pytest.FixtureRequest, tmp_path: Path, simulator: CameraSimulator
) -> None:
    async with open_center(request, tmp_path, "embedded", watch=True, camera_intermittent_flips=4, **FAST) as center:
        await center.api.post("/api/cameras", json=camera("flaky", simulator.url("flaky-1")))
        await center.api.post("/api/cameras", json=camera("steady", simulator.url("ok-2"), 20.01))
        got = await status_of(center, "flaky", "degraded")
        assert got["reason"].startswith("intermittent"), got["reason"]
        listed = (await center.api.get("/api/cameras", params={"status": "intermittent"})).json()
        assert [c["id"] for c in listed] == ["flaky"]
        # From now on it stays degraded, up or down, for the wall.
        for _ in range(8):
            await asyncio.sleep(0.5)
            assert (await center.api.get("/api/cameras/flaky")).json()["status"] == "degraded"
        detail = (await center.api.get("/api/cameras/flaky")).json()
        assert detail["intermittent"] is True
        assert len(detail["history"]) >= 4


async def test_cameras_added_changed_and_removed_while_it_runs(watching: Center, simulator: CameraSimulator) -> None:
    await watching.api.post("/api/cameras", json=camera("cam-a", simulator.url("black-1")))
    await status_of(watching, "cam-a", "degraded")
    # Pointed at another stream: judged anew, without a restart.
    changed = await watching.api.put("/api/cameras/cam-a", json=camera("cam-a", simulator.url("ok-3")))
    assert changed.json()["status"] == "unknown", "the old judgement was about another stream"
    await status_of(watching, "cam-a", "online")
    assert (await watching.api.delete("/api/cameras/cam-a")).status_code == 204
    await asyncio.sleep(1.5)
    watch = watching.runtime.watch
    assert watch is not None
    assert watch.stats()["cameras"] == 0


async def test_snapshot_and_bad_requests(watching: Center, simulator: CameraSimulator) -> None:
    await watching.api.post("/api/cameras", json=camera("cam-s", simulator.url("ok-1")))
    await status_of(watching, "cam-s", "online")

    async def shot() -> bool:
        return (await watching.api.get("/api/cameras/cam-s/snapshot")).status_code == 200

    await eventually(shot)
    token = watching.runtime.admin_token
    anonymous = {"Authorization": ""}
    by_query = await watching.api.get("/api/cameras/cam-s/snapshot", params={"token": token}, headers=anonymous)
    assert by_query.status_code == 200, "an <img> passes its token in the query"
    assert (await watching.api.get("/api/cameras/cam-s/snapshot", headers=anonymous)).status_code == 401
    wrong = await watching.api.get("/api/cameras/cam-s/snapshot", params={"token": "nope"}, headers=anonymous)
    assert wrong.status_code == 401
    assert (await watching.api.get("/api/cameras/none/snapshot")).status_code == 404


def test_socket_helper_hangs() -> None:
    sock, port = servers.accept_and_hang()
    with socket.create_connection(("127.0.0.1", port), timeout=1) as client:
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(1)
    sock.close()


async def test_a_stream_that_crashes_the_decoder_marks_that_camera_never_the_watch() -> None:
    from tests.crashing_decoder import check
    from video_index.adapters.probe import FrameChecker

    checker = FrameChecker(2, check)
    try:
        urls = ["http://x/ok-1", "http://x/crash", "http://x/ok-2", "http://x/ok-3"]
        results = await asyncio.gather(*(checker.check(url, 1, 1, 1) for url in urls))
        assert [r.error for r in results] == [None, "the stream crashed the decoder", None, None]
        assert checker.crashes == 1
        again = await checker.check("http://x/ok-4", 1, 1, 1)
        assert again.error is None, "the checker goes on with new workers"
    finally:
        checker.close()


async def test_two_probers_share_the_cameras_and_one_takes_all_when_the_other_stops(
    request: pytest.FixtureRequest, tmp_path: Path, simulator: CameraSimulator
) -> None:
    from command_center.runtime import start_runtime, stop_runtime
    from kernel.clock import SystemClock

    settings_extra: dict[str, Any] = {**FAST, "camera_member_ttl_s": 1.0}
    async with open_center(request, tmp_path, "production", **settings_extra) as center:
        for n in range(40):
            await center.api.post("/api/cameras", json=camera(f"cam-{n:02d}", simulator.url(f"ok-{n}"), 20 + n * 1e-3))
        settings = center.runtime.settings
        first = await start_runtime(settings, SystemClock(), ingest=False, watch=True)
        second = await start_runtime(settings, SystemClock(), ingest=False, watch=True)
        second_running = True
        try:
            assert first.watch is not None
            assert second.watch is not None

            async def shared() -> bool:
                a, b = first.watch.stats(), second.watch.stats()  # type: ignore[union-attr]
                return len(a["members"]) == 2 and a["cameras"] + b["cameras"] == 40 and 0 < a["cameras"] < 40  # type: ignore[arg-type, operator]

            try:
                await eventually(shared)
            except AssertionError:
                raise AssertionError((first.watch.stats(), second.watch.stats())) from None
            for n in range(40):
                await status_of(center, f"cam-{n:02d}", "online")
            await stop_runtime(second)
            second_running = False

            async def alone() -> bool:
                return first.watch.stats()["cameras"] == 40  # type: ignore[union-attr]

            await eventually(alone)
        finally:
            await stop_runtime(first)
            if second_running:
                await stop_runtime(second)


async def test_a_prober_process_judges_cameras_added_through_the_api(
    request: pytest.FixtureRequest, tmp_path: Path, simulator: CameraSimulator
) -> None:
    import os
    import signal
    import sys

    async with open_center(request, tmp_path, "production") as center:
        s = center.runtime.settings
        env = {
            **os.environ,
            "CITYOPS_REDIS_URL": str(s.redis_url),
            "CITYOPS_DATABASE_URL": str(s.database_url),
            "CITYOPS_INFLUX_URL": str(s.influx_url),
            "CITYOPS_DATA_DIR": str(tmp_path / "prober"),
            "CITYOPS_CAMERA_LIVENESS_EVERY_S": "0.5",
            "CITYOPS_CAMERA_FULL_EVERY_S": "1",
        }
        log = tmp_path / "prober.log"
        proc = _spawn([sys.executable, "-m", "command_center.cli", "prober"], env, log)
        try:
            await eventually(lambda: _true("camera watch" in log.read_text(errors="replace")), timeout_s=60)
            await center.api.post("/api/cameras", json=camera("by-process", simulator.url("frozen-9")))
            got = await status_of(center, "by-process", "degraded", "frozen picture")
            assert got["last_checked"] is not None
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        assert code == 0, log.read_text()[-3000:]
        assert "camera watch stopped cleanly" in log.read_text()


async def _true(value: bool) -> bool:
    return value


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
