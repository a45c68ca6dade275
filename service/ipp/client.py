"""An async IPP client over HTTP (httpx): one request, one response, a timeout on each call.

`ipp://host[:port]/path` is `http://host:631/path` unless a port is given; `ipps://` is
HTTPS (with an optional CA file). Failures are one hierarchy, split by what to do next:

- `IppUnreachableError` (transient): the printer could not be asked or could not answer now:
  connection refused or reset, a timeout, HTTP 5xx. Try again later.
- `IppError`: the printer answered with an error status. `transient` for busy, service
  unavailable, temporary error and not accepting jobs; anything else will not change by
  asking again (a refused option, an unknown job).
- `IppProtocolError` (permanent): the answer is not IPP (HTTP 4xx, another content type,
  undecodable bytes, another request's answer), or the printer's certificate is not trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.ipp.attributes import operation_attributes, print_job_groups
from service.ipp.encoding import (
    Attribute,
    Group,
    GroupTag,
    IppDecodeError,
    Message,
    Operation,
    Status,
    ValueTag,
    decode,
    encode,
    status_keyword,
)
from service.ports import PrintRequest

__all__ = [
    "DEFAULT_PORT",
    "IppClient",
    "IppError",
    "IppProtocolError",
    "IppRequestError",
    "IppUnreachableError",
    "Submitted",
    "http_url",
]

DEFAULT_PORT: Final = 631
CONTENT_TYPE: Final = "application/ipp"
TRANSIENT_STATUSES: Final = frozenset(
    {
        Status.server_error_service_unavailable,
        Status.server_error_temporary_error,
        Status.server_error_busy,
        # A printer that stopped taking jobs is waited for, as one that is stopped (ready()).
        Status.server_error_not_accepting_jobs,
    }
)
_MAX_REQUEST_ID: Final = 2**31 - 1


class IppRequestError(Exception):
    """An IPP call failed; `transient` says whether the same call may succeed later."""

    @property
    def transient(self) -> bool:
        return False


class IppUnreachableError(IppRequestError):
    @property
    def transient(self) -> bool:
        return True


class IppProtocolError(IppRequestError):
    pass


class IppError(IppRequestError):
    """The printer's answer was an error status; `unsupported` is what it refused."""

    def __init__(
        self, status: int, message: str | None, unsupported: tuple[Attribute, ...]
    ) -> None:
        self.status = status
        self.message = message
        self.unsupported = unsupported
        keyword = status_keyword(status)
        super().__init__(f"{keyword}: {message}" if message else keyword)

    @property
    def keyword(self) -> str:
        return status_keyword(self.status)

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES


@dataclass(frozen=True, slots=True)
class Submitted:
    """A Print-Job the printer took: its job-id, and what it ignored or substituted (it
    should be nothing, since we ask for fidelity; a printer that does it anyway is logged)."""

    job_id: int
    ignored: tuple[Attribute, ...]


def http_url(uri: str) -> str:
    """The HTTP(S) URL an `ipp://` or `ipps://` printer URI is reached at."""
    parts = urlsplit(uri)
    schemes = {"ipp": "http", "ipps": "https"}
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"not an ipp:// or ipps:// printer URI: {uri!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{parts.port or DEFAULT_PORT}"
    return urlunsplit((schemes[parts.scheme], netloc, parts.path or "/", parts.query, ""))


