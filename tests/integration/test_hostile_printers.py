"""Hostile and broken peers: an IPP "printer" that is a small HTTP server of this test, answering
what no printer should (a gzip bomb, an endless body, a trickle, garbage, broken HTTP), and
document servers that do the same. Each time the printer port does what it documents: ready()
raises only PrinterUnavailable, print() returns a PrintResult with a reason, memory stays
bounded, and no spool file is left open. Plus the figure the issue asks for: the RSS while a
100 MB document fetched by URL prints on a real ippeveprinter."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import threading
import time
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from structlog.testing import capture_logs

from service.adapters.documents import REASON, DocumentFetcher
from service.adapters.ipp.client import MAX_RESPONSE_BYTES
from service.adapters.ipp.encoding import (
    Attribute,
    Group,
    GroupTag,
    Message,
    Operation,
    Status,
    ValueTag,
    decode,
    encode,
)
from service.adapters.printers.ipp import IppPrinter
from service.adapters.spool import Spool, SpooledDocument
from service.models import PrintOptions
from service.ports import (
    Document,
    DocumentUnavailable,
    PrinterUnavailable,
    PrintOutcome,
    PrintRequest,
)
from tests.integration.conftest import (
    Listener,
    Publisher,
    Received,
    ServiceFactory,
    statuses,
    unique,
)
from tests.integration.ippeve import IppEvePrinter, IppEveUnavailableError
from tests.unit.test_spool import names_in, open_files_in
from tests.waits import wait_until

MiB: Final = 1024 * 1024
PDF: Final = b"%PDF-1.4\n" + b"0" * 10_000 + b"\n%%EOF\n"

Respond = Callable[[Message, asyncio.StreamWriter], Awaitable[None]]


# --- a hostile printer ------------------------------------------------------------------------


def ipp_answer(request: Message, *groups: Group, status: int = Status.successful_ok) -> bytes:
    operation = Group(
        GroupTag.operation,
        (
            Attribute.of("attributes-charset", ValueTag.charset, "utf-8"),
            Attribute.of("attributes-natural-language", ValueTag.natural_language, "en"),
        ),
    )
    return encode(Message(code=status, request_id=request.request_id, groups=(operation, *groups)))


def good_answer(request: Message) -> bytes:
    """What a well-behaved idle printer answers: it prints every job at once."""
    if request.code == Operation.get_printer_attributes:
        printer = Group(
            GroupTag.printer,
            (
                Attribute.of("printer-state", ValueTag.enum, 3),
                Attribute.of("printer-is-accepting-jobs", ValueTag.boolean, True),
            ),
        )
        return ipp_answer(request, printer)
    job = Group(
        GroupTag.job,
        (
            Attribute.of("job-id", ValueTag.integer, 7),
            Attribute.of("job-uuid", ValueTag.uri, "urn:uuid:" + str(uuid.UUID(int=7))),
            Attribute.of(
                "job-state", ValueTag.enum, 9 if request.code != Operation.print_job else 3
            ),
        ),
    )
    return ipp_answer(request, job)


def http_200(body: bytes, *headers: str, length: int | str | None = None) -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: application/ipp",
        f"Content-Length: {len(body) if length is None else length}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Asked:
    """A request the hostile printer read."""

    headers: dict[str, str]
    message: Message


@dataclass
class HostilePrinter:
    """An HTTP server that reads IPP requests properly and answers with `respond`."""

    respond: Respond
    received: list[Asked] = field(default_factory=list)
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def uri(self) -> str:
        return f"ipp://127.0.0.1:{self.port}/ipp/print"

    def asked(self, operation: Operation) -> int:
        """How many `operation` requests it read."""
        return sum(1 for asked in self.received if asked.message.code == operation)

    async def stop(self) -> None:
        """Drops every connection, and waits for their handlers (a trickle sees it)."""
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            body = await reader.readexactly(int(headers["content-length"]))
            request = decode(body)
            self.received.append(Asked(headers, request))
            await self.respond(request, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up on us: what these tests want
        finally:
            writer.close()
            self._tasks.discard(task)
            self._writers.discard(writer)


@contextlib.asynccontextmanager
async def hostile_printer(respond: Respond) -> AsyncIterator[HostilePrinter]:
    printer = HostilePrinter(respond)
    server = await asyncio.start_server(printer.serve, "127.0.0.1", 0)
    printer.port = server.sockets[0].getsockname()[1]
    try:
        yield printer
    finally:
        server.close()
        await printer.stop()
        await server.wait_closed()


def sent(raw: bytes) -> Respond:
    async def respond(request: Message, writer: asyncio.StreamWriter) -> None:
        del request
        writer.write(raw)

    return respond


def sending(raw: Callable[[Message], bytes]) -> Respond:
    async def respond(request: Message, writer: asyncio.StreamWriter) -> None:
        writer.write(raw(request))

    return respond


def gzip_of_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: a gzip stream
    block = bytes(MiB)
    return b"".join(compressor.compress(block) for _ in range(size // MiB)) + compressor.flush()


BOMB: Final = gzip_of_zeros(64 * MiB)  # ~64 KB on the wire


async def endless(request: Message, writer: asyncio.StreamWriter) -> None:
    """A valid answer followed by more bytes than anyone should read (no length given)."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/ipp\r\nConnection: close\r\n\r\n"
        + good_answer(request)
    )
    chunk = bytes(64 * 1024)
    for _ in range(64 * MiB // len(chunk)):
        writer.write(chunk)
        await writer.drain()


def trickling(*, in_headers: bool) -> Respond:
    """One byte every 0.2 s: never slow enough to trip a per-read timeout of 1 s."""

    async def respond(request: Message, writer: asyncio.StreamWriter) -> None:
        answer = http_200(good_answer(request), length=100_000)  # never all sent
        start = 0 if in_headers else answer.index(b"\r\n\r\n") + 4
        writer.write(answer[:start])
        for byte in answer[start : start + 100]:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    return respond


async def nothing(request: Message, writer: asyncio.StreamWriter) -> None:
    del request, writer  # the connection closes without an answer


# Each: what the printer answers, and what the reason or error must say.
PERMANENT: Final[dict[str, tuple[Respond, str]]] = {
    # The 2 GiB peak: a gzip answer that httpx inflated whole.
    "gzip bomb": (
        sent(http_200(BOMB, "Content-Encoding: gzip")),
        "answered with content-encoding gzip though identity was asked for",
    ),
    # What raised httpx.DecodingError out of ready(): "gzip" that is not gzip.
    "not gzip": (
        sent(http_200(b"not gzip at all", "Content-Encoding: gzip")),
        "content-encoding gzip",
    ),
    "declared too large": (
        sending(lambda r: http_200(good_answer(r), length=2 * MiB)),
        f"answer of {2 * MiB} bytes is too large",
    ),
    "endless body": (endless, f"answer larger than {MAX_RESPONSE_BYTES} bytes"),
    "garbage": (sent(http_200(os.urandom(300))), "undecodable answer"),
    "truncated IPP": (
        sending(lambda r: http_200(good_answer(r)[:-5])),
        "undecodable answer: truncated",
    ),
    "another request's answer": (
        sending(lambda r: http_200(good_answer(Message(code=0, request_id=r.request_id + 1)))),
        "answer to request",
    ),
    "not IPP": (
        sent(http_200(b"<html/>").replace(b"application/ipp", b"text/html")),
        "answered with text/html",
    ),
}
TRANSIENT: Final[dict[str, tuple[Respond, str]]] = {
    "trickle in the body": (trickling(in_headers=False), "no answer within 1 s"),
    "trickle in the headers": (trickling(in_headers=True), "no answer within 1 s"),
    "not HTTP": (sent(b"SPEAK IPP?\r\n\r\n"), "broken HTTP answer"),
    "body cut short": (
        sending(lambda r: http_200(good_answer(r), length=len(good_answer(r)) + 50)),
        "broken HTTP answer",
    ),
    "bad chunked encoding": (
        sent(
            http_200(b"zz\r\n", "Transfer-Encoding: chunked").replace(b"Content-Length: 4\r\n", b"")
        ),
        "broken HTTP answer",
    ),
    "closed without an answer": (nothing, "broken HTTP answer"),
    # Too long for int(): h11 refuses it before we read it.
    "a length of 5,000 digits": (
        sent(http_200(b"", length="9" * 5000)),
        "broken HTTP answer: bad Content-Length",
    ),
}

TIMEOUT: Final = 1.0
DEADLINE: Final = 1.0


def an_ipp_printer(uri: str) -> IppPrinter:
    return IppPrinter(
        name="office-1", uri=uri, timeout=TIMEOUT, poll_interval=0.05, offline_deadline=DEADLINE
    )


def a_request(document: Document) -> PrintRequest:
    return PrintRequest(
        job_id="job-1",
        title="Report",
        user_id="alice",
        copies=1,
        options=PrintOptions(),
        document=document,
        content_type="application/pdf",
    )


@contextlib.contextmanager
def peak_allocated() -> Iterator[list[int]]:
    """The peak of Python allocations inside the block, in bytes (in the list, at exit)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


async def a_spooled(directory: Path, data: bytes = PDF) -> SpooledDocument:
    spool = Spool(directory=directory)
    await spool.write(data)
    return await spool.finish()


# --- the printer port against hostile printers ----------------------------------------------


async def test_the_hostile_printer_answers_like_a_printer_when_it_behaves(tmp_path: Path):
    # The control: the same server, answering well, prints; the failures below are its answers.
    async with hostile_printer(sending(lambda r: http_200(good_answer(r)))) as server:
        printer = an_ipp_printer(server.uri)
        try:
            await printer.ready()
            document = await a_spooled(tmp_path)
            result = await printer.print(a_request(document))
        finally:
            await printer.close()

    assert result.outcome is PrintOutcome.completed, result.reason
    print_job = next(r for r in server.received if r.message.code == Operation.print_job)
    # Streamed from the spool file, with a length (not chunked), byte for byte.
    assert print_job.message.data == PDF
    assert "transfer-encoding" not in print_job.headers
    assert all(r.headers["accept-encoding"] == "identity" for r in server.received)
    assert document.closed
    assert open_files_in(tmp_path) == []


@pytest.mark.parametrize("case", PERMANENT)
async def test_a_printer_answering_nonsense_fails_the_job_at_once(case: str, tmp_path: Path):
    respond, says = PERMANENT[case]
    async with hostile_printer(respond) as server:
        printer = an_ipp_printer(server.uri)
        try:
            document = await a_spooled(tmp_path)
            with peak_allocated() as peak:
                result = await printer.print(a_request(document))
        finally:
            await printer.close()

    assert result.outcome is PrintOutcome.failed
    assert result.reason is not None
    assert result.reason.startswith("printer office-1 answered in error: print_job: ")
    assert says in result.reason
    assert server.asked(Operation.print_job) == 1, "not retried: the same answer would come"
    assert peak[0] < 8 * MiB, f"{peak[0] / MiB:.1f} MiB allocated"
    assert document.closed
    assert open_files_in(tmp_path) == []


@pytest.mark.parametrize("case", TRANSIENT)
async def test_a_printer_that_breaks_http_or_trickles_fails_the_job_after_the_deadline(
    case: str, tmp_path: Path
):
    respond, says = TRANSIENT[case]
    async with hostile_printer(respond) as server:
        printer = an_ipp_printer(server.uri)
        try:
            document = await a_spooled(tmp_path)
            result = await printer.print(a_request(document))
        finally:
            await printer.close()

    assert result.outcome is PrintOutcome.failed
    assert result.reason is not None
    assert result.reason.startswith("printer office-1 did not take the job for ")
    assert says in result.reason
    # Tried again, as for a printer restarting, until the deadline (the seconds in the
    # reason are the printer's own count).
    assert server.asked(Operation.print_job) >= 2
    assert document.closed
    assert open_files_in(tmp_path) == []


@pytest.mark.parametrize("case", [*PERMANENT, *TRANSIENT])
async def test_ready_raises_only_printer_unavailable_after_its_deadline(case: str):
    respond, says = {**PERMANENT, **TRANSIENT}[case]
    async with hostile_printer(respond) as server:
        printer = an_ipp_printer(server.uri)
        try:
            with peak_allocated() as peak, pytest.raises(PrinterUnavailable) as raised:
                await printer.ready()
        finally:
            await printer.close()

    state = "answering in error" if case in PERMANENT else "unreachable"
    assert str(raised.value).startswith(f"printer office-1 {state} for ")
    assert says in str(raised.value)
    assert server.asked(Operation.get_printer_attributes) >= 2, "waited for, not given up at once"
    assert peak[0] < 8 * MiB, f"{peak[0] / MiB:.1f} MiB allocated"


async def test_cancel_while_a_printer_trickles_returns_and_the_job_is_canceled(tmp_path: Path):
    async with hostile_printer(trickling(in_headers=False)) as server:
        printer = IppPrinter(
            name="office-1", uri=server.uri, timeout=TIMEOUT, offline_deadline=30.0
        )
        try:
            printing = asyncio.create_task(printer.print(a_request(await a_spooled(tmp_path))))
            await wait_until(lambda: server.received, what="the printer asked to print")
            await printer.cancel("job-1")
            result = await asyncio.wait_for(printing, timeout=10)
        finally:
            await printer.close()

    # The trickle ends in the request's timeout; the job is not then sent again.
    assert server.asked(Operation.print_job) == 1
    assert result.outcome is PrintOutcome.canceled
    assert result.reason == "canceled before the printer took it"
    assert open_files_in(tmp_path) == []


# --- hostile document servers ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def document_server(
    respond: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await respond(writer)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/doc.pdf"
    finally:
        server.close()
        await server.wait_closed()


def document(body: bytes, *headers: str, length: int | str | None = None) -> bytes:
    lines = [
        "HTTP/1.1 200 OK",
        "Content-Type: application/pdf",
        f"Content-Length: {len(body) if length is None else length}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def endless_document(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nConnection: close\r\n\r\n")
    chunk = bytes(64 * 1024)
    for _ in range(64 * MiB // len(chunk)):
        writer.write(chunk)
        await writer.drain()


async def trickling_document(writer: asyncio.StreamWriter) -> None:
    writer.write(document(b"", length=1000))
    for _ in range(100):
        if writer.is_closing():
            return
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.2)


def writing(raw: bytes) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(raw)

    return respond


DOCUMENT_CASES: Final[dict[str, tuple[Callable[[asyncio.StreamWriter], Awaitable[None]], str]]] = {
    "gzip bomb": (
        writing(document(BOMB, "Content-Encoding: gzip")),
        "the server sent content-encoding 'gzip' though identity was asked for",
    ),
    "declared too large": (
        writing(document(b"", length=2 * MiB)),
        "larger than DOCUMENT_MAX_BYTES (1048576)",
    ),
    "a length of 5,000 digits": (
        writing(document(b"", length="9" * 5000)),
        "RemoteProtocolError: bad Content-Length",
    ),
    "endless": (endless_document, "larger than DOCUMENT_MAX_BYTES (1048576)"),
    "trickle": (trickling_document, "timed out after 1 s"),
    "cut short": (writing(document(PDF, length=len(PDF) + 10)), "RemoteProtocolError"),
    "not HTTP": (writing(b"HELLO\r\n\r\n"), "RemoteProtocolError"),
    "HTTP 404": (
        writing(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        "HTTP 404 from http://127.0.0.1:",
    ),
}
# The document servers listen on loopback, which a fetch refuses unless allowed.
LOOPBACK: Final = ("127.0.0.1",)


def logged_detail(logs: list[MutableMapping[str, Any]]) -> str:
    """What the fetcher logged of its failure (the job's reason is always `REASON`)."""
    [line] = [entry for entry in logs if entry["event"] == "document_unavailable"]
    return str(line["detail"])


@pytest.mark.parametrize("case", DOCUMENT_CASES)
async def test_a_hostile_document_server_fails_the_fetch_and_leaves_no_spool_file(
    case: str, tmp_path: Path
):
    respond, says = DOCUMENT_CASES[case]
    fetcher = DocumentFetcher(max_bytes=MiB, timeout=1.0, spool_dir=tmp_path, allow_hosts=LOOPBACK)
    async with document_server(respond) as url:
        try:
            with (
                capture_logs() as logs,
                peak_allocated() as peak,
                pytest.raises(DocumentUnavailable) as raised,
            ):
                await fetcher.fetch(url)
        finally:
            await fetcher.close()

    assert str(raised.value) == REASON
    assert says in logged_detail(logs)
    assert peak[0] < 8 * MiB, f"{peak[0] / MiB:.1f} MiB allocated"
    assert open_files_in(tmp_path) == []
    assert names_in(tmp_path) == []


async def test_a_spool_disk_that_fails_fails_the_fetch_and_leaves_no_spool_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("service.adapters.spool._write_all", full)
    fetcher = DocumentFetcher(
        max_bytes=4 * MiB, timeout=5.0, spool_dir=tmp_path, allow_hosts=LOOPBACK
    )
    async with document_server(writing(document(bytes(2 * MiB)))) as url:
        try:
            with capture_logs() as logs, pytest.raises(DocumentUnavailable) as raised:
                await fetcher.fetch(url)
        finally:
            await fetcher.close()

    assert str(raised.value) == REASON
    assert (
        logged_detail(logs) == "document could not be spooled: [Errno 28] No space left on device"
    )
    assert open_files_in(tmp_path) == []


async def test_a_fetched_document_is_spooled_asked_for_unencoded_and_freed_once_closed(
    tmp_path: Path,
):
    asked: list[bytes] = []

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(document(PDF))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readuntil(b"\r\n\r\n"))
        await respond(writer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    fetcher = DocumentFetcher(max_bytes=MiB, timeout=5.0, spool_dir=tmp_path, allow_hosts=LOOPBACK)
    try:
        fetched = await fetcher.fetch(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
    finally:
        await fetcher.close()
        server.close()
        await server.wait_closed()

    assert b"accept-encoding: identity" in asked[0].lower()
    assert fetched.size == len(PDF)
    assert b"".join([chunk async for chunk in fetched.chunks()]) == PDF
    assert names_in(tmp_path) == []  # the spool file never had a name
    assert len(open_files_in(tmp_path)) == 1
    fetched.close()
    assert open_files_in(tmp_path) == []


# --- a 100 MB document, by URL, on a real ippeveprinter -------------------------------------


def rss_bytes() -> int:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs /proc/self/statm")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """The process's peak RSS, sampled every 10 ms from a thread, while the block runs."""

    def __init__(self) -> None:
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def ippeve(tmp_path: Path) -> Iterator[IppEvePrinter]:
    printer = IppEvePrinter(name="big-printer", workdir=tmp_path / "ippeve", print_seconds=0)
    try:
        printer.start()
    except IppEveUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield printer
    printer.kill()


async def test_a_100_mb_document_by_url_prints_with_bounded_memory(
    ippeve: IppEvePrinter, tmp_path: Path
):
    size = 100 * 1000 * 1000
    served = tmp_path / "big.pdf"
    with served.open("wb") as out:
        out.write(PDF[:9])
        block = bytes(MiB)
        while out.tell() + len(block) < size:
            out.write(block)
        out.write(bytes(size - out.tell()))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(document(b"", length=size))
        with served.open("rb") as source:
            while block := source.read(256 * 1024):
                writer.write(block)
                await writer.drain()
        writer.close()

    spool = tmp_path / "spool"
    spool.mkdir()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/big.pdf"
    fetcher = DocumentFetcher(max_bytes=size, timeout=120.0, spool_dir=spool, allow_hosts=LOOPBACK)
    printer = IppPrinter(name="big-printer", uri=ippeve.uri, timeout=10.0, poll_interval=0.1)
    try:
        with RssSampler() as rss:
            started = time.monotonic()
            fetched = await fetcher.fetch(url)
            result = await printer.print(a_request(fetched))
            took = time.monotonic() - started
    finally:
        await printer.close()
        await fetcher.close()
        server.close()
        await server.wait_closed()

    assert result.outcome is PrintOutcome.completed, result.reason
    [printed] = ippeve.documents()
    assert printed.stat().st_size == size
    assert open_files_in(spool) == []
    grew = (rss.peak - rss.base) / MiB
    print(
        f"\n100 MB by URL to ippeveprinter in {took:.1f} s: RSS {rss.base / MiB:.0f} MiB before,"
        f" peak {rss.peak / MiB:.0f} MiB (+{grew:.0f} MiB)"
    )
    assert grew < 32, f"RSS grew by {grew:.0f} MiB while printing 100 MB"


# --- the service with a hostile printer -------------------------------------------------------


@pytest.mark.brokers
async def test_a_hostile_printer_fails_its_jobs_and_the_service_prints_on(
    start_service: ServiceFactory, amqp: Any, publisher: Publisher, tmp_path: Path
):
    # The crash: httpx.DecodingError from ready() ended the dispatcher's TaskGroup.
    respond, says = PERMANENT["not gzip"]
    async with hostile_printer(respond) as hostile:
        config = tmp_path / "queues.toml"
        config.write_text(
            'unknown_queue = "reject"\n'
            '[printers."hostile"]\n'
            f'uri = "{hostile.uri}"\n'
            "timeout = 1\npoll_interval = 0.1\noffline_deadline = 1\n"
            '[printers."sim"]\nbackend = "simulated"\nduration = 0.1\n'
            '[queues."hostile-q"]\nprinters = ["hostile"]\n'
            '[queues."sim-q"]\nprinters = ["sim"]\n'
        )
        async with start_service(print_queues_file=config) as service:
            queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
            listener = Listener(amqp, queue)
            bad, good = unique("hostile"), unique("sim")
            for queue_id, job_id in (("hostile-q", bad), ("sim-q", good)):
                await queue.bind("print.rejections", f"rejections/{queue_id}")
                await listener.bind_job(job_id)
                pdf = {"contentType": "application/pdf", "data": base64.b64encode(PDF).decode()}
                await publisher.create(queue_id, job_id, document=pdf)

            final: dict[str, dict[str, Any]] = {}
            events = await listener.until(
                lambda r: _final(r, final) and final.keys() == {bad, good}, timeout=20
            )
            alive = service.ready.is_set()

    assert final[bad]["status"] == "failed"
    assert final[bad]["reason"].startswith("printer hostile answering in error for 1 s: ")
    assert says in final[bad]["reason"]
    assert statuses([e for e in events if e.body.get("jobId") == good]) == [
        "created",
        "started",
        "finished",
    ]
    assert alive


def _final(received: Received, final: dict[str, dict[str, Any]]) -> bool:
    """Keeps each job's final event in `final`; whether `received` was one."""
    if received.body.get("status") not in {"finished", "failed", "canceled"}:
        return False
    final[received.body["jobId"]] = received.body
    return True
