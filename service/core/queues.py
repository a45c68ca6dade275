"""Which printers serve a queue, and what a queue accepts: the queue configuration, as values.

A queue maps to one printer or a pool of them. Without a configuration every queueId is its
own queue with its own simulated printer (the embedded default). With one, a queueId that is
not configured is rejected, or printed by the configured default queue.

The file (TOML, its path in `PRINT_QUEUES_FILE`) is read by `Settings.queue_map` and parsed
by `QueueMap.from_toml`; all of this module is pure.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.core.jobs import Job, Refusal
from service.models import CreatePrintJob, RejectionReason

__all__ = ["PrinterSpec", "QueueConfigError", "QueueMap", "QueueSpec"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class QueueConfigError(Exception):
    """The queue configuration cannot be used; the message says where and why."""


class PrinterSpec(BaseModel):
    """One printer of the configuration: an IPP printer (`uri`) or a simulated one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    backend: Literal["ipp", "simulated"] = "ipp"
    uri: Annotated[str | None, Field(pattern=r"^ipps?://[^/\s]+(/\S*)?$")] = None
    # simulated: how long a job takes.
    duration: float = Field(default=2.0, ge=0)
    # ipp: per-call timeout, poll interval, how long it may be offline before its jobs
    # fail, what to do with a job the printer lost (it restarted mid-job).
    timeout: float = Field(default=10.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    offline_deadline: float = Field(default=300.0, ge=0)
    on_lost_job: Literal["fail", "retry"] = "fail"
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _uri_for_ipp(self) -> PrinterSpec:
        if self.backend == "ipp" and self.uri is None:
            raise ValueError("an ipp printer needs a uri (ipp://host[:port]/path or ipps://...)")
        return self


class QueueSpec(BaseModel):
    """One queue: its printers (jobs go to the next idle one) and the documents it takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue_id: str = ""
    printers: Annotated[tuple[str, ...], Field(min_length=1)]
    # Media types the queue's printers take; empty: whatever the printer says at print time.
    document_formats: frozenset[str] = frozenset()
    # Seconds a held job waits for its release before it is canceled; None: HOLD_TIMEOUT.
    hold_timeout: float | None = Field(default=None, gt=0)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    unknown_queue: str = "reject"
    printers: dict[Annotated[str, Field(pattern=_NAME)], PrinterSpec] = {}
    queues: dict[Annotated[str, Field(pattern=_NAME)], QueueSpec] = {}


@dataclass(frozen=True, slots=True)
class QueueMap:
    """The queues and printers, or (`queues` empty) one simulated printer per queueId."""

    queues: Mapping[str, QueueSpec]
    printers: Mapping[str, PrinterSpec]
    # The queue that prints jobs sent to an unconfigured queueId; None rejects them.
    default_queue: str | None = None

    @classmethod
    def dynamic(cls) -> QueueMap:
        return cls(queues={}, printers={})

    @property
    def is_dynamic(self) -> bool:
        return not self.queues

    def lane(self, queue_id: str) -> str | None:
        """The configured queue that prints jobs sent to `queue_id`; None if none does."""
        if self.is_dynamic or queue_id in self.queues:
            return queue_id
        return self.default_queue

    def hold_timeout(self, queue_id: str) -> timedelta | None:
        """The hold timeout of the queue that prints `queue_id`'s jobs, if it sets one."""
        lane = self.lane(queue_id)
        spec = None if lane is None else self.queues.get(lane)
        if spec is None or spec.hold_timeout is None:
            return None
        return timedelta(seconds=spec.hold_timeout)

    def printers_of(self, lane: str) -> Sequence[PrinterSpec]:
        if self.is_dynamic:
            return ()
        return [self.printers[name] for name in self.queues[lane].printers]

    def check_create(self, queue_id: str, command: CreatePrintJob) -> Refusal | None:
        """Whether the queue can take this job at all; answered before the job exists."""
        document = command.document
        return self._check(queue_id, None if document is None else document.contentType)

    def check_move(self, queue_id: str, job: Job) -> Refusal | None:
        """Whether the queue can take this existing job: the very rules of a create, so that
        a move cannot put a job where its create would have been refused."""
        document = job.document
        return self._check(queue_id, None if document is None else document.content_type)

    def _check(self, queue_id: str, content_type: str | None) -> Refusal | None:
        """`content_type`: the job's document's, None for a job without one."""
        lane = self.lane(queue_id)
        if lane is None:
            return Refusal(
                RejectionReason.unknown_queue,
                f"no queue {queue_id!r} is configured (known: {', '.join(sorted(self.queues))})",
            )
        printers = self.printers_of(lane)
        if content_type is None and any(p.backend == "ipp" for p in printers):
            return Refusal(
                RejectionReason.document_required,
                f"queue {lane!r} prints on a real printer: the create needs a `document`",
            )
        formats = self.queues[lane].document_formats if not self.is_dynamic else frozenset()
        if content_type is not None and formats and content_type not in formats:
            return Refusal(
                RejectionReason.unsupported_document,
                f"queue {lane!r} takes {', '.join(sorted(formats))}, not {content_type}",
            )
        return None

    @classmethod
    def from_toml(cls, text: str, *, source: str) -> QueueMap:
        """The configuration in `text` (TOML); `source` names it in errors (the file)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise QueueConfigError(f"{source} is not valid TOML: {exc}") from exc
        return cls.from_mapping(data, source=source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "queues") -> QueueMap:
        try:
            parsed = _File.model_validate(data)
        except ValidationError as exc:
            lines = [
                f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_url=False)
            ]
            raise QueueConfigError(
                f"invalid queue configuration {source}:\n" + "\n".join(lines)
            ) from None
        if not parsed.queues:
            raise QueueConfigError(f"{source} configures no queue: add a [queues.<id>] table")
        printers = {
            name: spec.model_copy(update={"name": name}) for name, spec in parsed.printers.items()
        }
        owner: dict[str, str] = {}
        for queue_id, queue in parsed.queues.items():
            for name in queue.printers:
                if name not in printers:
                    raise QueueConfigError(f"queue {queue_id!r} names unknown printer {name!r}")
                if name in owner:
                    raise QueueConfigError(
                        f"printer {name!r} serves both {owner[name]!r} and {queue_id!r}: "
                        "a printer belongs to one queue (make both queueIds one queue)"
                    )
                owner[name] = queue_id
        default: str | None = None
        if parsed.unknown_queue != "reject":
            default = parsed.unknown_queue
            if default not in parsed.queues:
                raise QueueConfigError(
                    f'unknown_queue must be "reject" or a configured queue, not {default!r}'
                )
        queues = {
            queue_id: spec.model_copy(update={"queue_id": queue_id})
            for queue_id, spec in parsed.queues.items()
        }
        return cls(queues=queues, printers=printers, default_queue=default)
