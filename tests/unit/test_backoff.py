"""The one retry-delay rule, and the pause that does not hold up shutdown."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.aio import sleep_unless
from service.core.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=3.0)
    assert [backoff.delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.current == 0.5
    assert backoff.delay() == 0.5


def test_jitter_shortens_by_at_most_its_fraction() -> None:
    draws: list[tuple[float, float]] = []

    def lowest(low: float, high: float) -> float:
        draws.append((low, high))
        return low

    backoff = Backoff(first=1.0, cap=8.0, jitter=0.2, uniform=lowest)
    assert backoff.delay() == pytest.approx(0.8)
    assert backoff.delay() == pytest.approx(1.6)
    assert draws == [(0.8, 1.0), (0.8, 1.0)]


@given(
    first=st.floats(min_value=1e-3, max_value=10),
    extra=st.floats(min_value=0, max_value=100),
    factor=st.floats(min_value=1, max_value=4),
    jitter=st.floats(min_value=0, max_value=0.99),
    tries=st.integers(min_value=1, max_value=60),
)
def test_every_delay_is_within_first_jittered_and_cap(
    first: float, extra: float, factor: float, jitter: float, tries: int
) -> None:
    cap = first + extra
    backoff = Backoff(first=first, cap=cap, factor=factor, jitter=jitter)
    delays = [backoff.delay() for _ in range(tries)]
    assert all(first * (1 - jitter) * (1 - 1e-9) <= d <= cap for d in delays)


@pytest.mark.parametrize(
    ("first", "cap", "factor", "jitter"),
    [(0.0, 1.0, 2.0, 0.0), (2.0, 1.0, 2.0, 0.0), (1.0, 2.0, 0.5, 0.0), (1.0, 2.0, 2.0, 1.0)],
)
def test_refuses_a_rule_that_cannot_work(
    first: float, cap: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="need"):
        Backoff(first=first, cap=cap, factor=factor, jitter=jitter)


async def test_sleep_unless_returns_when_the_event_is_set() -> None:
    stopping = asyncio.Event()
    pause = asyncio.create_task(sleep_unless(stopping, 3600))
    await asyncio.sleep(0)
    assert not pause.done()
    stopping.set()
    assert await pause is True


async def test_sleep_unless_sleeps_the_time_when_not_stopped() -> None:
    assert await sleep_unless(asyncio.Event(), 0) is False


async def test_sleep_unless_does_not_wait_once_stopped() -> None:
    stopping = asyncio.Event()
    stopping.set()
    assert await sleep_unless(stopping, 3600) is True
