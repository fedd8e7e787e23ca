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
import time
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)

BOUNDARY = b"cityopsframe"
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
        self.served = 0

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
            await asyncio.gather(*self._clients, return_exceptions=True)
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
