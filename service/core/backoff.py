"""How long to wait before trying again: one rule for every retry loop of the service.

Exponential from `first` up to `cap`, with jitter so that replicas (or printers) that failed
together do not retry together. Pure: the random source is injected, so a test can pin it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True, kw_only=True)
class Backoff:
    """The delays of one run of failures; `reset` once the thing works again.

    `jitter` is the fraction a delay may be shortened by at random (0: none): with 0.2, a
    delay of 1 s is between 0.8 and 1 s.
    """

    first: float
    cap: float
    factor: float = 2.0
    jitter: float = 0.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap:
            raise ValueError(f"need 0 < first <= cap, got first={self.first}, cap={self.cap}")
        if self.factor < 1 or not 0 <= self.jitter < 1:
            raise ValueError(f"need factor >= 1 and 0 <= jitter < 1, got {self}")
        self._next = self.first

    @property
    def current(self) -> float:
        """The next delay before jitter: what a log line says the pause will be."""
        return self._next

    def delay(self) -> float:
        """The pause before the next try; each call doubles (by `factor`) the next one."""
        base = self._next
        self._next = min(self.cap, base * self.factor)
        if self.jitter:
            return base * self.uniform(1.0 - self.jitter, 1.0)
        return base

    def reset(self) -> None:
        self._next = self.first
