"""The camera spatial index against brute force, through adds, moves, removes and status changes."""

from __future__ import annotations

import heapq
import random

import pytest

from video_index.domain.spatial import REBUILD_AT, CameraIndex, haversine_m

HAIKOU = (20.02, 110.33)


def brute_nearest(
    cameras: dict[str, tuple[float, float, str]],
    lat: float,
    lon: float,
    k: int,
    statuses: set[str] | None,
    max_m: float | None,
) -> list[str]:
    scored = [
        (haversine_m(lat, lon, c_lat, c_lon), camera_id)
        for camera_id, (c_lat, c_lon, status) in cameras.items()
        if statuses is None or status in statuses
    ]
    scored = [s for s in scored if max_m is None or s[0] <= max_m]
    return [camera_id for _, camera_id in heapq.nsmallest(k, scored)]


@pytest.mark.parametrize("seed", range(6))
def test_nearest_radius_and_polygon_match_brute_force_as_cameras_change(seed: int) -> None:
    rnd = random.Random(seed)
    index = CameraIndex()
    cameras: dict[str, tuple[float, float, str]] = {}

    def place() -> tuple[float, float]:
        return HAIKOU[0] + rnd.uniform(-0.1, 0.1), HAIKOU[1] + rnd.uniform(-0.15, 0.15)

    for step in range(1500):
        action = rnd.random()
        if action < 0.6 or not cameras:
            camera_id = f"cam-{rnd.randrange(1000)}"
            lat, lon = place()
            status = rnd.choice(["online", "online", "online", "offline", "degraded"])
            index.put(camera_id, lat, lon, status)
            cameras[camera_id] = (lat, lon, status)
        elif action < 0.75:
            camera_id = rnd.choice(sorted(cameras))
            assert index.remove(camera_id)
            del cameras[camera_id]
        elif action < 0.85:
            camera_id = rnd.choice(sorted(cameras))
            status = rnd.choice(["online", "offline"])
            index.set_status(camera_id, status)
            lat, lon, _ = cameras[camera_id]
            cameras[camera_id] = (lat, lon, status)
        else:
            lat, lon = place()
            k = rnd.choice([1, 3, 5, 20])
            statuses = rnd.choice([None, {"online"}, {"degraded"}])
            max_m = rnd.choice([None, 500.0, 3000.0])
            got = index.nearest(lat, lon, k, statuses=sorted(statuses) if statuses else None, max_m=max_m)
            assert [c for c, _ in got] == brute_nearest(cameras, lat, lon, k, statuses, max_m), step
            for camera_id, metres in got:
                assert metres == pytest.approx(haversine_m(lat, lon, *cameras[camera_id][:2]))
            radius = rnd.choice([200.0, 1500.0])
            near = index.within(lat, lon, radius)
            assert sorted(c for c, _ in near) == sorted(
                c for c, (a, b, _) in cameras.items() if haversine_m(lat, lon, a, b) <= radius
            )
            assert [m for _, m in near] == sorted(m for _, m in near), "nearest first"
    assert len(index) == len(cameras)
    assert index.builds >= 2, f"rebuilt as changes passed {REBUILD_AT}"
    square = [(20.0, 110.3), (20.0, 110.4), (20.05, 110.4), (20.05, 110.3)]
    assert index.in_polygon(square) == sorted(
        c for c, (a, b, _) in cameras.items() if 20.0 < a < 20.05 and 110.3 < b < 110.4
    )
    assert index.in_polygon(square, statuses=["offline"]) == sorted(
        c for c, (a, b, s) in cameras.items() if 20.0 < a < 20.05 and 110.3 < b < 110.4 and s == "offline"
    )


def test_distances_are_metres_on_the_ground_anywhere() -> None:
    index = CameraIndex()
    index.put("equator", 0.0, 0.001)
    index.put("north", 80.0, 179.999)
    index.put("dateline", 80.0, -179.999)
    [(camera_id, metres)] = index.nearest(0.0, 0.0, 1)
    assert camera_id == "equator"
    assert metres == pytest.approx(111.2, abs=0.5)
    # Across the date line the nearest is a few hundred metres away, not the other side of the Earth.
    assert [c for c, _ in index.nearest(80.0, 179.9995, 2)] == ["north", "dateline"]
    assert index.nearest(10.0, 10.0, 0) == []
    assert CameraIndex().nearest(0, 0, 5) == []
