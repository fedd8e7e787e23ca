"""Live view for browsers, without plugins: MJPEG proxied, HLS passed through, RTSP remuxed to HLS.

- MJPEG (`http(s)://` that is not a playlist): the camera's multipart stream is relayed as it is,
  chunk by chunk; the upstream connection closes when the viewer leaves.
- HLS (`.m3u8`): the playlist is fetched and each URI in it rewritten to our own
  `/api/cameras/{id}/live/u{the URI, base64}`, which fetches it from the camera's own server and
  from no other (nobody can use us to reach anything else).
- RTSP (and files): an ffmpeg child remuxes the stream into HLS segments in a temporary folder,
  without re-encoding when the video is H.264 or H.265 (what a browser plays in HLS), re-encoding
  to H.264 otherwise. It starts with the first viewer and stops when no viewer has asked for the
  playlist or a segment for `idle_s`; at most `max_remuxes` run at once, and past that a viewer
  gets a clear 503.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx

from kernel.redact import redact_text

from .domain.cameras import Camera

log = logging.getLogger(__name__)

HLS_TYPE = "application/vnd.apple.mpegurl"
_SEGMENT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_BROWSER_CODECS = ("h264", "hevc")
_EXTENSION = re.compile(r"^\.[a-z0-9]{1,5}$")


class LiveError(Exception):
    """The camera cannot be played now; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def kind_of(camera: Camera) -> str:
    """mjpeg, hls or remux: how a browser gets this camera's picture."""
    scheme = camera.scheme
    if scheme in ("rtsp", "rtsps", "file"):
        return "remux"
    path = urlsplit(camera.stream_url).path.lower()
    return "hls" if path.endswith(".m3u8") else "mjpeg"


@dataclass
class _Remux:
    camera_id: str
    folder: Path
    proc: asyncio.subprocess.Process
    codec: str = "?"
    ready: bool = False  # its first segment is there (until then the reaper leaves it alone)
    last_seen: float = field(default_factory=time.monotonic)
    log_tail: list[str] = field(default_factory=list)
    drain: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class LiveOptions:
    connect_timeout_s: float = 3.0
    max_remuxes: int = 8
    idle_s: float = 15.0
    first_segment_timeout_s: float = 20.0
    hls_time_s: float = 1.0


