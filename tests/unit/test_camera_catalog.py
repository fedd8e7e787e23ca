"""What a camera and an import line must carry, by tables: each bad line rejected with its line and why."""

from __future__ import annotations

from typing import Any

import pytest

from video_index.domain.cameras import CameraProblem, camera_from, check_stream_url, parse_csv, parse_json

GOOD = {
    "id": "cam-1",
    "name": "铁炉水库大坝",
    "department": "水务局",
    "lat": 19.93,
    "lon": 110.25,
    "stream_url": "rtsp://admin:s3cret@10.1.2.3:554/Streaming/Channels/101",
}


def test_a_good_camera_keeps_its_url_and_shows_it_without_credentials() -> None:
    camera = camera_from({**GOOD, "tags": ["水库", "大坝", "水库"]})
    assert camera.stream_url == GOOD["stream_url"], "stored as given, for the watch and the live view"
    assert camera.shown_url == "rtsp://***@10.1.2.3:554/Streaming/Channels/101"
    assert camera.tags == ("水库", "大坝")
    assert camera.status == "unknown"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": None}, "id"),
        ({"id": "cam/1"}, "id"),
        ({"id": "x" * 65}, "id"),
        ({"name": "  "}, "name"),
        ({"department": None}, "department"),
        ({"lat": 91}, "lat"),
        ({"lat": "north"}, "lat"),
        ({"lon": -180.5}, "lon"),
        ({"lon": float("nan")}, "lon"),
        ({"lat": True}, "lat"),
        ({"stream_url": "ftp://10.0.0.1/cam"}, "stream_url"),
        ({"stream_url": "10.0.0.1/cam"}, "stream_url"),
        ({"stream_url": "rtsp:///nohost"}, "stream_url"),
        ({"stream_url": "http://host:port/x"}, "stream_url"),
        ({"stream_url": "file://"}, "stream_url"),
        ({"tags": [1, 2]}, "tags"),
        ({"tags": [f"t{i}" for i in range(33)]}, "tags"),
    ],
)
def test_a_bad_camera_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(CameraProblem) as caught:
        camera_from({**GOOD, **change})
    assert caught.value.field == field


def test_every_scheme_the_watch_knows() -> None:
    for url in ("rtsp://h/1", "rtsps://h/1", "http://h/mjpeg", "https://h/live.m3u8", "file:///srv/demo.mp4"):
        assert check_stream_url(url) == url


def test_csv_import_rejects_bad_lines_with_their_number_and_keeps_the_good() -> None:
    text = "\ufeffid,name,department,lat,lon,stream_url,tags\n"
    text += "cam-1,大坝,水务局,19.93,110.25,rtsp://10.0.0.1/1,水库;大坝\n"  # line 2
    text += "cam-2,路口,交警,95,110.3,http://10.0.0.2/mjpeg,\n"  # line 3: lat
    text += "cam-3,码头,港口,20.0,110.3,gopher://x/1,\n"  # line 4: scheme
    text += "cam-1,again,水务局,19.9,110.2,rtsp://10.0.0.9/1,\n"  # line 5: repeats line 2
    text += "cam-4,背街,城管,20.01,110.31,http://10.0.0.4/mjpeg,,extra\n"  # line 6: too many cells
    text += 'cam-5,"名称, 带逗号",城管,20.02,110.32,http://10.0.0.5/mjpeg,\n'  # line 7: good (quoted)
    result = parse_csv(text)
    assert [c.id for c in result.cameras] == ["cam-1", "cam-5"]
    assert result.cameras[1].name == "名称, 带逗号"
    assert [(r.line, r.reason.split(":")[0]) for r in result.rejected] == [
        (3, "lat"),
        (4, "stream_url"),
        (5, "id"),
        (6, "line"),
    ]
    assert "repeats line 2" in result.rejected[2].reason


def test_a_csv_without_the_needed_header_is_refused_whole() -> None:
    with pytest.raises(CameraProblem) as caught:
        parse_csv("id,name,lat,lon\ncam-1,x,1,2\n")
    assert "department" in str(caught.value)
    assert "stream_url" in str(caught.value)


def test_json_import_numbers_lines_by_position() -> None:
    result = parse_json([GOOD, {**GOOD, "id": "cam-2", "lat": None}, "not an object", {**GOOD, "id": "cam-3"}])
    assert [c.id for c in result.cameras] == ["cam-1", "cam-3"]
    assert [(r.line, r.reason.split(":")[0]) for r in result.rejected] == [(2, "lat"), (3, "camera")]
    with pytest.raises(CameraProblem):
        parse_json({"cameras": []})
