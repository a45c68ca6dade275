"""An async IPP client over HTTP (httpx): one request, one response, one deadline for each.

`ipp://host[:port]/path` is `http://host:631/path` unless a port is given; `ipps://` is
HTTPS (with an optional CA file). A printer is a peer like any other, and may be hostile or
broken: each operation has one deadline for the whole exchange (not only httpx's per-read
timeouts, which a printer trickling a byte a second never trips), answers are read raw
(`Accept-Encoding: identity`, nothing is inflated) up to `MAX_RESPONSE_BYTES`, and every
error httpx can raise becomes one of ours. Failures are one hierarchy, split by what to do
next:

    IppRequestError             (permanent unless a subclass says otherwise)
    ├── IppUnreachableError     transient: the printer could not be asked or could not
    │                           answer now: connection refused or reset, no answer within
    │                           the deadline, HTTP 5xx, the connection broken off mid-answer
    │                           (what a printer restarting does). Try again later.
    ├── IppError                the printer answered with an error status. `transient` for
    │                           busy, service unavailable, temporary error and not accepting
    │                           jobs; anything else will not change by asking again (a
    │                           refused option, an unknown job).
    ├── IppProtocolError        permanent: the answer is not IPP (HTTP 4xx, another content
    │                           type, a content-encoding, too large, undecodable bytes,
    │                           another request's answer), the printer's certificate is not
    │                           trusted, or httpx failed in a way not listed above.
    └── IppJobError             permanent: the job cannot be sent as it is: its document
                                could not be read (its spool file), or an attribute cannot
                                be encoded.
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
import structlog

from service.adapters.ipp.attributes import operation_attributes, print_job_groups
from service.adapters.ipp.encoding import (
    Attribute,
    Group,
    GroupTag,
    IppDecodeError,
    IppEncodeError,
    Message,
    Operation,
    Status,
    ValueTag,
    decode,
    encode,
    status_keyword,
)
from service.ports import Document, PrintRequest

__all__ = [
    "DEFAULT_PORT",
    "MAX_RESPONSE_BYTES",
    "MIN_UPLOAD_RATE",
    "IppClient",
    "IppError",
    "IppJobError",
    "IppProtocolError",
    "IppRequestError",
    "IppUnreachableError",
    "Submitted",
    "http_url",
]

log = structlog.get_logger(__name__)

DEFAULT_PORT: Final = 631
CONTENT_TYPE: Final = "application/ipp"
MAX_RESPONSE_BYTES: Final = 1024 * 1024
"""The largest answer read: a printer's attributes or a job's state are a few KB."""
MIN_UPLOAD_RATE: Final = 256 * 1024
"""Bytes per second a printer must at least take a document at: a Print-Job's deadline is
the timeout plus the document's size at this rate (100 MB: 400 s more)."""
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


