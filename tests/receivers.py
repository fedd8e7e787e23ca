"""Local receivers for the notification channels: a real HTTP server (uvicorn) that records each
request and answers as the service it stands for would, and can be told to fail or to hang.

Used by the tests and by bench/notify; nothing here is a fake of our own code.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import uvicorn

from tests import servers


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers POSTs: `fail[path] = n` answers 500 to the next n; `hang[path] = s` holds each
    answer s seconds first; `robot` paths answer `{"errcode": 0, "errmsg": "ok"}` as WeCom and
    DingTalk do (or `robot_error[path]` as their refusal)."""

    base: str = ""
    received: list[Received] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    hang: dict[str, float] = field(default_factory=dict)
    robot_error: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, path: str, count: int = 1, timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.on(path)) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{path}: {len(self.on(path))} of {count} requests after {timeout_s} s")
            self.arrived.clear()
            try:
                async with asyncio.timeout(min(left, 0.2)):
                    await self.arrived.wait()
            except TimeoutError:
                pass
        return self.on(path)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode(), keep_blank_values=True).items()}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(path, query, headers, body, time.time()))
        self.arrived.set()
        if self.hang.get(path):
            await asyncio.sleep(self.hang[path])
        status, answer = 200, b'{"ok": true}'
        if self.fail.get(path, 0) > 0:
            self.fail[path] -= 1
            status, answer = 500, b'{"error": "told to fail"}'
        elif path.startswith("/robot"):
            answer = json.dumps(self.robot_error.get(path, {"errcode": 0, "errmsg": "ok"})).encode()
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    port = servers.free_port()
    server = uvicorn.Server(
        uvicorn.Config(receiver, host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.02)
    receiver.base = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.should_exit = True
        server.force_exit = True  # hanging answers are not waited for
        await asyncio.wait_for(task, 15)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
