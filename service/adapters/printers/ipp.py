"""A real printer over IPP: `IppPrinter` implements the `Printer` port.

A job is submitted with Print-Job, its options sent with fidelity (a printer refuses what
it cannot do, and the job fails naming it; nothing is dropped), then followed with
Get-Job-Attributes until the printer says it ended. A printer that is unreachable or
stopped makes jobs wait, not fail, until it has been so for `offline_deadline` seconds.
A printer that restarts forgets its jobs: `on_lost_job` says whether to submit the job
again from the start ("retry") or to fail it ("fail").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import structlog

from service.adapters.ipp.attributes import JobState, PrinterState, describe
from service.adapters.ipp.client import (
    MIN_UPLOAD_RATE,
    IppClient,
    IppError,
    IppJobError,
    IppProtocolError,
    IppRequestError,
)
from service.adapters.ipp.encoding import Group, Status
from service.aio import sleep_unless
from service.core.backoff import Backoff
from service.core.printers import UNREACHABLE, PrinterSnapshot
from service.models import PrinterState as ContractState
from service.ports import (
    OnProgress,
    OnSubmitted,
    PrinterUnavailable,
    PrintOutcome,
    PrintRequest,
    PrintResult,
)

__all__ = ["IppPrinter", "PrinterStatus"]

log = structlog.get_logger(__name__)

_PRINTER_ATTRIBUTES: Final = ("printer-state", "printer-state-reasons", "printer-is-accepting-jobs")
# job-uuid tells a job from another one given the same job-id after a printer restart.
_JOB_ATTRIBUTES: Final = (
    "job-state",
    "job-state-reasons",
    "job-state-message",
    "job-uuid",
    "job-impressions-completed",
    "job-media-sheets-completed",
)
_BACKOFF_FIRST_S: Final = 0.2
_BACKOFF_CAP_S: Final = 2.0
# Each pause is cut by up to half at random, so that printers coming back are not hit at once.
_BACKOFF_JITTER: Final = 0.5
# A printer that loses the job every time is not going to print it.
_MAX_RESUBMISSIONS: Final = 3


@dataclass(frozen=True, slots=True)
class PrinterStatus:
    state: PrinterState
    reasons: tuple[str, ...]
    """printer-state-reasons without "none": empty when all is well."""
    accepting_jobs: bool

    def problem(self) -> tuple[str, str] | None:
        """Why no job can be printed now, as (what, details); None when one can."""
        details = ", ".join(self.reasons) or "no reason given"
        if self.state == PrinterState.stopped:
            return "stopped", details
        if not self.accepting_jobs:
            return "not accepting jobs", details
        return None


class _Outage:
    """A run of transient failures: how long it has lasted, and when to try again."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline
        self._since: float | None = None
        self._backoff = _backoff()

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self) -> tuple[float, float | None]:
        """(seconds failing so far, the pause before the next try or None past the deadline)."""
        now = time.monotonic()
        self._since = now if self._since is None else self._since
        waited = now - self._since
        if waited >= self._deadline:
            return waited, None
        return waited, min(self._backoff.delay(), self._deadline - waited)

    def ended(self) -> None:
        self._since = None
        self._backoff.reset()


class _JobLostError(Exception):
    """The printer does not know the job any more (it restarted)."""


@dataclass(slots=True)
class _Printing:
    """The job being printed, and the cancel that may come for it from another task."""

    job_id: str
    printer_job_id: int | None = None
    cancel_requested: bool = False
    cancel_sent: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the printer was asked to cancel, or the print ended: cancel() returns then.
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    on_submitted: OnSubmitted | None = None
    # The printer's job-uuid for our job, once known; whether `on_submitted` was told.
    known_uuid: object = None
    reported: bool = False
    on_progress: OnProgress | None = None
    # The counts last given to `on_progress`: it hears only of changes.
    progress: tuple[int, int | None] | None = None


