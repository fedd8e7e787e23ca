"""The wall and the consoles in a real browser: headless Chromium (Debian's) driven by Playwright.

The wall opens from `/#token=...`, shows a reading published over MQTT, an incident, takes over
the screen in command mode for a critical one (a leader acknowledges from it), plays a live
camera (frames advancing), and logs no console error; screenshots at 1920x1080 and 3840x2160 go
to docs/. The agent's and the department's consoles are clicked through a ticket's whole life.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from command_center.city import demo_city_path
from kernel.events import CameraStatusChanged
from tests.receivers import receiving
from video_index.simulator import CameraSimulator

from .conftest import Center, open_center
from .test_wall_socket import serving

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():  # noqa: ASYNC240 - once, before the browser starts
        pytest.fail("Debian's chromium is missing: make test installs it (scripts/install-system-deps.sh)")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def city(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Center, str]]:
    settings: dict[str, Any] = {"config_file": demo_city_path(), "rules_tick_s": 0.1, "wall_kpi_every_s": 0.5}
    async with open_center(request, tmp_path, "embedded", **settings) as center, serving(center.runtime) as ws_base:
        yield center, ws_base.replace("ws://", "http://")


def watch_console(page: Page) -> list[str]:
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{message.text} @ {message.location}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    return errors


async def level(center: Center, device: str, value: float) -> None:
    body = {"ts": int(time.time() * 1000), "value": value}
    await center.sensor.publish(f"city/sensors/water_level/{device}", json.dumps(body))


async def frame_of(page: Page, selector: str) -> str:
    """The image's current pixels, drawn onto a canvas (same origin, so it can be read)."""
    found: str = await page.eval_on_selector(
        selector,
        """img => { const c = document.createElement('canvas');
                   c.width = img.naturalWidth; c.height = img.naturalHeight;
                   c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); }""",
    )
    return found


