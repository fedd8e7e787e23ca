"""Build the command center's parts from the settings, start them in order, stop them in reverse."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import Engine, text

from alerts.adapters.incidents_sql import SqlIncidents
from alerts.domain.hygiene import HygienePolicy
from alerts.domain.incidents import EscalationPolicy
from alerts.domain.rules import AnyRule, parse_rule
from alerts.engine import EngineOptions, RulesEngine
from hotline.adapters.tickets_sql import SqlTickets
from hotline.desk import TicketDesk
from hotline.domain.calendar import WorkCalendar
from hotline.domain.routing import DEFAULT_LINES, Department, Line
from hotline.domain.search import warm_up
from hotline.scheduler import SchedulerOptions, TicketScheduler
from iot_gateway.adapters.broker_amqtt import EmbeddedBroker
from iot_gateway.adapters.live_memory import MemoryLive
from iot_gateway.adapters.live_redis import RedisLive
from iot_gateway.adapters.mqtt_paho import MqttTarget, PahoIngress, parse_mqtt_url, subscription_topics
from iot_gateway.adapters.records_cached import CachedDevices
from iot_gateway.adapters.records_sql import SqlDeadLetters, SqlDevices
from iot_gateway.adapters.series_influx import InfluxSeries
from iot_gateway.adapters.series_sqlite import SqliteSeries
from iot_gateway.gateway import Gateway, GatewayOptions
from kernel.bus import MemoryBus
from kernel.bus_redis import RedisBus
from kernel.clock import Clock
from kernel.db import database_url, make_engine
from kernel.events import INCIDENT_CHANGED, TICKET_CHANGED
from kernel.ports import Bus, DeviceRegistry, LiveState, LiveSubscription, TimeSeries
from kernel.settings import Settings
from notify.adapters.notify_sql import SqlNotify
from notify.adapters.senders import senders
from notify.notifier import Notifier, NotifyOptions
from video_index.adapters.cameras_sql import SqlCameras
from video_index.adapters.snapshots import FileSnapshots, RedisSnapshots
from video_index.catalog import CameraCatalog
from video_index.domain.cameras import parse_json
from video_index.domain.health import HealthPolicy
from video_index.live import LiveOptions, LiveViews
from video_index.ports import SnapshotStore
from video_index.simulator import CameraSimulator, FfmpegStreams
from video_index.watch import CameraWatch, WatchOptions

from .auth import TokenStore
from .city import City, city_rules, city_zones, demo_city_path, load_city
from .schema import migrate, require_current
from .simulator import SimulatorThread
from .ticket_policy import IncidentTickets
from .wall import KpiTick, WallHub

log = logging.getLogger(__name__)


def mqtt_target(settings: Settings, embedded_port: int) -> MqttTarget:
    """The broker the gateway and the simulator talk to."""
    if settings.mqtt_url:
        ca_file = str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None
        return parse_mqtt_url(settings.mqtt_url, ca_file)
    return MqttTarget("127.0.0.1", embedded_port)


def make_live(settings: Settings) -> LiveState:
    return RedisLive(settings.redis_url) if settings.redis_url else MemoryLive()


def make_bus(settings: Settings) -> Bus:
    """Redis when configured (processes may be split), else in-process."""
    if settings.redis_url:
        return RedisBus(
            settings.redis_url,
            prefix=settings.redis_prefix,
            stream_max_entries=settings.bus_stream_max_entries,
            claim_idle_s=settings.bus_claim_idle_s,
        )
    return MemoryBus(stream_max_entries=settings.bus_stream_max_entries, claim_idle_s=settings.bus_claim_idle_s)


def make_series(settings: Settings) -> TimeSeries:
    if settings.influx_url:
        return InfluxSeries(settings.influx_url, settings.influx_database, batch_size=settings.influx_batch_size)
    return SqliteSeries(settings.data_dir / "series.sqlite")


@dataclass
class Runtime:
    """Every long-lived part of one cityops process; the parts a process does not run are None."""

    settings: Settings
    clock: Clock
    engine: Engine
    devices: DeviceRegistry
    dead_letters: SqlDeadLetters
    tokens: TokenStore
    incidents: SqlIncidents
    bus: Bus
    live: LiveState
    series: TimeSeries
    admin_token: str
    city: City | None = None
    gateway: Gateway | None = None
    broker: EmbeddedBroker | None = None
    ingress: PahoIngress | None = None
    simulator: SimulatorThread | None = None
    rules_engine: RulesEngine | None = None
    cameras: CameraCatalog | None = None
    watch: CameraWatch | None = None
    snapshots: SnapshotStore | None = None
    live_views: LiveViews | None = None
    tickets: SqlTickets | None = None
    desk: TicketDesk | None = None
    ticket_scheduler: TicketScheduler | None = None
    incident_tickets: IncidentTickets | None = None
    wall: WallHub | None = None
    notify: SqlNotify | None = None
    notifier: Notifier | None = None
    notify_wake: LiveSubscription | None = None
    http_client: httpx.AsyncClient | None = None
    roles: tuple[str, ...] = field(default=())

    def ticket_desk(self) -> TicketDesk:
        if self.desk is None:
            raise RuntimeError("the ticket desk is not started in this process")
        return self.desk

    def snapshot_store(self) -> SnapshotStore:
        if self.snapshots is None:
            raise RuntimeError("the snapshot store is not open")
        return self.snapshots

    def live_view(self) -> LiveViews:
        if self.live_views is None:
            raise RuntimeError("the live view is not set up")
        return self.live_views

    def catalog(self) -> CameraCatalog:
        if self.cameras is None:
            raise RuntimeError("the camera catalog is not started")
        return self.cameras

    def running_gateway(self) -> Gateway:
        """The gateway of a process that ingests (an error in one that does not)."""
        if self.gateway is None:
            raise RuntimeError("this cityops process runs no gateway")
        return self.gateway

    def mqtt_target(self) -> MqttTarget:
        port = self.broker.port if self.broker else self.settings.mqtt_port
        return mqtt_target(self.settings, port)

    def records_ok(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


def _city(settings: Settings) -> City | None:
    if settings.config_file is not None:
        return load_city(settings.config_file)
    if settings.demo:
        return load_city(demo_city_path())
    return None


def _gateway(runtime: Runtime) -> Gateway:
    settings = runtime.settings
    return Gateway(
        devices=runtime.devices,
        dead_letters=runtime.dead_letters,
        live=runtime.live,
        series=runtime.series,
        bus=runtime.bus,
        clock=runtime.clock,
        options=GatewayOptions(
            batch_max=settings.ingest_batch_max,
            flush_interval_s=settings.ingest_flush_interval_s,
            pending_max=settings.ingest_pending_max,
            side_pending_max=settings.ingest_side_pending_max,
            registry_refresh_s=settings.registry_refresh_s,
            dead_letter_max_rows=settings.dead_letter_max_rows,
            dead_letter_max_age_s=settings.dead_letter_max_age_days * 86_400,
        ),
    )


async def effective_rules(runtime: Runtime) -> list[AnyRule]:
    """The city's rules (defaults and config) with the ones saved through the API replacing them by id."""
    rules = {rule.id: rule for rule in city_rules(runtime.city)}
    for spec in await runtime.incidents.saved_rules():
        rule = parse_rule(spec)
        rules[rule.id] = rule
    return list(rules.values())