class IppClient:
    """Requests to one printer. Safe to use from concurrent tasks."""

    def __init__(
        self,
        *,
        uri: str,
        timeout: float = 10.0,
        ca_file: Path | None = None,
        verify: bool = True,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.uri = uri
        self._url = http_url(uri)
        self._timeout = timeout
        tls: ssl.SSLContext | bool = verify
        if verify and ca_file is not None:
            tls = ssl.create_default_context(cafile=str(ca_file))
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), verify=tls)
        self._request_ids = itertools.count(1)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self, operation: Operation, groups: Sequence[Group], data: bytes = b""
    ) -> Message:
        """Sends one request; returns the response if its status is successful."""
        request_id = next(self._request_ids) % _MAX_REQUEST_ID or 1
        body = encode(
            Message(code=operation, request_id=request_id, groups=tuple(groups), data=data)
        )
        async with self._errors_mapped(operation):
            response = await self._post(body, bounded=not data)
        if response.status_code >= 500:
            raise IppUnreachableError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise IppProtocolError(f"{operation.name}: HTTP {response.status_code}")
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith(CONTENT_TYPE):
            raise IppProtocolError(f"{operation.name}: answered with {content_type or 'no type'}")
        try:
            message = decode(response.content)
        except IppDecodeError as exc:
            raise IppProtocolError(f"{operation.name}: undecodable answer: {exc}") from exc
        if message.request_id != request_id:
            raise IppProtocolError(
                f"{operation.name}: answer to request {message.request_id}, not {request_id}"
            )
        if message.code >= 0x0400:
            operation_group = message.group(GroupTag.operation)
            status_message = operation_group.get("status-message") if operation_group else None
            unsupported = message.group(GroupTag.unsupported)
            raise IppError(
                message.code,
                str(status_message.first) if status_message is not None else None,
                unsupported.attributes if unsupported is not None else (),
            )
        return message

    async def _post(self, body: bytes, *, bounded: bool) -> httpx.Response:
        headers = {"Content-Type": CONTENT_TYPE}
        if not bounded:
            # A document may take longer than the timeout to upload; httpx still bounds
            # every connect, read and write.
            return await self._http.post(self._url, content=body, headers=headers)
        async with asyncio.timeout(self._timeout):
            return await self._http.post(self._url, content=body, headers=headers)

    @contextlib.asynccontextmanager
    async def _errors_mapped(self, operation: Operation) -> AsyncIterator[None]:
        try:
            yield
        except TimeoutError as exc:
            raise IppUnreachableError(f"no answer within {self._timeout} s") from exc
        except httpx.TimeoutException as exc:
            raise IppUnreachableError(f"timed out ({_cause(exc)})") from exc
        except httpx.TransportError as exc:
            if _untrusted(exc):
                raise IppProtocolError(f"{operation.name}: {_cause(exc)}") from exc
            raise IppUnreachableError(_cause(exc)) from exc

    async def get_printer_attributes(self, requested: Sequence[str]) -> Group:
        groups = [Group(GroupTag.operation, self._operation(requested))]
        response = await self.request(Operation.get_printer_attributes, groups)
        return response.group(GroupTag.printer) or Group(GroupTag.printer, ())

    async def print_job(self, request: PrintRequest) -> Submitted:
        groups = print_job_groups(request, printer_uri=self.uri)
        response = await self.request(Operation.print_job, groups, request.document)
        job = response.group(GroupTag.job)
        job_id = job.get("job-id") if job is not None else None
        if job_id is None or not isinstance(job_id.first, int):
            raise IppProtocolError("print_job: the answer has no job-id")
        unsupported = response.group(GroupTag.unsupported)
        return Submitted(job_id.first, unsupported.attributes if unsupported else ())

    async def get_job_attributes(self, job_id: int, requested: Sequence[str]) -> Group:
        groups = [Group(GroupTag.operation, self._operation(requested, job_id=job_id))]
        response = await self.request(Operation.get_job_attributes, groups)
        return response.group(GroupTag.job) or Group(GroupTag.job, ())

    async def cancel_job(self, job_id: int) -> None:
        groups = [Group(GroupTag.operation, self._operation((), job_id=job_id))]
        await self.request(Operation.cancel_job, groups)

    def _operation(
        self, requested: Sequence[str], *, job_id: int | None = None
    ) -> tuple[Attribute, ...]:
        attributes = operation_attributes(printer_uri=self.uri)
        if job_id is not None:
            attributes.insert(3, Attribute.of("job-id", ValueTag.integer, job_id))
        if requested:
            attributes.append(Attribute.of("requested-attributes", ValueTag.keyword, *requested))
        return tuple(attributes)


def _cause(exc: BaseException) -> str:
    """The innermost reason, in words: "connection refused", not the wrapper's repr."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    text = str(exc)
    if "Connection refused" in text or "Connect call failed" in text:
        return "connection refused"
    return text or type(exc).__name__


def _untrusted(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
