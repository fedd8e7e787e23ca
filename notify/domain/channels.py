"""The channels' settings (`/api/channels`): checked when set, secrets never shown back.

A person's contacts say where (a webhook URL, an e-mail address, a WeCom or DingTalk robot's URL,
a phone number); the channel's settings say how:
- `webhook`: `secret`, the HMAC key of the signature header;
- `email`: `host`, `port`, `security` (`starttls`, `tls` or `none`), `username`, `password`,
  `from`, and `ca_file` for a server with a private CA;
- `wecom`: nothing needed (the robot's URL carries its key);
- `dingtalk`: `secret`, the robot's signing secret (SEC...), when it signs;
- `sms`: `url` of the HTTP SMS gateway, `api_key` (sent as a Bearer token), `sign` (the
  signature name Chinese SMS carriers require).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .roster import CONTACT_TYPES, RosterError, check_contact, check_url

SECRET_FIELDS: Final = frozenset({"secret", "password", "api_key"})
MASK: Final = "***"
FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "webhook": frozenset({"secret"}),
    "email": frozenset({"host", "port", "security", "username", "password", "from", "ca_file"}),
    "wecom": frozenset(),
    "dingtalk": frozenset({"secret"}),
    "sms": frozenset({"url", "api_key", "sign"}),
}


class ChannelError(RosterError):
    """Channel settings refused (`loc` names the field)."""


def parse_channel(kind: str, raw: Any, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A channel's settings, checked; a secret sent back as `***` keeps the stored one."""
    if kind not in CONTACT_TYPES:
        raise ChannelError(("type",), f"unknown channel type {kind!r}: one of {', '.join(CONTACT_TYPES)}")
    if not isinstance(raw, dict):
        raise ChannelError((), "channel settings are an object")
    unknown = set(raw) - FIELDS[kind]
    if unknown:
        raise ChannelError(
            (sorted(unknown)[0],), f"unknown field for {kind}: one of {', '.join(sorted(FIELDS[kind])) or 'none'}"
        )
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in SECRET_FIELDS and value == MASK:
            if current and key in current:
                out[key] = current[key]
            continue
        if key == "port":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
                raise ChannelError((key,), "a port number 1-65535")
            out[key] = value
            continue
        if not isinstance(value, str) or not value.strip():
            raise ChannelError((key,), f"{key} is a non-empty string")
        out[key] = value.strip()
    if kind == "email":
        if "host" not in out:
            raise ChannelError(("host",), "the SMTP server's host is required")
        if "from" not in out:
            raise ChannelError(("from",), "the sender's address is required")
        try:
            check_contact("email", out["from"])
        except ValueError as exc:
            raise ChannelError(("from",), str(exc)) from exc
        security = out.setdefault("security", "starttls")
        if security not in ("starttls", "tls", "none"):
            raise ChannelError(("security",), "starttls, tls or none")
        out.setdefault("port", {"starttls": 587, "tls": 465, "none": 25}[security])
    if kind == "sms":
        if "url" not in out:
            raise ChannelError(("url",), "the SMS gateway's URL is required")
        try:
            check_url(out["url"], "the SMS gateway")
        except ValueError as exc:
            raise ChannelError(("url",), str(exc)) from exc
    return out


def masked(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as the API shows them: secrets as `***` (set) and nothing else of them."""
    return {k: (MASK if k in SECRET_FIELDS else v) for k, v in settings.items()}
