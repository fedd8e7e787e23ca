"""City config files: departments, grids, devices, communities, vehicle routes, forbidden zones.

The demo city (Haikou-like, from the figures in DOMAIN.md) ships as demo/haikou.yaml in the same format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alerts.domain.rules import AnyRule, ZoneShape, default_rules, parse_rule
from iot_gateway.domain.devices import DEVICE_ID_PATTERN, device_problems
from kernel.errors import ConfigError
from kernel.model import Device
from kernel.settings import read_config_file

LatLon = tuple[float, float]


class DeviceSpec(BaseModel):
    """A device as a config file or the API gives it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    kind: Literal["water_level", "smoke", "gas", "vehicle"]
    name: str = Field(min_length=1, max_length=200)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    grid_id: str | None = Field(default=None, max_length=64)
    attributes: dict[str, Any] = Field(default_factory=dict)

    def to_device(self) -> Device:
        return Device(self.id, self.kind, self.name, self.lat, self.lon, self.grid_id, dict(self.attributes))


class Community(BaseModel):
    """A smart community: each building gets a smoke and a gas detector."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    name: str
    lat: float
    lon: float
    buildings: int = Field(ge=1, le=500)
    grid_id: str | None = None


class Department(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    categories: list[str] = Field(default_factory=list)


class HotlineLine(BaseModel):
    """A hotline number merged into the center; `departments` is its own sub-platform."""

    model_config = ConfigDict(extra="forbid")
    number: str = Field(pattern=r"^[0-9]{3,12}$")
    name: str = Field(min_length=1, max_length=100)
    departments: list[str] = Field(default_factory=list)


class KnowledgeSpec(BaseModel):
    """A knowledge-base entry: consultations answered at intake."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=2000)
    answer: str = Field(min_length=1, max_length=10_000)
    department_id: str | None = None
    tags: list[str] = Field(default_factory=list)


class Zone(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    polygon: list[LatLon] = Field(min_length=3)


class SimulatedCamera(BaseModel):
    """A demo camera served by the camera simulator (video_index/simulator.py): `behaves` says
    how (ok, black, frozen, blur, flaky, garbage, hang; dead: nothing listens)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    department: str
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    # hls and rtsp: the ffmpeg-made streams (video_index.simulator.FfmpegStreams).
    behaves: Literal["ok", "black", "frozen", "blur", "flaky", "garbage", "hang", "dead", "hls", "rtsp"] = "ok"
    tags: list[str] = Field(default_factory=list)


class City(BaseModel):
    """A whole city config file (the `settings:` section is read by kernel.settings)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "city"
    settings: dict[str, Any] = Field(default_factory=dict)
    departments: list[Department] = Field(default_factory=list)
    grids: dict[str, Any] = Field(default_factory=lambda: {"type": "FeatureCollection", "features": []})
    devices: list[DeviceSpec] = Field(default_factory=list)
    communities: list[Community] = Field(default_factory=list)
    routes: dict[str, list[LatLon]] = Field(default_factory=dict)
    forbidden_zones: list[Zone] = Field(default_factory=list)
    # Rules change or disable the defaults by id, or add new ones (alerts/domain/rules.py).
    rules: list[dict[str, Any]] = Field(default_factory=list)
    # Cameras of the catalog (the same fields as an import), and the demo's simulated ones.
    cameras: list[dict[str, Any]] = Field(default_factory=list)
    simulated_cameras: list[SimulatedCamera] = Field(default_factory=list)
    # Hotline numbers (the defaults of hotline.domain.routing.DEFAULT_LINES, replaced by number).
    hotline_lines: list[HotlineLine] = Field(default_factory=list)
    # Knowledge-base entries loaded into an empty knowledge base.
    knowledge: list[KnowledgeSpec] = Field(default_factory=list)

    @field_validator("devices")
    @classmethod
    def _kind_rules(cls, specs: list[DeviceSpec]) -> list[DeviceSpec]:
        for spec in specs:
            problems = device_problems(spec.kind, spec.attributes)
            if problems:
                loc, message = problems[0]
                raise ValueError(f"device {spec.id}: attributes.{'.'.join(loc)}: {message}")
        return specs

    def all_devices(self) -> list[Device]:
        """Listed devices plus the detectors of each community's buildings."""
        out = [spec.to_device() for spec in self.devices]
        for community in self.communities:
            for n in range(1, community.buildings + 1):
                # Buildings on a small grid around the community centre, ~40 m apart.
                row, col = divmod(n - 1, 5)
                lat = community.lat + row * 0.00036
                lon = community.lon + col * 0.00038 / math.cos(math.radians(community.lat))
                building = f"{community.name} {n}号楼"
                extra = {"community_id": community.id, "building": n}
                out.append(
                    Device(
                        f"smoke-{community.id}-b{n}",
                        "smoke",
                        f"{building} 烟感",
                        lat,
                        lon,
                        community.grid_id,
                        dict(extra),
                    )
                )
                out.append(
                    Device(
                        f"gas-{community.id}-b{n}",
                        "gas",
                        f"{building} 燃气",
                        lat,
                        lon,
                        community.grid_id,
                        dict(extra),
                    )
                )
        return out


def load_city(path: Path) -> City:
    """Read and check a city config file."""
    try:
        return City.model_validate(read_config_file(path))
    except ValidationError as exc:
        raise ConfigError(f"city config {path} is wrong: {exc}") from exc


def demo_city_path() -> Path:
    """The packaged demo city."""
    return Path(__file__).parent / "demo" / "haikou.yaml"


def city_rules(city: City | None) -> list[AnyRule]:
    """The defaults of CONTRACT.md, with the city config's rules replacing them by id or added."""
    rules: dict[str, AnyRule] = {rule.id: rule for rule in default_rules()}
    for n, data in enumerate(city.rules if city is not None else []):
        try:
            rule = parse_rule(data)
        except ValidationError as exc:
            raise ConfigError(f"rules[{n}] of the city config is wrong: {exc}") from exc
        rules[rule.id] = rule
    return list(rules.values())


def city_zones(city: City | None) -> list[ZoneShape]:
    """The city's forbidden zones, as the zone rules read them."""
    if city is None:
        return []
    return [ZoneShape(id=z.id, name=z.name, polygon=z.polygon) for z in city.forbidden_zones]


def city_grid_polygons(city: City | None) -> dict[str, list[tuple[float, float]]]:
    """Each grid's outer ring as [lat, lon] points, by grid id (GeoJSON gives [lon, lat])."""
    if city is None:
        return {}
    out: dict[str, list[tuple[float, float]]] = {}
    for feature in city.grids.get("features", []):
        grid_id = (feature.get("properties") or {}).get("id")
        geometry = feature.get("geometry") or {}
        if not grid_id or geometry.get("type") != "Polygon" or not geometry.get("coordinates"):
            continue
        out[str(grid_id)] = [(float(lat), float(lon)) for lon, lat, *_ in geometry["coordinates"][0]]
    return out
