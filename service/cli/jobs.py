"""`print-service jobs`: list a queue's jobs as an integrator would, with `listPrintJobs`.

The answer (`printJobList`) comes on AMQP, routing key `jobs/<queueId>`, to a private queue
bound before the command is published (as the other client commands do); `--all` follows
`nextCursor` page after page. Publishing is the caller's (the CLI's one MQTT path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import aio_pika
from pydantic import ValidationError

from service.adapters.amqp import EVENTS_EXCHANGE, REJECTIONS_EXCHANGE, message_body
from service.core.events import JOBS_ROUTE_PREFIX, REJECTION_ROUTE_PREFIX
from service.models import CommandRejected, JobStatus, ListPrintJobs, PrintJobList

__all__ = ["add_jobs_arguments", "list_jobs"]

EXIT_OK, EXIT_REJECTED, EXIT_TIMEOUT = 0, 1, 2

# Publishes one command (its message and the correlation id to send it with).
Publish = Callable[[ListPrintJobs, str], Awaitable[None]]


def add_jobs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=[s.value for s in JobStatus])
    parser.add_argument("--user", dest="user_id", help="only this userId's jobs")
    parser.add_argument(
        "--since", type=datetime.fromisoformat, help="created at or after (ISO 8601, with offset)"
    )
    parser.add_argument("--limit", type=int, help="jobs a page (at most the service's page size)")
    parser.add_argument("--cursor", help="the nextCursor of an earlier page")
    parser.add_argument("--all", action="store_true", help="follow nextCursor to the last page")


async def list_jobs(
    args: argparse.Namespace, amqp_url: str, queue_name: str, publish: Publish
) -> int:
    given = {
        "status": args.status,
        "userId": args.user_id,
        "since": args.since,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    try:
        query = ListPrintJobs.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        print(f"print-service jobs: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        await queue.bind(
            await channel.get_exchange(EVENTS_EXCHANGE), JOBS_ROUTE_PREFIX + args.queue
        )
        await queue.bind(
            await channel.get_exchange(REJECTIONS_EXCHANGE), REJECTION_ROUTE_PREFIX + args.queue
        )
        # One consumer for every page: the queue is auto-delete, gone with its last consumer.
        async with queue.iterator() as messages:
            while True:
                correlation_id = str(uuid.uuid4())
                await publish(query, correlation_id)
                try:
                    async with asyncio.timeout(args.timeout):
                        answer = await _answer(messages, correlation_id)
                except TimeoutError:
                    print(f"no answer within {args.timeout} s", file=sys.stderr)
                    return EXIT_TIMEOUT
                if isinstance(answer, CommandRejected):
                    print(f"REJECTED {answer.reason.value}: {answer.message}", file=sys.stderr)
                    return EXIT_REJECTED
                _show(args, answer)
                if answer.nextCursor is None or not args.all:
                    if answer.nextCursor is not None and not args.json:
                        print(f"more: --cursor {answer.nextCursor}")
                    return EXIT_OK
                query = query.model_copy(update={"cursor": answer.nextCursor})


async def _answer(
    messages: aio_pika.abc.AbstractQueueIterator, correlation_id: str
) -> PrintJobList | CommandRejected:
    async for incoming in messages:
        async with incoming.process():
            if incoming.correlation_id != correlation_id:
                continue  # another client's answer, or an earlier page's late repeat
            body = message_body(incoming)
            if incoming.type == "commandRejected":
                return CommandRejected.model_validate_json(body)
            return PrintJobList.model_validate_json(body)
    raise ConnectionError("the AMQP queue closed")


def _show(args: argparse.Namespace, page: PrintJobList) -> None:
    for job in page.jobs:
        if args.json:
            print(json.dumps(job.model_dump(mode="json", exclude_none=True)))
            continue
        print(
            f"{job.createdAt.isoformat()}  job={job.jobId}  {job.status.value:<8}  "
            f"seq={job.sequence}  {job.priority.value:<6}  user={job.userId or '-'}  "
            f"title={job.title or '-'}" + (f"  reason={job.reason}" if job.reason else ""),
            flush=True,
        )
