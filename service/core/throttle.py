"""How often a printer's progress becomes an event: at most once per interval, per job.

Pure: the caller gives the time (its injected clock), so tests pin it.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["Throttle"]


class Throttle:
    """Whether a report is due now: one per `interval` seconds at most, counted from `since`
    (when the print began: its `started` event is the first news of it, so a print shorter
    than the interval sends no progress, only its totals on `finished`). An interval of 0
    (or less) disables it: nothing is ever due.

    One per print of a job: a job printed again (resumed) starts afresh.
    """

    __slots__ = ("_interval", "_last")

    def __init__(self, interval: float, *, since: datetime) -> None:
        self._interval = interval
        self._last = since

    @property
    def enabled(self) -> bool:
        return self._interval > 0

    def due(self, now: datetime) -> bool:
        """Whether a report that came at `now` should be recorded; `passed` says it was."""
        if not self.enabled:
            return False
        return (now - self._last).total_seconds() >= self._interval

    def passed(self, now: datetime) -> None:
        """A report was recorded at `now`: the next is due one interval later."""
        self._last = now
