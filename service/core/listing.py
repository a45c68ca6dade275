"""What `listPrintJobs` asks for, and its cursor: the pure part of listing a queue's jobs.

A page is the queue's jobs newest first, ordered by (created_at, job_id) descending: an order
that never changes for a job (its creation time is fixed) and is total (job ids are unique),
so that a cursor made of the last job's pair resumes exactly after it, whatever was created,
changed or purged in between. The cursor is opaque to clients (base64url of that pair), and
checked on the way in: a cursor the service did not issue is refused, never passed to a store.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from service.models import JobStatus, ListPrintJobs

__all__ = ["BadCursor", "JobQuery", "PageKey", "decode_cursor", "encode_cursor", "query_of"]

_SEPARATOR: Final = "|"  # never in a jobId
_JOB_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class BadCursor(ValueError):  # noqa: N818 - a verdict on the input, not a bug
    """A cursor the service did not issue (or a damaged one)."""


@dataclass(frozen=True, slots=True, order=True)
class PageKey:
    """A job's place in the listing order: (created_at, job_id); a page goes downwards."""

    created_at: datetime
    job_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobQuery:
    """One page of a queue's jobs: the filters, where to start (below `after`), how many."""

    queue_id: str
    limit: int
    status: JobStatus | None = None
    user_id: str | None = None
    since: datetime | None = None
    after: PageKey | None = None

    def matches(self, key: PageKey, status: JobStatus, user_id: str | None) -> bool:
        """Whether a job of this queue belongs to the page (for stores that filter in Python)."""
        return (
            (self.status is None or status == self.status)
            and (self.user_id is None or user_id == self.user_id)
            and (self.since is None or key.created_at >= self.since)
            and (self.after is None or key < self.after)
        )


def encode_cursor(key: PageKey) -> str:
    text = f"{key.created_at.astimezone(UTC).isoformat()}{_SEPARATOR}{key.job_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> PageKey:
    """The key a cursor of `encode_cursor` holds; BadCursor for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, job_id = text.split(_SEPARATOR)
        created_at = datetime.fromisoformat(moment)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor("not a cursor this service issued") from exc
    if created_at.tzinfo is None or not _JOB_ID.fullmatch(job_id):
        raise BadCursor("not a cursor this service issued")
    return PageKey(created_at.astimezone(UTC), job_id)


def query_of(queue_id: str, message: ListPrintJobs, *, page_max: int) -> JobQuery:
    """The store query a command asks for; `limit` lowered to `page_max` (raises BadCursor)."""
    return JobQuery(
        queue_id=queue_id,
        limit=min(message.limit or page_max, page_max),
        status=message.status,
        user_id=message.userId,
        since=None if message.since is None else message.since.astimezone(UTC),
        after=None if message.cursor is None else decode_cursor(message.cursor),
    )
