"""`print-service printers`: how a `printerStatusList` is shown.

The query itself is `PrintClient.printer_statuses` (service/client).
"""

from __future__ import annotations

import json

from service.models import PrinterStatusList

__all__ = ["show_printers"]


def show_printers(answer: PrinterStatusList, *, as_json: bool) -> None:
    if not answer.printers and not as_json:
        print(f"no printer status known for queue {answer.queueId} (not polled yet?)")
    for printer in answer.printers:
        if as_json:
            print(json.dumps(printer.model_dump(mode="json", exclude_none=True)))
            continue
        reasons = ",".join(reason.root for reason in printer.stateReasons) or "-"
        accepting = "accepting" if printer.acceptingJobs else "not-accepting"
        print(
            f"{printer.timestamp.isoformat()}  printer={printer.printerId}  "
            f"{printer.state.value:<11}  {accepting}  reasons={reasons}",
            flush=True,
        )
