"""The notifier: turns the outbox into notifications for the people on duty, and delivers them.

Three loops, none holding state that a restart could lose (everything is in the records):
- **expand**: takes outbox rows (each change of an incident or ticket, written with it), applies
  the policies and the roster, and writes the notifications, in one transaction per batch;
- **deliver**: claims due notifications with a lease and sends each through its channel, up to
  `concurrency` at a time, each bounded by a timeout; a failure is retried with exponential
  backoff and, after `max_attempts`, is a dead letter (status `failed`);
- **repeat**: critical incidents nobody acknowledged are notified again to their tier's people on
  duty every N minutes (the policy's `repeat_every_min`), until acknowledged or resolved.
Several notifiers (processes) share the work: the outbox and the claims are row-locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from kernel.clock import Clock
from kernel.errors import StoreError
from kernel.outbox import OutboxEntry

from .adapters.notify_sql import Claimed, Finished, Grouping, Planned, SqlNotify
from .adapters.senders import Delivery, DeliveryError, Sender
from .domain.links import sign
from .domain.messages import Message, render, render_digest
from .domain.policy import (
    DEFAULT_POLICIES,
    Policy,
    Recipient,
    event_of,
    is_urgent,
    parse_policies,
    posts_for,
    recipients,
    repeat_policy,
    target_post,
)
from .domain.roster import CONTACT_TYPES, Person, Roster, parse_roster

log = logging.getLogger(__name__)
NO_LINK_EVENTS: Final = frozenset({"acknowledged", "resolved"})


@dataclass(frozen=True)
class NotifyOptions:
    public_url: str = "http://127.0.0.1:8000"
    poll_s: float = 0.2
    lease_s: float = 30.0
    send_timeout_s: float = 10.0
    max_attempts: int = 6
    backoff_s: float = 5.0
    backoff_max_s: float = 600.0
    max_per_window: int = 5
    window_s: float = 600.0
    concurrency: int = 20
    link_ttl_s: float = 86_400.0
    repeat_check_s: float = 5.0
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    @property
    def grouping(self) -> Grouping:
        return Grouping(self.max_per_window, int(self.window_s * 1000))


@dataclass
class NotifyConfig:
    roster: Roster = field(default_factory=Roster)
    policies: Sequence[Policy] = DEFAULT_POLICIES
    channels: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    version: int = -1


async def load_config(store: SqlNotify) -> NotifyConfig:
    """The stored roster, policies and channels (the default policies until some are set)."""
    roster_doc = await store.config("roster")
    policies_doc = await store.config("policies")
    channels_doc = await store.config("channels")
    return NotifyConfig(
        roster=parse_roster(roster_doc[0]) if roster_doc else Roster(),
        policies=parse_policies(policies_doc[0]) if policies_doc else DEFAULT_POLICIES,
        channels=dict(channels_doc[0]) if channels_doc else {},
        version=await store.config_version(),
    )


class Notifier:
    def __init__(
        self,
        store: SqlNotify,
        clock: Clock,
        tz: ZoneInfo,
        senders: Mapping[str, Sender],
        opts: NotifyOptions,
        *,
        wake_on: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._tz = tz
        self._senders = senders
        self.opts = opts
        self._wake_on = wake_on
        self.config = NotifyConfig()
        self._key = b""
        self._expand_wake = asyncio.Event()
        self._deliver_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[str]] = set()
        self._config_checked = 0.0
        # Ends of sends waiting to be recorded, written together (one transaction for a burst).
        self._finished: list[tuple[Finished, asyncio.Future[str]]] = []
        self._finished_ready = asyncio.Event()
        self._recorder_idle = asyncio.Event()
        self.counts = {"expanded": 0, "made": 0, "sent": 0, "retried": 0, "failed": 0, "repeats": 0}

    # ----- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._key = await self.store.link_key()
        await self.reload()
        self._tasks = [
            asyncio.create_task(self._loop(self._expand_once, self._expand_wake), name="notify-expand"),
            asyncio.create_task(self._loop(self._deliver_once, self._deliver_wake), name="notify-deliver"),
            asyncio.create_task(self._repeat_loop(), name="notify-repeat"),
            asyncio.create_task(self._record_loop(), name="notify-record"),
        ]
        if self._wake_on is not None:
            self._tasks.append(asyncio.create_task(self._waker(self._wake_on), name="notify-wake"))

    async def stop(self) -> None:
        recorder = self._tasks[3] if len(self._tasks) > 3 else None
        for task in self._tasks:
            if task is not recorder:
                task.cancel()
        for task in self._tasks:
            if task is not recorder:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Sends under way finish or time out (and are recorded); an unfinished one is sent again
        # after its lease.
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.opts.send_timeout_s + 1)
        if recorder is not None:
            # Every end of a send is written before the recorder stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    while self._finished or not self._recorder_idle.is_set():  # noqa: ASYNC110 - two conditions
                        await asyncio.sleep(0.01)
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def reload(self) -> None:
        self.config = await load_config(self.store)

    def poke(self) -> None:
        """Something was written to the outbox (or made due): look now, not at the next poll."""
        self._expand_wake.set()
        self._deliver_wake.set()

    async def _waker(self, wait: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await wait()
                self.poke()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notify: the wake-up feed failed; polling meanwhile")
                await asyncio.sleep(1)

    async def _loop(self, once: Callable[[], Awaitable[bool]], wake: asyncio.Event) -> None:
        while True:
            try:
                await self._maybe_reload()
                busy = await once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notify: a pass failed; retrying")
                busy = False
                await asyncio.sleep(1)
            if not busy:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.opts.poll_s):
                        await wake.wait()

    async def _maybe_reload(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._config_checked < 2.0:
            return
        self._config_checked = loop.time()
        if await self.store.config_version() != self.config.version:
            await self.reload()

    # ----- planning --------------------------------------------------------------------

    def _holders(self, post: str, now_ms: int) -> list[Person]:
        roster = self.config.roster
        if post.startswith("person:"):
            person = roster.people.get(post[7:])
            return [person] if person is not None else []
        return roster.on_duty(post, now_ms, self._tz)

    def _not_before(self, person: Person, urgent: bool, now_ms: int) -> int:
        if urgent or person.quiet_hours is None:
            return now_ms
        local = datetime.fromtimestamp(now_ms / 1000, self._tz)
        if not person.quiet_hours.covers(local):
            return now_ms
        return int(person.quiet_hours.ends_after(local).timestamp() * 1000)

    def plan(self, entry: OutboxEntry, now_ms: int | None = None) -> list[Planned]:
        event = event_of(entry)
        if event is None:
            return []
        now = self._clock.now_ms() if now_ms is None else now_ms
        policies = self.config.policies
        on_duty = {post: [(p.id, p.contacts) for p in self._holders(post, now)] for post in posts_for(entry, policies)}
        return self._planned(entry, event, recipients(entry, policies, on_duty), f"ob:{entry.id}", now, 0)

    def _planned(
        self, entry: OutboxEntry, event: str, found: Sequence[Recipient], dedup: str, now: int, round_: int
    ) -> list[Planned]:
        out: list[Planned] = []
        message = render(entry, event, self._tz, round_=round_)
        s = entry.state
        incident_id = entry.subject_id if entry.subject == "incident" else s.get("incident_id")
        ticket_id = entry.subject_id if entry.subject == "ticket" else None
        linked = entry.subject == "incident" and event not in NO_LINK_EVENTS and s.get("status") == "open"
        for recipient in found:
            person = self.config.roster.people[recipient.person_id]
            for channel in recipient.channels:
                out.append(
                    Planned(
                        dedup=f"{dedup}:{person.id}:{channel}",
                        kind="repeat" if round_ else entry.subject,
                        event=event,
                        person_id=person.id,
                        person_name=person.name,
                        channel=channel,
                        address=person.contacts[channel],
                        post=recipient.post,
                        title=message.title,
                        lines=message.lines,
                        not_before_ms=self._not_before(person, is_urgent(entry), now),
                        incident_id=incident_id,
                        ticket_id=ticket_id,
                        grid_id=s.get("grid_id"),
                        link_expires_ms=now + int(self.opts.link_ttl_s * 1000) if linked else None,
                    )
                )
        return out

    def next_repeat(self, entry: OutboxEntry) -> int | None:
        """When an incident entry's incident is to be notified again (None: not)."""
        if entry.state.get("status") != "open":
            return None
        policy = repeat_policy(entry.state, self.config.policies)
        if policy is None or policy.repeat_every_min is None:
            return None
        return entry.at_ms + int(policy.repeat_every_min * 60_000)

    def plan_repeat(self, watch: Mapping[str, Any], now_ms: int) -> tuple[list[Planned], int | None]:
        state = dict(watch["state"])
        policy = repeat_policy(state, self.config.policies)
        if policy is None or policy.repeat_every_min is None or state.get("status") != "open":
            return [], None
        entry = OutboxEntry(now_ms, "incident", str(watch["incident_id"]), "repeat", "notifier", state, {})
        found: dict[str, Recipient] = {}
        for target in policy.to:
            post = target_post(target, entry)
            if post is None:
                continue
            for person in self._holders(post, now_ms):
                channels = tuple(c for c in (policy.channels or CONTACT_TYPES) if c in person.contacts)
                if channels and person.id not in found:
                    found[person.id] = Recipient(post, person.id, channels)
        rounds = int(watch["rounds"]) + 1
        planned = self._planned(
            entry, "repeat", list(found.values()), f"rp:{watch['incident_id']}:{rounds}", now_ms, rounds
        )
        return planned, now_ms + int(policy.repeat_every_min * 60_000)

    # ----- the passes ------------------------------------------------------------------

    async def _expand_once(self) -> bool:
        now = self._clock.now_ms()
        taken, made = await self.store.expand(
            200, lambda e: self.plan(e, now), self.next_repeat, self.opts.grouping, now
        )
        self.counts["expanded"] += taken
        self.counts["made"] += made
        if made:
            self._deliver_wake.set()
        return taken > 0

    async def _deliver_once(self) -> bool:
        free = self.opts.concurrency - len(self._inflight)
        # Claim in batches: with sends under way, wait until a quarter of the slots are free
        # rather than claiming one row per transaction as each send ends.
        if self._inflight and free < max(1, self.opts.concurrency // 4):
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
            return True
        now = self._clock.now_ms()
        claimed = await self.store.claim(self.opts.worker, now, int(self.opts.lease_s * 1000), free)
        for c in claimed:
            # The slot frees once the send's end is recorded: a worker killed at any moment has
            # only its sends in flight unrecorded (at most `concurrency`), never a backlog.
            task = asyncio.create_task(self.deliver(c))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(claimed) == free

    async def _repeat_loop(self) -> None:
        while True:
            try:
                now = self._clock.now_ms()
                for watch in await self.store.due_repeats(now):
                    planned, next_at = self.plan_repeat(watch, now)
                    made = await self.store.repeat(
                        str(watch["incident_id"]), int(watch["rounds"]), planned, next_at, self.opts.grouping, now
                    )
                    if made:
                        self.counts["repeats"] += made
                        self._deliver_wake.set()
                await self.store.purge(now - 7 * 86_400_000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notify: the repeat pass failed; retrying")
            await asyncio.sleep(self.opts.repeat_check_s)

    # ----- delivery --------------------------------------------------------------------

    def message_of(self, claimed: Claimed) -> Message:
        row = claimed.row
        if row["kind"] == "digest":
            titles = [(m["title"], m["grid_id"]) for m in claimed.members]
            return render_digest(titles, self.opts.window_s / 60)
        link = None
        if row.get("link_id") and row.get("link_expires_ms"):
            token = sign(self._key, str(row["link_id"]), int(row["link_expires_ms"]))
            link = f"{self.opts.public_url.rstrip('/')}/ack/{token}"
        return Message(str(row["title"]), tuple(row["lines"]), link)

    async def deliver(self, claimed: Claimed) -> str:
        """Send one claimed notification and wait until its end is recorded: its status."""
        return await (await self._send(claimed))

    async def _send(self, claimed: Claimed) -> asyncio.Future[str]:
        """Send one claimed notification; the future is its status once recorded."""
        row = claimed.row
        sender = self._senders.get(row["channel"])
        error: str | None = None
        permanent = False
        try:
            if sender is None:
                raise DeliveryError(f"no sender for channel {row['channel']!r}", permanent=True)
            delivery = Delivery(
                {**row, "created_at": datetime.fromtimestamp(row["created_at_ms"] / 1000, self._tz).isoformat()},
                str(row["address"]),
                self.message_of(claimed),
                self.config.channels.get(row["channel"], {}),
            )
            async with asyncio.timeout(self.opts.send_timeout_s):
                await sender.send(delivery)
        except DeliveryError as exc:
            error, permanent = str(exc), exc.permanent
        except TimeoutError:
            error = f"no answer within {self.opts.send_timeout_s:g} s"
        except Exception as exc:
            log.exception("notify: sending %s failed unexpectedly", row["id"])
            error = f"{type(exc).__name__}: {exc}"
        now = self._clock.now_ms()
        retry_at = None
        if error is not None and not permanent and row["attempts"] < self.opts.max_attempts:
            delay = min(self.opts.backoff_s * 2 ** (row["attempts"] - 1), self.opts.backoff_max_s)
            retry_at = now + int(delay * 1000)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._finished.append((Finished(claimed, now, error, retry_at), done))
        self._finished_ready.set()
        return done

    async def _record_loop(self) -> None:
        """Write the ends of sends, all that have come in, in one transaction at a time."""
        while True:
            if not self._finished:
                self._finished_ready.clear()
                self._recorder_idle.set()
                await self._finished_ready.wait()
            self._recorder_idle.clear()
            batch, self._finished = self._finished, []
            for attempt in range(10):
                try:
                    statuses = await self.store.finish_many([f for f, _ in batch])
                    break
                except StoreError:
                    if attempt == 9:
                        log.exception("notify: cannot record %d deliveries; their leases will run out", len(batch))
                        for _, done in batch:
                            done.set_exception(StoreError("the delivery could not be recorded"))
                        statuses = []
                        break
                    await asyncio.sleep(0.5)
            for (finished, done), status in zip(batch, statuses, strict=False):
                key = {"sent": "sent", "pending": "retried", "failed": "failed"}.get(status)
                if key:
                    self.counts[key] += 1
                if status == "failed":
                    row = finished.claimed.row
                    log.warning(
                        "notify: %s to %s by %s is a dead letter: %s",
                        row["id"],
                        row["person_id"],
                        row["channel"],
                        finished.error,
                    )
                done.set_result(status)

    async def test_send(self, person_id: str, channel: str, who: str) -> str | None:
        """Send a test message to one person on one channel now; the notification's id (None:
        the person has no such contact)."""
        person = self.config.roster.people.get(person_id)
        if person is None or channel not in person.contacts:
            return None
        now = self._clock.now_ms()
        planned = Planned(
            dedup=f"test:{now}:{person_id}:{channel}:{os.urandom(4).hex()}",
            kind="test",
            event="test",
            person_id=person.id,
            person_name=person.name,
            channel=channel,
            address=person.contacts[channel],
            post=None,
            title="【测试】cityops 通知测试 (test)",
            lines=("【测试】cityops 通知测试 (test)", f"由 {who} 发送 (sent by {who})"),
            # Not due for the delivery loop for a minute: this call sends it itself, now (a claim by
            # id ignores the time); the loop takes it only if this call died before sending.
            not_before_ms=now + 60_000,
            groupable=False,
        )
        [notification_id] = await self.store.add([planned], None, now)
        for claimed in await self.store.claim(
            self.opts.worker, now, int(self.opts.lease_s * 1000), 1, [notification_id]
        ):
            await self.deliver(claimed)
        return notification_id
