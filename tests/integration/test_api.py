"""The HTTP API's refusals: 401, 403, 404, 409 and 422 naming the field."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import GAUGE, eventually

from .conftest import Center, api_client


async def test_health_needs_no_token(center: Center) -> None:
    async with api_client(center.runtime, anonymous=True) as anonymous:
        answer = await anonymous.get("/api/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok", body
    assert body["components"]["mqtt"]["state"] == "connected"
    bus = body["components"]["bus"]
    assert bus["state"] == "up"
    assert bus["kind"] == ("MemoryBus" if center.runtime.settings.redis_url is None else "RedisBus")


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc", "Bearer "])
async def test_no_or_bad_token_is_401(center: Center, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with api_client(center.runtime, anonymous=True) as client:
        for call in (
            client.get("/api/devices", headers=headers),
            client.post("/api/devices", json=GAUGE, headers=headers),
        ):
            assert (await call).status_code == 401


async def test_a_role_that_may_not_is_403_and_changes_nothing(center: Center) -> None:
    issued = await center.api.post("/api/tokens", json={"name": "wall", "role": "viewer"})
    assert issued.status_code == 201
    viewer = {"Authorization": f"Bearer {issued.json()['token']}"}
    refused = await center.api.post("/api/devices", json=GAUGE, headers=viewer)
    assert refused.status_code == 403
    assert (await center.api.get("/api/devices/res-1")).status_code == 404
    assert (await center.api.get("/api/devices", headers=viewer)).status_code == 200
    assert (
        await center.api.post("/api/tokens", json={"name": "x", "role": "admin"}, headers=viewer)
    ).status_code == 403


def _locs(answer: httpx.Response) -> list[list[Any]]:
    assert answer.status_code == 422, answer.text
    return [error["loc"] for error in answer.json()["detail"]]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"lat": 95}, ["body", "lat"]),
        ({"kind": "rain"}, ["body", "kind"]),
        ({"id": "a/b"}, ["body", "id"]),
        ({"name": ""}, ["body", "name"]),
        ({"attributes": {"warning_level_m": 25.5}}, ["body", "attributes", "danger_level_m"]),
        (
            {"attributes": {"warning_level_m": 27, "danger_level_m": 26}},
            ["body", "attributes", "danger_level_m"],
        ),
        (
            {"kind": "vehicle", "attributes": {"plate": "琼A", "category": "tank"}},
            ["body", "attributes", "category"],
        ),
        ({"colour": "red"}, ["body", "colour"]),
    ],
)
async def test_a_wrong_device_is_422_naming_the_field(center: Center, change: dict[str, Any], loc: list[Any]) -> None:
    assert loc in _locs(await center.api.post("/api/devices", json={**GAUGE, **change}))
    assert (await center.api.get("/api/devices")).json() == []


async def test_missing_field_and_bad_json_are_422(center: Center) -> None:
    body = {k: v for k, v in GAUGE.items() if k != "lon"}
    assert ["body", "lon"] in _locs(await center.api.post("/api/devices", json=body))
    bad = await center.api.post("/api/devices", content=b"{", headers={"Content-Type": "application/json"})
    assert bad.status_code == 422


async def test_a_taken_id_is_409_and_the_first_stays(center: Center) -> None:
    assert (await center.api.post("/api/devices", json=GAUGE)).status_code == 201
    again = await center.api.post("/api/devices", json={**GAUGE, "name": "other"})
    assert again.status_code == 409
    assert (await center.api.get("/api/devices/res-1")).json()["name"] == "水位"


async def test_unknown_ids_are_404(center: Center) -> None:
    assert (await center.api.get("/api/devices/nope")).status_code == 404
    assert (await center.api.get("/api/devices/nope/readings")).status_code == 404


async def test_readings_window_must_be_a_time(center: Center) -> None:
    await center.api.post("/api/devices", json=GAUGE)
    assert ["query", "start"] in _locs(await center.api.get("/api/devices/res-1/readings", params={"start": "soon"}))
    assert ["query", "start"] in _locs(
        await center.api.get(
            "/api/devices/res-1/readings",
            params={"start": "2026-11-02T00:00:00+08:00", "end": "2026-11-01T00:00:00+08:00"},
        )
    )
    ok = await center.api.get("/api/devices/res-1/readings", params={"start": "1795000000000", "end": "1795000001000"})
    assert ok.status_code == 200
    assert ok.json() == []


async def test_list_devices_filters_by_kind(center: Center) -> None:
    await center.api.post("/api/devices", json=GAUGE)
    await center.api.post("/api/devices", json={"id": "g1", "kind": "gas", "name": "燃气", "lat": 20, "lon": 110})
    assert [d["id"] for d in (await center.api.get("/api/devices", params={"kind": "gas"})).json()] == ["g1"]
    assert (await center.api.get("/api/devices", params={"kind": "rain"})).status_code == 422


async def test_admin_token_is_written_owner_only(center: Center) -> None:
    token_file = Path(center.runtime.settings.data_dir) / "admin.token"
    assert token_file.read_text().strip() == center.runtime.admin_token
    assert token_file.stat().st_mode & 0o777 == 0o600


async def test_change_and_remove_a_device_and_the_gateway_follows(center: Center) -> None:
    await center.register(GAUGE)
    moved = {**GAUGE, "name": "铁炉水库 (新)", "lat": 19.95}
    changed = await center.api.put("/api/devices/res-1", json=moved)
    assert changed.status_code == 200
    assert (await center.device("res-1"))["name"] == "铁炉水库 (新)"
    assert (await center.api.delete("/api/devices/res-1")).status_code == 204
    assert (await center.api.get("/api/devices/res-1")).status_code == 404
    # The gateway no longer takes its readings: they are dead letters of an unknown device.
    await center.sensor.publish(
        "city/sensors/water_level/res-1", json.dumps({"ts": int(time.time() * 1000), "value": 1})
    )

    async def refused() -> bool:
        answer = await center.api.get("/api/dead-letters", params={"reason": "unknown_device"})
        return any(letter["topic"].endswith("/res-1") for letter in answer.json())

    await eventually(refused)


async def test_changing_or_removing_a_device_is_refused_with_why(center: Center) -> None:
    await center.register(GAUGE)
    mismatch = await center.api.put("/api/devices/res-1", json={**GAUGE, "id": "res-2"})
    assert ["body", "id"] in _locs(mismatch)
    bad = await center.api.put("/api/devices/res-1", json={**GAUGE, "attributes": {"warning_level_m": 30}})
    assert ["body", "attributes", "danger_level_m"] in _locs(bad)
    assert (await center.api.put("/api/devices/nope", json={**GAUGE, "id": "nope"})).status_code == 404
    assert (await center.api.delete("/api/devices/nope")).status_code == 404
    issued = await center.api.post("/api/tokens", json={"name": "wall", "role": "viewer"})
    viewer = {"Authorization": f"Bearer {issued.json()['token']}"}
    assert (await center.api.put("/api/devices/res-1", json=GAUGE, headers=viewer)).status_code == 403
    assert (await center.api.delete("/api/devices/res-1", headers=viewer)).status_code == 403
    assert (await center.device("res-1"))["name"] == GAUGE["name"], "nothing changed"
