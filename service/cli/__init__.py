"""`print-service`: run the service, or talk to it as an integrator would.

    print-service [run]                  run the service (configuration from the environment)
    print-service submit [--job-id ID]   create a job and follow its events to a final status
    print-service cancel JOB [--force]   cancel a job and follow its events
    print-service status JOB             ask for a job's current status
    print-service move JOB --to QUEUE    move a waiting job from --queue to QUEUE
    print-service watch JOB              print a job's status, then every event until it ends
    print-service jobs [--status S] [--user U] [--since T] [--limit N] [--all]
                                         list the queue's jobs, newest first, page by page
    print-service printers [--queue Q]   the statuses of the queue's printers

The client commands send the API key of PRINT_API_KEY or of `--api-key-file PATH`, never
one given on the command line (service/cli/apikey.py says why).

The client commands publish on MQTT and listen on AMQP exactly as any integrator would:
a private queue bound to `events/<jobId>` (and to the rejections of the queue), created
before the command is published so that no event is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import mimetypes
import os
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika

from service.adapters.amqp import EVENTS_EXCHANGE, REJECTIONS_EXCHANGE, message_body
from service.cli.apikey import ENV_VAR, ApiKeyError, resolve_api_key
from service.cli.jobs import add_jobs_arguments, list_jobs
from service.cli.mqtt import publish_command
from service.cli.printers import show_printers
from service.config import ConfigError, Settings
from service.core.events import EVENT_ROUTE_PREFIX, REJECTION_ROUTE_PREFIX
from service.core.jobs import FINAL_STATUSES
from service.logs import configure_logging
from service.models import (
    CancelPrintJob,
    ColorMode,
    CommandRejected,
    CreatePrintJob,
    GetPrinterStatus,
    GetPrintJobStatus,
    ListPrintJobs,
    MessageType,
    MovePrintJob,
    Orientation,
    PrintJobEvent,
    PrintQuality,
    Priority,
    Sides,
)
from service.ports import StoreError

__all__ = ["main"]

EXIT_OK, EXIT_REJECTED, EXIT_TIMEOUT, EXIT_CONFIG, EXIT_STORE = 0, 1, 2, 3, 4
EXIT_FAILED = 5  # a background loop failed (a bug): the log says which, with its traceback


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "refused_api_key", None) is not None:
        # Without repeating the key: it is exposed already, and should not reach a log too.
        parser.error(
            "--api-key is not accepted: the command line is visible to every user of the "
            f"machine. Set {ENV_VAR} or use --api-key-file PATH (and consider the key exposed)"
        )
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command in (None, "run"):
        return _run_service(settings)
    if args.command == "dead-letters":
        return _dead_letters(args, settings)
    try:
        api_key = resolve_api_key(key_file=args.api_key_file, environ=os.environ)
    except ApiKeyError as exc:
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_client_command(args, settings, api_key=api_key))


def _run_service(settings: Settings) -> int:
    from service.app import Service  # noqa: PLC0415 - the client commands do not need it

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        queues = settings.queue_map()
    except ConfigError as exc:
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def run() -> None:
        await Service(settings, queues=queues).run(install_signal_handlers=True)

    try:
        asyncio.run(run())
    except ConfigError as exc:  # the brokers can refuse it too (AMQP_URL's user id)
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        # No retry loop here: an orchestrator restarts the process, and says why it failed.
        print(f"print-service: the job store is unavailable: {exc}", file=sys.stderr)
        return EXIT_STORE
    except Exception as exc:  # noqa: BLE001 - logged with its traceback by the task that failed
        print(f"print-service: stopped by a failure: {exc!r}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    from service.app import open_store  # noqa: PLC0415 - only this command needs it
    from service.cli.deadletters import dead_letters_command  # noqa: PLC0415

    return asyncio.run(
        dead_letters_command(
            settings,
            open_store(settings),
            replay=args.replay,
            drop=args.drop,
            limit=args.limit,
            as_json=args.json,
        )
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="print-service",
        description="Print job service: MQTT commands in, AMQP job events out. "
        "Brokers come from MQTT_URL and AMQP_URL.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the service (the default)")
    letters = sub.add_parser(
        "dead-letters", help="list the parked messages (DATABASE_URL); replay or drop some"
    )
    letters.add_argument("--replay", type=int, nargs="+", default=[], metavar="ID")
    letters.add_argument("--drop", type=int, nargs="+", default=[], metavar="ID")
    letters.add_argument("--limit", type=int, default=50)
    letters.add_argument("--json", action="store_true", help="one JSON object a line")

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        # No abbreviations: `--api-key SECRET` must not be taken for `--api-key-file SECRET`.
        p = sub.add_parser(name, help=help_text, allow_abbrev=False)
        p.add_argument("--queue", default="default", help="queueId (topic commands/<queue>)")
        p.add_argument(
            "--api-key-file",
            type=Path,
            metavar="PATH",
            help=f"send as x-api-key the first line of PATH (chmod 600, or a pipe); "
            f"default: ${ENV_VAR}. Never on the command line: argv is public",
        )
        # Refused after parsing (main), with an explanation rather than "unrecognized".
        p.add_argument(
            "--api-key", nargs="?", const="", dest="refused_api_key", help=argparse.SUPPRESS
        )
        p.add_argument("--correlation-id", help="sent as x-correlation-id (default: a new UUID)")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for events")
        p.add_argument("--json", action="store_true", help="print events as JSON lines")
        p.add_argument("--gzip", action="store_true", help="gzip the command")
        p.add_argument(
            "--mqtt-version",
            choices=("5", "3.1.1"),
            default="5",
            help="3.1.1 sends the command in an envelope",
        )
        return p

    submit = client("submit", "create a print job and follow it")
    submit.add_argument("--job-id", default=None, help="default: a new UUID")
    submit.add_argument("--user", dest="user_id")
    submit.add_argument("--document", dest="document_name")
    submit.add_argument("--priority", choices=[p.value for p in Priority])
    submit.add_argument("--title")
    what = submit.add_mutually_exclusive_group()
    what.add_argument("--file", type=Path, help="a document to send inline (base64)")
    what.add_argument("--url", help="a document the service fetches")
    submit.add_argument("--content-type", help="default: guessed from the file or URL name")
    submit.add_argument("--copies", type=int)
    submit.add_argument("--sides", choices=[v.value for v in Sides])
    submit.add_argument("--media", help="a PWG media name, e.g. iso_a4_210x297mm")
    submit.add_argument("--color-mode", choices=[v.value for v in ColorMode])
    submit.add_argument("--pages", help="page ranges, e.g. 1-3,5")
    submit.add_argument("--orientation", choices=[v.value for v in Orientation])
    submit.add_argument("--quality", choices=[v.value for v in PrintQuality])
    submit.add_argument("--expire-after", type=float, metavar="SECONDS")
    submit.add_argument("--no-follow", action="store_true", help="publish and exit")
    cancel = client("cancel", "cancel a print job")
    cancel.add_argument("job_id")
    cancel.add_argument("--force", action="store_true", help="also stop a job being printed")
    move = client("move", "move a waiting job to another queue (from --queue)")
    move.add_argument("job_id")
    move.add_argument("--to", required=True, dest="to_queue", help="the queueId it goes to")
    status = client("status", "ask for a job's current status")
    status.add_argument("job_id")
    watch = client("watch", "follow a job until it ends")
    watch.add_argument("job_id")
    add_jobs_arguments(client("jobs", "list the queue's jobs, newest first"))
    client("printers", "show the statuses of the queue's printers")
    return parser


async def _client_command(
    args: argparse.Namespace, settings: Settings, *, api_key: str | None
) -> int:
    if args.command == "jobs":

        async def publish(query: ListPrintJobs, correlation_id: str) -> None:
            await _publish(
                settings, args, query, MessageType.listPrintJobs, correlation_id, api_key=api_key
            )

        return await list_jobs(args, settings.amqp_url, _events_queue_name(settings), publish)
    correlation_id = args.correlation_id or str(uuid.uuid4())
    if args.command == "printers":

        async def ask(query: GetPrinterStatus, correlation_id: str) -> None:
            await _publish(
                settings, args, query, MessageType.getPrinterStatus, correlation_id, api_key=api_key
            )

        queue_name = _events_queue_name(settings)
        return await show_printers(args, settings.amqp_url, queue_name, ask, correlation_id)
    message: CreatePrintJob | CancelPrintJob | GetPrintJobStatus | MovePrintJob
    if args.command == "submit":
        message = _create(args)
        message_type = MessageType.createPrintJob
    elif args.command == "cancel":
        message = CancelPrintJob(jobId=args.job_id, force=args.force)
        message_type = MessageType.cancelPrintJob
    elif args.command == "move":
        message = MovePrintJob(jobId=args.job_id, toQueue=args.to_queue)
        message_type = MessageType.movePrintJob
    else:
        message = GetPrintJobStatus(jobId=args.job_id)
        message_type = MessageType.getPrintJobStatus
    job_id = message.jobId
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            _events_queue_name(settings), exclusive=True, auto_delete=True
        )
        events = await channel.get_exchange(EVENTS_EXCHANGE)
        rejections = await channel.get_exchange(REJECTIONS_EXCHANGE)
        await queue.bind(events, EVENT_ROUTE_PREFIX + job_id)
        await queue.bind(rejections, REJECTION_ROUTE_PREFIX + args.queue)
        await _publish(settings, args, message, message_type, correlation_id, api_key=api_key)
        print(f"sent {message_type.value} job={job_id} correlation={correlation_id}")
        if args.command == "submit" and args.no_follow:
            return EXIT_OK
        return await _follow(queue, args, correlation_id)


def _events_queue_name(settings: Settings) -> str:
    """The CLI's own queue for the events it follows. A tenant of the shipped RabbitMQ
    permissions (deploy/rabbitmq/make_users.py) may declare only queues `tenants/<user>/...`;
    any other user gets a server-named one."""
    user = settings.amqp.username
    if user and user not in ("guest", "print-service"):
        return f"tenants/{user}/cli.{uuid.uuid4()}"
    return ""


def _new_job_id(queue_id: str) -> str:
    """A new jobId; on a tenant's queue (`<tenant>.<name>`) it begins with `<tenant>.`, as
    the tenant's key and its AMQP permissions ask."""
    tenant, dot, _ = queue_id.partition(".")
    return f"{tenant}.{uuid.uuid4()}" if dot and tenant else str(uuid.uuid4())


