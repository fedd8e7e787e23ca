"""The gateway's bulk MQTT read path: packets cut from a connection's bytes wherever the reads split them.

The integration tests drain real brokers through it (`BulkReadClient` feeds each `recv` to a
`PacketBuffer`); here the bytes are laid out by hand so every split point, both protocol versions,
v5 properties and a packet that is not a PUBLISH are covered.
"""

from __future__ import annotations

import random
import struct

import pytest
from paho.mqtt.enums import MQTTErrorCode

from iot_gateway.adapters.mqtt_frames import PacketBuffer


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


class Reader:
    """What BulkReadClient does with a PacketBuffer, minus the socket: what was handed where."""

    def __init__(self, v5: bool = False) -> None:
        self.v5 = v5
        self.frames = PacketBuffer()
        self.published: list[tuple[str, bytes, int, int]] = []
        self.others: list[tuple[int, bytes]] = []
        # The gateway holds (backpressure) once this many messages were handed on.
        self.hold_at: int | None = None

    def on_publish(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        self.published.append((topic, payload, qos, mid))

    def on_other(self, header: int, packet: bytearray) -> MQTTErrorCode:
        self.others.append((header, bytes(packet)))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def read(self, data: bytes) -> MQTTErrorCode:
        self.frames.feed(data)
        return self.frames.handle(self.v5, self.on_publish, self.on_other, self.holding, 256)

    def holding(self) -> bool:
        return self.hold_at is not None and len(self.published) >= self.hold_at

    @property
    def topics(self) -> list[str]:
        return [topic for topic, *_ in self.published]


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5"])
def test_packets_are_cut_wherever_the_reads_split_them(v5: bool) -> None:
    reader = Reader(v5)
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
    at = 0
    while at < len(stream):
        step = rng.choice([1, 2, 3, 7, 50, 400, 5000])
        assert reader.read(bytes(stream[at : at + step])) == MQTTErrorCode.MQTT_ERR_SUCCESS
        at += step
        while reader.frames.has_frame():  # more than a burst came in one read
            assert reader.read(b"") == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert reader.published == expected
    assert reader.others == [(0xD0, b"")]


def test_a_publish_shorter_than_its_header_says_is_a_protocol_error() -> None:
    reader = Reader()
    # Remaining length 3: a topic length of 200 cannot fit, and QoS 1 needs a packet id.
    assert reader.read(b"\x32\x03\x00\xc8a") == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert reader.published == []


def test_a_length_of_more_than_four_bytes_is_a_protocol_error() -> None:
    reader = Reader()
    assert reader.read(b"\x30\xff\xff\xff\xff\x01") == MQTTErrorCode.MQTT_ERR_PROTOCOL


def test_handling_stops_while_the_gateway_holds_and_resumes_from_the_buffer() -> None:
    reader = Reader()
    reader.hold_at = 10
    reader.read(b"".join(publish(f"t/{i}", b"x", 1, i + 1, False) for i in range(25)))
    assert len(reader.published) == 10
    assert reader.frames.has_frame()  # the rest waits in the buffer, not lost
    reader.hold_at = None
    reader.read(b"")  # nothing new from the socket: whole packets are buffered
    assert reader.topics == [f"t/{i}" for i in range(25)]
    assert not reader.frames.has_frame()


def test_headers_running_past_their_packet_are_a_protocol_error_even_with_more_bytes_behind() -> None:
    reader = Reader()
    # Topic length 9 in a packet of 5 bytes, followed by a good packet the bad one would eat into.
    assert reader.read(b"\x30\x05\x00\x09abc" + publish("t/ok", b"x", 0, 0, False)) == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert reader.published == []


@pytest.mark.parametrize(
    "props",
    [b"\x7f", b"\x80", b"\xff\xff\xff\xff\x01"],
    ids=["longer than the packet", "length cut off by the packet's end", "length of 5 bytes"],
)
def test_v5_properties_running_past_their_packet_are_a_protocol_error(props: bytes) -> None:
    reader = Reader(v5=True)
    # The property length is the packet's last bytes: it claims more than is left, or is too long to be one.
    body = struct.pack(">H", 3) + b"t/x" + struct.pack(">H", 1) + props
    packet = bytes([0x32]) + _varint(len(body)) + body
    assert reader.read(packet + publish("t/ok", b"x", 0, 0, True)) == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert reader.published == []


def test_another_packet_that_paho_refuses_stops_the_handling_there() -> None:
    reader = Reader()
    reader.on_other = lambda header, packet: MQTTErrorCode.MQTT_ERR_PROTOCOL  # type: ignore[method-assign]
    stream = publish("t/1", b"x", 0, 0, False) + b"\xd0\x00" + publish("t/2", b"x", 0, 0, False)
    assert reader.read(stream) == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert reader.topics == ["t/1"]