# CONTRACT.md: an incident (and its ticket) has up to 3 online cameras within 500 m attached.
NEARBY_CAMERAS = 3
NEARBY_CAMERAS_M = 500.0


def nearby_cameras(runtime: Runtime, lat: float, lon: float) -> list[str]:
    found = runtime.catalog().nearest(lat, lon, NEARBY_CAMERAS, statuses=["online"], max_m=NEARBY_CAMERAS_M)
    return [camera_id for camera_id, _metres in found]


async def start_rules(runtime: Runtime) -> RulesEngine:
    """The rules engine in this process (`cityops run`, or the `cityops rules` process)."""
    settings = runtime.settings
    engine = RulesEngine(
        bus=runtime.bus,
        store=runtime.incidents,
        devices=runtime.devices,
        clock=runtime.clock,
        rules=await effective_rules(runtime),
        city_zones=city_zones(runtime.city),
        city_routes=runtime.city.routes if runtime.city is not None else {},
        live=runtime.live,
        options=EngineOptions(
            tick_s=settings.rules_tick_s,
            escalation_every_s=min(5.0, 5 * settings.rules_tick_s),
            lease_s=settings.rules_lease_s,
            clock_jump_confirm_ms=int(settings.rules_clock_jump_confirm_s * 1000),
        ),
        reload_rules=lambda: effective_rules(runtime),
        load_silences=lambda: runtime.incidents.silences(runtime.clock.now_ms()),
        series=runtime.series,
        nearby_cameras=lambda lat, lon: nearby_cameras(runtime, lat, lon),
        policy=EscalationPolicy(
            critical_to_tier2_s=settings.escalation_critical_to_tier2_s,
            critical_to_tier3_s=settings.escalation_critical_to_tier3_s,
            high_to_tier2_s=settings.escalation_high_to_tier2_s,
        ),
        hygiene=HygienePolicy(
            flap_max=settings.flap_max,
            flap_window_s=settings.flap_window_s,
            flap_quiet_s=settings.flap_quiet_s,
            flood_max=settings.flood_max,
            flood_window_s=settings.flood_window_s,
        ),
    )
    await engine.start()
    runtime.rules_engine = engine
    return engine


