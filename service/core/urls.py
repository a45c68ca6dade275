"""URLs fit for a log line: what server and path, never the credentials or the query.

A document URL may carry a password (`https://user:secret@host/…`) or a token in its query
(`?X-Amz-Signature=…`, `?access_token=…`); neither may reach a log or an event. The rule is
deliberately blunt rather than a parser's, so that no spelling a real parser would read
differently (a backslash, a second `@`, a missing `//`) lets userinfo through: everything
from the first `?` or `#` goes, the host is what follows the authority's last `@`, and a path
or an opaque part holding an `@` is left out entirely.
"""

from __future__ import annotations

import re
from typing import Final

from service.core.text import ELLIPSIS, capped

__all__ = ["UNPARSABLE", "redacted_url"]

UNPARSABLE: Final = "(not a URL)"
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}):(.*)", re.DOTALL)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_HOST_MAX_BYTES: Final = 255
_PATH_MAX_BYTES: Final = 200


def redacted_url(url: str) -> str:
    """`url` without userinfo, query or fragment, and capped: its scheme, host, port and
    path. The result never holds `@`, `?` or `#`."""
    base = re.split(r"[?#]", url, maxsplit=1)[0]
    match = _SCHEME.fullmatch(base)
    if match is None:
        return UNPARSABLE
    scheme, rest = match.group(1).lower(), _CONTROL.sub("", match.group(2))
    if not rest.startswith("//"):
        # Opaque (`mailto:…`) or malformed (`http:/host`): shown only if nothing can hide in it.
        return f"{scheme}:{_shown(rest, _PATH_MAX_BYTES)}"
    authority, slash, path = rest[2:].partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}://{_shown(host, _HOST_MAX_BYTES)}{_shown(slash + path, _PATH_MAX_BYTES)}"


def _shown(part: str, max_bytes: int) -> str:
    if "@" in part:
        return ELLIPSIS if not part.startswith("/") else "/" + ELLIPSIS
    return capped(part, max_bytes)
