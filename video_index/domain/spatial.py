"""Where the cameras are: nearest k, within a radius, within a polygon, filtered by status.

A KD-tree (SciPy's cKDTree) over points on the unit sphere in 3D. The straight-line (chord)
distance between two such points grows with the great-circle distance, so the tree's nearest
order is the true order in metres anywhere on Earth, with no projection to tune.

A KD-tree is built once over a set of points; cameras are added, moved and removed while it
serves. Changes since the last build sit beside it: cameras added or moved are searched one by
one (there are few), and the tree's copies of moved or removed cameras are skipped. Past
`REBUILD_AT` changes the tree is built again at the next query (about 3 ms for 10,000 cameras,
measured on this machine), so a bulk import pays for one build, not one per camera.

An R-tree (`rtree`) was tried first: its queries cross ctypes and took 140 microseconds at the
99th percentile for nearest-5 over 10,000 cameras; cKDTree took under 80.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import cast

import numpy as np
from scipy.spatial import cKDTree
from shapely import Polygon, contains_xy

EARTH_RADIUS_M = 6_371_008.8
REBUILD_AT = 64
LatLon = tuple[float, float]
Xyz = tuple[float, float, float]


def unit_vector(lat: float, lon: float) -> Xyz:
    phi, lam = math.radians(lat), math.radians(lon)
    cos_phi = math.cos(phi)
    return (cos_phi * math.cos(lam), cos_phi * math.sin(lam), math.sin(phi))


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlam = phi2 - phi1, math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def chord_to_m(chord: float) -> float:
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, chord / 2))


def m_to_chord(metres: float) -> float:
    return 2 * math.sin(min(math.pi, metres / EARTH_RADIUS_M) / 2)


class CameraIndex:
    """Camera positions and statuses, by id."""

    def __init__(self) -> None:
        self._where: dict[str, tuple[float, float, Xyz]] = {}
        self._status: dict[str, str] = {}
        self._tree: cKDTree | None = None
        self._tree_ids: list[str] = []
        self._fresh: set[str] = set()  # added or moved since the build: not in the tree (as they are)
        self._stale: set[str] = set()  # in the tree at a place they no longer are
        self.builds = 0

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, camera_id: object) -> bool:
        return camera_id in self._where

    def status_counts(self) -> dict[str, int]:
        """How many cameras have each status (the wall's availability tile)."""
        counts: dict[str, int] = {}
        for status in self._status.values():
            counts[status] = counts.get(status, 0) + 1
        return counts

    def status(self, camera_id: str) -> str | None:
        return self._status.get(camera_id)

    def put(self, camera_id: str, lat: float, lon: float, status: str | None = None) -> None:
        """Add a camera or move it; its status is kept unless given ("unknown" for a new one)."""
        old = self._where.get(camera_id)
        self._status[camera_id] = status or self._status.get(camera_id, "unknown")
        if old is not None and (old[0], old[1]) == (lat, lon):
            return
        if old is not None and camera_id not in self._fresh:
            self._stale.add(camera_id)
        self._where[camera_id] = (lat, lon, unit_vector(lat, lon))
        self._fresh.add(camera_id)

    def put_many(self, cameras: Iterable[tuple[str, float, float, str | None]]) -> None:
        for camera_id, lat, lon, status in cameras:
            self.put(camera_id, lat, lon, status)

    def set_status(self, camera_id: str, status: str) -> None:
        if camera_id in self._status:
            self._status[camera_id] = status

    def remove(self, camera_id: str) -> bool:
        if self._where.pop(camera_id, None) is None:
            return False
        del self._status[camera_id]
        if camera_id in self._fresh:
            self._fresh.discard(camera_id)
        if self._tree is not None:
            self._stale.add(camera_id)  # harmless if the tree never had it
        return True

    def _current(self) -> cKDTree | None:
        if len(self._fresh) + len(self._stale) > REBUILD_AT or (self._tree is None and self._where):
            self._tree_ids = list(self._where)
            points = np.array([self._where[c][2] for c in self._tree_ids], dtype=float)
            self._tree = cKDTree(points) if len(points) else None
            self._fresh, self._stale = set(), set()
            self.builds += 1
        return self._tree

    def _fresh_near(self, xyz: Xyz, wanted: set[str] | None) -> list[tuple[float, str]]:
        out = []
        for camera_id in self._fresh:
            if wanted is not None and self._status[camera_id] not in wanted:
                continue
            p = self._where[camera_id][2]
            out.append((math.dist(xyz, p), camera_id))
        return out

    def nearest(
        self,
        lat: float,
        lon: float,
        k: int,
        *,
        statuses: Sequence[str] | None = None,
        max_m: float | None = None,
    ) -> list[tuple[str, float]]:
        """The k cameras nearest to a point (of the given statuses, within max_m), nearest first,
        each with its great-circle distance in metres."""
        if k <= 0 or not self._where:
            return []
        tree = self._current()
        xyz = unit_vector(lat, lon)
        if statuses is None and max_m is None and not self._fresh and not self._stale and tree is not None:
            # The common case (the nearest cameras to an incident), kept short: the chord gives
            # the great-circle distance directly.
            wanted_k = min(k, tree.n)
            chords, numbers = tree.query(xyz, k=wanted_k)
            ids = self._tree_ids
            if wanted_k == 1:  # scalars, not arrays
                return [(ids[int(numbers)], chord_to_m(float(chords)))]
            pairs = zip(cast(np.ndarray, chords).tolist(), cast(np.ndarray, numbers).tolist(), strict=True)
            return [(ids[n], chord_to_m(c)) for c, n in pairs]
        wanted = set(statuses) if statuses is not None else None
        bound = m_to_chord(max_m) if max_m is not None else math.inf
        found: list[tuple[float, str]] = []
        if tree is not None:
            # A filter skips some: ask for twice as many at once rather than ask twice.
            asked = (k if wanted is None else 2 * k) + len(self._stale)
            while True:
                asked = min(asked, tree.n)
                chords, numbers = tree.query(xyz, k=asked, distance_upper_bound=bound)
                found = []
                ran_out = False
                for chord, number in zip(np.atleast_1d(chords).tolist(), np.atleast_1d(numbers).tolist(), strict=True):
                    if number >= tree.n:  # past the distance bound: no more
                        ran_out = True
                        break
                    camera_id = self._tree_ids[number]
                    if camera_id in self._stale or (wanted is not None and self._status[camera_id] not in wanted):
                        continue
                    found.append((chord, camera_id))
                if len(found) >= k or ran_out or asked >= tree.n:
                    break
                asked *= 4  # many skipped (a status few cameras have): look further
        if self._fresh:
            found.extend(c for c in self._fresh_near(xyz, wanted) if c[0] <= bound)
            found.sort()
        return [(camera_id, chord_to_m(chord)) for chord, camera_id in found[:k]]

    def _metres(self, lat: float, lon: float, camera_id: str) -> float:
        c_lat, c_lon, _ = self._where[camera_id]
        return haversine_m(lat, lon, c_lat, c_lon)

    def within(
        self, lat: float, lon: float, radius_m: float, *, statuses: Sequence[str] | None = None
    ) -> list[tuple[str, float]]:
        """Every camera within radius_m of a point, nearest first."""
        if not self._where:
            return []
        tree = self._current()
        xyz = unit_vector(lat, lon)
        chord = m_to_chord(radius_m)
        wanted = set(statuses) if statuses is not None else None
        ids = [] if tree is None else [self._tree_ids[n] for n in tree.query_ball_point(xyz, chord)]
        ids = [c for c in ids if c not in self._stale]
        ids.extend(c for d, c in self._fresh_near(xyz, None) if d <= chord)
        found = []
        for camera_id in ids:
            if wanted is not None and self._status[camera_id] not in wanted:
                continue
            metres = self._metres(lat, lon, camera_id)
            if metres <= radius_m:
                found.append((camera_id, metres))
        found.sort(key=lambda item: item[1])
        return found

    def in_polygon(self, polygon: Sequence[LatLon], *, statuses: Sequence[str] | None = None) -> list[str]:
        """Every camera inside a polygon of [lat, lon] points (a grid), by id: the cameras within
        the circle around the polygon, then shapely's test on each."""
        if not self._where or len(polygon) < 3:
            return []
        shape = Polygon([(lon, lat) for lat, lon in polygon])
        centre = shape.centroid
        reach = max(haversine_m(centre.y, centre.x, lat, lon) for lat, lon in polygon)
        candidates = [c for c, _ in self.within(centre.y, centre.x, reach * 1.001 + 1, statuses=statuses)]
        if not candidates:
            return []
        lons = [self._where[c][1] for c in candidates]
        lats = [self._where[c][0] for c in candidates]
        inside = contains_xy(shape, lons, lats)
        return sorted(c for c, yes in zip(candidates, inside, strict=True) if yes)
