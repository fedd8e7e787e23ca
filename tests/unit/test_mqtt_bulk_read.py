"""The gateway's bulk MQTT read path: packets cut from a socket's bytes wherever the reads split them.

The integration tests drain real brokers through it; here the bytes are laid out by hand so every
split point, both protocol versions, v5 properties and a packet that is not a PUBLISH are covered.
"""

from __future__ import annotations

import random
import socket
import struct

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from iot_gateway.adapters.mqtt_paho import BulkReadClient


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload: bytes, qos: int, mid: int, v5: bool, props: bytes = b"") -> bytes:
    body = struct.pack(">H", len(topic.encode())) + topic.encode()
    if qos:
        body += struct.pack(">H", mid)
    if v5:
        body += _varint(len(props)) + props
    body += payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5"])
def test_packets_are_cut_wherever_the_reads_split_them(v5: bool) -> None:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = BulkReadClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    client._sock = ours  # the client reads this socket as it would a broker's
    got: list[tuple[str, bytes, int, int]] = []
    client.publish_handler = lambda topic, payload, qos, mid: got.append((topic, payload, qos, mid))
    expected = []
    stream = bytearray()
    rng = random.Random(7)
    for i in range(300):
        # A payload long enough (sometimes) that its length takes two bytes; a v5 expiry property.
        payload = b'{"ts": %d, "value": 1.5}' % i + b" " * rng.choice([0, 200])
        qos = i % 2
        topic = f"city/sensors/gas/g-{i}" if i % 7 else f"city/sensors/gas/烟感-{i}"
        stream += publish(topic, payload, qos, i + 1, v5, b"\x02\x00\x00\x00\x3c" if v5 and i % 3 == 0 else b"")
        expected.append((topic, payload, qos, (i + 1) if qos else 0))
        if i == 150:
            stream += b"\xd0\x00"  # a PINGRESP among them goes to paho's own handling
    try:
        at = 0
        while at < len(stream):
            step = rng.choice([1, 2, 3, 7, 50, 400, 5000])
            broker.sendall(bytes(stream[at : at + step]))
            at += step
            while client._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                if not client.has_frame():
                    break
        while client.has_frame():
            client._packet_read()
    finally:
        ours.close()
        broker.close()
    assert got == expected


def test_a_publish_shorter_than_its_header_says_is_a_protocol_error() -> None:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = BulkReadClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311)
    client._sock = ours
    client.publish_handler = lambda *_: None
    try:
        # Remaining length 3: a topic length of 200 cannot fit, and QoS 1 needs a packet id.
        broker.sendall(b"\x32\x03\x00\xc8a")
        assert client._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    finally:
        ours.close()
        broker.close()


def test_handling_stops_while_the_gateway_holds_and_resumes_from_the_buffer() -> None:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = BulkReadClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311)
    client._sock = ours
    got: list[str] = []
    client.publish_handler = lambda topic, *_: got.append(topic)
    client.hold = lambda: len(got) >= 10
    try:
        broker.sendall(b"".join(publish(f"t/{i}", b"x", 1, i + 1, False) for i in range(25)))
        client._packet_read()
        assert len(got) == 10
        assert client.has_frame()  # the rest waits in the buffer, not lost
        client.hold = lambda: False
        client._packet_read()  # no socket read needed: whole packets are buffered
        assert got == [f"t/{i}" for i in range(25)]
        assert not client.has_frame()
    finally:
        ours.close()
        broker.close()


def test_headers_running_past_their_packet_are_a_protocol_error_even_with_more_bytes_behind() -> None:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = BulkReadClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311)
    client._sock = ours
    got: list[str] = []
    client.publish_handler = lambda topic, *_: got.append(topic)
    try:
        # Topic length 9 in a packet of 5 bytes, followed by a good packet the bad one would eat into.
        broker.sendall(b"\x30\x05\x00\x09abc" + publish("t/ok", b"x", 0, 0, False))
        assert client._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
        assert got == []
    finally:
        ours.close()
        broker.close()


@pytest.mark.parametrize(
    "props",
    [b"\x7f", b"\x80", b"\xff\xff\xff\xff\x01"],
    ids=["longer than the packet", "length cut off by the packet's end", "length of 5 bytes"],
)
def test_v5_properties_running_past_their_packet_are_a_protocol_error(props: bytes) -> None:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = BulkReadClient(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    client._sock = ours
    got: list[str] = []
    client.publish_handler = lambda topic, *_: got.append(topic)
    try:
        # The property length is the packet's last bytes: it claims more than is left, or is too long to be one.
        body = struct.pack(">H", 3) + b"t/x" + struct.pack(">H", 1) + props
        broker.sendall(bytes([0x32]) + _varint(len(body)) + body + publish("t/ok", b"x", 0, 0, True))
        assert client._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
        assert got == []
    finally:
        ours.close()
        broker.close()