def work_calendar(settings: Settings) -> WorkCalendar:
    return WorkCalendar.build(settings.timezone, settings.calendar_holidays, settings.calendar_workdays)


def hotline_lines(city: City | None) -> list[Line]:
    """The default hotline numbers with the city's own replacing them by number."""
    lines = {line.number: line for line in DEFAULT_LINES}
    for line in city.hotline_lines if city is not None else []:
        lines[line.number] = Line(line.number, line.name, tuple(line.departments))
    return list(lines.values())


async def seed_hotline(runtime: Runtime) -> None:
    """The city config's departments, grids and knowledge into the records, where they are missing
    (what was changed through the API is kept)."""
    city, store, now = runtime.city, runtime.tickets, runtime.clock.now_ms()
    if city is None or store is None:
        return
    await store.seed_departments([Department(d.id, d.name, tuple(d.categories)) for d in city.departments], now)
    if city.grids.get("features"):
        await store.save_doc("grids", city.grids, now, only_if_missing=True)
    if city.knowledge and await store.knowledge_count() == 0:
        for entry in city.knowledge:
            await store.add_knowledge(entry.question, entry.answer, entry.department_id, entry.tags, now)


async def start_tickets(runtime: Runtime) -> TicketDesk:
    """The ticket desk, its scheduler and the incident-to-ticket policy in this process (the API's)."""
    s = runtime.settings
    store = runtime.tickets or SqlTickets(runtime.engine)
    runtime.tickets = store
    # jieba's dictionary (about a second) loads now, not in an agent's first search.
    await asyncio.to_thread(warm_up)
    await seed_hotline(runtime)
    desk = TicketDesk(store, runtime.bus, runtime.clock, work_calendar(s), lines=hotline_lines(runtime.city))
    await desk.start()
    runtime.desk = desk
    runtime.ticket_scheduler = TicketScheduler(
        desk,
        runtime.bus,
        runtime.clock,
        SchedulerOptions(tick_s=s.tickets_tick_s, remind_before_s=s.tickets_remind_before_s, lease_s=s.tickets_lease_s),
    )
    await runtime.ticket_scheduler.start()
    if s.tickets_from_incidents:
        runtime.incident_tickets = IncidentTickets(
            desk,
            runtime.bus,
            runtime.incidents,
            lambda: effective_rules(runtime),
            lambda lat, lon: nearby_cameras(runtime, lat, lon),
        )
        await runtime.incident_tickets.start()
    return desk


def public_url(settings: Settings) -> str:
    return settings.public_url or f"http://{settings.http_host}:{settings.http_port}"


async def start_notifier(runtime: Runtime) -> Notifier:
    """The notifier (outbox to notifications, delivery, repeats) in this process."""
    s = runtime.settings
    store = runtime.notify or SqlNotify(runtime.engine)
    runtime.notify = store
    runtime.http_client = httpx.AsyncClient(timeout=s.notify_send_timeout_s, follow_redirects=False)
    # Woken by the bus when an incident or ticket changes; the outbox is the guarantee, this
    # only saves the wait for the next poll.
    runtime.notify_wake = wake = runtime.bus.live((INCIDENT_CHANGED, TICKET_CHANGED))

    async def changed() -> None:
        await wake.take(1000, timeout_s=None)

    notifier = Notifier(
        store,
        runtime.clock,
        ZoneInfo(s.timezone),
        senders(runtime.http_client, s.notify_send_timeout_s),
        NotifyOptions(
            public_url=public_url(s),
            poll_s=s.notify_poll_s,
            lease_s=s.notify_lease_s,
            send_timeout_s=s.notify_send_timeout_s,
            max_attempts=s.notify_max_attempts,
            backoff_s=s.notify_backoff_s,
            max_per_window=s.notify_max_per_window,
            window_s=s.notify_window_s,
            concurrency=s.notify_concurrency,
            link_ttl_s=s.notify_link_ttl_s,
            repeat_check_s=s.notify_repeat_check_s,
        ),
        wake_on=changed,
    )
    await notifier.start()
    runtime.notifier = notifier
    return notifier


