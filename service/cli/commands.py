"""The client commands of `print-service`: argparse in, `PrintClient` calls, lines out.

Everything that talks to the brokers is `service.client`'s; this module turns arguments
into commands and answers into the lines people (or `--json` readers) see.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import mimetypes
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from service.cli.jobs import show_page
from service.cli.printers import show_printers
from service.client import ClientError, ConnectionFailed, PrintClient, Rejected
from service.client.client import JobCommand
from service.client.wire import message_type_of, new_job_id
from service.config import Settings
from service.core.jobs import FINAL_STATUSES
from service.models import (
    CancelPrintJob,
    CommandRejected,
    CreatePrintJob,
    GetPrintJobStatus,
    JobStatus,
    ListPrintJobs,
    MovePrintJob,
    PrintJobEvent,
    ReleasePrintJob,
)

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_REJECTED", "EXIT_TIMEOUT", "client_command"]

EXIT_OK: Final = 0
EXIT_REJECTED: Final = 1
EXIT_TIMEOUT: Final = 2
EXIT_CONFIG: Final = 3  # also a broker that cannot be reached or refuses us

# When a followed command is done: at a final status, or at its answer for a query.
Done = Callable[[PrintJobEvent], bool]


def _final(event: PrintJobEvent) -> bool:
    return event.status in FINAL_STATUSES


async def client_command(
    args: argparse.Namespace, settings: Settings, *, api_key: str | None
) -> int:
    try:
        client = PrintClient.from_settings(
            settings,
            queue=args.queue,
            api_key=api_key,
            mqtt_version=args.mqtt_version,
            gzip=args.gzip,
            timeout=args.timeout,
        )
    except ClientError as exc:
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        async with client:
            if args.command == "jobs":
                return await _jobs(client, args)
            if args.command == "printers":
                return await _printers(client, args)
            try:
                command, done = _job_command(args)
            except ValueError as exc:
                print(f"print-service {args.command}: {_invalid(exc)}", file=sys.stderr)
                return EXIT_REJECTED
            return await _follow(client, args, command, done)
    except ConnectionFailed as exc:
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _job_command(args: argparse.Namespace) -> tuple[JobCommand, Done]:
    return _JOB_COMMANDS.get(args.command, _watch)(args)


def _release(args: argparse.Namespace) -> tuple[JobCommand, Done]:
    command = ReleasePrintJob(jobId=args.job_id, pin=args.release_pin)
    # Released (or not held: its status); the events that follow are the printing's.
    return command, lambda e: e.status is not JobStatus.held or _final(e)


def _cancel(args: argparse.Namespace) -> tuple[JobCommand, Done]:
    return CancelPrintJob(jobId=args.job_id, force=args.force), _final


def _move(args: argparse.Namespace) -> tuple[JobCommand, Done]:
    # The answer: moved (or already there, answered as a status query).
    return MovePrintJob(jobId=args.job_id, toQueue=args.to_queue), lambda e: bool(
        e.movedFrom or e.snapshot or _final(e)
    )


def _status(args: argparse.Namespace) -> tuple[JobCommand, Done]:
    return GetPrintJobStatus(jobId=args.job_id), lambda e: e.snapshot or _final(e)


def _watch(args: argparse.Namespace) -> tuple[JobCommand, Done]:
    # A status query: a new subscriber sees only what happens next, so the answer tells
    # where the job is now, and the events that follow the rest.
    return GetPrintJobStatus(jobId=args.job_id), _final


def _submit(args: argparse.Namespace) -> tuple[JobCommand, Done]:
    create = _create(args)
    if create.hold is not None:
        # Held: nothing more happens until someone releases it.
        return create, lambda e: e.status is JobStatus.held or _final(e)
    return create, _final


_JOB_COMMANDS: Final[dict[str, Callable[[argparse.Namespace], tuple[JobCommand, Done]]]] = {
    "submit": _submit,
    "release": _release,
    "cancel": _cancel,
    "move": _move,
    "status": _status,
}


async def _follow(
    client: PrintClient, args: argparse.Namespace, command: JobCommand, done: Done
) -> int:
    try:
        async with (
            asyncio.timeout(args.timeout),
            client.follow(command, correlation_id=args.correlation_id) as events,
        ):
            print(
                f"sent {message_type_of(command).value} job={events.job_id} "
                f"correlation={events.correlation_id}"
            )
            if args.command == "submit" and args.no_follow:
                return EXIT_OK
            async for reply in events:
                assert isinstance(reply.message, PrintJobEvent)  # noqa: S101 - JobEvents' type
                _show_event(args, reply.message, reply.correlation_id)
                if done(reply.message):
                    return EXIT_OK
    except Rejected as exc:
        _show_rejection(args, exc.rejection)
        return EXIT_REJECTED
    except TimeoutError:
        print(f"no final status within {args.timeout} s", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK


async def _jobs(client: PrintClient, args: argparse.Namespace) -> int:
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
    try:
        async for page in client.job_pages(query):
            show_page(page, as_json=args.json)
            if page.nextCursor is not None and not args.all:
                if not args.json:
                    print(f"more: --cursor {page.nextCursor}")
                break
    except Rejected as exc:
        print(f"REJECTED {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except TimeoutError:
        print(f"no answer within {args.timeout} s", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK


async def _printers(client: PrintClient, args: argparse.Namespace) -> int:
    try:
        answer = await client.printer_statuses()
    except Rejected as exc:
        print(f"REJECTED {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except TimeoutError:
        print(f"no answer within {args.timeout} s", file=sys.stderr)
        return EXIT_TIMEOUT
    show_printers(answer, as_json=args.json)
    return EXIT_OK


def _create(args: argparse.Namespace) -> CreatePrintJob:
    fields: dict[str, Any] = {
        "jobId": args.job_id or new_job_id(args.queue),
        "userId": args.user_id,
        "documentName": args.document_name,
        "priority": args.priority,
        "title": args.title,
        "copies": args.copies,
    }
    if args.file is not None or args.url is not None:
        name = str(args.file or args.url)
        content_type = args.content_type or mimetypes.guess_type(name)[0]
        fields["document"] = {"contentType": content_type or "application/octet-stream"}
        if args.file is not None:
            fields["document"]["data"] = base64.b64encode(args.file.read_bytes()).decode()
        else:
            fields["document"]["url"] = args.url
    options = {
        "sides": args.sides,
        "media": args.media,
        "colorMode": args.color_mode,
        "orientation": args.orientation,
        "quality": args.quality,
    }
    if args.pages:
        options["pageRanges"] = [_page_range(part) for part in args.pages.split(",")]
    if options := {k: v for k, v in options.items() if v is not None}:
        fields["options"] = options
    if args.hold is not None:
        fields["hold"] = args.hold
        fields["releasePin"] = args.release_pin
    elif args.pin_file is not None:
        raise ValueError("--pin-file needs --hold: a PIN guards a held job")
    if args.expire_after is not None:
        fields["expireAfter"] = (
            datetime.now(UTC) + timedelta(seconds=args.expire_after)
        ).isoformat()
    return CreatePrintJob.model_validate({k: v for k, v in fields.items() if v is not None})


def _invalid(exc: ValueError) -> str:
    """What is wrong with the arguments, without the values given (one may be a PIN)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    errors = exc.errors(include_input=False, include_url=False)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def _page_range(text: str) -> dict[str, int]:
    start, _, end = text.strip().partition("-")
    return {"start": int(start), "end": int(end or start)}


def _show_rejection(args: argparse.Namespace, rejected: CommandRejected) -> None:
    if args.json:
        print(json.dumps(rejected.model_dump(mode="json", exclude_none=True)))
        return
    print(
        f"REJECTED {rejected.reason.value}: {rejected.message} correlation={rejected.correlationId}"
    )


def _show_event(args: argparse.Namespace, event: PrintJobEvent, correlation_id: str | None) -> None:
    if args.json:
        body = event.model_dump(mode="json", exclude_none=True)
        print(json.dumps({**body, "correlationId": correlation_id}))
        return
    fields = event.model_dump(mode="json", exclude_none=True)
    snapshot = " (current)" if event.snapshot else ""
    if event.movedFrom is not None:
        snapshot += f" (moved from {event.movedFrom})"
    print(
        f"{fields['timestamp']}  job={event.jobId}  {event.status.value}{snapshot}  "
        f"seq={event.sequence}  queue={event.queueId}  correlation={correlation_id}",
        flush=True,
    )