class LiveViews:
    def __init__(self, options: LiveOptions | None = None, ffmpeg: str | None = None) -> None:
        self._opts = options or LiveOptions()
        self._ffmpeg = ffmpeg or shutil.which("ffmpeg") or "ffmpeg"
        timeout = httpx.Timeout(self._opts.connect_timeout_s, read=10.0)
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._remuxes: dict[str, _Remux] = {}
        self._starting: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.started = 0

    async def stop_all(self) -> None:
        """Stop every remux now (the next viewer starts one anew)."""
        for camera_id in list(self._remuxes):
            await self._stop(camera_id)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await self.stop_all()
        await self._http.aclose()

    def stats(self) -> dict[str, object]:
        return {"remuxes": sorted(self._remuxes), "max_remuxes": self._opts.max_remuxes, "started": self.started}

    # --- MJPEG --------------------------------------------------------------------------------

    async def mjpeg(self, camera: Camera) -> tuple[str, AsyncIterator[bytes]]:
        """(content type, body) relayed from the camera; LiveError if it does not answer 200."""
        request = self._http.build_request("GET", camera.stream_url)
        try:
            upstream = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise LiveError(503, f"camera {camera.id} does not answer ({type(exc).__name__})") from exc
        if upstream.status_code != 200:
            await upstream.aclose()
            raise LiveError(503, f"camera {camera.id} refused the stream ({upstream.status_code})")
        content_type = upstream.headers.get("content-type", "multipart/x-mixed-replace")

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            except httpx.HTTPError:
                return  # the camera went away mid-stream: the viewer's stream ends
            finally:
                await upstream.aclose()

        return content_type, body()

    # --- HLS pass-through --------------------------------------------------------------------

    async def hls_playlist(self, camera: Camera, base: str, query: str) -> str:
        return await self._playlist(camera, camera.stream_url, base, query)

    async def _playlist(self, camera: Camera, url: str, base: str, query: str) -> str:
        try:
            answer = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise LiveError(503, f"camera {camera.id}'s playlist does not answer ({type(exc).__name__})") from exc
        if answer.status_code != 200:
            raise LiveError(503, f"camera {camera.id}'s playlist answered {answer.status_code}")
        lines = []
        for line in answer.text.splitlines():
            if line and not line.startswith("#"):
                # The upstream URI travels in our own URI (any API process can serve it), and is
                # fetched only from the camera's own server.
                upstream = urljoin(url, line.strip())
                token = base64.urlsafe_b64encode(upstream.encode()).decode().rstrip("=")
                # The upstream's extension stays at the end: players (FFmpeg's HLS reader among
                # them) refuse segments whose names do not say what they are.
                extension = PurePosixPath(urlsplit(upstream).path).suffix.lower()
                line = f"{base}/u{token}{extension if _EXTENSION.match(extension) else ''}{query}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _upstream(self, camera: Camera, part: str) -> str:
        try:
            raw = part.removeprefix("u").split(".", 1)[0]
            upstream = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            raise LiveError(404, "no such part of the live view") from None
        mine, theirs = urlsplit(camera.stream_url), urlsplit(upstream)
        same = (mine.scheme, mine.hostname, mine.port) == (theirs.scheme, theirs.hostname, theirs.port)
        if not part.startswith("u") or not same:
            raise LiveError(404, "no such part of the live view")
        return upstream

    async def hls_part(self, camera: Camera, part: str, base: str, query: str) -> tuple[str, bytes]:
        upstream = self._upstream(camera, part)
        if urlsplit(upstream).path.lower().endswith(".m3u8"):
            return HLS_TYPE, (await self._playlist(camera, upstream, base, query)).encode()
        try:
            answer = await self._http.get(upstream)
        except httpx.HTTPError as exc:
            raise LiveError(503, f"camera {camera.id}'s segment does not answer ({type(exc).__name__})") from exc
        if answer.status_code != 200:
            raise LiveError(503, f"camera {camera.id}'s segment answered {answer.status_code}")
        return answer.headers.get("content-type", "video/mp2t"), answer.content

    # --- RTSP (and files) remuxed by ffmpeg ------------------------------------------------------

    async def remux_playlist(self, camera: Camera, base: str, query: str) -> str:
        remux = await self._remux(camera)
        remux.last_seen = time.monotonic()
        text = (remux.folder / "index.m3u8").read_text()
        lines = [
            f"{base}/{line.strip()}{query}" if line and not line.startswith("#") else line for line in text.splitlines()
        ]
        return "\n".join(lines) + "\n"

    async def remux_part(self, camera: Camera, name: str) -> bytes:
        remux = self._remuxes.get(camera.id)
        if remux is None:
            raise LiveError(404, "the live view of this camera is not running (ask for the playlist again)")
        if not _SEGMENT_NAME.match(name) or name.startswith("."):
            raise LiveError(404, "no such segment")
        remux.last_seen = time.monotonic()
        try:
            return await asyncio.to_thread((remux.folder / name).read_bytes)
        except FileNotFoundError:
            raise LiveError(404, "that segment is gone (ask for the playlist again)") from None

    async def _remux(self, camera: Camera) -> _Remux:
        running = self._remuxes.get(camera.id)
        if running is not None and running.proc.returncode is None:
            return running
        lock = self._starting.setdefault(camera.id, asyncio.Lock())
        async with lock:
            running = self._remuxes.get(camera.id)
            if running is not None and running.proc.returncode is None:
                return running
            if running is not None:
                await self._stop(camera.id)
            if len(self._remuxes) >= self._opts.max_remuxes:
                raise LiveError(
                    503, f"{len(self._remuxes)} live remuxes are running, the most allowed: try again shortly"
                )
            if self._reaper is None:
                self._reaper = asyncio.create_task(self._reap(), name="live-reaper")
            return await self._start(camera)

    def _argv(self, camera: Camera, folder: Path, copy: bool) -> list[str]:
        source = camera.stream_url
        before: list[str] = ["-rtsp_transport", "tcp+udp"] if camera.scheme.startswith("rtsp") else []
        if camera.scheme == "file":
            source = urlsplit(source).path
            before = ["-re", "-stream_loop", "-1"]
        video = ["-c:v", "copy"] if copy else ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency"]
        return [
            self._ffmpeg,
            "-hide_banner",
            "-nostdin",
            *before,
            "-i",
            source,
            "-an",
            *video,
            "-f",
            "hls",
            "-hls_time",
            f"{self._opts.hls_time_s:g}",
            "-hls_list_size",
            "6",
            "-hls_flags",
            "delete_segments+omit_endlist",
            str(folder / "index.m3u8"),
        ]

    async def _start(self, camera: Camera, copy: bool = True) -> _Remux:
        folder = Path(tempfile.mkdtemp(prefix=f"cityops-live-{camera.id.replace(':', '_')}-"))
        proc = await asyncio.create_subprocess_exec(
            *self._argv(camera, folder, copy),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        remux = _Remux(camera.id, folder, proc)
        self._remuxes[camera.id] = remux
        self.started += 1
        codec_seen = asyncio.get_running_loop().create_future()
        remux.drain = asyncio.create_task(self._drain(remux, codec_seen), name=f"live-ffmpeg-{camera.id}")
        playlist = folder / "index.m3u8"
        deadline = time.monotonic() + self._opts.first_segment_timeout_s
        while time.monotonic() < deadline:
            if copy and codec_seen.done() and codec_seen.result() not in _BROWSER_CODECS:
                # Browsers play H.264 (and H.265) in HLS; anything else is encoded once more.
                log.info("live view of %s: %s is re-encoded to H.264", camera.id, codec_seen.result())
                await self._stop(camera.id)
                return await self._start(camera, copy=False)
            if proc.returncode is not None:
                break
            if await asyncio.to_thread(_has_segment, playlist):
                remux.codec = codec_seen.result() if codec_seen.done() else "?"
                remux.ready, remux.last_seen = True, time.monotonic()
                log.info("live view of %s started (%s, %s)", camera.id, remux.codec, "copied" if copy else "re-encoded")
                return remux
            await asyncio.sleep(0.1)
        why = redact_text(" / ".join(remux.log_tail[-3:]) or "no segment in time")
        await self._stop(camera.id)
        raise LiveError(503, f"camera {camera.id} cannot be played now: {why}"[:500])

    async def _drain(self, remux: _Remux, codec_seen: asyncio.Future[str]) -> None:
        """Read ffmpeg's messages (a full pipe would stall it): note the input's video codec and
        keep the last lines for an error message."""
        assert remux.proc.stderr is not None
        async for raw in remux.proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if not codec_seen.done() and "Video:" in line and "Stream #0" in line:
                codec = line.split("Video:", 1)[1].strip().split()[0].strip(",")
                codec_seen.set_result(codec)
            remux.log_tail = [*remux.log_tail[-9:], line]
        if not codec_seen.done():
            codec_seen.set_result("?")

    async def _stop(self, camera_id: str) -> None:
        remux = self._remuxes.pop(camera_id, None)
        if remux is None:
            return
        if remux.proc.returncode is None:
            remux.proc.terminate()
            try:
                await asyncio.wait_for(remux.proc.wait(), 5)
            except TimeoutError:
                remux.proc.kill()
                await remux.proc.wait()
        if remux.drain is not None:
            remux.drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await remux.drain
        await asyncio.to_thread(shutil.rmtree, remux.folder, True)
        log.info("live view of %s stopped", camera_id)

    async def _reap(self) -> None:
        """Stop remuxes nobody has watched for `idle_s` (a viewer of HLS keeps asking every segment)."""
        while True:
            await asyncio.sleep(min(1.0, self._opts.idle_s / 3))
            now = time.monotonic()
            for camera_id, remux in list(self._remuxes.items()):
                idle = remux.ready and now - remux.last_seen > self._opts.idle_s
                if idle or (remux.ready and remux.proc.returncode is not None):
                    await self._stop(camera_id)


def _has_segment(playlist: Path) -> bool:
    try:
        return ".ts" in playlist.read_text()
    except FileNotFoundError:
        return False
