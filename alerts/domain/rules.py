"""Rules as data: what a city config or the API declares, checked field by field.

A rule is a pydantic model (its errors name the field at fault, which the API answers as 422);
evaluation lives in `evaluate.py` and never sees an unchecked rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator
from shapely.geometry import Polygon
from shapely.validation import explain_validity

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")
RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


def rank(severity: Severity) -> int:
    return SEVERITIES.index(severity)


class Scope(BaseModel):
    """Which devices a rule watches: every condition given must hold (empty means any)."""

    model_config = ConfigDict(extra="forbid")
    kinds: list[Literal["water_level", "smoke", "gas", "vehicle"]] = Field(default_factory=list)
    device_ids: list[str] = Field(default_factory=list)
    grid_ids: list[str] = Field(default_factory=list)
    # For vehicles: the `category` attribute (hazmat, tour_bus, coach).
    categories: list[str] = Field(default_factory=list)


class Level(BaseModel):
    """A severity and where it starts: a fixed value, or one of the device's own attributes."""

    model_config = ConfigDict(extra="forbid")
    severity: Severity
    at: float | None = None
    attribute: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_threshold(self) -> Level:
        if (self.at is None) == (self.attribute is None):
            raise ValueError("give the threshold as `at` (a number) or as `attribute` (a device attribute), not both")
        return self


class RuleBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=RULE_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    # The incident's category (and, later, the ticket's): flood, fire, gas, device, traffic, ...
    category: str = Field(min_length=1, max_length=64)
    scope: Scope = Field(default_factory=Scope)
    enabled: bool = True
    # auto: the incident resolves itself when the rule clears; manual: a person resolves it.
    resolve: Literal["auto", "manual"] = "auto"
    # The lowest severity at which the incident needs a department, i.e. becomes a hotline
    # ticket (CONTRACT.md: high and critical); null: this rule's incidents never do.
    ticket_from: Severity | None = "high"


class ThresholdRule(RuleBase):
    """Raise at or above a level (the highest level reached gives the severity); clear below the
    lowest level minus `hysteresis`. `field: alarm` fires on a smoke detector's alarm flag."""

    kind: Literal["threshold"]
    field: Literal["value", "alarm"] = "value"
    levels: list[Level] = Field(default_factory=list)
    hysteresis: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _levels(self) -> ThresholdRule:
        if self.field == "value" and not self.levels:
            raise ValueError("a threshold on `value` needs at least one level")
        if self.field == "alarm" and len(self.levels) != 1:
            raise ValueError("an alarm rule has exactly one level (its severity; `at` is ignored)")
        severities = [rank(level.severity) for level in self.levels]
        if severities != sorted(set(severities)):
            raise ValueError("levels go from the lowest severity to the highest, each severity once")
        return self


class SilenceRule(RuleBase):
    """A device silent for `factor` times its expected interval, or that said it is offline."""

    kind: Literal["silence"]
    factor: float = Field(default=3.0, gt=1)
    severity: Severity = "low"
    offline_status: bool = True


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["water_level", "smoke", "gas"]
    field: Literal["value", "alarm"] = "value"
    at: float | None = None

    @model_validator(mode="after")
    def _threshold(self) -> Condition:
        if self.field == "value" and self.at is None:
            raise ValueError("a condition on `value` needs `at`")
        return self


class CorrelationRule(RuleBase):
    """Every condition met by devices within `radius_m` of each other within `window_s`: one
    incident listing them all, of a higher severity than each alone (fire or explosion risk)."""

    kind: Literal["correlation"]
    conditions: list[Condition] = Field(min_length=2, max_length=5)
    radius_m: float = Field(default=50.0, gt=0, le=10_000)
    window_s: float = Field(default=300.0, gt=0, le=86_400)
    severity: Severity = "critical"


LatLon = tuple[float, float]


