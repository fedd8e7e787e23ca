"""One contract for the `Sender` port, run against each channel's real local receiver: a local HTTP
server that checks the exact payload and signature each service documents, and a real SMTP
server (aiosmtpd) with STARTTLS or TLS on a certificate of a test CA (trustme).

Every sender: delivers to its receiver; raises DeliveryError when the receiver refuses; gives up
within its timeout when the receiver hangs.
"""

from __future__ import annotations

import asyncio
import base64
import email
import hashlib
import hmac
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import Message as EmailMessageIn
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from notify.adapters.senders import Delivery, DeliveryError, Sender, senders
from notify.domain.messages import Message
from tests import servers
from tests.receivers import Receiver, receiving

CHANNELS = ("webhook", "email", "wecom", "dingtalk", "sms")
MESSAGE = Message(
    "【新事件】[紧急] 铁炉水库水位超危险线",
    ("【新事件】[紧急] 铁炉水库水位超危险线", "级别 severity critical · 层级 tier 1", "网格 grid g-yongxing-01"),
    "http://127.0.0.1:8000/ack/lk-0123456789abcdef.1999999999999.abc",
)
NOTIFICATION = {
    "id": "nt-00112233445566aa",
    "kind": "incident",
    "event": "opened",
    "person_id": "wang",
    "post": "tier1",
    "incident_id": "inc-1",
    "ticket_id": None,
    "created_at": "2026-11-23T10:00:00+08:00",
}
DINGTALK_SECRET = "SECd0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7081920a1b2c3d4e5f60718293a4b5c6"


@dataclass
class Mailbox:
    messages: list[tuple[str, list[str], EmailMessageIn]] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.startswith("nobody@"):
            return "550 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@dataclass
class SmtpServer:
    host: str
    port: int
    ca_file: Path
    mailbox: Mailbox
    security: str


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=["starttls", "tls"])
def smtp(request: pytest.FixtureRequest, ca: trustme.CA, tmp_path: Path) -> Iterator[SmtpServer]:
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    mailbox = Mailbox()

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        mailbox.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.login == b"ops" and auth_data.password == b"s3cret-pass")

    port = servers.free_port()
    if request.param == "starttls":
        controller = Controller(
            mailbox,
            hostname="127.0.0.1",
            port=port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticate,
            auth_require_tls=True,
        )
    else:
        controller = Controller(
            # Implicit TLS: the whole session is encrypted (aiosmtpd's STARTTLS check does not see it).
            mailbox,
            hostname="127.0.0.1",
            port=port,
            ssl_context=context,
            authenticator=authenticate,
            auth_require_tls=False,
        )
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, ca_file, mailbox, request.param)
    finally:
        controller.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as r:
        yield r


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2.0) as c:
        yield c


def delivery(address: str, settings: dict[str, Any] | None = None) -> Delivery:
    return Delivery(NOTIFICATION, address, MESSAGE, settings or {})


def http_target(channel: str, receiver: Receiver) -> tuple[str, dict[str, Any], str]:
    """(address, channel settings, receiver path) for an HTTP channel."""
    if channel == "webhook":
        return receiver.url("/hook/wang"), {"secret": "whsec-test"}, "/hook/wang"
    if channel == "wecom":
        return receiver.url("/robot/wecom/send?key=693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"), {}, "/robot/wecom/send"
    if channel == "dingtalk":
        return (
            receiver.url("/robot/dingtalk/send?access_token=t0k3n"),
            {"secret": DINGTALK_SECRET},
            "/robot/dingtalk/send",
        )
    return "13800000001", {"url": receiver.url("/sms/send"), "api_key": "k3y", "sign": "海口12345"}, "/sms/send"


def check_payload(channel: str, got: Any) -> None:
    """What each service documents, checked on the request as the receiver got it."""
    body = got.json()
    if channel == "webhook":
        stamp = got.headers["x-cityops-timestamp"]
        expected = hmac.new(b"whsec-test", f"{stamp}.".encode() + got.body, hashlib.sha256).hexdigest()
        assert got.headers["x-cityops-signature"] == f"sha256={expected}"
        assert got.headers["x-cityops-notification"] == NOTIFICATION["id"]
        assert abs(int(stamp) - time.time()) < 60
        assert (body["id"], body["incident_id"], body["ack_url"]) == (NOTIFICATION["id"], "inc-1", MESSAGE.link)
        assert body["title"] == MESSAGE.title
    elif channel == "wecom":
        # WeCom group robot: msgtype markdown, content at most 4096 bytes of UTF-8, key in the URL.
        assert got.query == {"key": "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"}
        assert set(body) == {"msgtype", "markdown"}
        assert body["msgtype"] == "markdown"
        assert set(body["markdown"]) == {"content"}
        content = body["markdown"]["content"]
        assert len(content.encode()) <= 4096
        assert MESSAGE.title in content
        assert f"({MESSAGE.link})" in content
    elif channel == "dingtalk":
        # DingTalk robot, signed: timestamp (ms, within an hour) and sign = Base64(HmacSHA256(
        # secret, timestamp + "\n" + secret)), URL-encoded, computed here from the documentation.
        assert got.query["access_token"] == "t0k3n"
        stamp = int(got.query["timestamp"])
        assert abs(stamp - time.time() * 1000) < 3_600_000
        digest = hmac.new(DINGTALK_SECRET.encode(), f"{stamp}\n{DINGTALK_SECRET}".encode(), hashlib.sha256).digest()
        assert got.query["sign"] == base64.b64encode(digest).decode()  # the query parser undid the URL-encoding
        assert body["msgtype"] == "markdown"
        assert set(body["markdown"]) == {"title", "text"}
        assert MESSAGE.title in body["markdown"]["title"]
        assert MESSAGE.link in body["markdown"]["text"]
    else:
        assert got.headers["authorization"] == "Bearer k3y"
        assert body == {"to": "13800000001", "text": f"{MESSAGE.title} {MESSAGE.link}", "sign": "海口12345"}


