"""The baseline: a bare paho subscriber that only counts messages (no checks, no stores).

`prime` creates its persistent session and leaves; `drain` reconnects and times how fast it
empties what the broker kept for it, or receives what is published meanwhile. Prints JSON.
`--parse` also decodes each payload with json.loads, the least any consumer of readings does.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["prime", "drain"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--client-id", default="bench-bare")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    parser.add_argument("--parse", action="store_true", help="json.loads each payload (the least a consumer does)")
    args = parser.parse_args()

    done = threading.Event()
    subscribed = threading.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe("city/sensors/+/+", qos=1)

    def on_subscribe(*_: object) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        if args.parse:
            json.loads(m.payload)
        now = time.perf_counter()
        if state["count"] == 0:
            state["first"] = now
        state["count"] += 1
        state["last"] = now
        if state["count"] >= args.n:
            done.set()

    if args.protocol == "5":
        # Like the gateway: a persistent session (clean_start off, an expiry) and a wide window.
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.ReceiveMaximum = 65_535
        props.SessionExpiryInterval = 3600
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=args.client_id, clean_session=False, protocol=mqtt.MQTTv311
        )
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    if args.protocol == "5":
        client.connect(args.host, args.port, keepalive=60, clean_start=False, properties=props)
    else:
        client.connect(args.host, args.port, keepalive=60)
    client.loop_start()
    subscribed.wait(30)
    print("subscribed", flush=True)
    if args.mode == "drain":
        done.wait(args.timeout)
    client.disconnect()
    client.loop_stop()
    span = state["last"] - state["first"]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "received": state["count"],
                "seconds": span,
                "rate": (state["count"] - 1) / span if span > 0 else 0.0,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "rss_mib": usage.ru_maxrss / 1024,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
