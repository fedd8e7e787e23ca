"""One contract for the bus: work streams and live fan-out, in-process (MemoryBus) and on Redis (RedisBus)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kernel.bus import ENTRY_EVENTS, MemoryBus
from kernel.bus_redis import RedisBus
from kernel.events import (
    CAMERA_STATUS,
    DEVICE_STATUS,
    POSITION,
    READING,
    CameraChanged,
    CameraStatusChanged,
    DeviceChanged,
    Event,
    IncidentChanged,
    TicketChanged,
)
from kernel.model import Device, DeviceStatus, Position, Reading
from kernel.ports import Bus, Delivered, WorkConsumer

MakeBus = Callable[..., Bus]


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    made: list[Bus] = []

    def make(**options: Any) -> Bus:
        bus: Bus
        if request.param == "memory":
            bus = MemoryBus(**options)
        else:
            bus = RedisBus(request.getfixturevalue("redis_url"), **options)
        made.append(bus)
        return bus

    if request.param == "redis":
        request.getfixturevalue("redis_url")  # flush before the test, not in the middle of it
    yield make
    for bus in made:
        await bus.close()


def reading(device: str, ts: int, value: float = 1.0) -> Reading:
    return Reading(device, "water_level", ts, value)


async def read_all(consumer: WorkConsumer, *, ack: bool = True, block_s: float = 0.2) -> list[Delivered]:
    """Read until nothing more comes."""
    out: list[Delivered] = []
    while True:
        got = await consumer.read(count=50, block_s=block_s)
        if not got:
            return out
        out.extend(got)
        if ack:
            await consumer.ack(got)


def events_of(delivered: list[Delivered]) -> list[Event]:
    return [event for item in delivered for event in item.events]


# --- work streams -------------------------------------------------------------------------


async def test_a_group_gets_every_event_of_its_topics_in_order_and_typed(make_bus: MakeBus) -> None:
    bus = make_bus()
    consumer = bus.consumer("rules", "r1", [READING, POSITION, DEVICE_STATUS])
    readings = [reading("res-1", ts) for ts in range(ENTRY_EVENTS * 2 + 7)]
    fix = Position("veh-1", 5, 20.0, 110.3, 42.0, None)
    status = DeviceStatus("res-1", "offline", 9)
    await bus.publish_many([*readings[:100], fix, *readings[100:], status])
    got = await read_all(consumer)
    assert [e for e in events_of(got) if isinstance(e, Reading)] == readings
    assert [e for e in events_of(got) if isinstance(e, Position)] == [fix]
    assert [e for e in events_of(got) if isinstance(e, DeviceStatus)] == [status]
    assert all(len(item.events) <= ENTRY_EVENTS for item in got)
    assert not any(item.redelivered for item in got)
    assert await consumer.read(count=10, block_s=0.1) == []  # acknowledged: never again


async def test_every_kind_of_event_crosses_the_bus_unchanged(make_bus: MakeBus) -> None:
    bus = make_bus()
    events: list[Event] = [
        Reading("smk-1", "smoke", 1, 0.5, 80.0, True),
        Position("veh-1", 2, 20.0, 110.3),
        DeviceStatus("smk-1", "online", 3),
        DeviceChanged("gas-9", "registered", 4, Device("gas-9", "gas", "燃气探测器", 20.0, 110.0, "g-1", {"floor": 3})),
        DeviceChanged("gas-8", "removed", 5),
        IncidentChanged(
            "inc-1",
            "opened",
            "fire",
            "fire",
            "critical",
            1,
            "open",
            "火情",
            6,
            6,
            None,
            20.0,
            110.0,
            "g-1",
            ("smk-1", "gas-9"),
            ("cam-1",),
            None,
        ),
        TicketChanged(
            "t-1",
            "20261123-0001",
            "dispatch",
            "dispatched",
            "sensor",
            "fire",
            "urgent",
            7,
            department_id="fire-dept",
            incident_id="inc-1",
            camera_ids=("cam-1",),
        ),
        CameraStatusChanged("cam-1", "offline", "online", "no frames within 5 s", 8, 20.0, 110.0, "police"),
        CameraChanged("cam-2", "removed", 9),
    ]
    consumer = bus.consumer("all", "a1", sorted({e.TOPIC for e in events}))
    await bus.publish_many(events)
    got = events_of(await read_all(consumer))
    assert sorted(got, key=repr) == sorted(events, key=repr)


async def test_each_group_gets_everything_and_a_group_shares_it_out(make_bus: MakeBus) -> None:
    bus = make_bus()
    rules_a = bus.consumer("rules", "a", [READING])
    rules_b = bus.consumer("rules", "b", [READING])
    wall = bus.consumer("audit", "x", [READING])
    sent = [reading(f"d{i % 7}", i) for i in range(3 * ENTRY_EVENTS)]
    for start in range(0, len(sent), ENTRY_EVENTS):
        await bus.publish_many(sent[start : start + ENTRY_EVENTS])
    first_a, first_b = await rules_a.read(count=1, block_s=0.5), await rules_b.read(count=1, block_s=0.5)
    await rules_a.ack(first_a)
    await rules_b.ack(first_b)
    a = events_of(first_a) + events_of(await read_all(rules_a))
    b = events_of(first_b) + events_of(await read_all(rules_b))
    assert a, "both members of the group got a share"
    assert b, "both members of the group got a share"
    assert sorted(a + b, key=repr) == sorted(sent, key=repr)  # each entry to one member only
    assert events_of(await read_all(wall)) == sent


async def test_a_new_group_starts_at_the_oldest_event_the_stream_holds(make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.publish(reading("res-1", 1))
    late = bus.consumer("late", "l1", [READING])
    await bus.publish(reading("res-1", 2))
    assert [e.ts_ms for e in events_of(await read_all(late))] == [1, 2]  # type: ignore[union-attr]


async def test_a_dead_consumers_pending_events_go_to_another_after_the_idle_time(make_bus: MakeBus) -> None:
    bus = make_bus()
    dying = bus.consumer("rules", "dying", [READING], claim_idle_s=0.3)
    await bus.publish_many([reading("res-1", ts) for ts in range(10)])
    taken = await dying.read(count=10, block_s=0.5)
    assert events_of(taken)
    await dying.close()  # dies without acknowledging
    heir = bus.consumer("rules", "heir", [READING], claim_idle_s=0.3)
    assert await heir.read(count=10, block_s=0.05) == [], "not taken over before the idle time"
    await asyncio.sleep(0.35)
    got = await read_all(heir, block_s=0.3)
    assert events_of(got) == events_of(taken)
    assert all(item.redelivered for item in got)


async def test_a_consumer_restarted_under_its_name_gets_its_own_pending_first(make_bus: MakeBus) -> None:
    bus = make_bus()
    first = bus.consumer("rules", "rules-1", [READING])
    await bus.publish(reading("res-1", 1))
    taken = await first.read(count=10, block_s=0.5)
    await first.close()
    await bus.publish(reading("res-1", 2))
    again = bus.consumer("rules", "rules-1", [READING])
    replay = await again.read(count=10, block_s=0.5)
    assert events_of(replay) == events_of(taken)
    assert all(item.redelivered for item in replay)
    await again.ack(replay)
    assert [e.ts_ms for e in events_of(await read_all(again))] == [2]  # type: ignore[union-attr]


async def test_acknowledged_events_are_never_taken_over(make_bus: MakeBus) -> None:
    bus = make_bus()
    one = bus.consumer("rules", "one", [READING], claim_idle_s=0.1)
    await bus.publish_many([reading("res-1", ts) for ts in range(5)])
    await one.ack(await one.read(count=10, block_s=0.5))
    await one.close()
    await asyncio.sleep(0.15)
    other = bus.consumer("rules", "other", [READING], claim_idle_s=0.1)
    assert await read_all(other, block_s=0.2) == []


async def test_the_stream_is_bounded_and_a_group_that_far_behind_sees_it(make_bus: MakeBus) -> None:
    bus = make_bus(stream_max_entries=5)
    slow = bus.consumer("slow", "s1", [READING])
    assert await slow.read(count=1, block_s=0.05) == []  # the group exists before the flood
    for ts in range(12):
        await bus.publish(reading("res-1", ts))
    stats = await bus.stats()
    assert stats[READING]["entries"] == 5
    assert stats[READING]["groups"]["slow"]["behind_trim"] is True
    kept = [e.ts_ms for e in events_of(await read_all(slow))]  # type: ignore[union-attr]
    assert kept == list(range(7, 12)), "the oldest went, the newest stay"


async def test_a_blocked_read_wakes_when_an_event_comes(make_bus: MakeBus) -> None:
    bus = make_bus()
    consumer = bus.consumer("rules", "r", [READING])
    assert await consumer.read(count=1, block_s=0.05) == []
    waiting = asyncio.create_task(consumer.read(count=1, block_s=5.0))
    await asyncio.sleep(0.1)
    await bus.publish(reading("res-1", 1))
    got = await asyncio.wait_for(waiting, 3.0)
    assert events_of(got) == [reading("res-1", 1)]


# --- live fan-out ------------------------------------------------------------------------


async def _live(bus: Bus, topics: list[str], *, snapshot: bool = False) -> Any:
    sub = bus.live(topics, snapshot=snapshot)
    subscribed = getattr(sub, "subscribed", None)  # Redis: wait until the channel is subscribed
    if subscribed is not None:
        await asyncio.wait_for(subscribed.wait(), 5)
    return sub


async def take_until_quiet(sub: Any, quiet_s: float = 0.3) -> list[Event]:
    out: list[Event] = []
    while batch := await sub.take(1000, timeout_s=quiet_s):
        out.extend(batch)
    return out


async def test_a_slow_subscriber_misses_intermediate_values_never_the_latest(make_bus: MakeBus) -> None:
    bus = make_bus()
    slow = await _live(bus, [READING, CAMERA_STATUS])
    fast = await _live(bus, [READING])
    seen_fast: list[Event] = []

    async def drain() -> None:
        async for event in fast:
            seen_fast.append(event)

    task = asyncio.create_task(drain())
    sent = [reading(f"res-{i % 4}", ts) for ts, i in enumerate(range(400))]
    for start in range(0, len(sent), 40):
        await bus.publish_many(sent[start : start + 40])  # the slow one reads nothing meanwhile
        await asyncio.sleep(0)
    await bus.publish(CameraStatusChanged("cam-1", "offline", "online", "timeout", 1))
    got = await take_until_quiet(slow)
    latest = {f"res-{i}": sent[-4 + i] for i in range(4)}
    assert {e.key: e for e in got if isinstance(e, Reading)} == latest
    assert len([e for e in got if isinstance(e, Reading)]) <= len(sent)
    assert any(isinstance(e, CameraStatusChanged) for e in got)
    assert slow.replaced > 0
    await asyncio.sleep(0.2)
    assert seen_fast[-4:] == sent[-4:]
    assert {e.key: e for e in seen_fast} == latest
    await fast.close()
    await asyncio.wait_for(task, 3)


async def test_a_subscriber_that_never_reads_slows_no_one(make_bus: MakeBus) -> None:
    bus = make_bus()
    stuck = await _live(bus, [READING])
    consumer = bus.consumer("rules", "r", [READING])
    for ts in range(2000):
        await bus.publish(reading(f"res-{ts % 50}", ts))
    got = events_of(await read_all(consumer))
    assert len(got) == 2000
    waiting = await take_until_quiet(stuck)
    assert len(waiting) <= 50, "holds only the latest per entity, however long it sleeps"
    assert {e.key for e in waiting} == {f"res-{i}" for i in range(50)}


async def test_snapshot_first_then_changes_and_latest_by_entity(make_bus: MakeBus) -> None:
    bus = make_bus()
    await bus.publish_many([reading("res-1", 1, 20.0), reading("res-1", 2, 21.0), reading("res-2", 1, 5.0)])
    assert await bus.latest(READING) == {"res-1": reading("res-1", 2, 21.0), "res-2": reading("res-2", 1, 5.0)}
    sub = await _live(bus, [READING], snapshot=True)
    plain = await _live(bus, [READING])
    first = await take_until_quiet(sub)
    assert sorted(first, key=repr) == sorted([reading("res-1", 2, 21.0), reading("res-2", 1, 5.0)], key=repr)
    assert await plain.take(10, timeout_s=0.2) == [], "without snapshot only changes come"
    await bus.publish(reading("res-2", 3, 6.0))
    assert await take_until_quiet(sub) == [reading("res-2", 3, 6.0)]
    assert await take_until_quiet(plain) == [reading("res-2", 3, 6.0)]


async def test_a_closed_subscription_ends_its_iteration(make_bus: MakeBus) -> None:
    bus = make_bus()
    sub = await _live(bus, [READING])

    async def iterate() -> list[Event]:
        return [event async for event in sub]

    task = asyncio.create_task(iterate())
    await asyncio.sleep(0.05)
    await sub.close()
    assert await asyncio.wait_for(task, 3) == []
    await bus.publish(reading("res-1", 1))  # nobody listens; nothing breaks


# --- Redis only: what another writer or the network can do to us ----------------------------


async def test_a_lease_has_one_holder_and_passes_on_when_released(make_bus: MakeBus) -> None:
    bus = make_bus()
    a, b = bus.lease("rules", "a", 5.0), bus.lease("rules", "b", 5.0)
    assert await a.acquire()
    assert a.held()
    assert not await b.acquire(), "taken: the other waits"
    assert not b.held()
    assert await a.acquire(), "the holder renews"
    assert await b.holder() == "a"
    await a.release()
    assert not a.held(), "a released lease is not acted on"
    assert await b.acquire()
    assert await a.holder() == "b"
    assert not await a.acquire()


async def test_a_lease_nobody_renews_expires_and_another_takes_it(make_bus: MakeBus) -> None:
    bus = make_bus()
    a, b = bus.lease("rules", "a", 0.3), bus.lease("rules", "b", 0.3)
    assert await a.acquire()
    await asyncio.sleep(0.25)
    assert not a.held(), "the holder stops acting before the lease can pass on (a fifth of it early)"
    assert not await b.acquire()
    await asyncio.sleep(0.15)
    assert await b.acquire(), "expired: the standby takes it"
    assert not await a.acquire(), "the old holder does not get it back while it is held"
    assert await b.holder() == "b"


async def test_members_of_a_group_see_each_other_and_a_silent_one_drops_out(make_bus: MakeBus) -> None:
    bus = make_bus()
    assert await bus.members("probers", "p2", 0.5) == ["p2"]
    assert await bus.members("probers", "p1", 0.5) == ["p1", "p2"]
    assert await bus.members("other", "x", 0.5) == ["x"], "groups apart"
    await asyncio.sleep(0.3)
    assert await bus.members("probers", "p1", 0.5) == ["p1", "p2"]
    await asyncio.sleep(0.3)
    assert await bus.members("probers", "p1", 0.5) == ["p1"], "p2 said nothing for longer than its time to live"
    await bus.members("probers", "p3", 0.5)
    await bus.leave("probers", "p3")
    assert await bus.members("probers", "p1", 0.5) == ["p1"]


async def test_redis_a_lease_without_redis_is_a_store_error(redis_url: str) -> None:
    from kernel.errors import StoreError
    from tests.servers import free_port

    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0")
    lease = bus.lease("rules", "a", 5.0)
    with pytest.raises(StoreError):
        await lease.acquire()
    assert not lease.held()
    await lease.release()  # no error: it expires by itself
    await bus.close()


async def test_redis_an_entry_that_is_not_events_is_skipped_counted_and_never_handed_out_again(redis_url: str) -> None:
    import redis.asyncio as aioredis

    bus = RedisBus(redis_url)
    consumer = bus.consumer("rules", "r", [READING])
    assert await consumer.read(count=1, block_s=0.05) == []
    raw = aioredis.Redis.from_url(redis_url)
    await raw.xadd(bus.stream(READING), {b"e": b"{not json"})
    await raw.xadd(bus.stream(READING), {b"e": b'{"v": 99, "topic": "reading", "events": []}'})
    await bus.publish(reading("res-1", 1))
    got = await read_all(consumer)
    assert events_of(got) == [reading("res-1", 1)]
    assert bus.undecodable == 2
    groups = await raw.xinfo_groups(bus.stream(READING))
    assert groups[0]["pending"] == 0, "the bad entries were acknowledged, not left to loop"
    await raw.aclose()
    await bus.close()


async def test_redis_a_subscriber_whose_connection_drops_still_gets_the_latest(redis_url: str) -> None:
    import redis.asyncio as aioredis

    bus = RedisBus(redis_url)
    sub = await _live(bus, [READING])
    await bus.publish(reading("res-1", 1, 20.0))
    assert await take_until_quiet(sub) == [reading("res-1", 1, 20.0)]
    raw = aioredis.Redis.from_url(redis_url)
    # Publish while the subscriber's connection is gone: pub/sub drops those messages.
    await raw.client_kill_filter(_type="pubsub")
    await bus.publish_many([reading("res-1", 2, 21.0), reading("res-1", 3, 22.0)])
    deadline = asyncio.get_running_loop().time() + 10
    seen: list[Event] = []
    while asyncio.get_running_loop().time() < deadline and reading("res-1", 3, 22.0) not in seen:
        seen.extend(await sub.take(100, timeout_s=0.5))
    assert seen[-1] == reading("res-1", 3, 22.0)
    assert sub.resyncs >= 1
    await raw.aclose()
    await bus.close()


async def test_redis_publishing_while_redis_is_down_is_a_store_error(redis_url: str) -> None:
    from kernel.errors import StoreError
    from tests.servers import free_port

    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreError):
        await bus.publish(reading("res-1", 1))
    with pytest.raises(StoreError):
        await bus.consumer("rules", "r", [READING]).read(count=1, block_s=0.05)
    await bus.close()


async def test_memory_holds_only_what_a_group_has_not_acknowledged() -> None:
    bus = MemoryBus()
    consumer = bus.consumer("rules", "r", [READING])
    await bus.publish_many([reading("res-1", ts) for ts in range(1000)])
    got = await consumer.read(count=2, block_s=0.1)
    await bus.publish(reading("res-1", 1000))
    assert (await bus.stats())[READING]["entries"] == 6, "read but not acknowledged: kept"
    await consumer.ack(got)
    await read_all(consumer)
    await bus.publish(reading("res-1", 1001))
    assert (await bus.stats())[READING]["entries"] == 1, "only the newest, not yet read"
    await bus.close()
