"""The `cityops` command: run, migrate, gateway, rules, api, cameras, events, health, simulate,
report, verify."""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from datetime import date
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from kernel.clock import SystemClock
from kernel.errors import CityOpsError, ConfigError
from kernel.events import TOPICS, to_json_dict
from kernel.redact import install_log_redaction, redact_text
from kernel.settings import Settings, load_settings
from video_index.simulator import CameraSimulator, FfmpegStreams

from .city import demo_city_path, load_city
from .runtime import Runtime, load_city_cameras, make_bus, mqtt_target, start_notifier, start_runtime, stop_runtime
from .simulator import SCENARIOS, CitySimulation, SimulatorThread

log = logging.getLogger("cityops")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cityops", description="City operations command center")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the command center (embedded default unless server URLs are set)")
    run.add_argument("--demo", action="store_true", default=None, help="load the demo city and simulate it")
    run.add_argument("--config", type=Path, help="city config file (YAML)")
    run.add_argument("--data-dir", type=Path)
    run.add_argument("--http-host")
    run.add_argument("--http-port", type=int)
    run.add_argument("--mqtt-port", type=int)

    rep = sub.add_parser("report", help="write the leaders' report: KPIs and hot spots as CSV and an HTML page")
    rep.add_argument("--period", choices=["day", "week", "month"], required=True)
    rep.add_argument("--date", type=date.fromisoformat, help="a day in the period (default: today)")
    rep.add_argument("--out", type=Path, help="directory to write into (default ./reports/PERIOD-START)")
    rep.add_argument("--config", type=Path)
    rep.add_argument("--data-dir", type=Path)

    ver = sub.add_parser("verify", help="check a ticket slip's verification code (exit 1 when forged)")
    ver.add_argument("code")
    ver.add_argument("--config", type=Path)
    ver.add_argument("--data-dir", type=Path)

    api = sub.add_parser("api", help="run only the HTTP API and wall (a production process)")
    api.add_argument("--config", type=Path)
    api.add_argument("--data-dir", type=Path)
    api.add_argument("--http-host")
    api.add_argument("--http-port", type=int)

    gw = sub.add_parser("gateway", help="run only the MQTT gateway (a production process)")
    gw.add_argument("--config", type=Path)
    gw.add_argument("--data-dir", type=Path)
    gw.add_argument("--http-host", help="where its health endpoint listens (default 127.0.0.1)")
    gw.add_argument(
        "--health-port", type=int, default=None, help="serve GET /api/health on this port (for docker-compose)"
    )

    rules = sub.add_parser("rules", help="run only the rules engine (a production process; several share the stream)")
    rules.add_argument("--config", type=Path)
    rules.add_argument("--data-dir", type=Path)
    rules.add_argument("--http-host", help="where its health endpoint listens (default 127.0.0.1)")
    rules.add_argument("--health-port", type=int, default=None, help="serve GET /api/health on this port")

    prober = sub.add_parser(
        "prober", help="run only the camera watch (a production process; several share the cameras)"
    )
    prober.add_argument("--config", type=Path)
    prober.add_argument("--data-dir", type=Path)
    prober.add_argument("--http-host", help="where its health endpoint listens (default 127.0.0.1)")
    prober.add_argument("--health-port", type=int, default=None, help="serve GET /api/health on this port")

    notifier = sub.add_parser(
        "notifier",
        help="run only the notifier (a production process; API processes run one too; several share the work)",
    )
    notifier.add_argument("--config", type=Path)
    notifier.add_argument("--data-dir", type=Path)
    notifier.add_argument("--http-host", help="where its health endpoint listens (default 127.0.0.1)")
    notifier.add_argument("--health-port", type=int, default=None, help="serve GET /api/health on this port")

    mig = sub.add_parser("migrate", help="bring the records database's schema up to date (run once, before the others)")
    mig.add_argument("--config", type=Path)
    mig.add_argument("--data-dir", type=Path)

    ev = sub.add_parser(
        "events",
        help="consume bus events as a member of a consumer group and print them as JSON lines (needs Redis)",
    )
    ev.add_argument("--config", type=Path)
    ev.add_argument("--data-dir", type=Path)
    ev.add_argument("--group", required=True, help="consumer group: its members share the events")
    ev.add_argument("--name", required=True, help="this consumer's name in the group (keep it across restarts)")
    ev.add_argument("--topic", action="append", choices=TOPICS, required=True, help="repeat for several")
    ev.add_argument("--claim-idle-s", type=float, help="take over a dead member's events after this long")
    ev.add_argument("--slow-ms", type=float, default=0.0, help="pause per entry (to watch a slow consumer)")

    cams = sub.add_parser("cameras", help="the camera catalog")
    cams_sub = cams.add_subparsers(dest="cameras_command", required=True)
    imp = cams_sub.add_parser("import", help="import a CSV or JSON camera list (through a running center if any)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--config", type=Path)
    imp.add_argument("--data-dir", type=Path)
    imp.add_argument("--url", help="the command center's API (default: http://HTTP_HOST:HTTP_PORT)")
    imp.add_argument("--token", help="an admin or operator token (default: the data dir's admin token)")

    health = sub.add_parser("health", help="exit 0 when a cityops process's health is ok, 1 otherwise")
    health.add_argument("--url", default="http://127.0.0.1:8000/api/health")
    health.add_argument("--timeout", type=float, default=5.0)

    sim = sub.add_parser("simulate", help="publish a simulated city to an MQTT broker")
    sim.add_argument("--mqtt-url", required=True, help="mqtt://host:port")
    sim.add_argument("--rate", type=float, default=20.0, help="messages per second (default 20)")
    sim.add_argument("--config", type=Path, help="city config (default: the demo city)")
    sim.add_argument("--scenario", action="append", choices=SCENARIOS, default=[], help="trigger at start")
    sim.add_argument("--duration", type=float, help="seconds to run (default: until stopped)")
    sim.add_argument("--qos", type=int, choices=(0, 1), default=1)
    return parser