async def test_the_wall_in_a_browser(city: tuple[Center, str], browser: Browser) -> None:
    center, base = city
    simulator = CameraSimulator(fps=10)
    await simulator.start()
    try:
        for n, name in enumerate(["ok-dam", "ok-spill"]):
            camera_id = f"cam-{name}"
            camera = {
                "id": camera_id,
                "name": f"铁炉水库 {name}",
                "department": "水务局",
                "lat": 19.9305 + n * 0.001,
                "lon": 110.2525,
                "stream_url": simulator.url(name),
            }
            assert (await center.api.post("/api/cameras", json=camera)).status_code == 201
            await center.runtime.bus.publish(
                CameraStatusChanged(camera_id, "online", "unknown", "frames ok", int(time.time() * 1000))
            )
        for device, value in (("res-tielu", 23.1), ("res-dingrong", 28.7), ("res-yufeng", 15.2), ("res-yunlong", 20.4)):
            await level(center, device, value)
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        errors = watch_console(page)
        await page.goto(f"{base}/#token={center.runtime.admin_token}")
        assert "token" not in page.url, "the token leaves the address bar"
        await page.wait_for_selector("#link.up")
        cell = page.locator('[data-device="res-tielu"] .value')
        await cell.wait_for()
        assert (await cell.inner_text()) == "23.10 m"
        # A reading published over MQTT changes on screen.
        await level(center, "res-tielu", 24.35)
        await page.wait_for_function(
            "document.querySelector('[data-device=\"res-tielu\"] .value').textContent === '24.35 m'", timeout=10_000
        )
        # Flood now goes to two departments, neither the grid's: its ticket will wait to be dispatched.
        for department in (
            {"id": "water", "name": "水务局", "categories": ["water_level", "reservoir"]},
            {"id": "emergency", "name": "应急管理局", "categories": ["gas", "work_safety", "hazmat", "flood"]},
            {"id": "fire", "name": "消防救援支队", "categories": ["smoke", "fire", "flood"]},
        ):
            assert (await center.api.post("/api/departments", json=department)).status_code == 200
        # Past the warning level: an incident appears in the list and on the map.
        await level(center, "res-tielu", 25.8)
        incident = page.locator("#incidents li.high")
        await incident.wait_for(timeout=15_000)
        assert (
            "铁炉" in await incident.inner_text()
            or "res-tielu" in await incident.inner_text()
            or await incident.count() == 1
        )
        # Selecting it plays its cameras live: frames advance.
        await incident.first.click()
        tile = page.locator("#camera-strip .cam img").first
        await tile.wait_for(timeout=15_000)
        await page.wait_for_function(
            "document.querySelector('#camera-strip .cam img').naturalWidth > 0", timeout=15_000
        )
        first = await frame_of(page, "#camera-strip .cam img")
        await asyncio.sleep(1.5)
        second = await frame_of(page, "#camera-strip .cam img")
        assert first != second, "the live tile's frames advance"
        # Past the danger level: critical, and the wall goes into command mode.
        await level(center, "res-tielu", 27.1)
        await page.locator("#command").wait_for(state="visible", timeout=15_000)
        assert "指挥模式" in await page.locator("#command > header h2").inner_text()
        await page.locator("#command-cameras .cam").first.wait_for(timeout=10_000)
        await page.wait_for_function(
            "[...document.querySelectorAll('#command-cameras .cam img')].every(i => i.naturalWidth > 0)"
            " && document.querySelectorAll('#command-cameras .cam img').length === 2",
            timeout=15_000,
        )
        await page.screenshot(path=str(DOCS / "wall-command-1920x1080.png"))
        await page.fill("#command-note", "已通知水务局开闸")
        await page.click("#cmd-ack")
        await page.wait_for_function(
            "document.querySelector('#command-log').textContent.includes('acknowledged')", timeout=10_000
        )
        listed = (await center.api.get("/api/incidents", params={"rule_id": "reservoir-level"})).json()
        tielu = next(i for i in listed if "res-tielu" in i["device_ids"])
        assert tielu["status"] == "acknowledged"
        history = (await center.api.get(f"/api/incidents/{tielu['id']}")).json()["history"]
        assert any(h["action"] == "acknowledged" and h["who"] == "admin" for h in history), "audited with who"
        # The leader escalates, dispatches the waiting ticket and supervises it, all from the wall.
        await page.click("#cmd-escalate")
        await page.wait_for_function(
            "document.querySelector('#command-log').textContent.includes('tier 2')", timeout=10_000
        )
        await page.wait_for_selector("#cmd-dispatch:not([disabled])", timeout=10_000)
        assert await page.is_disabled("#cmd-supervise") is False  # a new ticket can be supervised too
        await page.select_option("#cmd-department", "emergency")
        await page.click("#cmd-dispatch")
        await page.wait_for_function(
            "document.querySelector('#command-log').textContent.includes('dispatched to emergency')", timeout=10_000
        )
        await page.wait_for_selector("#cmd-dispatch[disabled]", timeout=10_000)
        await page.click("#cmd-supervise")
        await page.wait_for_function(
            "document.querySelector('#command-ticket').textContent.includes('supervised')", timeout=10_000
        )
        incident = (await center.api.get(f"/api/incidents/{tielu['id']}")).json()
        assert incident["escalation_tier"] == 2
        assert any(h["action"] == "escalated" and h["who"] == "admin" for h in incident["history"])
        [ticket] = (await center.api.get("/api/tickets", params={"incident_id": tielu["id"]})).json()
        assert (ticket["status"], ticket["department_id"], ticket["supervised"]) == ("dispatched", "emergency", True)
        steps = (await center.api.get(f"/api/tickets/{ticket['id']}/history")).json()
        assert [s["action"] for s in steps if s["action"] in ("dispatch", "supervise")] == ["dispatch", "supervise"]
        assert all(s["who"] == "admin" for s in steps if s["action"] in ("dispatch", "supervise"))
        await page.click("#command-exit")
        await page.screenshot(path=str(DOCS / "wall-1920x1080.png"))
        big = await browser.new_page(viewport={"width": 3840, "height": 2160})
        errors += watch_console(big)
        await big.goto(f"{base}/#token={center.runtime.admin_token}")
        await big.wait_for_selector('[data-device="res-tielu"] .value')
        await big.wait_for_timeout(1500)
        await big.screenshot(path=str(DOCS / "wall-3840x2160.png"))
        assert errors == []
    finally:
        await simulator.stop()


async def test_a_value_past_its_interval_is_greyed_out(city: tuple[Center, str], browser: Browser) -> None:
    center, base = city
    # An hourly gauge whose last reading is two hours old.
    old = {"ts": int(time.time() * 1000) - 2 * 3600 * 1000, "value": 21.0}
    await center.sensor.publish("city/sensors/water_level/res-yunlong", json.dumps(old))
    await level(center, "res-tielu", 23.0)
    page = await browser.new_page(viewport={"width": 1920, "height": 1080})
    errors = watch_console(page)
    await page.goto(f"{base}/#token={center.runtime.admin_token}")
    await page.wait_for_selector('[data-device="res-tielu"] .value')
    await page.wait_for_selector('[data-device="res-yunlong"]')
    assert "stale" in (await page.get_attribute('[data-device="res-yunlong"]', "class") or "")
    assert "stale" not in (await page.get_attribute('[data-device="res-tielu"]', "class") or "")
    assert errors == []


