"""What a notification says, and the exact bodies each channel's receiver documents.

- generic webhook: our JSON, signed: `X-Cityops-Signature: sha256=HEX` is HMAC-SHA256 of
  `TIMESTAMP.BODY` with the webhook secret, `X-Cityops-Timestamp` the Unix seconds, and
  `X-Cityops-Notification` the notification's id (the same on every retry: receivers drop a
  repeat by it);
- WeCom group robot: `{"msgtype": "markdown", "markdown": {"content": ...}}`, content at most
  4096 bytes of UTF-8;
- DingTalk robot: `{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}}` to the robot's
  URL, with `&timestamp=MS&sign=S` added when the robot has a signing secret, S being the
  URL-encoded Base64 of HMAC-SHA256 over `MS + "\\n" + secret` keyed by the secret;
- SMS: one short text (title and link) for the configured HTTP gateway;
- e-mail: a subject and a plain-text body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote_plus
from zoneinfo import ZoneInfo

from kernel.outbox import OutboxEntry

SEVERITY_ZH: Final = {"low": "低", "medium": "中", "high": "高", "critical": "紧急"}
TIER_ZH: Final = {1: "一级(热线办)", 2: "二级(分管副市长)", 3: "三级(书记、市长)"}
EVENT_ZH: Final = {
    "opened": "新事件",
    "severity_raised": "事件升级",
    "escalated": "逐级上报",
    "acknowledged": "已确认",
    "resolved": "已解除",
    "repeat": "仍未确认",
    "created": "新工单",
    "dispatched": "工单派发",
    "near_deadline": "即将超期",
    "reminded": "催办",
    "overdue": "已超期",
    "supervised": "督办",
    "returned": "工单退回",
}
WECOM_MAX_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    lines: tuple[str, ...]
    link: str | None = None

    @property
    def text(self) -> str:
        body = "\n".join(self.lines)
        return f"{body}\n确认 Acknowledge: {self.link}" if self.link else body


def _when(ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%m-%d %H:%M")


def render(entry: OutboxEntry, event: str, tz: ZoneInfo, link: str | None = None, round_: int = 0) -> Message:
    """The message for an incident or ticket event (round_ > 0: the n-th repeat of one nobody acknowledged)."""
    s = entry.state
    label = EVENT_ZH.get("repeat" if round_ else event, event)
    if entry.subject == "incident":
        severity = str(s.get("severity", ""))
        tier = int(s.get("escalation_tier") or 1)
        title = f"【{label}】[{SEVERITY_ZH.get(severity, severity)}] {s.get('title', '')}"
        lines = [
            title,
            f"级别 severity {severity} · 层级 tier {tier} {TIER_ZH.get(tier, '')}",
            f"状态 status {s.get('status')} · 时间 {_when(entry.at_ms, tz)}",
        ]
        if s.get("grid_id"):
            lines.append(f"网格 grid {s['grid_id']}")
        if s.get("camera_ids"):
            lines.append(f"视频 cameras {', '.join(s['camera_ids'])}")
        if round_:
            lines.append(f"第{round_ + 1}次通知: 尚无人确认 (notice {round_ + 1}, not acknowledged)")
        note = entry.detail.get("note")
        if note and event in ("escalated", "acknowledged", "resolved"):
            lines.append(f"说明 {note}")
        return Message(title, tuple(lines), link)
    title = f"【{label}】工单 {s.get('number', '')} {s.get('title', '')}"
    lines = [title, f"类别 {s.get('category')} · {s.get('urgency')} · 状态 {s.get('status')}"]
    if s.get("department_id"):
        lines.append(f"部门 department {s['department_id']}")
    if s.get("deadline_ms"):
        lines.append(f"时限 deadline {_when(int(s['deadline_ms']), tz)}")
    return Message(title, tuple(lines), link)


def render_digest(titles: Sequence[tuple[str, str | None]], window_min: float) -> Message:
    """Many notifications for one person in a short time, as one message (grouped by grid)."""
    by_grid: dict[str, list[str]] = {}
    for title, grid in titles:
        by_grid.setdefault(grid or "-", []).append(title)
    title = f"【汇总】{len(titles)} 条通知 ({len(titles)} notifications in {window_min:g} min)"
    lines = [title]
    for grid, items in sorted(by_grid.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"网格 grid {grid}: {len(items)}")
        lines.extend(f"  · {t}" for t in items[:5])
        if len(items) > 5:
            lines.append(f"  · … {len(items) - 5} more")
    return Message(title, tuple(lines))


def webhook_body(notification: Mapping[str, Any], message: Message) -> dict[str, Any]:
    return {
        "id": notification["id"],
        "kind": notification["kind"],
        "event": notification["event"],
        "incident_id": notification.get("incident_id"),
        "ticket_id": notification.get("ticket_id"),
        "person_id": notification["person_id"],
        "post": notification.get("post"),
        "title": message.title,
        "text": message.text,
        "ack_url": message.link,
        "created_at": notification.get("created_at"),
    }


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _markdown(message: Message) -> str:
    lines = [f"**{message.title}**", *(f"> {line}" for line in message.lines[1:])]
    if message.link:
        lines.append(f"[确认 Acknowledge]({message.link})")
    return "\n".join(lines)


def _cut_utf8(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def wecom_body(message: Message) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"content": _cut_utf8(_markdown(message), WECOM_MAX_BYTES)}}


def dingtalk_body(message: Message) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"title": message.title[:64], "text": _markdown(message)}}


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest))


def dingtalk_url(url: str, secret: str | None, timestamp_ms: int) -> str:
    if not secret:
        return url
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}timestamp={timestamp_ms}&sign={dingtalk_sign(secret, timestamp_ms)}"


def sms_text(message: Message) -> str:
    text = message.title if len(message.title) <= 60 else message.title[:59] + "…"
    return f"{text} {message.link}" if message.link else text
