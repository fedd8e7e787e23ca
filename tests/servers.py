"""Throwaway real servers on free loopback ports: Mosquitto, Redis, InfluxDB, PostgreSQL.

A missing server binary fails the test run (never skips): `make test` installs them.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from video_index.simulator import TEST_CARD_ARGS, relay_args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def binary(name: str, *patterns: str) -> str:
    found = shutil.which(name)
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if found is None and matches:
            found = matches[-1]
    if found is None:
        pytest.fail(f"server binary {name!r} is missing: run `make test`, which installs it", pytrace=False)
    return found


def wait_tcp(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class Server:
    """A started server process."""

    name: str
    port: int
    url: str
    workdir: Path
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    ready: str = "tcp"
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    # Servers started by a command that returns (pg_ctl): how to stop them.
    stop_argv: list[str] | None = None

    def start(self) -> None:
        if self.stop_argv is not None:  # pg_ctl start returns once the server is up
            subprocess.run(self.argv, check=True, capture_output=True)
            wait_tcp(self.port)
            return
        self.log_path = self.workdir / f"{self.name}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the file lives as long as the process
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        try:
            if self.ready == "influx":
                _wait_http(f"http://127.0.0.1:{self.port}/ping")
            elif self.ready == "none":
                time.sleep(0.2)
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with {self.proc.returncode}")
            else:
                wait_tcp(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {self.log_path.read_text()[-2000:]}") from None

    def stop(self) -> None:
        if self.stop_argv is not None:
            subprocess.run(self.stop_argv, check=False, capture_output=True)
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _wait_http(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback http only
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


def mosquitto(workdir: Path, *, persistent: bool = False, extra: str = "", inflight: int = 0) -> Server:
    port = free_port()
    conf = workdir / f"mosquitto-{port}.conf"
    # Queue without limit for offline persistent sessions: the tests and the benchmark publish
    # while the gateway is away. In flight: an MQTT 5 subscriber gets as many unacknowledged QoS 1
    # messages as its Receive Maximum says (checked: 1,000 of 1,000 with max_inflight_messages 20);
    # a 3.1.1 one gets max_inflight_messages, here 0 (no limit) unless a test asks for another.
    # `persistent` keeps sessions and queued messages across a restart (saved on SIGTERM).
    persistence = "persistence false\n"
    if persistent:
        # Not under pytest's temporary directory: that is private to root (mode 0700).
        store = Path(tempfile.mkdtemp(prefix="cityops-mosquitto-"))
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to its own user: without this it cannot save
            # (only "Permission denied" in its log) and a restart loses every session.
            shutil.chown(store, "mosquitto", "mosquitto")
        persistence = f"persistence true\npersistence_location {store}/\nautosave_interval 1\n"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}"
        f"max_queued_messages 0\nmax_inflight_messages {inflight}\nlog_dest stderr\nlog_type error\n" + extra
    )
    server = Server(
        "mosquitto",
        port,
        f"mqtt://127.0.0.1:{port}",
        workdir,
        [binary("mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)],
    )
    server.start()
    return server


def redis(workdir: Path) -> Server:
    port = free_port()
    server = Server(
        "redis",
        port,
        f"redis://127.0.0.1:{port}/0",
        workdir,
        [
            binary("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
    )
    server.start()
    return server


def influxdb(workdir: Path, port: int | None = None, *, auth: bool = False) -> Server:
    port = port or free_port()
    rpc = free_port()
    data = workdir / f"influx-{port}"
    conf = workdir / f"influx-{port}.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc}"\n'
        f'[meta]\n  dir = "{data}/meta"\n'
        f'[data]\n  dir = "{data}/data"\n  wal-dir = "{data}/wal"\n  query-log-enabled = false\n'
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        f"  auth-enabled = {'true' if auth else 'false'}\n"
        "[monitor]\n  store-enabled = false\n[continuous_queries]\n  enabled = false\n"
    )
    server = Server(
        "influxd",
        port,
        f"http://127.0.0.1:{port}",
        workdir,
        [binary("influxd"), "run", "-config", str(conf)],
        ready="influx",
    )
    server.start()
    return server


def postgres() -> Server:
    initdb = binary("initdb", "/usr/lib/postgresql/*/bin/initdb")
    pg_ctl = binary("pg_ctl", "/usr/lib/postgresql/*/bin/pg_ctl")
    port = free_port()
    # initdb refuses root; the data and socket dirs must belong to the postgres user.
    base = Path(tempfile.mkdtemp(prefix="cityops-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    server = Server(
        "postgres",
        port,
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
        base,
        [
            *as_postgres,
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(base / "pg.log"),
            "-w",
            "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
    )
    server.stop_argv = [*as_postgres, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]
    server.start()
    return server


def stop_postgres(server: Server) -> None:
    """Stop the server for good and remove its data."""
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def new_database(server: Server, name: str) -> str:
    """A fresh empty database on the server; its URL."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:{server.port}/{name}"


def hls_stream(workdir: Path, name: str = "hls") -> tuple[Server, Server]:
    """An ffmpeg-made live HLS stream (H.264 test card, 1 s segments) and an HTTP server for it:
    (ffmpeg, http). The playlist is at {http.url}/index.m3u8."""
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    ffmpeg = Server(
        f"ffmpeg-{name}",
        0,
        "",
        workdir,
        [
            binary("ffmpeg"),
            "-hide_banner",
            "-loglevel",
            "warning",
            *TEST_CARD_ARGS,
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "6",
            "-hls_flags",
            "delete_segments",
            str(folder / "index.m3u8"),
        ],
        ready="none",
    )
    ffmpeg.start()
    deadline = time.monotonic() + 20
    while not (folder / "index.m3u8").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("ffmpeg made no HLS playlist: " + (ffmpeg.log_path or folder).read_text()[-2000:])
        time.sleep(0.1)
    port = free_port()
    http = Server(
        f"http-{name}",
        port,
        f"http://127.0.0.1:{port}",
        workdir,
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
    )
    http.start()
    return ffmpeg, http


def rtsp_stream(workdir: Path, path: str = "cam1") -> tuple[Server, Server, str]:
    """Debian's rtsp-server-perl relay with an ffmpeg test card pushed into it (UDP transport):
    (relay, ffmpeg, the rtsp:// URL cameras are read from)."""
    client, source = free_port(), free_port()
    relay = Server(
        "rtsp-relay",
        client,
        f"rtsp://127.0.0.1:{client}/{path}",
        workdir,
        [
            binary("rtsp-server-perl"),
            *relay_args(client, source, 20000 + (client % 20000)),
        ],
    )
    relay.start()
    wait_tcp(source)
    push = Server(
        "rtsp-push",
        0,
        "",
        workdir,
        [
            binary("ffmpeg"),
            "-hide_banner",
            "-loglevel",
            "warning",
            *TEST_CARD_ARGS,
            "-f",
            "rtsp",
            f"rtsp://127.0.0.1:{source}/{path}",
        ],
        ready="none",
    )
    push.start()
    time.sleep(1.0)  # the relay announces the stream once ffmpeg has set it up
    return relay, push, relay.url


def accept_and_hang() -> tuple[socket.socket, int]:
    """A port whose connections are taken (by the kernel's backlog) and never answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port: int = sock.getsockname()[1]
    return sock, port