async def send_via(channel: str, client: httpx.AsyncClient, d: Delivery) -> None:
    sender: Sender = senders(client, 2.0)[channel]
    assert sender.channel == channel
    await sender.send(d)


@pytest.mark.parametrize("channel", [c for c in CHANNELS if c != "email"])
async def test_an_http_channel_delivers_the_documented_payload(
    channel: str, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    address, settings, path = http_target(channel, receiver)
    await send_via(channel, client, delivery(address, settings))
    [got] = receiver.on(path)
    check_payload(channel, got)


@pytest.mark.parametrize("channel", [c for c in CHANNELS if c != "email"])
async def test_an_http_channel_raises_when_the_receiver_refuses(
    channel: str, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    address, settings, path = http_target(channel, receiver)
    receiver.fail[path] = 1
    with pytest.raises(DeliveryError, match="500"):
        await send_via(channel, client, delivery(address, settings))


@pytest.mark.parametrize("channel", ["wecom", "dingtalk"])
async def test_a_robot_that_answers_an_error_code_is_a_failure(
    channel: str, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    address, settings, path = http_target(channel, receiver)
    receiver.robot_error[path] = {"errcode": 310000, "errmsg": "sign not match"}
    with pytest.raises(DeliveryError, match="sign not match"):
        await send_via(channel, client, delivery(address, settings))


@pytest.mark.parametrize("channel", [c for c in CHANNELS if c != "email"])
async def test_an_http_channel_gives_up_on_a_hanging_receiver_within_its_timeout(
    channel: str, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    address, settings, path = http_target(channel, receiver)
    receiver.hang[path] = 30
    began = time.monotonic()
    with pytest.raises(DeliveryError, match="in time"):
        await send_via(channel, client, delivery(address, settings))
    assert time.monotonic() - began < 5


def mail_settings(smtp: SmtpServer, **extra: Any) -> dict[str, Any]:
    return {
        "host": smtp.host,
        "port": smtp.port,
        "security": smtp.security,
        "username": "ops",
        "password": "s3cret-pass",
        "from": "ops@city.example.cn",
        "ca_file": str(smtp.ca_file),
        **extra,
    }


async def test_email_is_delivered_over_tls_with_login(smtp: SmtpServer, client: httpx.AsyncClient) -> None:
    await send_via("email", client, delivery("wang@city.example.cn", mail_settings(smtp)))
    [(sender, recipients, message)] = smtp.mailbox.messages
    assert (sender, recipients) == ("ops@city.example.cn", ["wang@city.example.cn"])
    assert str(email.header.make_header(email.header.decode_header(message["Subject"]))) == MESSAGE.title
    assert message["Message-ID"] == f"<{NOTIFICATION['id']}@cityops>"
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode(message.get_content_charset() or "utf-8")
    assert MESSAGE.link is not None
    assert MESSAGE.link in text
    assert "级别 severity critical" in text
    assert smtp.mailbox.logins == [(b"ops", b"s3cret-pass")]


async def test_email_refused_for_a_wrong_password_or_an_untrusted_certificate(
    smtp: SmtpServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    with pytest.raises(DeliveryError):
        await send_via("email", client, delivery("wang@city.example.cn", mail_settings(smtp, password="wrong")))
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(DeliveryError):
        await send_via("email", client, delivery("wang@city.example.cn", mail_settings(smtp, ca_file=str(other_ca))))
    assert smtp.mailbox.messages == []


async def test_email_to_an_address_the_server_refuses_is_permanent(smtp: SmtpServer, client: httpx.AsyncClient) -> None:
    with pytest.raises(DeliveryError) as refused:
        await send_via("email", client, delivery("nobody@city.example.cn", mail_settings(smtp)))
    assert refused.value.permanent


async def test_email_gives_up_on_a_server_that_never_answers(client: httpx.AsyncClient) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts, never greets

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = {"host": "127.0.0.1", "port": port, "security": "none", "from": "ops@city.example.cn"}
    began = time.monotonic()
    try:
        with pytest.raises(DeliveryError):
            await send_via("email", client, delivery("wang@city.example.cn", settings))
    finally:
        server.close()
    assert time.monotonic() - began < 5


def test_the_dingtalk_signature_is_url_encoded_as_documented() -> None:
    from notify.domain.messages import dingtalk_sign, dingtalk_url

    sign = dingtalk_sign("this is secret", 1552920546388)
    expected = base64.b64encode(
        hmac.new(b"this is secret", b"1552920546388\nthis is secret", hashlib.sha256).digest()
    ).decode()
    assert unquote_plus(sign) == expected
    assert "+" not in sign
    assert "/" not in sign
    assert "=" not in sign
    url = dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=X", "this is secret", 1552920546388)
    assert url == f"https://oapi.dingtalk.com/robot/send?access_token=X&timestamp=1552920546388&sign={sign}"
    assert dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=X", None, 1) == (
        "https://oapi.dingtalk.com/robot/send?access_token=X"
    )
