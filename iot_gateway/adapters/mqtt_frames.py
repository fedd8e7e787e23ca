"""MQTT packets cut from the bytes a connection delivered: the gateway's read path, without a socket.

`BulkReadClient` (mqtt_paho.py) feeds it what one `recv` returned; every complete QoS 0/1
PUBLISH is cut out here and handed on with its topic, payload, QoS and packet id, and every other
packet goes back to paho. Kept apart from the socket so every split point can be tested byte by byte.
"""

from __future__ import annotations

from collections.abc import Callable

from paho.mqtt.enums import MQTTErrorCode

# (topic, payload, qos, packet id): a QoS 0/1 PUBLISH.
PublishHandler = Callable[[str, bytes, int, int], None]
# (fixed header byte, the packet after its length) -> paho's result: every other packet.
OtherHandler = Callable[[int, bytearray], MQTTErrorCode]


def _varint(buf: bytearray, i: int, stop: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at `i`: (value, index after it), None if it runs to `stop`.

    Raises ValueError past 4 bytes, as the protocol allows no more."""
    value = 0
    shift = 0
    while i < stop:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 21:
            raise ValueError("variable byte integer longer than 4 bytes")
    return None


class PacketBuffer:
    """Bytes received and not yet handled; whole packets are handled, a partial one waits."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        """Forget everything (a new connection: nothing of the old one is valid)."""
        self._buf.clear()

    def has_frame(self) -> bool:
        """A whole packet waits (it needs no socket event to be handled)."""
        return self._frame_end(0) is not None

    def _frame_end(self, pos: int) -> tuple[int, int] | None:
        """(start of the variable header, end) of the packet at `pos`, or None if incomplete."""
        buf = self._buf
        length = _varint(buf, pos + 1, len(buf))
        if length is None:
            return None
        end = length[1] + length[0]
        return (length[1], end) if end <= len(buf) else None

    def handle(
        self,
        v5: bool,
        on_publish: PublishHandler,
        on_other: OtherHandler,
        hold: Callable[[], bool],
        burst: int,
    ) -> MQTTErrorCode:
        """Handle up to `burst` whole packets, stopping early while `hold()` is true (the rest
        waits here), or after another packet whose handling did not succeed.

        A packet that contradicts itself (headers running past its end, a length of more than 4
        bytes) is a protocol error: the stream can no longer be trusted to be cut right.
        """
        buf = self._buf
        pos = 0
        handled = 0
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            while handled < burst and not hold():
                frame = self._frame_end(pos)
                if frame is None:
                    break
                start, end = frame
                header = buf[pos]
                qos = (header >> 1) & 3
                topic_len = (buf[start] << 8) | buf[start + 1] if end - start >= 2 else 0
                if header & 0xF0 == 0x30 and qos < 2 and topic_len:
                    at = start + 2 + topic_len
                    raw_topic = bytes(buf[start + 2 : at])
                    mid = 0
                    if qos:
                        mid = (buf[at] << 8) | buf[at + 1]
                        at += 2
                    if v5:  # skip the properties (no topic aliases: we never allow the broker any)
                        props = _varint(buf, at, end)
                        if props is None:
                            return MQTTErrorCode.MQTT_ERR_PROTOCOL
                        at = props[1] + props[0]
                    if at > end:  # the headers run past the packet: a broken broker or stream
                        return MQTTErrorCode.MQTT_ERR_PROTOCOL
                    try:
                        topic = raw_topic.decode("utf-8")
                    except UnicodeDecodeError:
                        topic = raw_topic.decode("utf-8", errors="replace")
                    pos = end
                    handled += 1
                    on_publish(topic, bytes(buf[at:end]), qos, mid)
                else:
                    packet = bytearray(buf[start:end])
                    pos = end
                    rc = on_other(header, packet)
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
        except (IndexError, ValueError):  # a PUBLISH shorter than its own header says, or a bad length
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            del buf[:pos]
        return rc
