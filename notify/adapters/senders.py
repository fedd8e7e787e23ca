"""The channels, each an adapter behind one port (`Sender`): webhook, e-mail over SMTP, the WeCom
group robot, the DingTalk robot and an HTTP SMS gateway.

A sender either returns (the receiver took the message) or raises DeliveryError with what went
wrong; it never waits longer than its timeout, so a receiver that hangs costs one delivery
slot for that long and no more.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import aiosmtplib
import httpx

from ..domain.messages import (
    Message,
    dingtalk_body,
    dingtalk_url,
    sms_text,
    webhook_body,
    webhook_signature,
    wecom_body,
)


class DeliveryError(Exception):
    """The receiver did not take the message (`permanent`: retrying cannot help)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Delivery:
    notification: Mapping[str, Any]  # id, kind, event, person_id, post, incident_id, ticket_id, created_at
    address: str
    message: Message
    settings: Mapping[str, Any] = field(default_factory=dict)


class Sender(Protocol):
    channel: str

    async def send(self, delivery: Delivery) -> None: ...


def _check_status(response: httpx.Response, what: str) -> None:
    if response.status_code >= 400:
        permanent = response.status_code in (400, 401, 403, 404, 410, 422)
        raise DeliveryError(f"{what} answered {response.status_code}: {response.text[:200]}", permanent=permanent)


async def _post(client: httpx.AsyncClient, url: str, what: str, **kwargs: Any) -> httpx.Response:
    try:
        return await client.post(url, **kwargs)
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"{what} did not answer in time ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{what} could not be reached: {type(exc).__name__}: {exc}") from exc


class WebhookSender:
    channel = "webhook"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def send(self, delivery: Delivery) -> None:
        body = json.dumps(webhook_body(delivery.notification, delivery.message), ensure_ascii=False).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Cityops-Notification": str(delivery.notification["id"]),
            "X-Cityops-Timestamp": str(timestamp),
        }
        secret = delivery.settings.get("secret")
        if secret:
            headers["X-Cityops-Signature"] = webhook_signature(str(secret), timestamp, body)
        response = await _post(self._client, delivery.address, "the webhook", content=body, headers=headers)
        _check_status(response, "the webhook")


class RobotSender:
    """WeCom's group robot and DingTalk's robot: a JSON POST answered by `{"errcode": 0, ...}`."""

    def __init__(self, client: httpx.AsyncClient, channel: str) -> None:
        assert channel in ("wecom", "dingtalk")
        self._client = client
        self.channel = channel

    async def send(self, delivery: Delivery) -> None:
        if self.channel == "wecom":
            url, body = delivery.address, wecom_body(delivery.message)
        else:
            secret = delivery.settings.get("secret")
            url = dingtalk_url(delivery.address, str(secret) if secret else None, int(time.time() * 1000))
            body = dingtalk_body(delivery.message)
        what = f"the {self.channel} robot"
        response = await _post(self._client, url, what, json=body)
        _check_status(response, what)
        try:
            answer = response.json()
        except ValueError as exc:
            raise DeliveryError(f"{what} answered something other than JSON: {response.text[:200]}") from exc
        if not isinstance(answer, dict) or answer.get("errcode") != 0:
            raise DeliveryError(f"{what} refused the message: {str(answer)[:200]}")


class SmsSender:
    """A configurable HTTP SMS gateway: `{"to", "text", "sign"}` POSTed with a Bearer key."""

    channel = "sms"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def send(self, delivery: Delivery) -> None:
        url = delivery.settings.get("url")
        if not url:
            raise DeliveryError("no SMS gateway is configured (PUT /api/channels/sms)", permanent=True)
        headers = {"X-Cityops-Notification": str(delivery.notification["id"])}
        if delivery.settings.get("api_key"):
            headers["Authorization"] = f"Bearer {delivery.settings['api_key']}"
        body = {"to": delivery.address, "text": sms_text(delivery.message), "sign": delivery.settings.get("sign", "")}
        response = await _post(self._client, str(url), "the SMS gateway", json=body, headers=headers)
        _check_status(response, "the SMS gateway")


class EmailSender:
    channel = "email"

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s

    async def send(self, delivery: Delivery) -> None:
        s = delivery.settings
        if not s.get("host"):
            raise DeliveryError("no SMTP server is configured (PUT /api/channels/email)", permanent=True)
        mail = EmailMessage()
        mail["From"] = str(s["from"])
        mail["To"] = delivery.address
        mail["Subject"] = delivery.message.title
        mail["Message-ID"] = f"<{delivery.notification['id']}@cityops>"
        mail.set_content(delivery.message.text)
        security = s.get("security", "starttls")
        context = ssl.create_default_context(cafile=s.get("ca_file"))
        try:
            await aiosmtplib.send(
                mail,
                hostname=str(s["host"]),
                port=int(s.get("port", 587)),
                username=s.get("username"),
                password=s.get("password"),
                use_tls=security == "tls",
                start_tls=security == "starttls",
                tls_context=context if security != "none" else None,
                timeout=self._timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"the SMTP server refused the address: {exc}", permanent=True) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"the SMTP server did not take the message: {type(exc).__name__}: {exc}") from exc


def senders(client: httpx.AsyncClient, timeout_s: float) -> dict[str, Sender]:
    return {
        "webhook": WebhookSender(client),
        "email": EmailSender(timeout_s),
        "wecom": RobotSender(client, "wecom"),
        "dingtalk": RobotSender(client, "dingtalk"),
        "sms": SmsSender(client),
    }
