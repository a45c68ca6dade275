"""`print-service jobs`: its arguments, and how a page of `printJobList` is shown.

The query itself is `PrintClient.list_jobs` / `job_pages` (service/client): `--all` follows
`nextCursor` page after page.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime

from service.models import JobStatus, PrintJobList

__all__ = ["add_jobs_arguments", "show_page"]


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=[s.value for s in JobStatus])
    parser.add_argument("--user", dest="user_id", help="only this userId's jobs")
    parser.add_argument(
        "--since", type=datetime.fromisoformat, help="created at or after (ISO 8601, with offset)"
    )
    parser.add_argument("--limit", type=int, help="jobs a page (at most the service's page size)")
    parser.add_argument("--cursor", help="the nextCursor of an earlier page")
    parser.add_argument("--all", action="store_true", help="follow nextCursor to the last page")


def show_page(page: PrintJobList, *, as_json: bool) -> None:
    for job in page.jobs:
        if as_json:
            print(json.dumps(job.model_dump(mode="json", exclude_none=True)))
            continue
        print(
            f"{job.createdAt.isoformat()}  job={job.jobId}  {job.status.value:<8}  "
            f"seq={job.sequence}  {job.priority.value:<6}  user={job.userId or '-'}  "
            f"title={job.title or '-'}" + (f"  reason={job.reason}" if job.reason else ""),
            flush=True,
        )
