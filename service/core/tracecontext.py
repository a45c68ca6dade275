"""W3C Trace Context as values: the `traceparent` (and `tracestate`) a command carries.

Pure: the parsing and the caps only; spans are the tracing adapter's. A header that is not
one the contract allows is not an error of the command: it is ignored, and the service
starts a new trace (W3C Trace Context, "if the vendor failed to parse traceparent, it MUST
NOT attempt to parse tracestate").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["TRACEPARENT_LENGTH", "TRACESTATE_MAX", "TraceContext", "trace_context"]

TRACEPARENT_LENGTH: Final = 55
# W3C: a vendor SHOULD propagate at least 512 characters of tracestate; more is truncated
# there by dropping whole members, here by dropping the header (it is only a hint).
TRACESTATE_MAX: Final = 512
_TRACEPARENT: Final = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE: Final = re.compile(r"[ -~]*")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A valid `traceparent`, and the `tracestate` that came with it."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]


def trace_context(traceparent: object, tracestate: object = None) -> TraceContext | None:
    """The context these header values make, or None if `traceparent` is not a valid one
    (the contract's pattern, version `ff` forbidden, neither id all zeros). Never raises,
    and reads no more than the 55 characters a traceparent has."""
    if (
        not isinstance(traceparent, str)
        or len(traceparent) != TRACEPARENT_LENGTH
        or not _TRACEPARENT.fullmatch(traceparent)
        or traceparent.startswith("ff")
        or traceparent[3:35] == _ZERO_TRACE
        or traceparent[36:52] == _ZERO_SPAN
    ):
        return None
    state = (
        tracestate
        if isinstance(tracestate, str)
        and 0 < len(tracestate) <= TRACESTATE_MAX
        and _TRACESTATE.fullmatch(tracestate)
        else None
    )
    return TraceContext(traceparent, state)
