"""Where a ticket goes: category to department, position to grid (and its street office), and
the called hotline number to that line's own sub-platform.

Dispatch is automatic only where the rules are clear (one department for the category within
the line's sub-platform, or the grid's street office when no department claims the category);
everything else waits in the agents' queue with a note saying why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import shapely
from shapely import STRtree
from shapely.geometry import Point, shape
from shapely.geometry.base import BaseGeometry

# Categories answered at intake (from the knowledge base), never sent to a department by themselves.
INTAKE_CATEGORIES: Final = frozenset({"consultation"})


@dataclass(frozen=True, slots=True)
class Department:
    id: str
    name: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Line:
    """A hotline number merged into the center; `departments` is its sub-platform (empty: all)."""

    number: str
    name: str
    departments: tuple[str, ...] = ()


# The numbers DOMAIN.md names; a city config adds or narrows them (sub-platforms).
DEFAULT_LINES: Final = (
    Line("12345", "12345政务服务便民热线"),
    Line("12319", "12319城建服务热线"),
    Line("12358", "12358价格监督举报"),
    Line("12350", "12350安全生产举报"),
    Line("12369", "12369环保举报"),
)


@dataclass(frozen=True, slots=True)
class Grid:
    id: str
    name: str
    street: str
    department_id: str | None
    geometry: BaseGeometry


class GridError(ValueError):
    """A grid collection refused: `loc` is the path of the field at fault."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def parse_grids(collection: Any, departments: Mapping[str, Department] | None = None) -> list[Grid]:
    """The grids of a GeoJSON FeatureCollection (Polygon or MultiPolygon features whose properties
    carry `id`, `name`, `street`, `department_id`). Raises GridError naming the first bad field."""
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise GridError(("type",), "grids must be a GeoJSON FeatureCollection")
    features = collection.get("features")
    if not isinstance(features, list):
        raise GridError(("features",), "features must be a list")
    out: list[Grid] = []
    seen: set[str] = set()
    for n, feature in enumerate(features):
        where: tuple[str | int, ...] = ("features", n)
        if not isinstance(feature, dict):
            raise GridError(where, "a feature must be an object")
        props = feature.get("properties")
        if not isinstance(props, dict):
            raise GridError((*where, "properties"), "a grid needs properties id, name, street, department_id")
        grid_id = props.get("id")
        if not isinstance(grid_id, str) or not grid_id.strip():
            raise GridError((*where, "properties", "id"), "a grid needs an id")
        if grid_id in seen:
            raise GridError((*where, "properties", "id"), f"grid id {grid_id!r} appears twice")
        seen.add(grid_id)
        department_id = props.get("department_id")
        if department_id is not None and (
            not isinstance(department_id, str) or (departments is not None and department_id not in departments)
        ):
            raise GridError((*where, "properties", "department_id"), f"unknown department {department_id!r}")
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            raise GridError((*where, "geometry"), "a grid's geometry must be a Polygon or MultiPolygon")
        try:
            geom = shape(geometry)
        except (ValueError, TypeError, IndexError, AttributeError) as exc:
            raise GridError((*where, "geometry"), f"not a valid polygon: {exc}") from exc
        if geom.is_empty or not geom.is_valid:
            raise GridError((*where, "geometry"), "the polygon is empty or crosses itself")
        out.append(
            Grid(grid_id, str(props.get("name") or grid_id), str(props.get("street") or ""), department_id, geom)
        )
    return out


class GridIndex:
    """Point in polygon over the grids, through an R-tree (shapely's STRtree): a city has thousands."""

    def __init__(self, grids: Sequence[Grid]) -> None:
        self._grids = list(grids)
        self._by_id = {g.id: g for g in self._grids}
        self._tree = STRtree([g.geometry for g in self._grids]) if self._grids else None

    def __len__(self) -> int:
        return len(self._grids)

    def get(self, grid_id: str) -> Grid | None:
        return self._by_id.get(grid_id)

    def locate(self, lat: float, lon: float) -> Grid | None:
        """The grid holding the point (GeoJSON is lon, lat); on a shared border, the first listed."""
        if self._tree is None:
            return None
        point = Point(lon, lat)
        hits = self._tree.query(point, predicate="intersects")
        if len(hits) == 0:
            return None
        return self._grids[int(min(hits))]

    def locate_many(self, points: Iterable[tuple[float, float]]) -> list[Grid | None]:
        pts = [Point(lon, lat) for lat, lon in points]
        if self._tree is None or not pts:
            return [None] * len(pts)
        found: dict[int, int] = {}
        inputs, targets = self._tree.query(shapely.points([(p.x, p.y) for p in pts]), predicate="intersects")
        for i, t in zip(inputs.tolist(), targets.tolist(), strict=True):
            found[i] = min(found.get(i, t), t)
        return [self._grids[found[i]] if i in found else None for i in range(len(pts))]


@dataclass(frozen=True, slots=True)
class Route:
    """The routing decision for a new ticket: `department_id` set means dispatch at once."""

    department_id: str | None
    grid: Grid | None
    line: Line | None
    note: str


class Router:
    def __init__(
        self, departments: Sequence[Department], grids: GridIndex, lines: Sequence[Line] = DEFAULT_LINES
    ) -> None:
        self.departments = {d.id: d for d in departments}
        self.grids = grids
        self.lines = {line.number: line for line in lines}
        self._by_category: dict[str, list[str]] = {}
        for d in departments:
            for category in d.categories:
                self._by_category.setdefault(category, []).append(d.id)

    def categories(self) -> list[str]:
        return sorted(self._by_category)

    def route(
        self, category: str, *, grid: Grid | None = None, called_number: str | None = None, auto: bool = True
    ) -> Route:
        line = self.lines.get(called_number) if called_number else None
        if not auto:
            return Route(None, grid, line, "left for an agent to dispatch")
        if category in INTAKE_CATEGORIES:
            return Route(None, grid, line, "a consultation: answered at intake from the knowledge base")
        candidates = self._by_category.get(category, [])
        if line is not None and line.departments:
            inside = [d for d in candidates if d in line.departments]
            if len(inside) == 1:
                return Route(inside[0], grid, line, f"category {category} on line {line.number}")
            if not inside and len(line.departments) == 1:
                return Route(line.departments[0], grid, line, f"line {line.number}'s own sub-platform")
            candidates = inside or candidates
        if len(candidates) == 1:
            return Route(candidates[0], grid, line, f"category {category}")
        if candidates and grid is not None and grid.department_id in candidates:
            return Route(grid.department_id, grid, line, f"category {category} in grid {grid.id}")
        if not candidates and grid is not None and grid.department_id is not None:
            return Route(
                grid.department_id, grid, line, f"no department for {category}: grid {grid.id}'s street office"
            )
        if candidates:
            return Route(None, grid, line, f"{len(candidates)} departments take {category}: an agent chooses")
        return Route(None, grid, line, f"no department takes {category} and no grid is known: an agent chooses")
