"""Chinese text made searchable: word segmentation before full-text search.

Neither SQLite FTS5's tokenizers nor PostgreSQL's text-search parsers know where Chinese words
end (a run of Han characters is one token to them, so "居住证" would not find "如何办理居住证").
jieba's search mode cuts text into words and also their shorter sub-words; the segmented text,
words separated by spaces, is what both databases index, and queries are cut the same way.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from typing import Final

import jieba  # type: ignore[import-untyped]

# jieba logs its dictionary loading at INFO on its own logger.
jieba.setLogLevel(logging.WARNING)
_lock: Final = threading.Lock()
_MAX_QUERY_TERMS: Final = 32


def _keep(token: str) -> bool:
    token = token.strip()
    return bool(token) and any(unicodedata.category(ch)[0] in "LN" for ch in token)


def segment(text: str) -> list[str]:
    """The words (and sub-words) of `text`, lower-cased, punctuation and space dropped."""
    with _lock:  # jieba builds its dictionary on first use; once, not once per thread
        tokens = list(jieba.cut_for_search(text))
    return [t.strip().lower() for t in tokens if _keep(t)]


def index_text(*parts: str) -> str:
    """What the database indexes: every part segmented, space-separated."""
    return " ".join(token for part in parts for token in segment(part))


def query_terms(query: str) -> list[str]:
    """The distinct terms of a search query, in order, at most 32."""
    seen: dict[str, None] = {}
    for token in segment(query):
        seen.setdefault(token, None)
    return list(seen)[:_MAX_QUERY_TERMS]


def warm_up() -> None:
    """Load jieba's dictionary now (about a second) rather than in the first search."""
    segment("热线")
