"""WebSocket clients for bench/wall, in a process of their own (as the wall's screens are).

    python -m bench.wall_clients URL CLIENTS SECONDS [--slow] [--skip-first]

Connects CLIENTS clients, waits for the go message on stdin, counts what each receives for
SECONDS and the latency of each reading (now minus the reading's `ts`: when it was published),
then prints one JSON line. With --slow one more client connects that never reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime

from websockets.asyncio.client import ClientConnection, connect


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main_async(args: argparse.Namespace) -> None:
    clients: list[ClientConnection] = [await connect(args.url, max_size=None) for _ in range(args.clients)]
    # The slow client: its library buffers one message, then stops reading its socket; it is
    # kept open (never read) until the process ends.
    slow = await connect(args.url, max_queue=1) if args.slow else None
    if args.skip_first:
        for c in clients:
            await c.recv()  # the snapshot
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    counts = [0] * len(clients)
    latencies: list[float] = []
    stop_at = time.monotonic() + args.seconds

    async def read(n: int, c: ClientConnection) -> None:
        while True:
            left = stop_at - time.monotonic()
            if left <= 0:
                return
            try:
                raw = await asyncio.wait_for(c.recv(), left)
            except TimeoutError:
                return
            counts[n] += 1
            if n % 10 == 0:  # latency from every tenth client is plenty
                data = json.loads(raw).get("data", {})
                if isinstance(data.get("ts"), str):  # a reading: its ts is when it was published
                    sent = datetime.fromisoformat(data["ts"]).timestamp() * 1000
                    latencies.append(time.time() * 1000 - sent)

    await asyncio.gather(*(read(n, c) for n, c in enumerate(clients)))
    print(
        json.dumps(
            {
                "received": sum(counts),
                "per_second": sum(counts) / args.seconds,
                "min_client": min(counts),
                "p50_ms": _pct(latencies, 0.5),
                "p99_ms": _pct(latencies, 0.99),
            }
        ),
        flush=True,
    )
    # No closing handshakes: a client that stopped reading has megabytes queued before the
    # server's close frame could reach it. The process ends and the sockets with it.
    del slow
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("clients", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--slow", action="store_true")
    parser.add_argument("--skip-first", action="store_true")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