async def test_a_bad_token_is_asked_again(city: tuple[Center, str], browser: Browser) -> None:
    _center, base = city
    page = await browser.new_page()
    await page.goto(f"{base}/#token=not-a-valid-token-0123456789")
    await page.locator("#login").wait_for(state="visible", timeout=15_000)
    assert "token" in await page.locator("#login-error").inner_text()


async def token_for(center: Center, role: str, department_id: str | None = None) -> str:
    body = {"name": f"{role}-{department_id or 'x'}", "role": role, "department_id": department_id}
    answer = await center.api.post("/api/tokens", json=body)
    assert answer.status_code == 201, answer.text
    made: str = answer.json()["token"]
    return made


async def test_the_consoles_take_a_ticket_through_its_life(city: tuple[Center, str], browser: Browser) -> None:
    center, base = city
    agent, water = await token_for(center, "agent"), await token_for(center, "handler", "water")
    page = await browser.new_page(viewport={"width": 1600, "height": 1000})
    errors = watch_console(page)
    await page.goto(f"{base}/console/agent#token={agent}")
    await page.locator("#agent").wait_for(state="visible")
    # Knowledge base: a consultation answered and closed at intake.
    await page.fill("#kb-search input[name=q]", "居住证")
    await page.click("#kb-search button")
    await page.click("#kb-results li button.use")
    await page.fill("#intake textarea[name=description]", "咨询居住证怎么办")
    await page.click("#intake button[type=submit]")
    await page.wait_for_function("document.querySelector('#intake-result').textContent.includes('closed')")
    # A call the agent dispatches by hand (automatic routing unticked): it waits in the queue.
    await page.select_option("#intake select[name=category]", "noise")
    await page.uncheck("#intake input[name=auto_dispatch]")
    await page.fill("#intake textarea[name=description]", "楼下KTV深夜噪音")
    await page.fill("#intake input[name=caller_phone]", "13900002222")
    await page.click("#intake button[type=submit]")
    await page.wait_for_function("document.querySelector('#intake-result').textContent.includes('new')")
    row = page.locator("#queue tbody tr", has_text="楼下KTV深夜噪音")
    await row.wait_for()
    await row.locator("select.dept").select_option("water")
    await row.locator("button.dispatch").click()
    await row.wait_for(state="detached")
    # The department signs for it and replies.
    handler = await browser.new_page(viewport={"width": 1600, "height": 1000})
    errors += watch_console(handler)
    await handler.goto(f"{base}/console/handler#token={water}")
    mine = handler.locator("#mine tbody tr", has_text="楼下KTV深夜噪音")
    await mine.locator("button.accept").click()
    await mine.locator("input.reply-text").wait_for()
    await mine.locator("input.reply-text").fill("已联系商户整改")
    await mine.locator("button.reply").click()
    await handler.locator("#mine tbody tr", has_text="楼下KTV深夜噪音").wait_for(state="detached")
    # Back at the hotline: callback, then close.
    await page.click("#refresh-queue")
    waiting = page.locator("#callbacks tbody tr", has_text="已联系商户整改")
    await waiting.locator("select.satisfaction").select_option("basically_satisfied")
    await waiting.locator("button.callback").click()
    await page.locator("#callbacks tbody tr", has_text="已联系商户整改").locator("button.close").click()
    await page.locator("#callbacks tbody tr", has_text="已联系商户整改").wait_for(state="detached")
    tickets = (await center.api.get("/api/tickets", params={"q": "楼下KTV深夜噪音"})).json()
    assert [(t["status"], t["satisfaction"], t["department_id"]) for t in tickets] == [
        ("closed", "basically_satisfied", "water")
    ]
    # A handler's token on the agents' console is turned away.
    other = await browser.new_page()
    await other.goto(f"{base}/console/agent#token={water}")
    await other.locator("#login").wait_for(state="visible")
    assert "handler" in await other.locator("#login-error").inner_text()
    assert errors == []


