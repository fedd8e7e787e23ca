"""Session-wide real servers, and helpers shared by the suites."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers

_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def mosquitto_server(server_dir: Path) -> Iterator[servers.Server]:
    server = servers.mosquitto(server_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(server_dir: Path) -> Iterator[servers.Server]:
    server = servers.redis(server_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def influx_server(server_dir: Path) -> Iterator[servers.Server]:
    server = servers.influxdb(server_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.Server]:
    server = servers.postgres()
    yield server
    servers.stop_postgres(server)


@pytest.fixture
def postgres_url(postgres_server: servers.Server) -> str:
    return servers.new_database(postgres_server, f"t{next(_db_numbers)}")


@pytest.fixture
def redis_url(redis_server: servers.Server) -> str:
    # Each test gets its own key prefix space by flushing: tests here never run in parallel.
    import redis as redis_lib

    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def hls_url(server_dir: Path) -> Iterator[str]:
    """A live HLS test stream made by ffmpeg, served over HTTP."""
    ffmpeg, http = servers.hls_stream(server_dir)
    yield f"{http.url}/index.m3u8"
    ffmpeg.stop()
    http.stop()


@pytest.fixture(scope="session")
def rtsp_url(server_dir: Path) -> Iterator[str]:
    """A live RTSP test stream: ffmpeg pushing into Debian's rtsp-server-perl relay."""
    relay, push, url = servers.rtsp_stream(server_dir)
    yield url
    push.stop()
    relay.stop()
