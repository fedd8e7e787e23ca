"""The embedded MQTT broker (amqtt, MQTT 3.1.1) for `cityops run` without CITYOPS_MQTT_URL."""

from __future__ import annotations

import logging
from typing import Any

from amqtt.broker import Broker

from kernel.errors import CityOpsError

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """amqtt listening on host:port inside this process."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None

    async def start(self) -> None:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:
            raise CityOpsError(f"embedded MQTT broker cannot listen on {self.host}:{self.port}: {exc}") from exc
        log.info("embedded MQTT broker on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
