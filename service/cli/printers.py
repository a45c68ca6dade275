"""`print-service printers`: the statuses of a queue's printers, with `getPrinterStatus`.

The answer (`printerStatusList`) comes on AMQP, routing key `printer-statuses/<queueId>`,
to a private queue bound before the command is published (as the other client commands
do). Publishing is the caller's (the CLI's one MQTT path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

import aio_pika

from service.adapters.amqp import EVENTS_EXCHANGE, REJECTIONS_EXCHANGE, message_body
from service.core.events import PRINTER_LISTS_ROUTE_PREFIX, REJECTION_ROUTE_PREFIX
from service.models import CommandRejected, GetPrinterStatus, PrinterStatusList

__all__ = ["show_printers"]

EXIT_OK, EXIT_REJECTED, EXIT_TIMEOUT = 0, 1, 2

# Publishes one command (its message and the correlation id to send it with).
Publish = Callable[[GetPrinterStatus, str], Awaitable[None]]


async def show_printers(
    args: argparse.Namespace, amqp_url: str, queue_name: str, publish: Publish, correlation_id: str
) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        await queue.bind(
            await channel.get_exchange(EVENTS_EXCHANGE), PRINTER_LISTS_ROUTE_PREFIX + args.queue
        )
        await queue.bind(
            await channel.get_exchange(REJECTIONS_EXCHANGE), REJECTION_ROUTE_PREFIX + args.queue
        )
        async with queue.iterator() as messages:
            await publish(GetPrinterStatus(), correlation_id)
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
    return EXIT_OK


async def _answer(
    messages: aio_pika.abc.AbstractQueueIterator, correlation_id: str
) -> PrinterStatusList | CommandRejected:
    async for incoming in messages:
        async with incoming.process():
            if incoming.correlation_id != correlation_id:
                continue  # another client's answer on the same queue
            body = message_body(incoming)
            if incoming.type == "commandRejected":
                return CommandRejected.model_validate_json(body)
            return PrinterStatusList.model_validate_json(body)
    raise ConnectionError("the AMQP queue closed")


def _show(args: argparse.Namespace, answer: PrinterStatusList) -> None:
    if not answer.printers and not args.json:
        print(f"no printer status known for queue {answer.queueId} (not polled yet?)")
    for printer in answer.printers:
        if args.json:
            print(json.dumps(printer.model_dump(mode="json", exclude_none=True)))
            continue
        reasons = ",".join(reason.root for reason in printer.stateReasons) or "-"
        accepting = "accepting" if printer.acceptingJobs else "not-accepting"
        print(
            f"{printer.timestamp.isoformat()}  printer={printer.printerId}  "
            f"{printer.state.value:<11}  {accepting}  reasons={reasons}",
            flush=True,
        )
