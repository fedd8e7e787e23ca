"""One settings model, built once in main() and passed down.

Precedence: command-line options, then CITYOPS_* environment variables, then the `settings:`
section of the city config file, then the defaults below.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from kernel.errors import ConfigError

# Passwords that ship in examples; production must not run with them.
DEFAULT_SECRETS = frozenset({"change-me", "changeme", "password", "postgres", "cityops", "admin", "secret"})


class Settings(BaseSettings):
    """Everything a cityops process can be told."""

    # hide_input_in_errors: a refused setting must not print the URL (and its password) it was given.
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", extra="forbid", hide_input_in_errors=True)

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("./data")
    config_file: Path | None = None
    demo: bool = False

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    # One log line per HTTP request (uvicorn's access log); off by default, see cli._uvicorn_config.
    http_access_log: bool = False

    # Embedded broker port; unused when mqtt_url is set.
    # The event loop of the long-lived processes: uvloop, or the standard one (to compare, or to debug).
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    mqtt_port: int = Field(default=1883, ge=0, le=65535)
    mqtt_url: str | None = None
    mqtt_client_id: str = "cityops-gateway"
    # When set, the gateway subscribes through $share/<group>/... so several processes split the load.
    mqtt_shared_group: str | None = None
    # MQTT v5 lets the gateway announce a wide in-flight window (it acknowledges after the write);
    # 3.1.1 is for brokers that speak nothing newer. The embedded amqtt broker always uses 3.1.1.
    mqtt_protocol: Literal["3.1.1", "5"] = "5"
    # How long the broker keeps the gateway's session (and queues for it) while it is away.
    mqtt_session_expiry_s: int = Field(default=7 * 86_400, ge=60)
    # CA bundle for mqtts:// with a private CA.
    mqtt_ca_file: Path | None = None

    # With a Redis URL, live state and the event bus are in Redis: processes can be split.
    redis_url: str | None = None
    # Bus work streams keep at most this many entries (of up to 200 events each) per topic; a
    # consumer group further behind loses its oldest unread entries (health shows it).
    bus_stream_max_entries: int = Field(default=10_000, ge=10)
    # A consumer's unacknowledged events go to another consumer of its group after this long.
    bus_claim_idle_s: float = Field(default=30.0, gt=0)
    # Key prefix in Redis, so that several cities (or tests) can share one server.
    redis_prefix: str = "cityops:"
    influx_url: str | None = None
    influx_database: str = "cityops"
    database_url: str | None = None

    admin_token: SecretStr | None = None

    # Gateway batching: readings are written to live state and the time series in batches.
    ingest_batch_max: int = Field(default=5000, ge=1)
    ingest_flush_interval_s: float = Field(default=0.05, gt=0)
    # Readings held in memory before the MQTT reader pauses (backpressure onto the broker).
    ingest_pending_max: int = Field(default=200_000, ge=100)
    # Statuses or dead letters waiting for their store before the reader pauses.
    ingest_side_pending_max: int = Field(default=10_000, ge=10)
    influx_batch_size: int = Field(default=5000, ge=1)

    # Dead-letter retention: a flood of junk cannot fill the disk; counts by reason stay exact.
    dead_letter_max_rows: int = Field(default=10_000, ge=10)
    dead_letter_max_age_days: float = Field(default=7.0, gt=0)

    registry_refresh_s: float = Field(default=30.0, gt=0)
    # How often the rules engine looks at the time (silence, escalation by time unacknowledged).
    rules_tick_s: float = Field(default=1.0, gt=0)
    # One `cityops rules` process evaluates at a time, holding a lease this long; when it dies a
    # standby takes over within it (and claims what it left unacknowledged after half of it).
    rules_lease_s: float = Field(default=10.0, ge=1)
    # A device sending 3 or more readings behind its newest over this long jumped its clock back
    # (alerts/domain/timeline.py): its rules go on from its new time.
    rules_clock_jump_confirm_s: float = Field(default=60.0, gt=0)
    # Escalation by time left unacknowledged (seconds): critical to tier 2, then 3; high to tier 2.
    escalation_critical_to_tier2_s: float = Field(default=600.0, gt=0)
    escalation_critical_to_tier3_s: float = Field(default=1800.0, gt=0)
    escalation_high_to_tier2_s: float = Field(default=1800.0, gt=0)
    # Alarm hygiene: flapping (raises within a window), flood control (new incidents per grid).
    flap_max: int = Field(default=4, ge=2)
    flap_window_s: float = Field(default=3600.0, gt=0)
    flap_quiet_s: float = Field(default=900.0, gt=0)
    flood_max: int = Field(default=10, ge=2)
    flood_window_s: float = Field(default=600.0, gt=0)
    # The camera watch (video_index/watch.py): liveness probes of every camera, full frame checks
    # round robin, in worker processes.
    watch_cameras: bool = True
    camera_liveness_every_s: float = Field(default=30.0, gt=0)
    camera_liveness_timeout_s: float = Field(default=3.0, gt=0)
    camera_liveness_concurrency: int = Field(default=500, ge=1)
    camera_full_every_s: float = Field(default=300.0, gt=0)
    camera_full_workers: int = Field(default=2, ge=1)
    camera_open_timeout_s: float = Field(default=10.0, gt=0)
    camera_read_timeout_s: float = Field(default=5.0, gt=0)
    # Outages (up-down changes) within a day that make a camera intermittent, and how long it
    # must hold one result to be shown as it is again.
    camera_intermittent_flips: int = Field(default=6, ge=2)
    # Live view: RTSP cameras remuxed to HLS by ffmpeg children, at most this many at once, each
    # stopped once no viewer has asked for anything for `live_idle_s`.
    live_max_remuxes: int = Field(default=8, ge=1)
    live_idle_s: float = Field(default=15.0, gt=0)
    # The demo's camera simulator listens here (0: a free port).
    camera_simulator_port: int = Field(default=0, ge=0, le=65535)
    # Probers sharing the cameras: one silent this long is dropped and its cameras shared out.
    camera_member_ttl_s: float = Field(default=15.0, gt=0)
    camera_settle_s: float = Field(default=7200.0, gt=0)
    # How long a stop waits for the stores to take what was received; what is left then stays
    # unacknowledged, and the broker delivers it again to the next gateway.
    shutdown_write_timeout_s: float = Field(default=30.0, gt=0)

    simulate_rate: float = Field(default=20.0, gt=0)

    # The hotline ticket flow (hotline/): deadlines in the city's time zone, counted in working
    # days of the official calendar; past the calendar package's data, these holidays and make-up
    # working days (调休) as the State Council publishes them each November.
    timezone: str = "Asia/Shanghai"
    calendar_holidays: list[date] = Field(default_factory=list)
    calendar_workdays: list[date] = Field(default_factory=list)
    # The scheduler's pass over deadlines, its lease (one process acts), and how long before a
    # deadline the department is reminded.
    tickets_tick_s: float = Field(default=10.0, gt=0)
    tickets_lease_s: float = Field(default=30.0, ge=1)
    tickets_remind_before_s: float = Field(default=86_400.0, ge=0)
    # High and critical incidents become tickets (CONTRACT.md); false leaves tickets to people.
    tickets_from_incidents: bool = True
    # The wall's WebSocket: at most this many updates a second per entity, KPI tiles this often.
    wall_per_entity_hz: float = Field(default=4.0, gt=0, le=100)
    wall_kpi_every_s: float = Field(default=5.0, gt=0)
    # Map tiles under the wall's grids, from a tile server inside the center's network, e.g.
    # http://tiles.city.local/{z}/{x}/{y}.png (XYZ, Web Mercator). Unset: the grids alone.
    wall_tile_url: str | None = None

    # Notifications (issue 12): the notifier runs in API processes (and `cityops notifier`).
    notify_enabled: bool = True
    # Where people's phones reach the center: the acknowledgement links in messages start with
    # it (default http://HTTP_HOST:HTTP_PORT, fine on one machine, not for phones).
    public_url: str | None = None
    notify_poll_s: float = Field(default=0.2, gt=0, le=60)
    # A worker that dies mid-send leaves its notification to another after this long.
    notify_lease_s: float = Field(default=30.0, ge=1)
    notify_send_timeout_s: float = Field(default=10.0, gt=0)
    notify_max_attempts: int = Field(default=6, ge=1, le=100)
    notify_backoff_s: float = Field(default=5.0, gt=0)
    notify_concurrency: int = Field(default=20, ge=1, le=1000)
    # At most this many messages to one person on one channel per window; more wait in a digest.
    notify_max_per_window: int = Field(default=5, ge=1)
    notify_window_s: float = Field(default=600.0, gt=0)
    notify_link_ttl_s: float = Field(default=86_400.0, gt=0)
    notify_repeat_check_s: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _known_timezone(self) -> Settings:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA time zone") from exc
        if self.notify_send_timeout_s >= self.notify_lease_s:
            raise ValueError(
                "notify_send_timeout_s must be shorter than notify_lease_s (a send outliving its lease is sent twice)"
            )
        if self.public_url is not None:
            public = urlsplit(self.public_url)
            if public.scheme not in ("http", "https") or not public.netloc:
                raise ValueError("public_url must be an http(s) URL such as https://ops.city.gov.cn")
        if self.wall_tile_url is not None:
            tile = urlsplit(self.wall_tile_url)
            if tile.scheme not in ("http", "https") or not tile.netloc:
                raise ValueError("wall_tile_url must be an http(s) URL")
            missing = [p for p in ("{z}", "{x}", "{y}") if p not in self.wall_tile_url]
            if missing:
                raise ValueError(f"wall_tile_url must hold {', '.join(missing)} (an XYZ tile template)")
        both = set(self.calendar_holidays) & set(self.calendar_workdays)
        if both:
            raise ValueError(f"{min(both).isoformat()} is both a calendar holiday and a working day")
        return self

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if self.environment != "production":
            return self
        if not self.database_url:
            raise ValueError("production needs CITYOPS_DATABASE_URL (PostgreSQL); SQLite is the embedded default")
        for name in ("database_url", "redis_url", "influx_url", "mqtt_url"):
            url = getattr(self, name)
            if url and (urlsplit(url).password or "") in DEFAULT_SECRETS:
                raise ValueError(f"{name} uses a default password; set a real secret in production")
        if self.admin_token is not None and (
            self.admin_token.get_secret_value() in DEFAULT_SECRETS or len(self.admin_token.get_secret_value()) < 24
        ):
            raise ValueError("admin_token is a default or shorter than 24 characters")
        return self

    @property
    def embedded_broker(self) -> bool:
        return self.mqtt_url is None


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The whole city config file as a mapping (empty when there is none)."""
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at its top")
    return loaded


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: options given here, then environment, then the config file."""
    section = read_config_file(config_file).get("settings") or {}
    if not isinstance(section, dict):
        raise ConfigError("the config file's `settings` must be a mapping")
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        given["config_file"] = config_file

    class _Layered(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                InitSettingsSource(settings_cls, init_kwargs=given),
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=section),
            )

    try:
        layered = _Layered()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return Settings.model_construct(**dict(layered))
