"""Probing streams: a cheap liveness handshake on the event loop, a full frame check in a worker.

Liveness is plain asyncio: connect, one protocol exchange, the status line, within a timeout
(HTTP GET for MJPEG and HLS, RTSP OPTIONS for RTSP, the file for file URLs). It never decodes.

The full check opens the stream with OpenCV (FFmpeg) with bounded open and read timeouts (a
camera that accepts and never answers otherwise holds VideoCapture for 30 s), grabs frames over
an interval, measures each (`FrameStats`) and keeps the last frame as a JPEG. It runs in a worker
*process*: a stream that crashes the decoder takes down that worker, never the watch
(`FrameChecker` starts another and reports the camera).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import multiprocessing
import os
import ssl
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..domain.health import FrameStats

# FFmpeg's RTSP client: TCP first (what cameras behind NAT need), UDP when the server has no TCP
# (Debian's rtsp-server-perl relay). Read by OpenCV at each open; set before any is made.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp+udp")
# A dead or garbled stream is an answer here, not news for the log: FFmpeg and OpenCV stay quiet.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

_DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322}


@dataclass(frozen=True, slots=True)
class Liveness:
    up: bool
    reason: str
    latency_ms: float


async def liveness(url: str, timeout_s: float = 3.0) -> Liveness:
    """Connect and do one protocol exchange within `timeout_s` (connect and answer together)."""
    started = time.monotonic()

    def done(up: bool, reason: str) -> Liveness:
        return Liveness(up, reason, (time.monotonic() - started) * 1000)

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        exists = await asyncio.to_thread(Path(unquote(parts.path)).is_file)
        return done(exists, "file present" if exists else "no such file")
    host = parts.hostname or ""
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except (ValueError, KeyError):
        return done(False, "bad address")
    tls = ssl.create_default_context() if scheme in ("https", "rtsps") else None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=tls)
            except ConnectionRefusedError:
                return done(False, "connection refused")
            except OSError as exc:
                return done(False, f"cannot connect ({exc.strerror or type(exc).__name__})")
            if scheme in ("http", "https"):
                auth = ""
                if parts.username is not None:
                    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
                    auth = f"Authorization: Basic {base64.b64encode(pair).decode()}\r\n"
                request = (
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cityops-prober\r\n"
                    f"Accept: */*\r\n{auth}Connection: close\r\n\r\n"
                )
            else:
                target = f"{scheme}://{host}:{port}{path}"
                request = f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: cityops-prober\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return done(False, f"no answer within {timeout_s:g} s")
    except (OSError, ssl.SSLError) as exc:
        return done(False, f"connection failed ({type(exc).__name__})")
    finally:
        if writer is not None:
            writer.close()
    return done(*_judge_status_line(scheme, line))


def _judge_status_line(scheme: str, line: bytes) -> tuple[bool, str]:
    words = line.decode("latin-1", "replace").split()
    if not words:
        return False, "closed without answering"
    expected = "RTSP/" if scheme.startswith("rtsp") else "HTTP/"
    if not words[0].startswith(expected) or len(words) < 2 or not words[1].isdigit():
        return False, "answers, but not in the stream's protocol"
    code = int(words[1])
    if 200 <= code < 300:
        return True, f"answers ({code})"
    if scheme.startswith("rtsp") and code in (401, 403):
        return True, f"answers ({code}: OPTIONS needs credentials)"  # alive; the full check logs in
    if code in (401, 403):
        return False, f"credentials refused ({code})"
    if code == 404:
        return False, "no such stream (404)"
    return False, f"refused ({code})"


@dataclass(frozen=True, slots=True)
class FrameCheck:
    frames: list[FrameStats]
    jpeg: bytes | None
    error: str | None = None


def check_frames(url: str, open_timeout_s: float, read_timeout_s: float, interval_s: float) -> FrameCheck:
    """Open, grab frames over `interval_s`, measure them, keep the last as a JPEG (blocking)."""
    import cv2

    start = time.monotonic()
    capture = cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(read_timeout_s * 1000),
        ],
    )
    try:
        if not capture.isOpened():
            return FrameCheck([], None, f"cannot open the stream within {open_timeout_s:g} s")
        frames: list[FrameStats] = []
        first = None
        last = None
        opened = time.monotonic()
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            now = time.monotonic()
            small = cv2.resize(frame, (160, max(1, frame.shape[0] * 160 // max(1, frame.shape[1]))))
            gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            mean, std = cv2.meanStdDev(gray)
            sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
            diff = 0.0 if first is None else float(cv2.absdiff(gray, first).mean())
            if first is None:
                first = gray
            frames.append(FrameStats(int(now * 1000), float(mean[0][0]), float(std[0][0]), sharpness, diff))
            last = frame
            if now - opened >= interval_s and len(frames) >= 2:
                break
            if now - start > open_timeout_s + interval_s + read_timeout_s:
                break  # a stream trickling frames too slowly: judge what came
        if last is None:
            return FrameCheck([], None, f"opened, but no frame within {read_timeout_s:g} s")
        encoded, jpeg = cv2.imencode(".jpg", last, [cv2.IMWRITE_JPEG_QUALITY, 80])
        return FrameCheck(frames, bytes(jpeg) if encoded else None)
    finally:
        capture.release()


class FrameChecker:
    """Full checks in worker processes, at most `workers` at a time.

    A worker that dies (a decoder crash) breaks its pool and every check running in it. Each of
    those is run again alone, in a one-worker pool kept for that: the one that breaks it again is
    the stream that crashes the decoder, reported as such; the others get their answer."""

    def __init__(self, workers: int = 2, check: Callable[[str, float, float, float], FrameCheck] | None = None) -> None:
        self._check = check or check_frames  # a test swaps in one that crashes
        self._workers = workers
        self._pool = self._new_pool(workers)
        self._alone = self._new_pool(1)
        self._alone_lock = asyncio.Lock()
        self.crashes = 0

    @staticmethod
    def _new_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
        # forkserver: workers start from a small clean process, not a fork of this big one.
        return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))

    async def check(self, url: str, open_timeout_s: float, read_timeout_s: float, interval_s: float) -> FrameCheck:
        loop = asyncio.get_running_loop()
        args = (url, open_timeout_s, read_timeout_s, interval_s)
        pool = self._pool
        try:
            return await loop.run_in_executor(pool, self._check, *args)
        except BrokenProcessPool:
            if pool is self._pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool(self._workers)
        async with self._alone_lock:
            try:
                return await loop.run_in_executor(self._alone, self._check, *args)
            except BrokenProcessPool:
                self.crashes += 1
                self._alone.shutdown(wait=False, cancel_futures=True)
                self._alone = self._new_pool(1)
                return FrameCheck([], None, "the stream crashed the decoder")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._alone.shutdown(wait=False, cancel_futures=True)