def _dump_tasks_on_sigusr1() -> None:
    """`kill -USR1 PID` logs every asyncio task's stack: what a stuck process waits for."""

    def dump() -> None:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(limit=8, file=out)
        log.warning("asyncio tasks on SIGUSR1:\n%s", out.getvalue())

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)


def _quiet_signals() -> None:
    # uvicorn re-raises the signal it caught once it has shut down; with these in place that
    # re-raise is harmless, so our own shutdown (flushing the gateway) runs to the end.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)


GC_YOUNG_THRESHOLD = 50_000


def _settle_memory() -> None:
    """Move what start-up built (the device registry, the city, modules) out of the collector's sight.

    The gateway allocates a few objects per message, and every full collection walks what start-up
    left behind again. Measured with 100,000 registered devices, 100,000 readings drained (MQTT
    3.1.1, alternating runs): 11.8-12.1 s of gateway CPU with the freeze against 12.4-14.7 s without.
    Frozen objects are never collected, which suits what lives as long as the process.

    The young generation's threshold is raised from 700 to 50,000 allocations: an API answering
    thousands of requests a second triggered a full collection several times a second, each 30-200 ms
    with the demo city loaded, and every request in flight waited it out (bench/api: p99 of a device
    read near 1 s with p50 at 45 ms). Fewer, larger young collections stay short.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


async def _serve(settings: Settings, *, ingest: bool = True) -> None:
    _dump_tasks_on_sigusr1()
    # `run` is the all-in-one: it brings its own database's schema up to date; `api` is one
    # production process among several and needs `cityops migrate` to have run.
    runtime = await start_runtime(
        settings, SystemClock(), ingest=ingest, rules=ingest, migrate_schema=ingest, watch=ingest, tickets=True
    )
    cameras: CameraSimulator | None = None
    streams: FfmpegStreams | None = None
    if settings.demo and runtime.city is not None and ingest:
        runtime.simulator = SimulatorThread(CitySimulation(runtime.city), runtime.mqtt_target(), settings.simulate_rate)
        runtime.simulator.start()
        cameras = CameraSimulator(port=settings.camera_simulator_port)
        await cameras.start()
        streams = FfmpegStreams(cameras)
        await streams.start()
    if runtime.city is not None and ingest:
        log.info("%d cameras of the city in the catalog", await load_city_cameras(runtime, cameras, streams))
    from .api import build_app  # the API pulls in FastAPI; only `run` needs it

    app = build_app(runtime)
    _settle_memory()  # after everything start-up builds: the city, its cameras, the app
    server = uvicorn.Server(_uvicorn_config(app, settings.http_host, settings.http_port, settings.http_access_log))
    log.info(
        "wall on http://%s:%d/  admin token in %s",
        settings.http_host,
        settings.http_port,
        settings.data_dir / "admin.token",
    )
    _quiet_signals()
    try:
        await server.serve()
    finally:
        if runtime.simulator is not None:
            await asyncio.to_thread(runtime.simulator.stop)
        await stop_runtime(runtime)
        if streams is not None:
            await streams.stop()
        if cameras is not None:
            await cameras.stop()
        log.info("stopped cleanly")


def _run_loop(settings: Settings, main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process on uvloop (by default): socket reads and callbacks cost less.

    `event_loop = "asyncio"` keeps the standard loop (bench/peers measures both).
    """
    if settings.event_loop == "asyncio":
        asyncio.run(main)
    else:
        uvloop.run(main)


