"""Keep secrets out of what people read: URLs without their user-info, tokens out of logs."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

# scheme://user:password@host  ->  scheme://***@host (anywhere in a text)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# token=SECRET in a query string (the wall and <img>/<video> pass tokens that way)
_TOKEN_PARAM = re.compile(r"(?P<key>(?:[?&;]|\b)(?:token|api_key|access_token)=)(?P<value>[^&\s'\"#]+)", re.IGNORECASE)
_BEARER = re.compile(r"(?P<key>Bearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")


def redact_url(url: str) -> str:
    """The URL with any user name and password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Any URL user-info, token query parameter or bearer token in free text, replaced by ***."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    text = _TOKEN_PARAM.sub(r"\g<key>***", text)
    return _BEARER.sub(r"\g<key>***", text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's message (and its arguments) before it is written.

    Installed on the root handlers in main(), so a library's log line (uvicorn's access log, an
    httpx error) cannot carry a password or a token into the logs either.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken log call must not break logging
            return True
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_redaction() -> None:
    """Put the redacting filter on every handler of the root logger (call after logging is set up)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
