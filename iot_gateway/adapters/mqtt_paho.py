"""MQTT client side of the gateway, on paho-mqtt.

The gateway is a QoS 1 subscriber with a persistent session (MQTT 3.1.1 clean_session=False),
so the broker keeps what sensors publish while the gateway restarts. paho runs its network loop
in a thread of its own; the message callback must be quick and never block on I/O.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from kernel.errors import ConfigError

log = logging.getLogger(__name__)

GATEWAY_TOPICS = ("city/sensors/+/+", "city/vehicles/+/gps", "city/devices/+/status")


@dataclass(frozen=True, slots=True)
class MqttTarget:
    """Where a broker is."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_mqtt_url(url: str) -> MqttTarget:
    """`mqtt://[user:pass@]host[:port]` or `mqtts://...` as a target."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp") or not parts.hostname:
        raise ConfigError(f"MQTT URL {url!r} must look like mqtt://host:port")
    tls = parts.scheme == "mqtts"
    return MqttTarget(
        host=parts.hostname,
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def subscription_topics(shared_group: str | None) -> list[str]:
    """The gateway's subscriptions, through a shared group when several gateways split the load."""
    if shared_group:
        return [f"$share/{shared_group}/{t}" for t in GATEWAY_TOPICS]
    return list(GATEWAY_TOPICS)


def new_client(target: MqttTarget, client_id: str, *, clean_session: bool) -> mqtt.Client:
    """A paho client (MQTT 3.1.1, which every broker here speaks, amqtt included)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    # Without this paho would raise out of its network thread and stop receiving.
    client.suppress_exceptions = True
    client.max_queued_messages_set(0)
    return client


class PahoIngress:
    """Subscribes to the gateway topics and hands each message to `on_message(topic, payload)`."""

    def __init__(
        self,
        target: MqttTarget,
        client_id: str,
        topics: list[str],
        on_message: Callable[[str, bytes], None],
        *,
        qos: int = 1,
        clean_session: bool = False,
    ) -> None:
        self._target = target
        self._topics = topics
        self._qos = qos
        self._handler = on_message
        self._client = new_client(target, client_id, clean_session=clean_session)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.connected = False
        self.last_error: str | None = None

    def _on_connect(
        self, client: mqtt.Client, _ud: object, _flags: object, reason: object, _p: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"connect refused: {reason}"
            log.error("MQTT %s", self.last_error)
            return
        self.connected = True
        # Subscribing on every connect keeps working after a broker that lost our session.
        result, _mid = client.subscribe([(t, self._qos) for t in self._topics])
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._subscribed.set()
        log.info(
            "MQTT connected to %s:%d, subscribed to %s", self._target.host, self._target.port, self._topics
        )

    def _on_disconnect(
        self, _c: mqtt.Client, _ud: object, _flags: object, reason: object, _p: object
    ) -> None:
        self.connected = False
        self._subscribed.clear()
        if getattr(reason, "is_failure", False):
            self.last_error = f"disconnected: {reason}"
            log.warning("MQTT %s; paho reconnects by itself", self.last_error)

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", errors="replace")
        try:
            self._handler(topic, bytes(msg.payload))
        except Exception:
            # One message must never take the gateway down; it is logged with its traceback.
            log.exception("gateway failed on a message on %r", topic)

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        self._client.connect_async(self._target.host, self._target.port, keepalive=30)
        self._client.loop_start()

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False
