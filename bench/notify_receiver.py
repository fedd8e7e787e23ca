"""A webhook receiver for bench/notify, in a process of its own: answers every POST with 200 at
once and counts them; `GET /count` tells how many (`?path=/hook/x`: to that path).

    python -m bench.notify_receiver PORT
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import parse_qs

import uvicorn

count = 0
by_path: dict[str, int] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global count
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["method"] == "POST":
        count += 1
        by_path[scope["path"]] = by_path.get(scope["path"], 0) + 1
        body = b'{"ok": true}'
    else:
        wanted = parse_qs(scope["query_string"].decode()).get("path", [""])[0]
        body = b'{"count": %d}' % (by_path.get(wanted, 0) if wanted else count)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
