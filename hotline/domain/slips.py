"""Forgery-proof ticket slips (Luyi issued them): a verification code that is an HMAC over the
ticket's key fields, so a printed slip whose number, date, category or caller was altered, or
that was made up, fails verification.

The code is `NUMBER-MAC` (the ticket number to find the ticket, then 12 base32 characters of
HMAC-SHA256 under the center's slip key, 60 bits: guessing one is hopeless).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from .tickets import Ticket

MAC_CHARS = 12


def _mac(key: bytes, t: Ticket) -> str:
    fields = "\x1f".join(
        [t.id, t.number, str(t.created_at_ms), t.channel, t.category, t.called_number or "", t.caller_phone]
    )
    digest = hmac.new(key, fields.encode(), hashlib.sha256).digest()
    return base64.b32encode(digest).decode()[:MAC_CHARS]


def slip_code(key: bytes, ticket: Ticket) -> str:
    return f"{ticket.number}-{_mac(key, ticket)}"


def split_code(code: str) -> tuple[str, str] | None:
    """(ticket number, mac) of a code as printed (case and surrounding space forgiven), or None."""
    number, sep, mac = code.strip().upper().rpartition("-")
    if not sep or not number or len(mac) != MAC_CHARS:
        return None
    return number, mac


def verify(key: bytes, ticket: Ticket, mac: str) -> bool:
    return hmac.compare_digest(_mac(key, ticket), mac.upper())