class IppJobError(IppRequestError):
    """Our side of the request failed; asking again would fail the same way."""


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
    """Requests to one printer. Safe to use from concurrent tasks.

    `timeout` is the deadline of each operation; a Print-Job gets its document's size at
    `upload_rate` (bytes per second) on top.
    """

    def __init__(
        self,
        *,
        uri: str,
        timeout: float = 10.0,
        upload_rate: float = MIN_UPLOAD_RATE,
        ca_file: Path | None = None,
        verify: bool = True,
    ) -> None:
        if timeout <= 0 or upload_rate <= 0:
            raise ValueError("timeout and upload_rate must be > 0")
        self.uri = uri
        self._url = http_url(uri)
        self._timeout = timeout
        self._upload_rate = upload_rate
        tls: ssl.SSLContext | bool = verify
        if verify and ca_file is not None:
            tls = ssl.create_default_context(cafile=str(ca_file))
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), verify=tls)
        self._request_ids = itertools.count(1)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self, operation: Operation, groups: Sequence[Group], document: Document | None = None
    ) -> Message:
        """Sends one request (with `document` after its attributes, streamed); returns the
        response if its status is successful."""
        request_id = next(self._request_ids) % _MAX_REQUEST_ID or 1
        try:
            header = encode(Message(code=operation, request_id=request_id, groups=tuple(groups)))
        except IppEncodeError as exc:
            raise IppJobError(f"{operation.name}: cannot be encoded: {exc}") from exc
        deadline = self._timeout
        if document is not None:
            deadline += document.size / self._upload_rate
        async with self._errors_mapped(operation, deadline), asyncio.timeout(deadline):
            raw = await self._exchange(operation, header, document)
        try:
            message = decode(raw)
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

    async def _exchange(
        self, operation: Operation, header: bytes, document: Document | None
    ) -> bytes:
        """POSTs the request and returns the answer's body, raw and capped."""
        # httpx asks for gzip by default; inflating a printer's answer is how a 1 MB one grew
        # to 2 GiB. The body is read raw, and a content-encoding is refused.
        headers = {"Content-Type": CONTENT_TYPE, "Accept-Encoding": "identity"}
        content: bytes | AsyncIterator[bytes] = header
        if document is not None:
            # A length rather than chunked encoding: every IPP server takes that.
            headers["Content-Length"] = str(len(header) + document.size)
            content = _body(header, document)
        name = operation.name
        async with self._http.stream("POST", self._url, content=content, headers=headers) as answer:
            if answer.status_code >= 500:
                raise IppUnreachableError(f"HTTP {answer.status_code}")
            if answer.status_code != 200:
                raise IppProtocolError(f"{name}: HTTP {answer.status_code}")
            content_type = answer.headers.get("content-type", "")
            if not content_type.startswith(CONTENT_TYPE):
                raise IppProtocolError(f"{name}: answered with {_capped(content_type, 'no type')}")
            encoding = answer.headers.get("content-encoding", "").strip().lower()
            if encoding not in {"", "identity"}:
                raise IppProtocolError(
                    f"{name}: answered with content-encoding {_capped(encoding, '')}"
                    " though identity was asked for"
                )
            declared = answer.headers.get("content-length", "")  # h11 checked it is a number
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise IppProtocolError(f"{name}: answer of {declared} bytes is too large")
            body = bytearray()
            async for chunk in answer.aiter_raw():
                if len(body) + len(chunk) > MAX_RESPONSE_BYTES:
                    raise IppProtocolError(f"{name}: answer larger than {MAX_RESPONSE_BYTES} bytes")
                body += chunk
            return bytes(body)

    @contextlib.asynccontextmanager
    async def _errors_mapped(self, operation: Operation, deadline: float) -> AsyncIterator[None]:
        """Every failure of one exchange as an `IppRequestError`: nothing else leaves it."""
        try:
            yield
        except IppRequestError:
            raise
        except TimeoutError as exc:
            raise IppUnreachableError(f"no answer within {round(deadline, 1):g} s") from exc
        except httpx.TimeoutException as exc:
            raise IppUnreachableError(f"timed out ({_cause(exc)})") from exc
        except httpx.NetworkError as exc:
            if _untrusted(exc):
                raise IppProtocolError(f"{operation.name}: {_cause(exc)}") from exc
            raise IppUnreachableError(_cause(exc)) from exc
        except httpx.RemoteProtocolError as exc:
            # A connection closed mid-answer looks the same from a broken printer and from
            # one restarting: waited for (up to the caller's deadline), not failed at once.
            raise IppUnreachableError(f"broken HTTP answer: {_cause(exc)}") from exc
        except (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL) as exc:
            # DecodingError, LocalProtocolError, UnsupportedProtocol, ProxyError, ...: the
            # same request would fail the same way.
            raise IppProtocolError(f"{operation.name}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # Not a failure httpx documents (h11 or httpcore letting one through): still the
            # printer's exchange failing, not the caller's bug to crash on; logged to be seen.
            log.exception("ipp_unexpected_error", operation=operation.name)
            raise IppProtocolError(f"{operation.name}: {type(exc).__name__}: {exc}") from exc

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


async def _body(header: bytes, document: Document) -> AsyncIterator[bytes]:
    """A Print-Job's body: its attributes, then the document as it is read."""
    yield header
    try:
        async for chunk in document.chunks():
            yield chunk
    except OSError as exc:
        raise IppJobError(f"the document could not be read: {exc}") from exc


def _capped(text: str, empty: str, limit: int = 60) -> str:
    """A header value for a message: a hostile printer's may be long."""
    text = text or empty
    return text if len(text) <= limit else text[:limit] + "..."


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