def _uvicorn_config(app: Any, host: str, port: int, access_log: bool) -> uvicorn.Config:
    # log_config=None: uvicorn's loggers (its access log included) go through our root handler,
    # whose filter redacts tokens in query strings and passwords in URLs. The access log is off
    # unless asked for: a line per request, formatted and redacted, cost a fifth of a device read
    # under load (bench/api); refusals and errors are logged either way.
    return uvicorn.Config(
        app, host=host, port=port, lifespan="off", log_level="info", log_config=None, access_log=access_log
    )


async def _gateway_only(settings: Settings, health_port: int | None) -> None:
    runtime = await start_runtime(settings, SystemClock(), cache_devices=False)
    _settle_memory()
    try:
        await _serve_until_stopped(runtime, settings, health_port)
    finally:
        await stop_runtime(runtime)
        if runtime.gateway is not None:
            log.info("gateway stopped cleanly: %s", runtime.gateway.stats())


async def _events(settings: Settings, args: argparse.Namespace) -> None:
    """Print each event once processed, then acknowledge it: at-least-once, as any consumer."""
    if not settings.redis_url:
        raise ConfigError("`cityops events` reads the Redis bus: set CITYOPS_REDIS_URL")
    bus = make_bus(settings)
    consumer = bus.consumer(args.group, args.name, args.topic, claim_idle_s=args.claim_idle_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out = sys.stdout
    try:
        while not stop.is_set():
            for item in await consumer.read(count=10, block_s=0.5):
                for event in item.events:
                    line = {"topic": item.topic, "entry": item.id, "redelivered": item.redelivered}
                    out.write(json.dumps({**line, "event": to_json_dict(event)}, ensure_ascii=False) + "\n")
                out.flush()
                if args.slow_ms:
                    await asyncio.sleep(args.slow_ms / 1000)
                await consumer.ack([item])
    finally:
        await consumer.close()
        await bus.close()


def _migrate(settings: Settings) -> int:
    from kernel.db import database_url, make_engine

    from .schema import migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url(settings.database_url, settings.data_dir))
    try:
        before, after = migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"schema already at {after}")
    else:
        print(f"schema at {after} (was {before or 'empty'})")
    return 0


async def _rules_only(settings: Settings, health_port: int | None) -> None:
    if not settings.redis_url:
        raise ConfigError("`cityops rules` reads the Redis bus: set CITYOPS_REDIS_URL (or use `cityops run`)")
    runtime = await start_runtime(settings, SystemClock(), ingest=False, rules=True, cache_devices=False)
    _settle_memory()
    try:
        await _serve_until_stopped(runtime, settings, health_port)
    finally:
        await stop_runtime(runtime)
        if runtime.rules_engine is not None:
            log.info("rules engine stopped cleanly: %s", runtime.rules_engine.stats())