def _create(args: argparse.Namespace) -> CreatePrintJob:
    fields: dict[str, Any] = {
        "jobId": args.job_id or _new_job_id(args.queue),
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
    if args.expire_after is not None:
        fields["expireAfter"] = (
            datetime.now(UTC) + timedelta(seconds=args.expire_after)
        ).isoformat()
    return CreatePrintJob.model_validate({k: v for k, v in fields.items() if v is not None})


def _page_range(text: str) -> dict[str, int]:
    start, _, end = text.strip().partition("-")
    return {"start": int(start), "end": int(end or start)}


async def _publish(
    settings: Settings,
    args: argparse.Namespace,
    message: CreatePrintJob
    | CancelPrintJob
    | GetPrintJobStatus
    | MovePrintJob
    | ListPrintJobs
    | GetPrinterStatus,
    message_type: MessageType,
    correlation_id: str,
    *,
    api_key: str | None,
) -> None:
    headers = {"x-message-type": message_type.value, "x-correlation-id": correlation_id}
    if api_key:
        headers["x-api-key"] = api_key
    body: dict[str, Any] = message.model_dump(mode="json", exclude_none=True)
    v5 = args.mqtt_version == "5"
    if v5:
        payload = json.dumps(body).encode()
    else:
        payload = json.dumps({"headers": headers, "payload": body}).encode()
    if args.gzip:
        payload = gzip.compress(payload)
    await publish_command(
        settings, f"commands/{args.queue}", payload, v5=v5, user_properties=headers
    )


async def _follow(
    queue: aio_pika.abc.AbstractQueue, args: argparse.Namespace, correlation_id: str
) -> int:
    # `watch` sent a status query: a new subscriber sees only what happens next, so the
    # answer tells where the job is now, and the events that follow the rest.
    try:
        async with asyncio.timeout(args.timeout), queue.iterator() as messages:
            async for incoming in messages:
                async with incoming.process():
                    body = message_body(incoming)
                    if incoming.type == "commandRejected":
                        rejected = CommandRejected.model_validate_json(body)
                        if rejected.correlationId != correlation_id:
                            continue  # another client's rejection on the same queue
                        _show(args, rejected.model_dump(mode="json", exclude_none=True), None)
                        return EXIT_REJECTED
                    event = PrintJobEvent.model_validate_json(body)
                    _show(
                        args,
                        event.model_dump(mode="json", exclude_none=True),
                        incoming.correlation_id,
                    )
                    if args.command == "status" and event.snapshot:
                        return EXIT_OK
                    if args.command == "move" and (event.movedFrom or event.snapshot):
                        return EXIT_OK  # the answer: moved (or already there)
                    if event.status in FINAL_STATUSES:
                        return EXIT_OK
    except TimeoutError:
        print(f"no final status within {args.timeout} s", file=sys.stderr)
        return EXIT_TIMEOUT
    return EXIT_OK


def _show(args: argparse.Namespace, event: dict[str, Any], correlation_id: str | None) -> None:
    if args.json:
        print(json.dumps({**event, "correlationId": correlation_id or event.get("correlationId")}))
        return
    if "reason" in event and "status" not in event:
        print(
            f"REJECTED {event['reason']}: {event['message']} correlation={event['correlationId']}"
        )
        return
    snapshot = " (current)" if event.get("snapshot") else ""
    if "movedFrom" in event:
        snapshot += f" (moved from {event['movedFrom']})"
    print(
        f"{event['timestamp']}  job={event['jobId']}  {event['status']}{snapshot}  "
        f"seq={event['sequence']}  queue={event['queueId']}  correlation={correlation_id}",
        flush=True,
    )
