"""MQTT client side of the gateway, on paho-mqtt.

The gateway is a QoS 1 subscriber with a persistent session, so the broker keeps what sensors
publish while the gateway restarts, and it acknowledges each message itself, only once what the
message yielded is stored (paho's manual acknowledgement). The broker then holds every message
not yet acknowledged, so it must let many be in flight at once: with MQTT v5 the gateway
announces a Receive Maximum of 65,535 and a session expiry interval (Mosquitto keeps a v5
session only with both clean_start=False and an expiry); MQTT 3.1.1 (the embedded amqtt broker,
which speaks nothing newer) uses clean_session=False and the broker's own window. The message
callback runs on the event loop: it must be quick and never block on I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iot_gateway.adapters.mqtt_frames import PacketBuffer, PublishHandler
from kernel.errors import ConfigError
from kernel.redact import redact_url

log = logging.getLogger(__name__)

GATEWAY_TOPICS = ("city/sensors/+/+", "city/vehicles/+/gps", "city/devices/+/status")
# The most QoS 1 messages MQTT v5 lets a client have unacknowledged (a 16-bit count).
RECEIVE_MAXIMUM = 65_535
Protocol = Literal["3.1.1", "5"]


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where a broker is."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    # A CA bundle for mqtts:// with a private CA (None: the system's trust store).
    ca_file: str | None = None


def parse_mqtt_url(url: str, ca_file: str | None = None) -> MqttTarget:
    """`mqtt://[user:pass@]host[:port]` or `mqtts://...` as a target."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"MQTT URL {redact_url(url)!r} must look like mqtt://host:port") from exc
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise ConfigError(f"MQTT URL {redact_url(url)!r} must look like mqtt://host:port")
    tls = parts.scheme == "mqtts"
    return MqttTarget(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        ca_file=ca_file,
    )


def subscription_topics(shared_group: str | None) -> list[str]:
    """The gateway's subscriptions, through a shared group when several gateways split the load."""
    if shared_group:
        return [f"$share/{shared_group}/{t}" for t in GATEWAY_TOPICS]
    return list(GATEWAY_TOPICS)


def new_client(
    target: MqttTarget,
    client_id: str,
    *,
    clean_session: bool,
    protocol: Protocol = "3.1.1",
    manual_ack: bool = False,
    cls: type[mqtt.Client] = mqtt.Client,
) -> mqtt.Client:
    """A paho client: MQTT 3.1.1 (every broker here speaks it, amqtt included) or 5."""
    if protocol == "5":
        client = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    else:
        client = cls(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
            manual_ack=manual_ack,
        )
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set(ca_certs=target.ca_file)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    # Without this paho would raise out of its network thread and stop receiving.
    client.suppress_exceptions = True
    client.max_queued_messages_set(0)
    return client


# The most bytes taken from the socket in one read: a few thousand readings.
READ_CHUNK = 256 * 1024