class ZoneShape(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    polygon: list[LatLon] = Field(min_length=3, max_length=10_000)

    @field_validator("polygon")
    @classmethod
    def _a_real_polygon(cls, points: list[LatLon]) -> list[LatLon]:
        for lat, lon in points:
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ValueError(f"({lat}, {lon}) is not a WGS-84 [lat, lon] point")
        ring = points if points[0] != points[-1] else points[:-1]
        if len(ring) < 3:
            raise ValueError("a polygon needs at least 3 distinct corners")
        shape = Polygon([(lon, lat) for lat, lon in ring])
        if not shape.is_valid:  # crossing edges, or no area at all
            raise ValueError(f"the polygon is not simple: {explain_validity(shape)}")
        return points


class ZoneRule(RuleBase):
    """A vehicle (of the scope's categories) inside any of the zones. Zones are given here or
    named from the city config's `forbidden_zones` (`zone_ids`)."""

    kind: Literal["zone"]
    zones: list[ZoneShape] = Field(default_factory=list)
    zone_ids: list[str] = Field(default_factory=list)
    severity: Severity = "high"

    @model_validator(mode="after")
    def _some_zone(self) -> ZoneRule:
        if not self.zones and not self.zone_ids:
            raise ValueError("a zone rule needs `zones` or `zone_ids`")
        return self


class Test(BaseModel):
    """A condition on one reading or fix: `field` `op` a number or one of the device's attributes."""

    model_config = ConfigDict(extra="forbid")
    field: Literal["value", "alarm", "speed_kmh"] = "value"
    op: Literal[">=", "<="] = ">="
    at: float | None = None
    attribute: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _threshold(self) -> Test:
        if self.field != "alarm" and (self.at is None) == (self.attribute is None):
            raise ValueError("give the threshold as `at` (a number) or as `attribute` (a device attribute), not both")
        return self


class RateRule(RuleBase):
    """A rise (or fall) of at least `change` within `window_s`: 0.3 m in an hour, say."""

    kind: Literal["rate"]
    change: float = Field(gt=0)
    window_s: float = Field(gt=0, le=7 * 86_400)
    direction: Literal["rise", "fall"] = "rise"
    severity: Severity = "medium"


class ProjectionRule(RuleBase):
    """The recent trend (least squares over `window_s`, at least `min_points` readings) reaches the
    level within `horizon_s`: raised before the level is reached."""

    kind: Literal["projection"]
    level: Level
    window_s: float = Field(default=3 * 3600.0, gt=0, le=7 * 86_400)
    horizon_s: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    min_points: int = Field(default=3, ge=2, le=1000)
    severity: Severity = "high"


class DurationRule(RuleBase):
    """The test holds for at least `for_s` without a break."""

    kind: Literal["duration"]
    test: Test
    for_s: float = Field(gt=0, le=7 * 86_400)
    severity: Severity = "medium"


class CountRule(RuleBase):
    """The test holds `times` times or more within `window_s`."""

    kind: Literal["count"]
    test: Test
    times: int = Field(ge=2, le=10_000)
    window_s: float = Field(gt=0, le=7 * 86_400)
    severity: Severity = "medium"


class CorridorRule(RuleBase):
    """A vehicle farther than `width_m / 2` from its route (a line given here or a city route)."""

    kind: Literal["corridor"]
    route: list[LatLon] = Field(default_factory=list)
    route_id: str | None = None
    # Per vehicle: the route named by its `route` attribute when it has one.
    route_from_attribute: bool = True
    width_m: float = Field(default=200.0, gt=0, le=100_000)
    severity: Severity = "high"

    @model_validator(mode="after")
    def _a_route(self) -> CorridorRule:
        if self.route and len(self.route) < 2:
            raise ValueError("a route needs at least 2 points")
        if not self.route and self.route_id is None and not self.route_from_attribute:
            raise ValueError("a corridor rule needs `route`, `route_id` or `route_from_attribute`")
        return self


class DwellRule(RuleBase):
    """A vehicle inside one of the zones for longer than `max_s`."""

    kind: Literal["dwell"]
    zones: list[ZoneShape] = Field(default_factory=list)
    zone_ids: list[str] = Field(default_factory=list)
    max_s: float = Field(gt=0, le=7 * 86_400)
    severity: Severity = "medium"

    @model_validator(mode="after")
    def _some_zone(self) -> DwellRule:
        if not self.zones and not self.zone_ids:
            raise ValueError("a dwell rule needs `zones` or `zone_ids`")
        return self


class SpeedRule(RuleBase):
    """A vehicle faster than `limit_kmh` (cleared `hysteresis_kmh` below it)."""

    kind: Literal["speed"]
    limit_kmh: float = Field(gt=0, le=300)
    hysteresis_kmh: float = Field(default=5.0, ge=0)
    severity: Severity = "medium"


class CameraOfflineRule(RuleBase):
    """A camera offline for longer than `for_s` (from the video index's camera status events)."""

    kind: Literal["camera_offline"]
    for_s: float = Field(default=600.0, gt=0, le=7 * 86_400)
    departments: list[str] = Field(default_factory=list)
    severity: Severity = "low"


AnyRule = (
    ThresholdRule
    | SilenceRule
    | CorrelationRule
    | ZoneRule
    | RateRule
    | ProjectionRule
    | DurationRule
    | CountRule
    | CorridorRule
    | DwellRule
    | SpeedRule
    | CameraOfflineRule
)
Rule = Annotated[AnyRule, Field(discriminator="kind")]
RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)
RULE_KINDS = (
    "threshold",
    "silence",
    "correlation",
    "zone",
    "rate",
    "projection",
    "duration",
    "count",
    "corridor",
    "dwell",
    "speed",
    "camera_offline",
)