@pytest.fixture
def tile_server() -> Iterator[tuple[str, list[str]]]:
    """A tile server of the center's own network: a small PNG for every /tiles/z/x/y.png."""
    ok, png = cv2.imencode(".png", np.full((256, 256, 3), (90, 60, 30), np.uint8))
    assert ok
    body = png.tobytes()
    asked: list[str] = []

    class Tiles(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tiles/{{z}}/{{x}}/{{y}}.png", asked
    finally:
        server.shutdown()
        server.server_close()


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    """The XYZ tile holding a point (the OpenStreetMap wiki's formula)."""
    n = 2**z
    rad = math.radians(lat)
    return int((lon + 180) / 360 * n), int((1 - math.asinh(math.tan(rad)) / math.pi) / 2 * n)


async def assert_tile_under(page: Page, lon: float, lat: float) -> int:
    """The tile drawn under a point of the map is the one that holds it; returns its zoom."""
    found: dict[str, Any] = await page.evaluate(
        """([lon, lat]) => {
             const [px, py] = wallChart.convertToPixel({geoIndex: 0}, [lon, lat]);
             const layer = document.getElementById('map-tiles').getBoundingClientRect();
             const under = [...document.querySelectorAll('#map-tiles img')].filter(img => {
               const r = img.getBoundingClientRect();
               return r.left - layer.left <= px && px < r.right - layer.left
                   && r.top - layer.top <= py && py < r.bottom - layer.top; });
             return {tiles: under.map(img => img.dataset.tile),
                     loaded: under.every(img => img.complete && img.naturalWidth === 256)}; }""",
        [lon, lat],
    )
    assert found["tiles"], "a tile is drawn under the point"
    z = int(found["tiles"][0].split("/")[0])
    x, y = tile_of(lon, lat, z)
    assert f"{z}/{x}/{y}" in found["tiles"], f"the tile under ({lon}, {lat}) is {found['tiles']}, not {z}/{x}/{y}"
    assert found["loaded"]
    return z


async def test_map_tiles_from_a_configured_server_lie_under_the_grids(
    request: pytest.FixtureRequest, tmp_path: Path, browser: Browser, tile_server: tuple[str, list[str]]
) -> None:
    template, asked = tile_server
    settings: dict[str, Any] = {"config_file": demo_city_path(), "wall_tile_url": template}
    async with open_center(request, tmp_path, "embedded", **settings) as center, serving(center.runtime) as ws_base:
        base = ws_base.replace("ws://", "http://")
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        errors = watch_console(page)
        await page.goto(f"{base}/#token={center.runtime.admin_token}")
        await page.wait_for_selector("#link.up")
        await page.wait_for_function(
            "[...document.querySelectorAll('#map-tiles img')].some(i => i.complete && i.naturalWidth > 0)"
        )
        gauge = (await center.api.get("/api/devices/res-tielu")).json()
        z = await assert_tile_under(page, gauge["lon"], gauge["lat"])
        assert all(re.fullmatch(r"/tiles/\d+/\d+/\d+\.png", path) for path in asked), asked
        # Zoomed in with the wheel: finer tiles, still under the same point.
        box = await page.locator("#map").bounding_box()
        assert box is not None
        await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        for _ in range(6):
            await page.mouse.wheel(0, -400)
            await page.wait_for_timeout(100)
        await page.wait_for_function(
            f"[...document.querySelectorAll('#map-tiles img')].every(i => +i.dataset.tile.split('/')[0] > {z})"
        )
        await page.wait_for_function(
            "[...document.querySelectorAll('#map-tiles img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        assert await assert_tile_under(page, gauge["lon"], gauge["lat"]) > z
        assert errors == []


async def test_the_wall_shows_who_was_notified_and_who_acknowledged(city: tuple[Center, str], browser: Browser) -> None:
    center, base = city
    async with receiving() as receiver:
        people = [{"id": "wang", "name": "值班员王", "contacts": {"webhook": receiver.url("/hook/wang")}}]
        patterns = [{"post": "tier1", "person_id": "wang", "days": "daily", "start": "00:00", "end": "00:00"}]
        assert (await center.api.put("/api/duty", json={"people": people, "patterns": patterns})).status_code == 200
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        errors = watch_console(page)
        await page.goto(f"{base}/#token={center.runtime.admin_token}")
        await page.wait_for_selector("#link.up")
        await level(center, "res-dingrong", 31.2)  # past the warning level (31.0): high
        incident = page.locator("#incidents li.high")
        await incident.wait_for(timeout=15_000)
        await incident.first.click()
        await page.locator('#notified .notified[data-person="wang"]', has_text="sent").wait_for(timeout=15_000)
        assert "已确认" not in await page.inner_text("#notified")
        [message] = await receiver.wait_for("/hook/wang")
        ack = message.json()["ack_url"]
        assert (await center.api.post("/ack/" + ack.rsplit("/ack/", 1)[1])).status_code == 200
        await page.locator('#notified .notified.acked[data-person="wang"]').wait_for(timeout=15_000)
        assert "已确认" in await page.inner_text("#notified")
        assert errors == []
