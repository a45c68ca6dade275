"""Which job prints next: per queue, high before medium before low, then by age, then arrival."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.core.jobs import PRIORITY_RANK, Job
from service.core.scheduler import WaitingJobs
from service.models import JobStatus, Priority

EPOCH = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def a_job(
    job_id: str,
    *,
    queue: str = "q1",
    priority: Priority = Priority.medium,
    age: float = 0.0,
) -> Job:
    """A waiting job created `age` seconds after the epoch."""
    created_at = EPOCH + timedelta(seconds=age)
    return Job(
        job_id=job_id,
        queue_id=queue,
        status=JobStatus.created,
        sequence=1,
        priority=priority,
        user_id=None,
        document_name=None,
        created_at=created_at,
        updated_at=created_at,
        correlation_id=f"corr-{job_id}",
    )


def waiting(*jobs: Job) -> WaitingJobs:
    scheduler = WaitingJobs()
    for job in jobs:
        scheduler.push(job)
    return scheduler


def drain(scheduler: WaitingJobs, queue: str = "q1") -> list[str]:
    order = []
    while (job_id := scheduler.pop(queue)) is not None:
        order.append(job_id)
    return order


def test_pop_on_an_empty_scheduler_returns_none() -> None:
    scheduler = WaitingJobs()

    assert scheduler.pop("q1") is None
    assert len(scheduler) == 0


def test_pop_on_an_emptied_queue_returns_none() -> None:
    scheduler = waiting(a_job("a"))

    assert scheduler.pop("q1") == "a"
    assert scheduler.pop("q1") is None
    assert scheduler.pop("q1") is None
    assert len(scheduler) == 0


PRIORITIES = [Priority.low, Priority.medium, Priority.high]


@pytest.mark.parametrize("push_order", list(itertools.permutations(PRIORITIES)), ids=str)
def test_high_before_medium_before_low(push_order: tuple[Priority, ...]) -> None:
    scheduler = waiting(*(a_job(p.value, priority=p) for p in push_order))

    assert drain(scheduler) == ["high", "medium", "low"]


def test_priority_beats_age() -> None:
    scheduler = waiting(
        a_job("old-low", priority=Priority.low, age=0),
        a_job("old-medium", priority=Priority.medium, age=1),
        a_job("new-high", priority=Priority.high, age=1000),
    )

    assert drain(scheduler) == ["new-high", "old-medium", "old-low"]


def test_same_priority_oldest_first_whatever_the_arrival() -> None:
    scheduler = waiting(
        a_job("third", age=30),
        a_job("first", age=10),
        a_job("second", age=20.5),
    )

    assert drain(scheduler) == ["first", "second", "third"]


def test_age_is_compared_as_instants_across_time_zones() -> None:
    # 12:01 UTC is 02:01 at UTC-10: later in time, earlier on the wall clock.
    minus_ten = timezone(timedelta(hours=-10))
    later = a_job("later", age=60)
    later = dataclasses.replace(later, created_at=later.created_at.astimezone(minus_ten))
    scheduler = waiting(later, a_job("earlier", age=0))

    assert drain(scheduler) == ["earlier", "later"]


def test_same_priority_and_age_in_arrival_order() -> None:
    ids = ["m", "c", "x", "a", "q"]  # not alphabetical: the id must not decide
    scheduler = waiting(*(a_job(job_id) for job_id in ids))

    assert drain(scheduler) == ids


def test_queues_are_independent() -> None:
    scheduler = waiting(
        a_job("q1-low", queue="q1", priority=Priority.low),
        a_job("q2-low", queue="q2", priority=Priority.low),
        a_job("q2-high", queue="q2", priority=Priority.high),
        a_job("q1-medium", queue="q1", priority=Priority.medium),
    )

    assert scheduler.waiting_in("q1") == 2
    assert scheduler.waiting_in("q2") == 2
    assert scheduler.pop("q1") == "q1-medium"
    assert scheduler.waiting_in("q2") == 2  # popping q1 left q2 alone
    assert drain(scheduler, "q2") == ["q2-high", "q2-low"]
    assert drain(scheduler, "q1") == ["q1-low"]
    assert scheduler.pop("q3") is None


def test_len_contains_and_waiting_in() -> None:
    scheduler = waiting(a_job("a"), a_job("b"), a_job("c", queue="q2"))

    assert len(scheduler) == 3
    assert "a" in scheduler
    assert "c" in scheduler
    assert "z" not in scheduler
    assert scheduler.waiting_in("q1") == 2
    assert scheduler.waiting_in("nowhere") == 0

    scheduler.pop("q1")

    assert len(scheduler) == 2
    assert "a" not in scheduler


def test_pushing_a_waiting_job_again_does_not_queue_it_twice() -> None:
    scheduler = waiting(a_job("a"), a_job("b"))

    scheduler.push(a_job("a"))

    assert len(scheduler) == 2
    assert drain(scheduler) == ["a", "b"]


def test_a_removed_job_is_never_popped() -> None:
    scheduler = waiting(
        a_job("high", priority=Priority.high),
        a_job("medium"),
        a_job("low", priority=Priority.low),
    )

    scheduler.remove("high")

    assert "high" not in scheduler
    assert len(scheduler) == 2
    assert scheduler.waiting_in("q1") == 2
    assert drain(scheduler) == ["medium", "low"]


def test_removing_every_job_leaves_nothing_to_pop() -> None:
    scheduler = waiting(a_job("a"), a_job("b"))

    scheduler.remove("a")
    scheduler.remove("b")

    assert scheduler.pop("q1") is None
    assert len(scheduler) == 0


def test_removing_an_unknown_or_already_removed_job_is_harmless() -> None:
    scheduler = waiting(a_job("a"))

    scheduler.remove("nope")
    scheduler.remove("a")
    scheduler.remove("a")

    assert drain(scheduler) == []


def test_a_job_pushed_again_after_removal_is_popped_once() -> None:
    scheduler = waiting(a_job("a"), a_job("b"))

    scheduler.remove("a")
    scheduler.push(a_job("a"))

    assert len(scheduler) == 2
    assert sorted(drain(scheduler)) == ["a", "b"]
    assert scheduler.pop("q1") is None


def test_a_job_removed_from_one_queue_and_pushed_to_another() -> None:
    scheduler = waiting(a_job("a", queue="q1"), a_job("b", queue="q1"))

    scheduler.remove("a")
    scheduler.push(a_job("a", queue="q2"))

    assert drain(scheduler, "q1") == ["b"]
    assert drain(scheduler, "q2") == ["a"]


def test_matches_a_sorted_reference_under_random_pushes_removes_and_pops() -> None:
    rng = random.Random(20240501)
    scheduler = WaitingJobs()
    # job id -> (queue, sort key) for the jobs that should still be waiting
    expected: dict[str, tuple[str, tuple[int, float, int]]] = {}
    for arrival in range(600):
        action = rng.random()
        queue = rng.choice(["q1", "q2", "q3"])
        if action < 0.6:
            job = a_job(
                f"job-{arrival}",
                queue=queue,
                priority=rng.choice(PRIORITIES),
                age=rng.randrange(20),  # plenty of ties in age, so arrival matters
            )
            scheduler.push(job)
            age = job.created_at.timestamp()
            expected[job.job_id] = (queue, (PRIORITY_RANK[job.priority], age, arrival))
        elif action < 0.8 and expected:
            removed = rng.choice(sorted(expected))
            scheduler.remove(removed)
            del expected[removed]
        else:
            candidates = [(key, job_id) for job_id, (q, key) in expected.items() if q == queue]
            want = min(candidates)[1] if candidates else None
            assert scheduler.pop(queue) == want
            if want is not None:
                del expected[want]
        assert len(scheduler) == len(expected)

    for queue in ("q1", "q2", "q3"):
        left = sorted((key, job_id) for job_id, (q, key) in expected.items() if q == queue)
        assert drain(scheduler, queue) == [job_id for _, job_id in left]


def test_a_resumed_job_goes_back_to_its_printer_before_any_priority() -> None:
    scheduler = waiting(a_job("high", priority=Priority.high, age=0))
    scheduler.push(a_job("was-printing", priority=Priority.low, age=50), resume=True)
    scheduler.push(a_job("later-high", priority=Priority.high, age=100))
    assert drain(scheduler) == ["was-printing", "high", "later-high"]


# --- lanes and re-prioritising --------------------------------------------------------------


def test_a_lane_takes_jobs_of_several_queues_in_one_order() -> None:
    waiting = WaitingJobs()
    waiting.push(a_job("late", queue="qa", age=2), lane="pool")
    waiting.push(a_job("early", queue="qb", age=1), lane="pool")

    assert waiting.waiting_in("pool") == 2
    assert waiting.waiting_in("qa") == 0
    assert [waiting.pop("pool"), waiting.pop("pool"), waiting.pop("pool")] == [
        "early",
        "late",
        None,
    ]
    assert waiting.waiting_in("pool") == 0


def test_a_job_pushed_again_with_a_new_priority_is_popped_once_in_its_new_place() -> None:
    waiting = WaitingJobs()
    job = a_job("moved", priority=Priority.low, age=0)
    waiting.push(job)
    waiting.push(a_job("other", priority=Priority.medium, age=1))

    waiting.remove("moved")
    waiting.push(dataclasses.replace(job, priority=Priority.high))

    assert [waiting.pop("q1"), waiting.pop("q1"), waiting.pop("q1")] == ["moved", "other", None]


def test_waiting_in_counts_pushes_pops_and_removals() -> None:
    waiting = WaitingJobs()
    for n in range(5):
        waiting.push(a_job(f"j{n}", age=n))
    waiting.push(a_job("j0"))  # already waiting: no second entry
    waiting.remove("j3")
    waiting.remove("j3")
    waiting.pop("q1")

    assert waiting.waiting_in("q1") == 3 == len(waiting)
