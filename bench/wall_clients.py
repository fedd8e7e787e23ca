"""WebSocket clients for bench/wall, in a process of their own (as the wall's screens are).

    python -m bench.wall_clients URL CLIENTS SECONDS [--slow] [--skip-first] [--sample N]

Connects CLIENTS clients, waits for the go message on stdin, counts what each receives for
SECONDS and the latency of each reading (now minus the reading's `ts`: when it was published)
on every Nth client, then prints one JSON line. With --slow one more client connects and stops
reading its socket after the first message (the kernel's buffers fill, then the server's).

The clients are websockets' Sans-I/O protocol on asyncio's transports: the library parses the
frames, but there is no task, future or queue per message. A client of the websockets asyncio
API costs about four times as much CPU per message, and with 100 of them one process could not
read what the servers sent on this 2-core machine: the bench measured the client, not the hub.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Client(asyncio.Protocol):
    def __init__(self, url: str, *, measure: bool, stop_after_first: bool) -> None:
        self.ws = ClientProtocol(parse_uri(url), max_size=None)
        self.measure = measure
        self.stop_after_first = stop_after_first
        self.open = asyncio.get_running_loop().create_future()
        self.first = asyncio.get_running_loop().create_future()
        self.counting = False
        self.count = 0
        self.latencies: list[float] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ws.send_request(self.ws.connect())
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    self.open.set_exception(self.ws.handshake_exc)
                else:
                    self.open.set_result(None)
                continue
            frame = cast(Frame, event)
            if frame.opcode is not Opcode.TEXT:
                continue
            if not self.first.done():
                self.first.set_result(None)
                if self.stop_after_first and self.transport is not None:
                    self.transport.pause_reading()
                    return
            if not self.counting:
                continue
            self.count += 1
            if self.measure:
                data_ = json.loads(bytes(frame.data)).get("data", {})
                if isinstance(data_.get("ts"), str):  # a reading: its ts is when it was published
                    sent = datetime.fromisoformat(data_["ts"]).timestamp() * 1000
                    self.latencies.append(time.time() * 1000 - sent)
        self._flush()  # pongs for the server's pings


async def open_client(url: str, *, measure: bool = False, stop_after_first: bool = False) -> Client:
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    _transport, client = await loop.create_connection(
        lambda: Client(url, measure=measure, stop_after_first=stop_after_first), uri.host, uri.port
    )
    await client.open
    return client


async def main_async(args: argparse.Namespace) -> None:
    clients = [await open_client(args.url, measure=n % args.sample == 0) for n in range(args.clients)]
    slow = await open_client(args.url, stop_after_first=True) if args.slow else None
    for c in clients + ([slow] if slow else []):
        if args.skip_first:
            await c.first  # the snapshot
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for c in clients:
        c.counting = True
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    for c in clients:
        c.counting = False
    elapsed = time.monotonic() - started
    counts = [c.count for c in clients]
    latencies = [x for c in clients for x in c.latencies]
    print(
        json.dumps(
            {
                "received": sum(counts),
                "per_second": sum(counts) / elapsed,
                "min_client": min(counts),
                "p50_ms": _pct(latencies, 0.5),
                "p99_ms": _pct(latencies, 0.99),
                "samples": len(latencies),
            }
        ),
        flush=True,
    )
    # No closing handshakes: a client that stopped reading has megabytes queued before the
    # server's close frame could reach it. The process ends and the sockets with it.
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("clients", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--skip-first", action="store_true")
    parser.add_argument("--sample", type=int, default=10, help="measure latency on every Nth client")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
