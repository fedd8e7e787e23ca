"""Signed links that acknowledge an incident from a phone without logging in.

A link's token is `LINK_ID.EXPIRES_MS.SIGNATURE`: the signature (HMAC-SHA256, keyed by a secret
kept in the records) proves the center made it, the expiry limits how long a forwarded message
stays dangerous, and the link id is recorded when used, so a link works once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Final

_TOKEN: Final = re.compile(r"^(lk-[0-9a-f]{16})\.([0-9]{10,16})\.([A-Za-z0-9_-]{43})$")


class LinkError(ValueError):
    """A link that is not ours, or has expired."""


def new_link_id() -> str:
    return "lk-" + secrets.token_hex(8)


def _signature(key: bytes, link_id: str, expires_ms: int) -> str:
    digest = hmac.new(key, f"{link_id}.{expires_ms}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(key: bytes, link_id: str, expires_ms: int) -> str:
    return f"{link_id}.{expires_ms}.{_signature(key, link_id, expires_ms)}"


def verify(key: bytes, token: str, now_ms: int) -> str:
    """The link id of a valid, unexpired token; LinkError otherwise."""
    match = _TOKEN.match(token)
    if match is None:
        raise LinkError("this is not an acknowledgement link of this center")
    link_id, expires, signature = match.group(1), int(match.group(2)), match.group(3)
    if not hmac.compare_digest(signature, _signature(key, link_id, expires)):
        raise LinkError("this is not an acknowledgement link of this center")
    if now_ms >= expires:
        raise LinkError("this link has expired")
    return link_id
