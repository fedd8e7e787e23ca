"""A camera simulator: one asyncio server serving many synthetic MJPEG streams over HTTP.

For the demo and the tests. A stream's behaviour comes from its name's first word:
- `ok-*`: a moving picture (a test card with a bar sweeping across and a clock);
- `black-*`: a black picture; `frozen-*`: one picture, never changing; `blur-*`: a covered or
  blurred lens (a featureless grey);
- `flaky-*`: up for `flaky_period_s`, then refusing (503) for as long, and so on; a stream
  being watched is cut when it goes down;
- `garbage-*`: answers 200 as an MJPEG stream, and sends bytes that are no JPEG;
- `hang-*`: accepts the request and never answers;
- anything else: 404.
A closed port is the other kind of dead camera; the simulator has nothing to do with it.

Frames are made and encoded once per kind (a cycle of them for `ok`), so a few hundred viewers
cost the server little more than the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

BOUNDARY = b"cityopsframe"
_FILE = re.compile(r"^[A-Za-z0-9_-]{1,64}\.(m3u8|ts)$")
KINDS = ("ok", "black", "frozen", "blur", "flaky", "garbage", "hang")


def _card(i: int, cycle: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A test card: colour bars, a bar sweeping across, a frame counter."""
    img = np.zeros((height, width, 3), np.uint8)
    colours = [(255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255), (0, 0, 255), (255, 0, 0)]
    step = width // len(colours)
    for n, colour in enumerate(colours):
        img[: height * 2 // 3, n * step : (n + 1) * step] = colour
    x = int(i * width / cycle)
    img[height * 2 // 3 :, :] = (40, 40, 40)
    img[height * 2 // 3 :, x : x + 12] = (255, 255, 255)
    cv2.putText(img, f"cityops {i:03d}", (10, height - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 200, 255), 2)
    return img


def _jpeg(img: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 75])
    assert ok
    return bytes(data)


@dataclass
class _Frames:
    ok: list[bytes]
    black: bytes
    frozen: bytes
    blur: bytes


def _make_frames(cycle: int = 25) -> _Frames:
    grey = np.full((240, 320, 3), 118, np.uint8)
    return _Frames(
        ok=[_jpeg(_card(i, cycle)) for i in range(cycle)],
        black=_jpeg(np.zeros((240, 320, 3), np.uint8)),
        frozen=_jpeg(_card(7, cycle)),
        blur=_jpeg(cv2.GaussianBlur(grey, (31, 31), 0)),
    )


class CameraSimulator:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, fps: float = 5.0, flaky_period_s: float = 20.0) -> None:
        self.host = host
        self.port = port
        self.fps = fps
        self.flaky_period_s = flaky_period_s
        self._frames = _make_frames()
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._folders: dict[str, Path] = {}  # /hls/NAME/ -> the folder ffmpeg writes a playlist in
        self.served = 0

    def serve_folder(self, name: str, folder: Path) -> str:
        """Serve an HLS folder at /hls/NAME/ (ffmpeg-made streams); the playlist's URL."""
        self._folders[name] = folder
        return f"http://{self.host}:{self.port}/hls/{name}/index.m3u8"

    def url(self, name: str) -> str:
        return f"http://{self.host}:{self.port}/{name}.mjpg"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=8192, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("camera simulator on http://%s:%d/", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.wait(list(self._clients), timeout=5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    def _flaky_up(self) -> bool:
        return int(time.monotonic() / self.flaky_period_s) % 2 == 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
            words = request.split(b" ", 2)
            path = words[1].decode("latin-1") if len(words) > 1 else "/"
            if path.startswith("/hls/"):
                await self._file(writer, path)
                return
            name = path.lstrip("/").split("?")[0].removesuffix(".mjpg")
            kind = name.split("-")[0]
            if kind == "hang":
                await asyncio.sleep(3600)
                return
            if kind not in KINDS or not name:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if kind == "flaky" and not self._flaky_up():
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary="
                + BOUNDARY
                + b"\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
            )
            self.served += 1
            await self._stream(writer, kind)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        except asyncio.CancelledError:
            return  # stopping: a handler of asyncio's server ends quietly
        finally:
            self._clients.discard(task)
            writer.close()

    async def _file(self, writer: asyncio.StreamWriter, path: str) -> None:
        parts = path.split("?")[0].split("/")  # "", "hls", NAME, FILE
        folder = self._folders.get(parts[2]) if len(parts) == 4 else None
        if folder is None or not _FILE.match(parts[3]):
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        try:
            data = await asyncio.to_thread((folder / parts[3]).read_bytes)
        except FileNotFoundError:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        kind = b"application/vnd.apple.mpegurl" if parts[3].endswith(".m3u8") else b"video/mp2t"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: %d\r\n" % len(data))
        writer.write(b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n" + data)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, kind: str) -> None:
        frames = self._frames
        i = 0
        period = 1.0 / self.fps
        while True:
            if kind == "ok" or kind == "flaky":
                if kind == "flaky" and not self._flaky_up():
                    return  # cut mid-stream, as a camera losing power does
                data = frames.ok[i % len(frames.ok)]
            elif kind == "garbage":
                data = os.urandom(4000)
            else:
                data = {"black": frames.black, "frozen": frames.frozen, "blur": frames.blur}[kind]
            writer.write(b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
            writer.write(data + b"\r\n")
            await writer.drain()
            i += 1
            await asyncio.sleep(period)


# ffmpeg's arguments for a live H.264 test card, 320x240 at 10 fps with a key frame every second
# (the demo's streams and the tests' alike).
TEST_CARD_ARGS = [
    *("-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10"),
    *("-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "10"),
]


def relay_args(client_port: int, source_port: int, rtp_start_port: int) -> list[str]:
    """rtsp-server-perl's arguments, on loopback: players connect to `client_port`, ffmpeg pushes
    to `source_port` (the demo's relay and the tests' alike)."""
    return [
        *("--clientport", str(client_port), "--serverport", str(source_port)),
        *("--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1"),
        *("--rtp_start_port", str(rtp_start_port)),
    ]


class FfmpegStreams:
    """The demo's HLS and RTSP cameras, made by ffmpeg: an HLS stream served by the simulator,
    and an RTSP stream pushed into Debian's rtsp-server-perl relay. Each is left out (and said
    so) when its program is missing."""

    def __init__(self, simulator: CameraSimulator) -> None:
        self._simulator = simulator
        self._procs: list[asyncio.subprocess.Process] = []
        self._folder: Path | None = None
        self.hls_url: str | None = None
        self.rtsp_url: str | None = None

    async def _spawn(self, *argv: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._procs.append(proc)
        return proc

    async def start(self) -> None:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            log.warning("no ffmpeg: the demo has no HLS or RTSP camera")
            return
        self._folder = Path(tempfile.mkdtemp(prefix="cityops-demo-hls-"))
        hls = [*TEST_CARD_ARGS, "-f", "hls", "-hls_time", "1", "-hls_list_size", "6"]
        await self._spawn(ffmpeg, "-nostdin", *hls, "-hls_flags", "delete_segments", str(self._folder / "index.m3u8"))
        self.hls_url = self._simulator.serve_folder("demo", self._folder)
        relay = shutil.which("rtsp-server-perl")
        if relay is None:
            log.warning("no rtsp-server-perl: the demo has no RTSP camera")
            return
        client, source = _free_port(), _free_port()
        await self._spawn(relay, *relay_args(client, source, 30000 + client % 20000))
        for _ in range(100):  # the relay takes a moment to listen
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", source)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await self._spawn(ffmpeg, "-nostdin", *TEST_CARD_ARGS, "-f", "rtsp", f"rtsp://127.0.0.1:{source}/demo")
        self.rtsp_url = f"rtsp://127.0.0.1:{client}/demo"

    async def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except TimeoutError:
                    proc.kill()
        if self._folder is not None:
            await asyncio.to_thread(shutil.rmtree, self._folder, True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