async def start_wall(runtime: Runtime) -> WallHub:
    """The wall's WebSocket hub on the live fan-out (API processes)."""
    from .api_wall import kpi_tiles  # the API's JSON shapes; only API processes need them

    s = runtime.settings
    hub = WallHub(
        runtime.bus,
        per_entity_hz=s.wall_per_entity_hz,
        kpis=KpiTick(lambda: kpi_tiles(runtime), every_s=s.wall_kpi_every_s),
    )
    await hub.start()
    runtime.wall = hub
    return hub


def make_snapshots(settings: Settings) -> SnapshotStore:
    if settings.redis_url:
        return RedisSnapshots(settings.redis_url, settings.redis_prefix)
    return FileSnapshots(settings.data_dir / "snapshots")


async def start_watch(runtime: Runtime) -> CameraWatch:
    """The camera watch in this process (`cityops run`, or the `cityops prober` process)."""
    s = runtime.settings
    watch = CameraWatch(
        catalog=runtime.catalog(),
        bus=runtime.bus,
        snapshots=runtime.snapshot_store(),
        clock=runtime.clock,
        options=WatchOptions(
            liveness_every_s=s.camera_liveness_every_s,
            liveness_timeout_s=s.camera_liveness_timeout_s,
            liveness_concurrency=s.camera_liveness_concurrency,
            full_every_s=s.camera_full_every_s,
            full_workers=s.camera_full_workers,
            open_timeout_s=s.camera_open_timeout_s,
            read_timeout_s=s.camera_read_timeout_s,
            member_ttl_s=s.camera_member_ttl_s,
        ),
        policy=HealthPolicy(intermittent_flips=s.camera_intermittent_flips, settle_ms=int(s.camera_settle_s * 1000)),
    )
    await watch.start()
    runtime.watch = watch
    return watch


async def load_city_cameras(
    runtime: Runtime, simulator: CameraSimulator | None = None, streams: FfmpegStreams | None = None
) -> int:
    """The city config's cameras into the catalog, and with a simulator its simulated ones, each
    pointed at the simulator's stream for how it behaves (a `dead` one at a port nobody serves,
    `hls` and `rtsp` ones at the ffmpeg-made streams, left out when those are not running)."""
    city = runtime.city
    if city is None:
        return 0
    rows: list[dict[str, Any]] = list(city.cameras)
    if simulator is not None:
        for sim in city.simulated_cameras:
            url: str | None
            if sim.behaves == "dead":
                url = "http://127.0.0.1:9/dead.mjpg"
            elif sim.behaves in ("hls", "rtsp"):
                url = None if streams is None else streams.hls_url if sim.behaves == "hls" else streams.rtsp_url
            else:
                url = simulator.url(f"{sim.behaves}-{sim.id}")
            if url is not None:
                rows.append({**sim.model_dump(exclude={"behaves"}), "stream_url": url})
    parsed = parse_json(rows)
    for rejected in parsed.rejected:
        log.warning("city camera %d refused: %s", rejected.line, rejected.reason)
    done = await runtime.catalog().import_cameras(parsed)
    return done.imported