class BulkReadClient(mqtt.Client):
    """paho with a bulk read path for incoming PUBLISH packets: the gateway's hot loop.

    paho reads a packet with three or more `recv` calls (the command byte, each length byte,
    the rest) and builds an MQTTMessage with parsed v5 properties for each. Profiled under a
    100,000-reading drain, that was half of the gateway's CPU and capped a bare paho subscriber
    at 8-12k readings/s. Here one `recv` takes up to READ_CHUNK bytes; every complete QoS 0/1
    PUBLISH in it is cut out of the buffer and handed to `publish_handler(topic, payload, qos,
    mid)`. Every other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, a QoS 2 PUBLISH, one with
    a topic alias) goes to paho's own handling unchanged, so connection, session, keepalive and
    TLS stay paho's. It overrides `_packet_read`, a private method: paho is pinned, and the
    gateway's MQTT tests (both protocols, TLS, reconnects, acks across reconnects) cover it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publish_handler: PublishHandler = lambda _t, _p, _q, _m: None
        # Handling stops early while this is true (the gateway's backpressure); the rest waits here.
        self.hold: Callable[[], bool] = lambda: False
        self.burst = 256
        self._frames = PacketBuffer()
        self._rsock: Any = None

    def has_frame(self) -> bool:
        """A whole packet waits in the buffer (it needs no socket event to be handled)."""
        return self._frames.has_frame()

    def _packet_read(self) -> MQTTErrorCode:
        if self._rsock is not self._sock:  # a new connection: nothing of the old one is valid
            self._frames.clear()
            self._rsock = self._sock
        if not self._frames.has_frame():
            try:
                data = self._sock_recv(READ_CHUNK)
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except OSError as err:
                log.warning("MQTT receive failed: %s", err)
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if not data:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            self._frames.feed(data)
            with self._msgtime_mutex:
                self._last_bytes_received = time.monotonic()
        hold = self.hold
        sock = self._sock
        return self._frames.handle(
            self._protocol == mqtt.MQTTv5,
            self.publish_handler,
            self._paho_packet,
            # Also stop once paho's handling closed or replaced the connection.
            lambda: hold() or self._sock is not sock,
            self.burst,
        )

    def _paho_packet(self, header: int, packet: bytearray) -> MQTTErrorCode:
        """Any packet but a QoS 0/1 PUBLISH, through paho's own handling."""
        self._in_packet["command"] = header
        self._in_packet["packet"] = packet
        self._in_packet["pos"] = 0
        try:
            rc: MQTTErrorCode = self._packet_handle()
        except MalformedPacket as exc:
            log.warning("malformed MQTT packet from the broker: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet["command"] = 0
            self._in_packet["packet"] = bytearray()
        return rc


class PahoIngress:
    """Subscribes to the gateway topics and hands each message to `on_message(topic, payload)`.

    paho runs inside the asyncio event loop (its external-loop hooks, as aiomqtt does), not in
    a thread of its own: with one thread there is no GIL convoy between paho's many small
    socket calls and the writer, which halved throughput when paho had its own thread.
    Backpressure: while `backlogged()` is true the socket is not read, so TCP and then the
    broker hold the QoS 1 messages instead of this process growing without bound.
    `on_message(topic, payload, ack)` gets an `ack` to call once the message is stored (None
    for QoS 0). An ack from before a reconnect is dropped: the broker delivers that message
    again on the new connection, and its packet id may by then name another message.
    """

    # Messages handled per turn of the event loop before other tasks get one.
    READ_BURST = 256

    def __init__(
        self,
        target: MqttTarget,
        client_id: str,
        topics: list[str],
        on_message: Callable[[str, bytes, Callable[[], None] | None], None],
        *,
        qos: int = 1,
        clean_session: bool = False,
        backlogged: Callable[[], bool] = lambda: False,
        protocol: Protocol = "3.1.1",
        session_expiry_s: int = 7 * 86_400,
    ) -> None:
        self._target = target
        self._topics = topics
        self._qos = qos
        self._handler = on_message
        self._backlogged = backlogged
        self._protocol = protocol
        self._clean_session = clean_session
        self._session_expiry_s = session_expiry_s
        client = new_client(
            target, client_id, clean_session=clean_session, protocol=protocol, manual_ack=True, cls=BulkReadClient
        )
        assert isinstance(client, BulkReadClient)
        client.publish_handler = self._on_publish
        client.hold = backlogged
        client.burst = self.READ_BURST
        self._client = client
        # Acknowledgements wait here for one write of them all (a PUBACK each costs a send otherwise).
        self._acks: list[int] = []
        self._client.connect_timeout = 5.0
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = self._on_unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sock: Any = None
        self._paused = False
        self._reading = True
        self._stopping = False
        self._generation = 0
        self._received = 0
        self.pauses = 0
        self._ever_connected = False
        self.connected = False
        self.last_error: str | None = None

    # --- paho's hooks (all run on the event loop thread, or are sent there) -------------------

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, _c: mqtt.Client, _ud: object, sock: Any) -> None:
        self._in_loop(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        self._sock = sock
        self._paused = False
        if self._reading:
            self._loop.add_reader(sock, self._on_readable)

    def _on_socket_close(self, _c: mqtt.Client, _ud: object, sock: Any) -> None:
        self._in_loop(self._unwatch, sock)

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._sock is sock:
            self._sock = None

    def _on_register_write(self, client: mqtt.Client, _ud: object, sock: Any) -> None:
        assert self._loop is not None
        self._in_loop(self._loop.add_writer, sock, client.loop_write)

    def _on_unregister_write(self, _c: mqtt.Client, _ud: object, sock: Any) -> None:
        assert self._loop is not None
        self._in_loop(self._loop.remove_writer, sock)

    def _on_readable(self) -> None:
        if self._sock is None or self._paused or not self._reading:
            return  # a read scheduled by call_soon may find the reader paused or stopped meanwhile
        # One read of up to READ_CHUNK bytes, then at most READ_BURST messages handled.
        self._client.loop_read()
        assert self._loop is not None
        if self._backlogged() and self._sock is not None and not self._paused:
            self._paused = True
            self.pauses += 1
            self._loop.remove_reader(self._sock)
            self._loop.call_later(0.01, self._maybe_resume)
        elif self._more_waiting():
            self._loop.call_soon(self._on_readable)

    def _more_waiting(self) -> bool:
        # Whole packets left in our buffer, or bytes in the SSL layer, wake no reader by themselves.
        return self._sock is not None and (self._client.has_frame() or self._tls_pending())

    def _tls_pending(self) -> bool:
        # TLS decrypts whole records (up to 16 KiB, hundreds of small messages): what is left in
        # the SSL layer after a burst is no longer on the socket, and would wake no reader. paho's
        # own loop checks pending() for the same reason before it waits in select().
        pending = getattr(self._sock, "pending", None)
        return bool(pending is not None and pending())

    def _maybe_resume(self) -> None:
        assert self._loop is not None
        if not self._paused or self._sock is None or not self._reading:
            return
        if self._backlogged():
            self._loop.call_later(0.01, self._maybe_resume)
            return
        self._paused = False
        self._loop.add_reader(self._sock, self._on_readable)
        if self._more_waiting():
            self._loop.call_soon(self._on_readable)

    def _on_connect(self, client: mqtt.Client, _ud: object, _flags: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"connect refused: {reason}"
            log.error("MQTT %s", self.last_error)
            return
        self.connected = True
        # Acks of messages from an earlier connection no longer apply (see the class docstring).
        self._generation += 1
        self._in_loop(self._acks.clear)
        # Subscribing on every connect keeps working after a broker that lost our session.
        result, _mid = client.subscribe([(t, self._qos) for t in self._topics])
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._in_loop(self._subscribed.set)
        log.info("MQTT connected to %s:%d, subscribed to %s", self._target.host, self._target.port, self._topics)

    def _on_disconnect(self, _c: mqtt.Client, _ud: object, _flags: object, reason: object, _p: object) -> None:
        self.connected = False
        self._in_loop(self._subscribed.clear)
        if getattr(reason, "is_failure", False):
            self.last_error = f"disconnected: {reason}"
            log.warning("MQTT %s; reconnecting", self.last_error)

    def _ack(self, generation: int, mid: int) -> None:
        if generation == self._generation and self.connected:
            self._acks.append(mid)
            if len(self._acks) == 1:
                assert self._loop is not None
                self._loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        """Every PUBACK waiting, as one write (the short form: success, no properties, in 3.1.1 and 5)."""
        mids, self._acks = self._acks, []
        if mids and self.connected and self._sock is not None:
            blob = struct.pack(f">{len(mids)}I", *[0x40020000 | mid for mid in mids])
            self._client._packet_queue(mqtt.PUBACK, blob, 0, 0)

    def _on_publish(self, topic: str, payload: bytes, qos: int, mid: int) -> None:
        self._received += 1
        ack = None
        if qos > 0:
            generation = self._generation
            ack = lambda: self._ack(generation, mid)  # noqa: E731 - a closure per message is the cheapest form
        try:
            self._handler(topic, payload, ack)
        except Exception:
            # As in _on_message: one message must never stop the gateway; unacknowledged, it comes again.
            log.exception("gateway failed on a message on %r", topic)

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        self._received += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", errors="replace")
        ack = None
        if msg.qos > 0:
            generation, mid = self._generation, msg.mid
            ack = lambda: self._ack(generation, mid)  # noqa: E731 - a closure per message is the cheapest form
        try:
            self._handler(topic, bytes(msg.payload), ack)
        except Exception:
            # The gateway's check never raises; should anything else, one message must not stop
            # the gateway. Unacknowledged, the broker offers it again on the next connection.
            log.exception("gateway failed on a message on %r", topic)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; retried with backoff until the broker answers."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self._keep_connected(), name="mqtt-ingress")

    async def _connect(self) -> None:
        # The TCP connect blocks; it runs in a thread, and the hooks it fires are sent to the loop.
        if self._ever_connected:
            await asyncio.to_thread(self._client.reconnect)
        elif self._protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.ReceiveMaximum = RECEIVE_MAXIMUM
            props.SessionExpiryInterval = 0 if self._clean_session else self._session_expiry_s
            await asyncio.to_thread(
                self._client.connect,
                self._target.host,
                self._target.port,
                30,
                clean_start=self._clean_session,
                properties=props,
            )
            self._ever_connected = True
        else:
            await asyncio.to_thread(self._client.connect, self._target.host, self._target.port, 30)
            self._ever_connected = True

    async def _keep_connected(self) -> None:
        backoff = 1.0
        while not self._stopping:
            if self._sock is None:
                try:
                    await self._connect()
                    backoff = 1.0
                except (OSError, ValueError) as exc:
                    self.last_error = f"cannot reach broker: {exc}"
                    log.warning("MQTT %s; retrying in %.0fs", self.last_error, backoff)
                    await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, 30.0)
                    continue
            else:
                self._client.loop_misc()
            await asyncio.sleep(1.0)

    async def wait_subscribed(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def stop_reading(self) -> None:
        """Take no more messages, but stay connected so the acks of what was taken still go out."""
        self._reading = False
        if self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock)

    async def stop(self) -> None:
        """Disconnect cleanly (the broker keeps the persistent session) and stop reconnecting."""
        self.stop_reading()
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._client.disconnect()
            for _ in range(100):  # the DISCONNECT goes out on the next writable event
                if self._sock is None:
                    break
                await asyncio.sleep(0.01)
            if self._sock is not None:
                self._unwatch(self._sock)
        self.connected = False
