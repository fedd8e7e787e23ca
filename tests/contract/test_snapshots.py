"""One contract for the snapshot stores: a folder (embedded default) and Redis (production)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kernel.errors import StoreError
from tests.servers import free_port
from video_index.adapters.snapshots import FileSnapshots, RedisSnapshots
from video_index.ports import SnapshotStore


@pytest.fixture(params=["file", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SnapshotStore]:
    made: SnapshotStore
    if request.param == "file":
        made = FileSnapshots(tmp_path / "snapshots")
    else:
        made = RedisSnapshots(request.getfixturevalue("redis_url"))
    yield made
    await made.close()


async def test_the_last_frame_is_kept_per_camera_with_its_time(store: SnapshotStore) -> None:
    assert await store.get("cam:1") is None
    await store.put("cam:1", b"\xff\xd8first", 1000)
    await store.put("cam:1", b"\xff\xd8second", 2000)
    await store.put("cam-2", b"\xff\xd8other", 1500)
    assert await store.get("cam:1") == (b"\xff\xd8second", 2000)
    assert await store.get("cam-2") == (b"\xff\xd8other", 1500)
    await store.remove("cam:1")
    assert await store.get("cam:1") is None
    await store.remove("cam:1")  # removing twice is fine


async def test_redis_down_is_a_store_error() -> None:
    store = RedisSnapshots(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreError):
        await store.put("cam-1", b"x", 1)
    with pytest.raises(StoreError):
        await store.get("cam-1")
    await store.close()