def parse_rule(data: Any) -> AnyRule:
    """A checked rule from JSON data; pydantic's ValidationError names the field at fault."""
    return RULE_ADAPTER.validate_python(data)


def default_rules() -> list[AnyRule]:
    """CONTRACT.md's 'out of the box' rules: a city with no config gets these."""
    return [
        parse_rule(data)
        for data in (
            {
                "id": "reservoir-level",
                "name": "水库水位超警戒/危险",
                "category": "flood",
                "kind": "threshold",
                "scope": {"kinds": ["water_level"]},
                "levels": [
                    {"severity": "high", "attribute": "warning_level_m"},
                    {"severity": "critical", "attribute": "danger_level_m"},
                ],
                "hysteresis": 0.05,
            },
            {
                "id": "smoke-alarm",
                "name": "烟感报警",
                "category": "fire",
                "kind": "threshold",
                "scope": {"kinds": ["smoke"]},
                "field": "alarm",
                "levels": [{"severity": "high", "at": 1}],
            },
            {
                "id": "gas-leak",
                "name": "燃气浓度超限",
                "category": "gas",
                "kind": "threshold",
                "scope": {"kinds": ["gas"]},
                "levels": [{"severity": "high", "at": 20.0}, {"severity": "critical", "at": 50.0}],
                "hysteresis": 2.0,
            },
            {
                "id": "fire-gas-together",
                "name": "烟感与燃气同时报警(火灾爆炸风险)",
                "category": "fire",
                "kind": "correlation",
                "conditions": [{"kind": "smoke", "field": "alarm"}, {"kind": "gas", "at": 20.0}],
                "radius_m": 50,
                "window_s": 300,
                "severity": "critical",
                "resolve": "manual",
            },
            {
                "id": "device-silent",
                "name": "设备离线或长时间无数据",
                "category": "device",
                "kind": "silence",
                "factor": 3.0,
                "severity": "low",
            },
            {
                "id": "hazmat-forbidden-zone",
                "name": "危化品车辆驶入禁入区",
                "category": "traffic",
                "kind": "zone",
                "scope": {"kinds": ["vehicle"], "categories": ["hazmat"]},
                "zone_ids": ["*"],
                "severity": "high",
            },
        )
    ]
