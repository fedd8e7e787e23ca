"""The hand-built line protocol says what influxdb-client's Point says, field for field."""

from __future__ import annotations

import re

import pytest

from iot_gateway.adapters.series_influx import to_line, to_line_with_point
from kernel.model import Position, Reading, Sample

_UNESCAPED_SPACE = re.compile(r"(?<!\\) ")
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")


def parse(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    head, fields, ts = _UNESCAPED_SPACE.split(line)
    measurement, *tags = _UNESCAPED_COMMA.split(head)
    tag_map = dict(t.split("=", 1) for t in tags)
    field_map: dict[str, object] = {}
    for field in _UNESCAPED_COMMA.split(fields):
        key, raw = field.split("=", 1)
        field_map[key] = raw == "true" if raw in ("true", "false") else float(raw)
    return measurement, tag_map, field_map, int(ts)


@pytest.mark.parametrize(
    "sample",
    [
        Reading("res-1", "water_level", 1_795_000_000_000, 24.5),
        Reading("gas-1", "gas", 1_795_000_000_001, 50.0, 88.0),
        Reading("smoke-1", "smoke", 1_795_000_000_002, 0.1, None, False),
        Reading("smoke-2", "smoke", 1_795_000_000_003, 12.25, 3.5, True),
        Reading("odd id,with=space s", "gas", 1_795_000_000_004, 1e-7),
        Position("veh-1", 1_795_000_000_005, 20.012345, 110.354321, 38.5, 271.0),
        Position("veh-2", 1_795_000_000_006, -33.5, -70.25),
    ],
)
def test_same_point_as_influxdb_client(sample: Sample) -> None:
    assert parse(to_line(sample)) == parse(to_line_with_point(sample))
