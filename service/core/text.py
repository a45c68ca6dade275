"""Text from the wire made safe to echo: valid UTF-8, capped, and printable where it must be.

Anything copied from a command into an event, a rejection, a log line or an AMQP property
goes through here first. JSON may carry lone surrogates (`"\\ud800"`), which Python decodes
into `str` and which then fail when encoded as UTF-8; AMQP short strings hold 255 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "CORRELATION_ID_MAX_BYTES",
    "ELLIPSIS",
    "capped",
    "contains_surrogate",
    "describe",
    "is_correlation_id",
]

# AMQP short strings (correlation_id, routing keys, header names) hold at most 255 bytes.
CORRELATION_ID_MAX_BYTES: Final = 255
ELLIPSIS: Final = "…"
_PRINTABLE_ASCII: Final = re.compile(r"[ -~]+")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def capped(text: str, max_bytes: int) -> str:
    """`text` as valid Unicode (lone surrogates become U+FFFD) in at most `max_bytes` UTF-8
    bytes; a cut ends with `…`, and never splits a character."""
    text = _SURROGATE.sub("\ufffd", text)
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    room = max(0, max_bytes - len(ELLIPSIS.encode()))
    return data[:room].decode("utf-8", "ignore") + ELLIPSIS


def describe(value: object, max_chars: int = 64) -> str:
    """A short, safe rendering of any JSON value for a message to people."""
    if isinstance(value, str):
        shown = repr(value if len(value) <= max_chars else value[:max_chars] + ELLIPSIS)
    elif value is None or isinstance(value, bool | int | float):
        shown = repr(value)[:max_chars]
    else:
        shown = f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    return capped(shown, 4 * max_chars)


def is_correlation_id(value: str) -> bool:
    """The contract's CorrelationId: 1-255 printable ASCII characters (so, 255 bytes)."""
    return len(value) <= CORRELATION_ID_MAX_BYTES and _PRINTABLE_ASCII.fullmatch(value) is not None


def contains_surrogate(value: object) -> bool:
    """Whether a parsed JSON value holds a lone surrogate anywhere (keys included)."""
    pending: list[object] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(_strings_and_values(item.items()))
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _strings_and_values(items: Iterable[tuple[object, object]]) -> Iterable[object]:
    for key, item in items:
        yield key
        yield item