class IppPrinter:
    """One IPP printer at `uri`, printing one job at a time.

    `timeout` bounds every request (a Print-Job also gets its document's size at
    `upload_rate` bytes per second); `poll_interval` is how often a job is followed;
    `offline_deadline` is how long jobs wait for a printer that is unreachable or stopped.
    Whatever the printer answers, `ready` raises only `PrinterUnavailable`, and `print`
    returns a `PrintResult`.
    """

    def __init__(
        self,
        *,
        name: str,
        uri: str,
        timeout: float = 10.0,
        upload_rate: float = MIN_UPLOAD_RATE,
        poll_interval: float = 0.5,
        offline_deadline: float = 300.0,
        on_lost_job: Literal["fail", "retry"] = "fail",
        ca_file: Path | None = None,
    ) -> None:
        if poll_interval <= 0 or offline_deadline <= 0:
            raise ValueError("poll_interval and offline_deadline must be > 0")
        if on_lost_job not in {"fail", "retry"}:
            raise ValueError(f"on_lost_job must be 'fail' or 'retry', not {on_lost_job!r}")
        self.name = name
        self._client = IppClient(uri=uri, timeout=timeout, upload_rate=upload_rate, ca_file=ca_file)
        self._timeout = timeout
        self._poll_interval = poll_interval
        self._offline_deadline = offline_deadline
        self._on_lost_job = on_lost_job
        # When the printer was first seen not ready; successive ready() calls share it.
        self._not_ready_since: float | None = None
        self._printing: _Printing | None = None

    async def close(self) -> None:
        await self._client.close()

    async def state(self) -> PrinterStatus:
        """The printer's state now; raises `IppRequestError` when it cannot be read."""
        group = await self._client.get_printer_attributes(_PRINTER_ATTRIBUTES)
        state = group.get("printer-state")
        value = state.first if state is not None else None
        if not isinstance(value, int) or value not in set(PrinterState):
            raise IppProtocolError(f"no valid printer-state in {group}")
        accepting = group.get("printer-is-accepting-jobs")
        return PrinterStatus(
            state=PrinterState(value),
            reasons=_reasons(group, "printer-state-reasons"),
            accepting_jobs=accepting is None or accepting.first is not False,
        )

    async def status(self) -> PrinterSnapshot:
        """The printer's state for `printerStatus`: unreachable when Get-Printer-Attributes
        fails (each request is bounded by `timeout`), or answers with no valid state."""
        try:
            status = await self.state()
        except (IppRequestError, OSError, ValueError) as exc:
            log.debug("ipp_printer_status_unknown", printer=self.name, error=str(exc))
            return UNREACHABLE
        return PrinterSnapshot.of(
            ContractState(status.state.name),
            status.reasons,
            accepting_jobs=status.accepting_jobs,
        )

    async def ready(self) -> None:
        backoff = _backoff()
        last_problem: tuple[str, str] | None = None
        while True:
            try:
                problem = (await self.state()).problem()
            except IppRequestError as exc:
                # Waited for too: a printer that answers in error may be starting or misset,
                # and the deadline's message says which.
                problem = ("unreachable" if exc.transient else "answering in error", str(exc))
            now = time.monotonic()
            if problem is None:
                if self._not_ready_since is not None:
                    log.info(
                        "ipp_printer_ready",
                        printer=self.name,
                        after_s=round(now - self._not_ready_since, 1),
                    )
                self._not_ready_since = None
                return
            if self._not_ready_since is None:
                self._not_ready_since = now
            waited = now - self._not_ready_since
            if waited >= self._offline_deadline:
                what, details = problem
                raise PrinterUnavailable(
                    f"printer {self.name} {what} for {round(waited)} s: {details}"
                )
            if problem != last_problem:
                log.warning(
                    "ipp_printer_not_ready", printer=self.name, state=problem[0], reason=problem[1]
                )
                last_problem = problem
            await asyncio.sleep(min(backoff.delay(), self._offline_deadline - waited))

    async def print(
        self,
        request: PrintRequest,
        *,
        on_submitted: OnSubmitted | None = None,
        on_progress: OnProgress | None = None,
    ) -> PrintResult:
        if self._printing is not None:
            request.document.close()
            raise RuntimeError(f"printer {self.name} is already printing {self._printing.job_id}")
        printing = _Printing(request.job_id, on_submitted=on_submitted, on_progress=on_progress)
        self._printing = printing
        try:
            return await self._print(request, printing)
        finally:
            self._printing = None
            printing.settled.set()
            request.document.close()

    async def cancel(self, job_id: str) -> None:
        """Asks the printer to cancel `job_id` if it is the one printing; `print` then
        returns canceled once the printer says so.

        Returns once the printer was asked, or after `timeout`: an unreachable printer is
        asked by `print` as soon as it answers again.
        """
        printing = self._printing
        if printing is None or printing.job_id != job_id:
            return
        printing.cancel_requested = True
        printing.wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await printing.settled.wait()

    # --- one job ----------------------------------------------------------------------------

    async def _print(self, request: PrintRequest, printing: _Printing) -> PrintResult:
        losses = 0
        earlier = self._earlier_job(request.printer_job)
        submitted: int | PrintResult
        while True:
            if earlier is not None:
                # Taken up again (a restart, a takeover): follow the job the printer has.
                submitted, printing.known_uuid = earlier
                printing.reported = True
                earlier = None
                log.info("ipp_job_followed_again", printer=self.name, job_id=request.job_id)
            else:
                submitted = await self._submit(request, printing)
                if isinstance(submitted, PrintResult):
                    return submitted
                printing.known_uuid, printing.reported = None, False
            printing.printer_job_id, printing.cancel_sent = submitted, False
            try:
                return await self._follow(request, printing)
            except _JobLostError:
                losses += 1
            if printing.cancel_requested:
                return PrintResult(PrintOutcome.canceled, "canceled on request")
            resubmit = self._on_lost_job == "retry" and losses <= _MAX_RESUBMISSIONS
            log.warning(
                "ipp_job_lost",
                printer=self.name,
                job_id=request.job_id,
                printer_job_id=submitted,
                losses=losses,
                resubmitting=resubmit,
            )
            if not resubmit:
                times = "" if losses == 1 else f" {losses} times"
                return PrintResult(PrintOutcome.failed, f"the printer lost the job{times}")

    async def _submit(self, request: PrintRequest, printing: _Printing) -> int | PrintResult:
        """The printer's job-id, or how the job ended before the printer took it."""
        outage = _Outage(self._offline_deadline)
        while True:
            if printing.cancel_requested:
                return PrintResult(PrintOutcome.canceled, "canceled before the printer took it")
            try:
                submitted = await self._client.print_job(request)
            except IppRequestError as exc:
                if not exc.transient:
                    log.warning(
                        "ipp_job_refused", printer=self.name, job_id=request.job_id, error=str(exc)
                    )
                    return PrintResult(PrintOutcome.failed, self._refusal(exc))
                waited, delay = outage.failed()
                if delay is None:
                    return PrintResult(
                        PrintOutcome.failed,
                        f"printer {self.name} did not take the job for {round(waited)} s: {exc}",
                    )
                log.warning(
                    "ipp_submit_retry",
                    printer=self.name,
                    job_id=request.job_id,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                )
                await self._pause(delay, printing)
                continue
            if submitted.ignored:
                # We asked for fidelity; a printer that substitutes anyway is worth a warning.
                log.warning(
                    "ipp_options_ignored",
                    printer=self.name,
                    job_id=request.job_id,
                    attributes=[describe(attribute) for attribute in submitted.ignored],
                )
            log.info(
                "ipp_job_submitted",
                printer=self.name,
                job_id=request.job_id,
                printer_job_id=submitted.job_id,
            )
            return submitted.job_id

    async def _identify(
        self, request: PrintRequest, printing: _Printing, job: Group, known: object
    ) -> object:
        """The job's uuid; `_JobLostError` if the printer gave our job-id to another job
        (it restarted). The first time, the caller is told which job is ours."""
        uuid = job.get("job-uuid")
        if uuid is not None:
            if known is None:
                known = uuid.first
            elif uuid.first != known:
                raise _JobLostError
        if not printing.reported:
            printing.reported = True
            await self._report(request, printing, known)
        return known

    async def _report(self, request: PrintRequest, printing: _Printing, uuid: object) -> None:
        """Tell the caller which job of the printer is ours, so it can be followed again."""
        if printing.on_submitted is None:
            return
        suffix = uuid if isinstance(uuid, str) else ""
        reference = f"{self.name} {printing.printer_job_id} {suffix}"
        try:
            await printing.on_submitted(reference.rstrip())
        except Exception:  # noqa: BLE001 - printing goes on; a restart would print it again
            log.warning("ipp_job_not_recorded", printer=self.name, job_id=request.job_id)

    def _earlier_job(self, reference: str | None) -> tuple[int, object] | None:
        """The printer job in `reference`, if it is one of this printer's."""
        if reference is None:
            return None
        name, _, rest = reference.partition(" ")
        job_id, _, uuid = rest.partition(" ")
        if name != self.name or not job_id.isdigit():
            return None
        return int(job_id), uuid or None

    def _refusal(self, exc: IppRequestError) -> str:
        if isinstance(exc, IppError) and exc.unsupported:
            refused = ", ".join(describe(attribute) for attribute in exc.unsupported)
            return f"printer refused {refused} ({exc.keyword})"
        if isinstance(exc, IppError):
            return f"printer refused the job: {exc}"
        if isinstance(exc, IppJobError):
            return f"the job could not be sent to printer {self.name}: {exc}"
        return f"printer {self.name} answered in error: {exc}"

    async def _follow(self, request: PrintRequest, printing: _Printing) -> PrintResult:
        """Polls the job until it ends; `_JobLostError` when the printer no longer knows it."""
        assert printing.printer_job_id is not None  # noqa: S101 - set by _print just before
        printer_job_id = printing.printer_job_id
        outage = _Outage(self._offline_deadline)
        job_uuid: object = printing.known_uuid
        reported: JobState | None = None
        while True:
            if printing.cancel_requested and not printing.cancel_sent:
                await self._send_cancel(request, printing)
            try:
                job = await self._client.get_job_attributes(printer_job_id, _JOB_ATTRIBUTES)
            except IppRequestError as exc:
                if isinstance(exc, IppError) and exc.status == Status.client_error_not_found:
                    raise _JobLostError from exc
                if not exc.transient:
                    return PrintResult(
                        PrintOutcome.failed,
                        f"printer {self.name} answered in error while printing: {exc}",
                    )
                waited, delay = outage.failed()
                if delay is None:
                    return PrintResult(
                        PrintOutcome.failed,
                        f"printer unreachable for {round(waited)} s while printing",
                    )
                log.warning(
                    "ipp_poll_retry",
                    printer=self.name,
                    job_id=request.job_id,
                    printer_job_id=printer_job_id,
                    error=str(exc),
                    retry_in_s=round(delay, 2),
                )
                await self._pause(delay, printing)
                continue
            if outage.ongoing:
                log.info("ipp_printer_back", printer=self.name, job_id=request.job_id)
                outage.ended()
            job_uuid = await self._identify(request, printing, job, job_uuid)
            await self._progress(request, printing, job)
            state = _job_state(job)
            if state != reported:
                log.info(
                    "ipp_job_state",
                    printer=self.name,
                    job_id=request.job_id,
                    printer_job_id=printer_job_id,
                    state=state.keyword if state is not None else None,
                    reasons=list(_reasons(job, "job-state-reasons")),
                )
                reported = state
            if state is not None and state.terminal:
                return self._result(state, job, printing)
            await self._pause(self._poll_interval, printing)

    async def _progress(self, request: PrintRequest, printing: _Printing, job: Group) -> None:
        """Tell the caller the job's completed impressions (and sheets) when they changed:
        polled with its state, so the last poll, which sees it end, gives the totals."""
        impressions = _count(job, "job-impressions-completed")
        if impressions is None or printing.on_progress is None:
            return  # a printer that does not count them (or not yet)
        counts = (impressions, _count(job, "job-media-sheets-completed"))
        if counts == printing.progress:
            return
        printing.progress = counts
        try:
            await printing.on_progress(*counts)
        except Exception:  # noqa: BLE001 - printing goes on; the next change is reported
            log.warning("ipp_progress_not_recorded", printer=self.name, job_id=request.job_id)

    def _result(self, state: JobState, job: Group, printing: _Printing) -> PrintResult:
        message = job.get("job-state-message")
        details = (str(message.first) if message is not None else "") or ", ".join(
            _reasons(job, "job-state-reasons")
        )
        if state == JobState.completed:
            return PrintResult(PrintOutcome.completed)
        if state == JobState.canceled:
            if printing.cancel_requested:
                return PrintResult(PrintOutcome.canceled, "canceled on request")
            return PrintResult(
                PrintOutcome.canceled, f"canceled at the printer: {details or 'no reason given'}"
            )
        return PrintResult(
            PrintOutcome.failed, f"the printer aborted the job: {details or 'no reason given'}"
        )

    async def _send_cancel(self, request: PrintRequest, printing: _Printing) -> None:
        """One Cancel-Job; on a transient failure the next poll sends it again."""
        assert printing.printer_job_id is not None  # noqa: S101 - only called while following
        try:
            await self._client.cancel_job(printing.printer_job_id)
        except IppRequestError as exc:
            if exc.transient:
                log.warning(
                    "ipp_cancel_retry", printer=self.name, job_id=request.job_id, error=str(exc)
                )
                return
            # Already ended or lost (not-possible, not-found): the next poll says which.
            log.info(
                "ipp_cancel_not_applied", printer=self.name, job_id=request.job_id, error=str(exc)
            )
        else:
            log.info(
                "ipp_cancel_sent",
                printer=self.name,
                job_id=request.job_id,
                printer_job_id=printing.printer_job_id,
            )
        printing.cancel_sent = True
        printing.settled.set()

    async def _pause(self, seconds: float, printing: _Printing) -> None:
        """Sleeps `seconds`, or less if a cancel comes meanwhile."""
        await sleep_unless(printing.wake, seconds)
        printing.wake.clear()


def _backoff() -> Backoff:
    return Backoff(first=_BACKOFF_FIRST_S, cap=_BACKOFF_CAP_S, jitter=_BACKOFF_JITTER)


def _reasons(group: Group, name: str) -> tuple[str, ...]:
    attribute = group.get(name)
    if attribute is None:
        return ()
    return tuple(str(value) for value in attribute.all if value not in {None, "none"})


def _count(job: Group, name: str) -> int | None:
    """A counter of the job, if the printer gave one as an integer (a hostile printer's
    other types, or a negative value, count as not given)."""
    attribute = job.get(name)
    value = attribute.first if attribute is not None else None
    return value if type(value) is int and value >= 0 else None


def _job_state(job: Group) -> JobState | None:
    attribute = job.get("job-state")
    value = attribute.first if attribute is not None else None
    # A state we do not know is followed as if still in progress.
    return JobState(value) if isinstance(value, int) and value in set(JobState) else None
