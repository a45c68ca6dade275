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
    print-service submit --hold [TIME]   a held job (PIN: PRINT_RELEASE_PIN or --pin-file)
    print-service release JOB            release a held job (its PIN from the same places)

The client commands send the API key of PRINT_API_KEY or of `--api-key-file PATH`, never
one given on the command line (service/cli/apikey.py says why).

The client commands are a thin layer over `service.client.PrintClient` (service/cli/
commands.py): they publish on MQTT and listen on AMQP exactly as any integrator would, with
the brokers' TLS settings of the service (`MQTT_CA_FILE`, `AMQP_CA_FILE`, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from service.cli.apikey import (
    ENV_VAR,
    PIN_ENV_VAR,
    ApiKeyError,
    resolve_api_key,
    resolve_release_pin,
)
from service.cli.commands import EXIT_CONFIG, EXIT_OK, client_command
from service.cli.jobs import add_jobs_arguments
from service.config import ConfigError, Settings
from service.logs import configure_logging
from service.models import ColorMode, Orientation, PrintQuality, Priority, Sides
from service.ports import StoreError

__all__ = ["main"]

EXIT_STORE = 4
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
        if args.command in ("submit", "release"):
            args.release_pin = resolve_release_pin(pin_file=args.pin_file, environ=os.environ)
    except ApiKeyError as exc:
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(client_command(args, settings, api_key=api_key))


def _run_service(settings: Settings) -> int:
    from service.app import Service  # noqa: PLC0415 - the client commands do not need it

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    try:
        queues = settings.queue_map()
    except ConfigError as exc:
        print(f"print-service: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def run() -> None:
        await Service(settings, queues=queues).run(
            install_signal_handlers=True, freeze_when_ready=True
        )

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


def _hold_arguments(submit: argparse.ArgumentParser, release: argparse.ArgumentParser) -> None:
    submit.add_argument(
        "--hold",
        nargs="?",
        const="indefinite",
        metavar="TIME",
        help="hold the job until released (or until TIME, ISO 8601); with a PIN from "
        f"${PIN_ENV_VAR} or --pin-file, only that PIN releases it",
    )
    release.add_argument("job_id")
    for command in (submit, release):
        command.add_argument(
            "--pin-file",
            type=Path,
            metavar="PATH",
            help=f"the release PIN on the first line of PATH (chmod 600, or a pipe); "
            f"default: ${PIN_ENV_VAR}",
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
    _hold_arguments(submit, client("release", f"release a held job (its PIN: ${PIN_ENV_VAR})"))
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
