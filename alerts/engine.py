"""The rules engine service: the bus's work stream in, incidents out (records and bus).

It reads readings, positions, device statuses and device changes as a member of the consumer
group `rules` (several `cityops rules` processes share the stream), evaluates every rule with the
pure code of `domain/`, and records each Raise or Clear as an incident change in one transaction
with its history; the incident store keeps one open incident per rule and subject, so two
processes never open the same incident twice. An entry is acknowledged once all its events are
processed; a failure retries the same entry (evaluation is idempotent: a reading not newer than
the last one judged changes nothing).

State survives a restart without firing: threshold levels, silences and zones are rebuilt from
the open incidents, and silence is counted from the moment watching began. States follow the
incident events of other rules processes (a raise or a clear made elsewhere), and a device that
looks silent here is checked against the shared live state before it is called silent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kernel.clock import Clock
from kernel.errors import StoreError
from kernel.events import (
    CAMERA_STATUS,
    DEVICE_CHANGED,
    DEVICE_STATUS,
    INCIDENT_CHANGED,
    POSITION,
    READING,
    RULE_CHANGED,
    SILENCE_CHANGED,
    CameraStatusChanged,
    DeviceChanged,
    Event,
    IncidentChanged,
    RuleChanged,
    SilenceChanged,
)
from kernel.model import Device, DeviceStatus, Position, Reading, expected_interval_s
from kernel.ports import Bus, DeviceRegistry, LiveState, TimeSeries

from .domain.evaluate import (
    Change,
    Clear,
    CorrelationState,
    LevelState,
    PreparedZone,
    Problem,
    Raise,
    SilenceState,
    ZoneState,
    correlation_step,
    in_scope,
    open_levels,
    prepare_zones,
    silence_seen,
    silence_status,
    silence_tick,
    threshold_step,
    thresholds,
    zone_step,
)
from .domain.hygiene import HygienePolicy, Silence, area_raise, flooded, is_flapping, recent, silenced
from .domain.incidents import EscalationPolicy, HistoryEntry, Incident, escalate_by_time, resolve
from .domain.replay import replay
from .domain.rules import (
    AnyRule,
    CameraOfflineRule,
    CorrelationRule,
    CorridorRule,
    CountRule,
    DurationRule,
    DwellRule,
    LatLon,
    ProjectionRule,
    RateRule,
    SilenceRule,
    SpeedRule,
    ThresholdRule,
    ZoneRule,
    ZoneShape,
)
from .domain.series import SeriesState, count_step, duration_step, projection_step, rate_step
from .domain.timeline import JUMP_CONFIRM_MS, Timeline, timeline_step
from .domain.vehicles import (
    CameraState,
    Route,
    VehicleState,
    camera_status_step,
    camera_tick,
    corridor_step,
    dwell_step,
    make_route,
    speed_step,
)

log = logging.getLogger(__name__)

GROUP = "rules"
_NORMAL = LevelState()
_THRESHOLD, _SILENCE, _CORRELATION, _READINGS, _OTHER = range(5)
_EMPTY_SERIES = SeriesState()
_STILL = VehicleState()
_CAMERA_OK = CameraState()
# How long an incident a person resolved while its condition held keeps its rule raised across a
# restart (in a running engine: until the condition ends; after a week it may be raised again).
_HELD_BY_PERSON_MS = 7 * 86_400_000
_WINDOWED = (RateRule, ProjectionRule, DurationRule, CountRule, DwellRule)


def _span_ms(rule: AnyRule) -> int:
    """How far back a rule's state reaches: its window; or twice the time its condition must hold
    (read from an empty state, a condition holding all along must be seen to hold that long)."""
    if isinstance(rule, DurationRule):
        return int(rule.for_s * 2000)
    if isinstance(rule, DwellRule):
        return int(rule.max_s * 2000)
    return int(getattr(rule, "window_s", 0) * 1000)


def _raised(state: SeriesState) -> bool:
    return state.raised


def _flagged(state: VehicleState) -> bool:
    return state.flagged


def _dwell_in(zones: Sequence[PreparedZone]) -> Callable[..., tuple[VehicleState, list[Change]]]:
    def step(rule: DwellRule, state: VehicleState, fix: Position, device: Device) -> tuple[VehicleState, list[Change]]:
        return dwell_step(rule, zones, state, fix, device)

    return step


_SERIES_STEPS: dict[type[Any], Callable[..., tuple[SeriesState, list[Change]]]] = {
    RateRule: rate_step,
    ProjectionRule: projection_step,
    DurationRule: duration_step,
    CountRule: count_step,
}
# Per device: (which kind of rule, the rule, its state key, a threshold rule's levels for the
# device). The rule is typed Any: the kind code says what it is, and the hot path skips isinstance.
Plan = list[tuple[int, Any, tuple[str, str], Any]]
_QUIET = SilenceState()
_NO_HITS = CorrelationState()


class IncidentStore(Protocol):
    """What the engine needs of the incident records (SqlIncidents)."""

    async def raised(self, raise_: Raise, category: str) -> tuple[Incident, bool]: ...

    async def correlated(
        self, raise_: Raise, category: str, member_rules: list[str]
    ) -> tuple[Incident, list[Incident]]: ...

    async def cleared(self, clear: Clear, resolve: Any) -> Incident | None: ...

    async def act(self, incident_id: str, action: Any) -> Incident | None: ...

    async def open_incidents(self) -> list[Incident]: ...

    async def resolved_since(self, since_ms: int, rule_ids: Sequence[str]) -> list[Incident]: ...


def incident_event(incident: Incident, change: str) -> IncidentChanged:
    return IncidentChanged(
        id=incident.id,
        change=change,
        rule_id=incident.rule_id,
        category=incident.category,
        severity=incident.severity,
        escalation_tier=incident.escalation_tier,
        status=incident.status,
        title=incident.title,
        opened_at_ms=incident.opened_at_ms,
        updated_at_ms=incident.updated_at_ms,
        resolved_at_ms=incident.resolved_at_ms,
        lat=incident.lat,
        lon=incident.lon,
        grid_id=incident.grid_id,
        device_ids=incident.device_ids,
        camera_ids=incident.camera_ids,
        ticket_id=incident.ticket_id,
        subject=incident.subject,
    )


@dataclass(frozen=True, slots=True)
class EngineOptions:
    group: str = GROUP
    name: str = field(default_factory=lambda: f"rules-{socket.gethostname()}-{os.getpid()}")
    tick_s: float = 1.0
    escalation_every_s: float = 5.0
    claim_idle_s: float | None = None
    # One process evaluates at a time (see the module's docstring); a standby takes over within this.
    lease_s: float = 10.0
    # A device sending readings behind its newest for this long (3 or more) jumped its clock back.
    clock_jump_confirm_ms: int = JUMP_CONFIRM_MS
    # At most this many points of one device are read back to rebuild its windows on taking over.
    replay_points: int = 10_000


class RulesEngine:
    """Evaluates the rules over the event stream and keeps incidents."""

    def __init__(
        self,
        *,
        bus: Bus,
        store: IncidentStore,
        devices: DeviceRegistry,
        clock: Clock,
        rules: Sequence[AnyRule],
        city_zones: Sequence[ZoneShape] = (),
        city_routes: Mapping[str, Sequence[LatLon]] | None = None,
        policy: EscalationPolicy | None = None,
        live: LiveState | None = None,
        options: EngineOptions | None = None,
        reload_rules: Callable[[], Awaitable[Sequence[AnyRule]]] | None = None,
        hygiene: HygienePolicy | None = None,
        load_silences: Callable[[], Awaitable[Sequence[Silence]]] | None = None,
        series: TimeSeries | None = None,
        nearby_cameras: Callable[[float, float], Sequence[str]] | None = None,
    ) -> None:
        self._nearby = nearby_cameras
        self._load_silences = load_silences
        self._history = series
        self._reload_rules = reload_rules
        self._bus = bus
        self._store = store
        self._registry = devices
        self._clock = clock
        self._city_zones = list(city_zones)
        self._city_routes = dict(city_routes or {})
        self._policy = policy or EscalationPolicy()
        self._live = live
        self._opts = options or EngineOptions()
        self._devices: dict[str, Device] = {}
        self._rules: list[AnyRule] = []
        self._zones: dict[str, list[PreparedZone]] = {}
        self._levels: dict[tuple[str, str], LevelState] = {}
        self._silences: dict[tuple[str, str], SilenceState] = {}
        self._zone_states: dict[tuple[str, str], ZoneState] = {}
        self._correlations: dict[str, CorrelationState] = {}
        # Alarm hygiene (domain/hygiene.py): silences, raises they hold back, flapping, floods.
        self._hygiene = hygiene or HygienePolicy()
        self._silence_list: list[Silence] = []
        self._held: dict[tuple[str, str], tuple[AnyRule, Raise]] = {}
        self._open_keys: set[tuple[str, str]] = set()
        self._raise_times: dict[tuple[str, str], list[int]] = {}
        self._flapping: dict[tuple[str, str], str] = {}
        self._flap_last: dict[tuple[str, str], int] = {}
        self._grid_opened: dict[str, list[int]] = {}
        self._series: dict[tuple[str, str], SeriesState] = {}
        self._vehicles: dict[tuple[str, str], VehicleState] = {}
        self._cameras: dict[tuple[str, str], CameraState] = {}
        self._routes: dict[str, Route] = {}
        # Devices in an open correlated incident (device -> incident id), and the rules it takes in.
        self._absorbed: dict[str, str] = {}
        self._members_all: set[str] = set()
        self._in_scope: dict[str, Plan] = {}
        # Each (threshold rule, device)'s levels: the device's attributes read once.
        self._limits: dict[tuple[str, str], list[float] | str] = {}
        # Each device's newest reading or fix time, and the ones behind it (domain/timeline.py).
        self._newest: dict[str, int] = {}
        self._behind: dict[str, Timeline] = {}
        self._started_ms = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._lease = bus.lease(self._opts.group, self._opts.name, self._opts.lease_s)
        self._lead_task: asyncio.Task[None] | None = None
        self._first_round = asyncio.Event()
        self.leading = False
        self.takeovers = 0
        self.replayed: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.events = 0
        self._stopping = False
        self._ticks_done = 0
        self.problems: dict[str, dict[str, str]] = {}
        self.last_error: str | None = None
        self.set_rules(rules)

    # --- rules ---------------------------------------------------------------------------

    def set_rules(self, rules: Sequence[AnyRule]) -> None:
        """Replace the rules (an edit through the API). States of rules that stay are kept."""
        self._rules = [rule for rule in rules if rule.enabled]
        self._in_scope = {}
        self._limits = {}
        self._by_device: dict[str, list[int]] = {}
        self._unnamed: list[int] = []
        for i, rule in enumerate(self._rules):
            if rule.scope.device_ids:
                for device_id in rule.scope.device_ids:
                    self._by_device.setdefault(device_id, []).append(i)
            else:
                self._unnamed.append(i)
        self._order = list(range(len(self._rules)))
        self._zones = {
            r.id: prepare_zones(r, self._city_zones) for r in self._rules if isinstance(r, ZoneRule | DwellRule)
        }
        self._members_all = {m for r in self._rules if isinstance(r, CorrelationRule) for m in self._members(r)}
        ids = {rule.id for rule in self._rules}
        for states in self._keyed_states():
            for key in [k for k in states if k[0] not in ids]:
                del states[key]
        self._routes = {}

    def _members(self, rule: CorrelationRule) -> list[str]:
        """The threshold rules whose incidents a correlation takes in: those on its conditions' kinds."""
        kinds = {condition.kind for condition in rule.conditions}
        return [
            r.id
            for r in self._rules
            if isinstance(r, ThresholdRule) and (not r.scope.kinds or kinds & set(r.scope.kinds))
        ]

    def _keyed_states(self) -> tuple[dict[tuple[str, str], Any], ...]:
        return (self._levels, self._silences, self._zone_states, self._series, self._vehicles, self._cameras)

    @property
    def rules(self) -> list[AnyRule]:
        return list(self._rules)

    def _rule(self, rule_id: str) -> AnyRule | None:
        return next((r for r in self._rules if r.id == rule_id), None)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Stand for the lease and, once it is ours, evaluate; returns after the first attempt
        (with the lease taken if it was free: the embedded default always takes it at once)."""
        self._lead_task = asyncio.create_task(self._lead(), name="rules-lead")
        first = asyncio.ensure_future(self._first_round.wait())
        await asyncio.wait([first, self._lead_task], return_when=asyncio.FIRST_COMPLETED)
        first.cancel()
        if self._lead_task.done():
            self._lead_task.result()  # the takeover failed: raise why

    async def _lead(self) -> None:
        """Take the lease, renew it a few times per time to live; on losing it, stop evaluating."""
        while not self._stopping:
            try:
                held = await self._lease.acquire()
            except StoreError as exc:
                self.last_error = str(exc)
                held = False
            if held and not self.leading:
                try:
                    await self._take_over()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not self._first_round.is_set():
                        raise  # start() says why: the records cannot be read
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("rules: taking over failed; trying again")
                    await self._stand_down()
            elif not held and self.leading:
                log.warning("rules engine %s lost its lease: standing by", self._opts.name)
                await self._stand_down()
            elif not held and not self._first_round.is_set():
                log.info("rules engine %s started: standing by (%s evaluates)", self._opts.name, await self._holder())
            self._first_round.set()
            await asyncio.sleep(self._lease.ttl_s / 4)

    async def _holder(self) -> str | None:
        try:
            return await self._lease.holder()
        except StoreError:
            return None

    async def _take_over(self) -> None:
        """Everything from the records: devices, rules, silences, open incidents, and the windows
        and timers of the last minutes from the time series. Then the stream, where the one before
        stopped (its unacknowledged entries are claimed after half a lease: it has stopped by then)."""
        self._clear_states()
        self._started_ms = self._clock.now_ms()
        self.know_devices(await self._registry.list(limit=10**9))
        if self._reload_rules is not None:
            self.set_rules(await self._reload_rules())
        open_now = await self._store.open_incidents()
        self._open_keys = {(i.rule_id, i.subject) for i in open_now}
        # Resolved by a person while the condition still held (not cleared): in a running engine
        # the rule stays raised until the condition ends, so it is rebuilt raised here too.
        since = self._started_ms - max(_HELD_BY_PERSON_MS, *(_span_ms(r) for r in self._rules))
        resolved = await self._store.resolved_since(
            since, [r.id for r in self._rules if not isinstance(r, CorrelationRule)]
        )
        held: dict[tuple[str, str], Incident] = {}
        for incident in sorted(resolved, key=lambda i: i.resolved_at_ms or 0):
            key = (incident.rule_id, incident.subject)
            if not incident.cleared and key not in self._open_keys:
                held[key] = incident
            elif key in held:
                del held[key]  # a later incident of the same subject cleared
        self._rebuild([*open_now, *held.values()])
        await self.reload_silences()
        await self._replay_history(open_now, resolved, self._started_ms)
        self.leading = True
        self.takeovers += 1
        self._tasks = [
            asyncio.create_task(self._consume(), name="rules-consume"),
            asyncio.create_task(self._ticks(), name="rules-ticks"),
            asyncio.create_task(self._follow(), name="rules-follow"),
        ]
        log.info(
            "rules engine %s started: leading, %d rules, %d devices",
            self._opts.name,
            len(self._rules),
            len(self._devices),
        )

    def _clear_states(self) -> None:
        for states in self._keyed_states():
            states.clear()
        for other in (self._correlations, self._held, self._raise_times, self._flapping, self._flap_last):
            other.clear()
        self._newest.clear()
        self._behind.clear()
        self._grid_opened.clear()
        self._absorbed.clear()

    async def _stand_down(self) -> None:
        self.leading = False
        for task in self._tasks:
            task.cancel()
        # Each loop also ends on `_stopping`; a task that does not stop within 10 s is logged and
        # left behind rather than holding the whole process's shutdown.
        if self._tasks:
            _done, stuck = await asyncio.wait(self._tasks, timeout=10)
            for task in stuck:
                log.error("rules engine task %s did not stop", task.get_name())
        self._tasks = []

    def know_devices(self, devices: Sequence[Device]) -> None:
        """The devices the rules look at (start() loads them from the registry; a replay gives them)."""
        self._devices = {d.id: d for d in devices}
        self._in_scope = {}
        self._limits = {}

    async def stop(self) -> None:
        """Stop evaluating and hand the lease over at once (a standby need not wait it out)."""
        self._stopping = True
        if self._lead_task is not None:
            self._lead_task.cancel()
            await asyncio.wait([self._lead_task], timeout=10)
        await self._stand_down()
        await self._lease.release()

    def _rebuild(self, open_incidents: Sequence[Incident]) -> None:
        """States from the open incidents: nothing open is raised again, nothing is forgotten."""
        for rule in self._rules:
            mine = [i for i in open_incidents if i.rule_id == rule.id]
            if isinstance(rule, ThresholdRule):
                severities = {i.subject: i.severity for i in mine if not i.cleared}
                for subject, state in open_levels(rule, severities).items():
                    self._levels[(rule.id, subject)] = state
            elif isinstance(rule, SilenceRule):
                for i in mine:
                    if not i.cleared:
                        self._silences[(rule.id, i.subject)] = SilenceState(None, silent=True)
            elif isinstance(rule, ZoneRule):
                for i in mine:
                    if not i.cleared:
                        self._zone_states[(rule.id, i.subject)] = ZoneState(inside="?")
            elif isinstance(rule, RateRule | ProjectionRule | DurationRule | CountRule):
                for i in mine:
                    if not i.cleared:
                        self._series[(rule.id, i.subject)] = SeriesState(raised=True)
            elif isinstance(rule, CorridorRule | DwellRule | SpeedRule):
                for i in mine:
                    if not i.cleared:
                        self._vehicles[(rule.id, i.subject)] = VehicleState(flagged=True)
            elif isinstance(rule, CameraOfflineRule):
                for i in mine:
                    if not i.cleared:
                        self._cameras[(rule.id, i.subject)] = CameraState(raised=True)
            else:
                self._correlations[rule.id] = CorrelationState(raised=frozenset(i.subject for i in mine))
                for i in mine:
                    for device_id in i.device_ids:
                        self._absorbed[device_id] = i.id

    async def _replay_history(self, open_now: Sequence[Incident], done: Sequence[Incident], now_ms: int) -> None:
        """Windows and timers (rate, projection, duration, count, dwell) rebuilt from the time series
        over each rule's own span, starting from what the incidents say; then the net change the
        history calls for that no incident records is applied (domain/replay.py): a raise the last
        process never recorded, a clear it never saw. Nothing fires only because we started."""
        rules = [r for r in self._rules if isinstance(r, _WINDOWED)]
        if self._history is None or not rules:
            return
        raised = {(i.rule_id, i.subject) for i in open_now if not i.cleared}
        resolved: dict[tuple[str, str], int] = {}
        for incident in done:
            key = (incident.rule_id, incident.subject)
            resolved[key] = max(resolved.get(key, 0), incident.resolved_at_ms or 0)
        history = self._history
        limit = asyncio.Semaphore(16)

        async def one(device: Device, watching: Sequence[AnyRule]) -> None:
            span = max(_span_ms(r) for r in watching)
            async with limit:
                samples = await history.read(
                    device.id, device.kind, now_ms - span, now_ms + 60_000, self._opts.replay_points
                )
            if not samples:
                return
            for rule in watching:
                key = (rule.id, device.id)
                was = key in raised
                net: Raise | Clear | None
                if isinstance(rule, DwellRule):
                    dwell = _dwell_in(self._zones.get(rule.id, []))
                    vehicle, net = replay(
                        dwell, rule, _STILL, samples, device, Position, raised_now=was, is_raised=_flagged
                    )
                    self._vehicles[key] = vehicle
                else:
                    step = _SERIES_STEPS[type(rule)]
                    series, net = replay(
                        step, rule, _EMPTY_SERIES, samples, device, Reading, raised_now=was, is_raised=_raised
                    )
                    self._series[key] = series
                if net is None or (isinstance(net, Raise) and resolved.get(key, -1) >= net.at_ms):
                    continue  # nothing new, or raised and then resolved by a person since
                self.replayed["raise" if isinstance(net, Raise) else "clear"] += 1
                await self._apply(rule, [net])

        watched = []
        for device in self._devices.values():
            watching = [r for r in rules if in_scope(r.scope, device)]
            if watching:
                watched.append(one(device, watching))
        await asyncio.gather(*watched)
        log.info("rules: windows of %d devices rebuilt from the time series (%s)", len(watched), dict(self.replayed))

    # --- the stream ------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._bus.consumer(
            self._opts.group,
            self._opts.name,
            [READING, POSITION, DEVICE_STATUS, DEVICE_CHANGED, CAMERA_STATUS],
            claim_idle_s=min(self._opts.claim_idle_s or self._opts.lease_s, self._opts.lease_s / 2),
        )
        attempt = 0
        try:
            while not self._stopping:
                if not self._lease.held():
                    # Not renewed in time: another process may take over any moment; do nothing
                    # until the lease loop renews it or stands down.
                    await asyncio.sleep(0.05)
                    continue
                try:
                    for item in await consumer.read(count=20, block_s=1.0):
                        # The same entry again until it is processed: nothing is skipped on a failure.
                        while True:
                            try:
                                await self.handle_many(item.events)
                                break
                            except asyncio.CancelledError:
                                raise
                            except Exception as exc:  # noqa: BLE001 - logged, backed off, retried
                                self.last_error = f"{type(exc).__name__}: {exc}"
                                delay = min(0.1 * 2**attempt, 5.0) * random.uniform(0.8, 1.2)
                                attempt += 1
                                log.warning("rules: processing failed (%s); again in %.1fs", self.last_error, delay)
                                await asyncio.sleep(delay)
                        attempt = 0
                        await consumer.ack([item])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the bus is down: back off and read again
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    delay = min(0.1 * 2**attempt, 5.0) * random.uniform(0.8, 1.2)
                    attempt += 1
                    log.warning("rules: reading the bus failed (%s); again in %.1fs", self.last_error, delay)
                    await asyncio.sleep(delay)
        finally:
            await consumer.close()

    async def handle(self, event: Event) -> None:
        """One event through every rule in scope."""
        await self.handle_many((event,))

    async def handle_many(self, events: Sequence[Event]) -> None:
        """Events in order through every rule in scope (an entry of the stream; the benchmark too).

        Readings take the hot path: evaluated inline, no await unless something changed. A state
        is stored only once its changes are recorded, so a failure retries the same entry and
        makes the same changes (a reading not newer than the last one judged changes nothing).
        """
        devices, plans, levels, silences, correlations = (
            self._devices,
            self._in_scope,
            self._levels,
            self._silences,
            self._correlations,
        )
        step, seen, correlate = threshold_step, silence_seen, correlation_step
        newest = self._newest
        self.events += len(events)
        # Silence is about hearing from a device: the arrival time counts, not the reading's own
        # time (a backlog of old readings shows the device is alive; it must not raise silence).
        arrived = self._clock.now_ms()
        for event in events:
            if type(event) is not Reading:
                await self._handle_other(event)
                continue
            device = devices.get(event.device_id)
            if device is None:
                self.counts["unknown_device"] += 1
                continue
            if event.ts_ms > newest.get(device.id, -1):
                newest[device.id] = event.ts_ms
                if device.id in self._behind:
                    del self._behind[device.id]
            elif event.ts_ms < newest[device.id]:
                self._behind_newest(device.id, event.ts_ms, arrived)
            plan = plans.get(device.id)
            if plan is None:
                plan = plans[device.id] = self._plan(device)
            for code, rule, key, held in plan:
                if code == _THRESHOLD:
                    level, changes = step(rule, levels.get(key, _NORMAL), event, device, held)
                    if changes:
                        await self._apply(rule, changes)
                    levels[key] = level
                elif code == _SILENCE:
                    silence, changes = seen(rule, silences.get(key, _QUIET), device, arrived)
                    if changes:
                        await self._apply(rule, changes)
                    silences[key] = silence
                elif code == _CORRELATION:
                    corr, changes = correlate(rule, correlations.get(rule.id, _NO_HITS), event, device)
                    if changes:
                        await self._apply(rule, changes)
                    correlations[rule.id] = corr
                elif code == _READINGS:
                    await self._evaluate(rule, event, device)

    async def _handle_other(self, event: Event) -> None:
        if isinstance(event, DeviceChanged):
            await self._device_changed(event)
            return
        if isinstance(event, CameraStatusChanged):
            await self._camera_status(event)
            return
        if not isinstance(event, Position | DeviceStatus):
            return
        device = self._devices.get(event.device_id)
        if device is None:
            self.counts["unknown_device"] += 1
            return
        if isinstance(event, Position):
            if event.ts_ms > self._newest.get(device.id, -1):
                self._newest[device.id] = event.ts_ms
                self._behind.pop(device.id, None)
            elif event.ts_ms < self._newest[device.id]:
                self._behind_newest(device.id, event.ts_ms, self._clock.now_ms())
        plan = self._in_scope.get(device.id)
        if plan is None:
            plan = self._in_scope[device.id] = self._plan(device)
        for _code, rule, _key, _held in plan:
            await self._evaluate(rule, event, device)

    def _behind_newest(self, device_id: str, ts_ms: int, arrived_ms: int) -> None:
        """A reading older than the device's newest: late, or its clock jumped back (domain/timeline.py).
        On a jump, its rules forget the times they judged (keeping raised or not) and go on from it."""
        was = self._behind.get(device_id) or Timeline(self._newest[device_id])
        timeline, jumped = timeline_step(was, ts_ms, arrived_ms, self._opts.clock_jump_confirm_ms)
        if not jumped:
            self._behind[device_id] = timeline
            return
        del self._behind[device_id]
        self._newest[device_id] = ts_ms
        self.counts["clock_jumps"] += 1
        log.warning("device %s: its clock jumped back; its rules go on from its new time", device_id)
        for rule in self._rules:
            key = (rule.id, device_id)
            if key in self._levels:
                self._levels[key] = self._levels[key]._replace(last_ts_ms=-1)
            if key in self._series:
                self._series[key] = self._series[key]._replace(points=(), since_ms=None, last_ts_ms=-1)
            if key in self._vehicles:
                self._vehicles[key] = self._vehicles[key]._replace(since_ms=None, last_ts_ms=-1)
            if key in self._zone_states:
                self._zone_states[key] = replace(self._zone_states[key], last_ts_ms=-1)

    def _plan(self, device: Device) -> Plan:
        """The rules watching a device, each with its state key (and a threshold rule's levels for
        it): they change only with the rules or the device, so they are worked out once per device,
        from the rules naming the device and the ones naming no device at all."""
        candidates = sorted(self._by_device.get(device.id, []) + self._unnamed)
        plan: Plan = []
        for i in candidates:
            rule = self._rules[i]
            if not in_scope(rule.scope, device):
                continue
            key = (rule.id, device.id)
            if isinstance(rule, ThresholdRule):
                plan.append((_THRESHOLD, rule, key, thresholds(rule, device) if rule.field == "value" else None))
            elif isinstance(rule, SilenceRule):
                plan.append((_SILENCE, rule, key, None))
            elif isinstance(rule, CorrelationRule):
                plan.append((_CORRELATION, rule, key, None))
            elif isinstance(rule, RateRule | ProjectionRule | DurationRule | CountRule):
                plan.append((_READINGS, rule, key, None))
            else:
                plan.append((_OTHER, rule, key, None))
        return plan

    async def _evaluate(self, rule: AnyRule, event: Reading | Position | DeviceStatus, device: Device) -> None:
        key = (rule.id, device.id)
        if isinstance(rule, ThresholdRule) and isinstance(event, Reading):
            level, changes = threshold_step(rule, self._levels.get(key, LevelState()), event, device)
            await self._apply(rule, changes)
            self._levels[key] = level
        elif isinstance(rule, SilenceRule):
            state = self._silences.get(key, SilenceState())
            if isinstance(event, DeviceStatus):
                new, changes = silence_status(rule, state, device, event)
            else:
                new, changes = silence_seen(rule, state, device, max(event.ts_ms, self._clock.now_ms()))
            await self._apply(rule, changes)
            self._silences[key] = new
        elif isinstance(rule, CorrelationRule) and isinstance(event, Reading):
            corr, changes = correlation_step(rule, self._correlations.get(rule.id, CorrelationState()), event, device)
            await self._apply(rule, changes)
            self._correlations[rule.id] = corr
        elif isinstance(rule, ZoneRule) and isinstance(event, Position):
            zone, changes = zone_step(
                rule, self._zones.get(rule.id, []), self._zone_states.get(key, ZoneState()), event, device
            )
            await self._apply(rule, changes)
            self._zone_states[key] = zone
        elif isinstance(rule, RateRule | ProjectionRule | DurationRule | CountRule) and isinstance(event, Reading):
            series_step = _SERIES_STEPS[type(rule)]
            series, changes = series_step(rule, self._series.get(key, _EMPTY_SERIES), event, device)
            await self._apply(rule, changes)
            self._series[key] = series
        elif isinstance(rule, CorridorRule | DwellRule | SpeedRule) and isinstance(event, Position):
            held = self._vehicles.get(key, _STILL)
            if isinstance(rule, CorridorRule):
                vehicle, changes = corridor_step(rule, self._route_of(rule, device), held, event, device)
            elif isinstance(rule, DwellRule):
                vehicle, changes = dwell_step(rule, self._zones.get(rule.id, []), held, event, device)
            else:
                vehicle, changes = speed_step(rule, held, event, device)
            await self._apply(rule, changes)
            self._vehicles[key] = vehicle

    def _route_of(self, rule: CorridorRule, device: Device) -> Route | None:
        """The route a corridor rule holds a vehicle to: its own line, the vehicle's route attribute,
        or the rule's named city route (None: the vehicle has no route, nothing to judge)."""
        name = None
        if rule.route:
            name = f"rule:{rule.id}"
            points: Sequence[LatLon] = rule.route
        else:
            route_id = device.attributes.get("route") if rule.route_from_attribute else None
            route_id = route_id if isinstance(route_id, str) else rule.route_id
            if route_id is None or route_id not in self._city_routes:
                return None
            name, points = route_id, self._city_routes[route_id]
        route = self._routes.get(name)
        if route is None:
            route = self._routes[name] = make_route(points)
        return route

    async def _camera_status(self, event: CameraStatusChanged) -> None:
        for rule in self._rules:
            if isinstance(rule, CameraOfflineRule):
                key = (rule.id, event.camera_id)
                camera, changes = camera_status_step(rule, self._cameras.get(key, _CAMERA_OK), event)
                await self._apply(rule, changes)
                self._cameras[key] = camera

    async def _apply(self, rule: AnyRule, changes: Sequence[Change]) -> None:
        for change in changes:
            if isinstance(change, Problem):
                self.problems.setdefault(rule.id, {})[change.device_id] = change.detail
                self.counts["problems"] += 1
            elif isinstance(change, Raise) and isinstance(rule, CorrelationRule):
                raise_ = self._with_cameras(change)
                group, merged = await self._store.correlated(raise_, rule.category, self._members(rule))
                self.counts["raised"] += 1
                for device_id in group.device_ids:
                    self._absorbed[device_id] = group.id
                for incident in merged:
                    await self._publish(incident, "merged")
                await self._publish(group, "updated")
            elif isinstance(change, Raise):
                if (
                    isinstance(rule, ThresholdRule)
                    and change.subject in self._absorbed
                    and rule.id in self._members_all
                ):
                    # Part of a correlated incident already (fire risk): not an incident of its own.
                    self.counts["absorbed"] += 1
                    continue
                await self._raise(rule, change)
            else:
                key = (rule.id, change.subject)
                self._held.pop(key, None)
                flapping = key in self._flapping
                if flapping:
                    self._flap_last[key] = self._clock.now_ms()
                # A flapping incident stays open through clears: one incident, not a stream of them.
                cleared = await self._store.cleared(change, "manual" if flapping else rule.resolve)
                if cleared is not None:
                    self.counts["cleared"] += 1
                    if cleared.status == "resolved":
                        self._open_keys.discard(key)
                    await self._publish(cleared, "cleared")

    def _with_cameras(self, change: Raise) -> Raise:
        """The nearest working cameras go with the incident (CONTRACT.md: up to 3 online within 500 m)."""
        if change.camera_ids or self._nearby is None or change.lat is None or change.lon is None:
            return change
        return replace(change, camera_ids=tuple(self._nearby(change.lat, change.lon)))

    async def _raise(self, rule: AnyRule, change: Raise) -> None:
        """A raise past the hygiene checks: silences, flood control by area, flapping."""
        now = self._clock.now_ms()
        key = (rule.id, change.subject)
        if silenced(self._silence_list, change, now) is not None:
            # Held back, not forgotten: raised when the silence ends if the condition still holds.
            self._held[key] = (rule, change)
            self.counts["silenced"] += 1
            return
        grid = change.grid_id
        if key not in self._open_keys and grid is not None:
            opened_here = self._grid_opened.setdefault(grid, [])
            opened_here[:] = recent(opened_here, now, self._hygiene.flood_window_s)
            if flooded(opened_here, now, self._hygiene):
                area = area_raise(change, len(opened_here))
                incident, changed = await self._store.raised(area, "area")
                self.counts["flood_grouped"] += 1
                if changed:
                    await self._publish(incident, "updated")
                return
        incident, changed = await self._store.raised(self._with_cameras(change), rule.category)
        if not changed:
            return
        self.counts["raised"] += 1
        opened = incident.opened_at_ms == incident.updated_at_ms and key not in self._open_keys
        self._open_keys.add(key)
        await self._publish(incident, "opened" if opened else "updated")
        if not opened:
            return
        if grid is not None:
            self._grid_opened.setdefault(grid, []).append(now)
        raises = self._raise_times.setdefault(key, [])
        raises[:] = [*recent(raises, now, self._hygiene.flap_window_s), now]
        if key not in self._flapping and is_flapping(raises, now, self._hygiene):
            self._flapping[key] = incident.id
            self._flap_last[key] = now
            self.counts["flapping"] += 1

            def mark(current: Incident) -> tuple[Incident, HistoryEntry]:
                detail = f"raised {len(raises)} times within {self._hygiene.flap_window_s / 60:g} min"
                flagged = replace(current, title=f"{current.title} [频繁波动 flapping]", updated_at_ms=now)
                return flagged, HistoryEntry(current.id, now, "alarm hygiene", "flapping", detail)

            marked = await self._store.act(incident.id, mark)
            if marked is not None:
                await self._publish(marked, "flapping")

    async def _publish(self, incident: Incident, change: str) -> None:
        await self._bus.publish(incident_event(incident, change))

    async def _device_changed(self, event: DeviceChanged) -> None:
        self._in_scope.pop(event.device_id, None)
        if event.change == "removed":
            self._newest.pop(event.device_id, None)
            self._behind.pop(event.device_id, None)
        for key in [k for k in self._limits if k[1] == event.device_id]:
            del self._limits[key]
        if event.change != "removed" and event.device is not None:
            self._devices[event.device_id] = event.device
            return
        gone = self._devices.pop(event.device_id, None)
        if gone is None:
            return
        # A removed device's incidents are over: each active state clears.
        for rule in self._rules:
            key = (rule.id, event.device_id)
            active = (
                (key in self._levels and self._levels[key].level is not None)
                or (key in self._silences and (self._silences[key].silent or self._silences[key].offline))
                or (key in self._zone_states and self._zone_states[key].inside is not None)
                or (key in self._series and self._series[key].raised)
                or (key in self._vehicles and self._vehicles[key].flagged)
            )
            if active:
                await self._apply(
                    rule, [Clear(rule.id, event.device_id, event.at_ms, f"device {event.device_id} removed")]
                )
            for states in self._keyed_states():
                states.pop(key, None)

    # --- time: silence and escalation ------------------------------------------------------------

    async def _ticks(self) -> None:
        last_escalation = 0.0
        while True:
            await asyncio.sleep(self._opts.tick_s)
            try:
                await self.tick(self._clock.now_ms())
                now = asyncio.get_running_loop().time()
                if now - last_escalation >= self._opts.escalation_every_s:
                    last_escalation = now
                    await self.escalate_due(self._clock.now_ms())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged with its traceback; the next tick tries again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("rules: tick failed")

    async def reload_silences(self) -> None:
        if self._load_silences is not None:
            self._silence_list = list(await self._load_silences())

    async def _hygiene_tick(self, now_ms: int) -> None:
        for key, (rule, held) in list(self._held.items()):
            if silenced(self._silence_list, held, now_ms) is None:
                del self._held[key]
                await self._raise(rule, replace(held, at_ms=now_ms))
        for key, incident_id in list(self._flapping.items()):
            if now_ms - self._flap_last.get(key, now_ms) < self._hygiene.flap_quiet_s * 1000:
                continue
            del self._flapping[key]
            self._raise_times.pop(key, None)

            def settle(current: Incident) -> tuple[Incident, HistoryEntry]:
                if not current.cleared or current.status == "resolved":
                    raise _NothingToDo
                return resolve(current, "alarm hygiene", now_ms, "stable again after flapping")

            try:
                done = await self._store.act(incident_id, settle)
            except _NothingToDo:
                continue
            if done is not None:
                self._open_keys.discard(key)
                await self._publish(done, "resolved")

    async def tick(self, now_ms: int) -> None:
        """Silence: devices quiet for too long (confirmed against the shared live state); cameras
        offline for too long; raises a silence held back; flapping incidents gone quiet."""
        await self._hygiene_tick(now_ms)
        # Every device is looked at for silence only every ten ticks (expected intervals are
        # tens of seconds or more): with 100,000 devices a pass costs a few hundred ms of CPU.
        self._ticks_done += 1
        if self._ticks_done % 10 == 1:
            await self._silence_pass(now_ms)
        for (rule_id, camera_id), camera in list(self._cameras.items()):
            rule = self._rule(rule_id)
            if isinstance(rule, CameraOfflineRule):
                raised_camera, changes = camera_tick(rule, camera_id, camera, now_ms)
                if changes:
                    await self._apply(rule, changes)
                    self._cameras[(rule_id, camera_id)] = raised_camera

    async def _silence_pass(self, now_ms: int) -> None:
        for rule in self._rules:
            if not isinstance(rule, SilenceRule):
                continue
            for n, device in enumerate(list(self._devices.values())):
                if n % 2000 == 1999:
                    await asyncio.sleep(0)  # let messages in between: the pass never holds the loop long
                if not in_scope(rule.scope, device):
                    continue
                key = (rule.id, device.id)
                state = self._silences.get(key, SilenceState())
                new, changes = silence_tick(rule, state, device, now_ms, self._started_ms)
                if changes and self._live is not None:
                    # Another rules process may have had its readings: ask the shared live state.
                    entry = await self._live.get(device.id)
                    seen = entry.sample.ts_ms if entry.sample is not None else None
                    limit_ms = rule.factor * expected_interval_s(device.kind, device.attributes) * 1000
                    if seen is not None and now_ms - seen <= limit_ms:
                        self._silences[key] = state._replace(last_seen_ms=seen)
                        continue
                await self._apply(rule, changes)
                self._silences[key] = new

    async def escalate_due(self, now_ms: int) -> None:
        for incident in await self._store.open_incidents():
            if self._policy.tier_due(incident, now_ms) <= incident.escalation_tier:
                continue

            def step(current: Incident) -> tuple[Incident, HistoryEntry]:
                # Judged again on the row as it is now: two processes escalate once.
                done = escalate_by_time(current, self._policy, now_ms)
                if done is None:
                    raise _NothingToDo
                return done

            try:
                changed = await self._store.act(incident.id, step)
            except _NothingToDo:
                continue
            if changed is not None:
                self.counts["escalated"] += 1
                await self._publish(changed, "escalated")

    # --- other processes' incidents ----------------------------------------------------------------

    async def _follow(self) -> None:
        sub = self._bus.live([INCIDENT_CHANGED, RULE_CHANGED, SILENCE_CHANGED])
        try:
            async for event in sub:
                if isinstance(event, IncidentChanged):
                    self.sync(event)
                elif isinstance(event, SilenceChanged):
                    try:
                        await self.reload_silences()
                    except Exception:
                        log.exception("cannot reload the silences; keeping the ones in use")
                elif isinstance(event, RuleChanged) and self._reload_rules is not None:
                    try:
                        self.set_rules(await self._reload_rules())
                        log.info("rules reloaded after a change to %s", event.rule_id)
                    except Exception:
                        log.exception("cannot reload the rules; keeping the ones in use")
        finally:
            await sub.close()

    def sync(self, event: IncidentChanged) -> None:
        """Keep states in step with incidents raised or cleared by another rules process."""
        if event.status == "resolved":
            self._open_keys.discard((event.rule_id, event.subject))
            for device_id in [d for d, incident_id in self._absorbed.items() if incident_id == event.id]:
                del self._absorbed[device_id]
        elif event.subject:
            self._open_keys.add((event.rule_id, event.subject))
        rule = self._rule(event.rule_id)
        if rule is None or not event.subject:
            return
        if isinstance(rule, CorrelationRule) and event.status != "resolved":
            for device_id in event.device_ids:
                self._absorbed[device_id] = event.id
            return
        key = (rule.id, event.subject)
        if event.change == "cleared":
            for states in self._keyed_states():
                states.pop(key, None)
            return
        if event.change not in ("opened", "updated"):
            return
        if isinstance(rule, ThresholdRule):
            rebuilt = open_levels(rule, {event.subject: event.severity})[event.subject]
            held = self._levels.get(key, LevelState())
            if held.level is None or (rebuilt.level is not None and rebuilt.level > held.level):
                self._levels[key] = held._replace(level=rebuilt.level)
        elif isinstance(rule, SilenceRule):
            self._silences[key] = self._silences.get(key, SilenceState())._replace(silent=True)
        elif isinstance(rule, ZoneRule):
            held_zone = self._zone_states.get(key, ZoneState())
            if held_zone.inside is None:
                self._zone_states[key] = replace(held_zone, inside="?")
        elif isinstance(rule, RateRule | ProjectionRule | DurationRule | CountRule):
            self._series[key] = self._series.get(key, _EMPTY_SERIES)._replace(raised=True)
        elif isinstance(rule, CorridorRule | DwellRule | SpeedRule):
            self._vehicles[key] = self._vehicles.get(key, _STILL)._replace(flagged=True)
        elif isinstance(rule, CameraOfflineRule):
            self._cameras[key] = self._cameras.get(key, _CAMERA_OK)._replace(raised=True)

    def stats(self) -> dict[str, Any]:
        return {
            "rules": len(self._rules),
            "devices": len(self._devices),
            "events": self.events,
            "raised": self.counts["raised"],
            "cleared": self.counts["cleared"],
            "escalated": self.counts["escalated"],
            "problems": self.counts["problems"],
            "silenced": self.counts["silenced"],
            "flapping": self.counts["flapping"],
            "flood_grouped": self.counts["flood_grouped"],
            "clock_jumps": self.counts["clock_jumps"],
            "last_error": self.last_error,
            "leading": self.leading,
            "takeovers": self.takeovers,
            "replayed": dict(self.replayed),
        }


class _NothingToDo(Exception):
    """The row no longer calls for the escalation (another process did it)."""