async def start_runtime(
    settings: Settings,
    clock: Clock,
    *,
    ingest: bool = True,
    rules: bool = False,
    migrate_schema: bool = False,
    watch: bool = False,
    tickets: bool = False,
    cache_devices: bool = True,
) -> Runtime:
    """Open stores, load the city, start the broker (embedded), the gateway and the rules engine.

    `migrate_schema`: bring the records schema up to date first (`cityops run`); otherwise the
    database must be current already (`cityops migrate` ran), or this refuses to start.
    `rules`: run the rules engine in this process.
    `tickets`: run the ticket desk, its scheduler and the incident-to-ticket policy (API processes).
    `cache_devices`: hold the whole device registry in memory, for the API's device reads. A
    process that answers none (`cityops gateway`, `rules`, `prober`, `notifier`) reads the records
    instead: the copy costs ~1 KiB per device and a full reload every `registry_refresh_s`
    (1.1 s of CPU with 100,000 devices), which the gateway's hot loop would share its core with.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(settings.database_url, settings.data_dir))
    if migrate_schema:
        await asyncio.to_thread(migrate, engine)
    else:
        await asyncio.to_thread(require_current, engine)
    records: SqlDevices = SqlDevices(engine)
    devices: DeviceRegistry = records
    if cache_devices:
        devices = cached = CachedDevices(records, settings.registry_refresh_s)
        await cached.load()
    dead, tokens = SqlDeadLetters(engine), TokenStore(engine)
    # `is not None`: an empty SecretStr is falsy, and an empty token must be refused, not ignored.
    admin_secret = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
    admin = await tokens.ensure_admin(settings.data_dir / "admin.token", admin_secret, clock.now_ms())
    city = _city(settings)
    if city is not None:
        await devices.upsert_many(city.all_devices())
    runtime = Runtime(
        settings,
        clock,
        engine,
        devices,
        dead,
        tokens,
        SqlIncidents(engine),
        make_bus(settings),
        make_live(settings),
        make_series(settings),
        admin,
        city,
    )
    if isinstance(devices, CachedDevices):
        devices.follow(runtime.bus)
    runtime.cameras = CameraCatalog(SqlCameras(engine), runtime.bus, clock)
    await runtime.cameras.start()
    runtime.snapshots = make_snapshots(settings)
    runtime.live_views = LiveViews(LiveOptions(max_remuxes=settings.live_max_remuxes, idle_s=settings.live_idle_s))
    runtime.tickets = SqlTickets(engine)
    runtime.notify = SqlNotify(engine)
    if tickets:
        await start_tickets(runtime)
        await start_wall(runtime)
        if settings.notify_enabled:
            await start_notifier(runtime)
    if rules:
        await start_rules(runtime)
    if watch and settings.watch_cameras:
        await start_watch(runtime)
    if not ingest:
        runtime.roles = tuple(r for r, on in (("rules", rules), ("prober", watch)) if on) or ("api",)
        return runtime
    runtime.roles = ("gateway", *(r for r, on in (("rules", rules), ("prober", watch)) if on))
    runtime.gateway = gateway = _gateway(runtime)
    if settings.embedded_broker:
        runtime.broker = EmbeddedBroker("127.0.0.1", settings.mqtt_port)
        await runtime.broker.start()
    await gateway.start()
    runtime.ingress = PahoIngress(
        runtime.mqtt_target(),
        settings.mqtt_client_id,
        subscription_topics(settings.mqtt_shared_group),
        gateway.handle,
        backlogged=gateway.backlogged,
        # amqtt speaks MQTT 3.1.1 only.
        protocol="3.1.1" if settings.embedded_broker else settings.mqtt_protocol,
        session_expiry_s=settings.mqtt_session_expiry_s,
    )
    await runtime.ingress.start()
    if not await runtime.ingress.wait_subscribed(10.0):
        log.warning("MQTT broker not reached within 10 s; the gateway keeps trying")
    return runtime


async def _bounded(step: Awaitable[None], name: str, timeout_s: float = 15.0) -> None:
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.error("%s did not finish within %g s; stopping the rest", name, timeout_s)


async def stop_runtime(runtime: Runtime, write_timeout_s: float | None = None) -> None:
    """Stop in reverse order: take no more messages, write (and acknowledge) what was taken,
    then disconnect; the stores close last."""
    if runtime.ingress is not None:
        runtime.ingress.stop_reading()
    if runtime.gateway is not None:
        await runtime.gateway.stop(write_timeout_s or runtime.settings.shutdown_write_timeout_s)
    if runtime.ingress is not None:
        await runtime.ingress.stop()
    if runtime.rules_engine is not None:
        await runtime.rules_engine.stop()
    for ticket_part in (
        runtime.notifier,
        runtime.wall,
        runtime.incident_tickets,
        runtime.ticket_scheduler,
        runtime.desk,
    ):
        if ticket_part is not None:
            await _bounded(ticket_part.stop(), f"{type(ticket_part).__name__}.stop")
    if runtime.notify_wake is not None:
        await runtime.notify_wake.close()
    if runtime.http_client is not None:
        await runtime.http_client.aclose()
    if runtime.broker is not None:
        await runtime.broker.stop()
    # The video parts, each bounded: a stream that hangs must not hold the process's stop.
    video_parts = (runtime.watch, runtime.cameras)
    for part in video_parts:
        if part is not None:
            await _bounded(part.stop(), f"{type(part).__name__}.stop")
    if runtime.snapshots is not None:
        await _bounded(runtime.snapshots.close(), "snapshots.close")
    if runtime.live_views is not None:
        await _bounded(runtime.live_views.close(), "live_views.close")
    if isinstance(runtime.devices, CachedDevices):
        await runtime.devices.stop()
    await runtime.series.close()
    await runtime.live.close()
    await runtime.bus.close()
    runtime.engine.dispose()