async def _prober_only(settings: Settings, health_port: int | None) -> None:
    if not settings.redis_url:
        raise ConfigError("`cityops prober` shares the cameras over the Redis bus: set CITYOPS_REDIS_URL")
    runtime = await start_runtime(settings, SystemClock(), ingest=False, watch=True, cache_devices=False)
    try:
        await _serve_until_stopped(runtime, settings, health_port)
    finally:
        await stop_runtime(runtime)
        if runtime.watch is not None:
            log.info("camera watch stopped cleanly: %s", runtime.watch.stats())


async def _notifier_only(settings: Settings, health_port: int | None) -> None:
    runtime = await start_runtime(settings, SystemClock(), ingest=False, cache_devices=False)
    try:
        await start_notifier(runtime)
        await _serve_until_stopped(runtime, settings, health_port)
    finally:
        await stop_runtime(runtime)
        if runtime.notifier is not None:
            log.info("notifier stopped cleanly: %s", runtime.notifier.counts)


async def _serve_until_stopped(runtime: Runtime, settings: Settings, health_port: int | None) -> None:
    """Wait for SIGTERM/SIGINT, serving GET /api/health on `health_port` meanwhile if given."""
    if health_port is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return
    # uvicorn serves the health endpoint and returns on SIGTERM/SIGINT, as in `run`.
    from .api import build_health_app

    server = uvicorn.Server(
        _uvicorn_config(build_health_app(runtime), settings.http_host, health_port, settings.http_access_log)
    )
    _quiet_signals()
    await server.serve()


def _health(url: str, timeout_s: float) -> int:
    import httpx

    try:
        answer = httpx.get(url, timeout=timeout_s)
        status = answer.json().get("status")
    except (httpx.HTTPError, ValueError) as exc:
        print(f"cityops health: {url} did not answer: {type(exc).__name__}", file=sys.stderr)
        return 1
    print(status)
    return 0 if answer.status_code == 200 and status == "ok" else 1


def _simulate(args: argparse.Namespace) -> None:
    settings = load_settings(None, mqtt_url=args.mqtt_url)
    city = load_city(args.config or demo_city_path())
    simulation = CitySimulation(city)
    thread = SimulatorThread(simulation, mqtt_target(settings, 1883), args.rate, qos=args.qos)
    thread.start()
    for scenario in args.scenario:
        log.info("scenario %s on %s", scenario, thread.trigger(scenario))
    stopping = {"now": False}

    def _stop(*_: Any) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    while not stopping["now"] and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.1)
    thread.stop()
    log.info("published %d messages", thread.published)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cityops` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    # amqtt logs every connection and state-machine step at INFO; the operator needs its warnings.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "simulate":
            _simulate(args)
            return 0
        if args.command == "health":
            return _health(args.url, args.timeout)
        settings = load_settings(
            args.config,
            data_dir=args.data_dir,
            demo=getattr(args, "demo", None),
            http_host=getattr(args, "http_host", None),
            http_port=getattr(args, "http_port", None),
            mqtt_port=getattr(args, "mqtt_port", None),
        )
        if args.command == "events":
            asyncio.run(_events(settings, args))
            return 0
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "report":
            from .hotline_cli import report

            return report(settings, args.period, args.date, args.out)
        if args.command == "verify":
            from .hotline_cli import verify

            return verify(settings, args.code)
        if args.command == "cameras":
            from .cameras_cli import import_cameras

            return import_cameras(settings, args.file, args.url, args.token)
        if args.command == "gateway":
            _run_loop(settings, _gateway_only(settings, args.health_port))
        elif args.command == "rules":
            _run_loop(settings, _rules_only(settings, args.health_port))
        elif args.command == "prober":
            _run_loop(settings, _prober_only(settings, args.health_port))
        elif args.command == "notifier":
            _run_loop(settings, _notifier_only(settings, args.health_port))
        else:
            _run_loop(settings, _serve(settings, ingest=args.command == "run"))
    except CityOpsError as exc:
        print(f"cityops: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
