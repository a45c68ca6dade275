"""Document fetches reach only the addresses the operator allows (real HTTP on 127.0.0.x).

The servers listen on loopback addresses, which the policy refuses unless allowed, so the
tests allow exactly the ones they mean to fetch from: 127.0.0.2 (and 127.0.0.3 for a second
origin), never 127.0.0.1. "An allowed host redirects to a refused one" is then a real
redirect from 127.0.0.2 to a live server on 127.0.0.1, whose refusal shows in that server
never being asked. Every connection the fetcher opens is recorded below its check
(`connects`): a refused fetch opened none, and nothing leaves loopback even if a check
failed to refuse.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpcore
import pytest
import structlog
from structlog.testing import capture_logs

from service.adapters.documents import REASON, DocumentFetcher
from service.adapters.egress import resolve
from service.ports import DocumentUnavailable
from tests.integration.conftest import Listener, Publisher, ServiceFactory, unique

PDF = b"%PDF-1.4\n%%EOF\n"
SECRETS = ("s3cret-pass", "t0ken-value", "fr4gment")
CREDENTIALED = f"user:{SECRETS[0]}@"
QUERY = f"?token={SECRETS[1]}#{SECRETS[2]}"


@dataclass
class Asked:
    path: str
    headers: dict[str, str]


@dataclass
class DocumentServer:
    """Answers GETs from `routes` (path: raw response); records what it was asked."""

    host: str
    routes: dict[str, bytes] = field(default_factory=dict)
    asked: list[Asked] = field(default_factory=list)
    port: int = 0

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = (
            f"HTTP/1.1 {status} Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request, *lines = head.strip().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines)
            path = request.split(" ")[1]
            self.asked.append(Asked(path, {k.lower(): v for k, v in headers.items()}))
            route = path.split("?")[0]
            writer.write(
                self.routes.get(route, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(host: str) -> AsyncIterator[DocumentServer]:
    server = DocumentServer(host)
    server.routes["/doc.pdf"] = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/pdf\r\nContent-Length: {len(PDF)}\r\n\r\n"
    ).encode() + PDF
    listening = await asyncio.start_server(server._serve, host, 0)
    server.port = listening.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listening.close()
        await listening.wait_closed()


@pytest.fixture
async def allowed() -> AsyncIterator[DocumentServer]:
    """On 127.0.0.2, which the tests allow."""
    async with serving("127.0.0.2") as server:
        yield server


@pytest.fixture
async def other() -> AsyncIterator[DocumentServer]:
    """On 127.0.0.3, also allowed: another origin."""
    async with serving("127.0.0.3") as server:
        yield server


@pytest.fixture
async def refused() -> AsyncIterator[DocumentServer]:
    """On 127.0.0.1, which no test allows: it must never be asked anything."""
    async with serving("127.0.0.1") as server:
        yield server


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the fetcher connects to (below its check). A connection anywhere but
    loopback fails here instead of leaving the machine."""
    seen: list[str] = []
    original = httpcore.AnyIOBackend.connect_tcp

    async def recorded(
        backend: httpcore.AnyIOBackend, host: str, port: int, **kwargs: Any
    ) -> httpcore.AsyncNetworkStream:
        seen.append(host)
        if not ip_address(host).is_loopback:
            raise httpcore.ConnectError(f"the test refuses to leave loopback ({host})")
        return await original(backend, host, port, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", recorded)
    return seen


@dataclass
class Names:
    """Host names the tests make up: what each resolves to, and each lookup made."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)


@pytest.fixture
async def names(monkeypatch: pytest.MonkeyPatch) -> Names:
    made = Names()
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in made.answers:
            return await real(host, port, *args, **kwargs)
        made.lookups.append(host)
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in made.answers[host]
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return made


def fetcher(tmp_path: Path, *allow: str) -> DocumentFetcher:
    return DocumentFetcher(
        max_bytes=1024 * 1024,
        timeout=5.0,
        spool_dir=tmp_path,
        allow_hosts=allow or ("127.0.0.2", "127.0.0.3"),
    )


async def refusal(fetch: DocumentFetcher, url: str) -> MutableMapping[str, Any]:
    """The log line of a refused fetch of `url` (the fetch must fail with `REASON`)."""
    try:
        with capture_logs() as logs, pytest.raises(DocumentUnavailable) as raised:
            await fetch.fetch(url)
    finally:
        await fetch.close()
    assert str(raised.value) == REASON
    [line] = [entry for entry in logs if entry["event"] == "document_unavailable"]
    assert line["log_level"] == "warning"
    for secret in SECRETS:
        assert secret not in json.dumps(logs)
    return line


# --- the resolver ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0x7f000001", "2130706433", "0177.0.0.1", "127.1", "127.0.0.1"])
async def test_an_address_in_any_spelling_resolves_as_a_connect_would_read_it(host: str):
    assert await resolve(host, 80) == [ip_address("127.0.0.1")]


# --- refused --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://{cred}127.0.0.1:{refused}/doc.pdf{query}", "127.0.0.1: loopback"),
        ("http://{cred}0x7f000001:{refused}/doc.pdf{query}", "127.0.0.1: loopback"),
        ("http://2130706433:{refused}/doc.pdf", "127.0.0.1: loopback"),
        ("http://127.1:{refused}/doc.pdf", "127.0.0.1: loopback"),
        ("http://localhost:{refused}/doc.pdf", "loopback"),
        ("http://[::1]:{refused}/doc.pdf", "::1: loopback"),
        ("http://[::ffff:127.0.0.1]:{refused}/doc.pdf", "loopback (reached through"),
        ("http://{cred}169.254.169.254/latest/meta-data/{query}", "cloud metadata address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata address"),
        ("http://10.0.0.1/doc.pdf", "10.0.0.1: private"),
        ("http://0177.0.0.1:{refused}/doc.pdf", "the URL: invalid URL"),
        ("ftp://{cred}127.0.0.2:{allowed}/doc.pdf{query}", "scheme 'ftp' refused"),
        ("file:///etc/passwd", "scheme 'file' refused"),
        ("//127.0.0.2:{allowed}/doc.pdf", "scheme '' refused"),
    ],
)
async def test_a_refused_address_or_scheme_is_never_connected_to(
    url: str,
    says: str,
    tmp_path: Path,
    allowed: DocumentServer,
    refused: DocumentServer,
    connects: list[str],
):
    url = url.format(cred=CREDENTIALED, query=QUERY, refused=refused.port, allowed=allowed.port)

    line = await refusal(fetcher(tmp_path), url)

    assert says in line["detail"]
    assert connects == []
    assert refused.asked == allowed.asked == []


async def test_a_redirect_from_an_allowed_host_to_a_refused_one_is_not_followed(
    tmp_path: Path, allowed: DocumentServer, refused: DocumentServer, connects: list[str]
):
    allowed.redirect("/moved", f"{refused.origin}/doc.pdf")

    line = await refusal(
        fetcher(tmp_path), f"http://{CREDENTIALED}127.0.0.2:{allowed.port}/moved{QUERY}"
    )

    assert "redirect 1" in line["detail"]
    assert "127.0.0.1: loopback" in line["detail"]
    assert [a.path for a in allowed.asked] == [f"/moved?token={SECRETS[1]}"]
    assert refused.asked == []
    assert connects == ["127.0.0.2"]


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("file:///etc/passwd", "redirect 1: scheme 'file' refused"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("http://[::1]/", "::1: loopback"),
        ("http://0x7f000001/", "127.0.0.1: loopback"),
    ],
)
async def test_every_redirect_is_checked_like_the_first_url(
    location: str, says: str, tmp_path: Path, allowed: DocumentServer, connects: list[str]
):
    allowed.redirect("/moved", location, status=307)

    line = await refusal(fetcher(tmp_path), f"{allowed.origin}/moved")

    assert says in line["detail"]
    assert connects == ["127.0.0.2"]


async def test_redirects_are_followed_five_times_at_most(
    tmp_path: Path, allowed: DocumentServer, connects: list[str]
):
    allowed.redirect("/loop", "/loop")

    line = await refusal(fetcher(tmp_path), f"{allowed.origin}/loop")

    assert line["detail"] == "more than 5 redirects"
    assert len(allowed.asked) == 6


async def test_a_name_is_refused_if_any_of_its_addresses_is(
    tmp_path: Path, names: Names, refused: DocumentServer, connects: list[str]
):
    names.answers["mixed.test"] = ["93.184.216.34", "127.0.0.1"]

    line = await refusal(fetcher(tmp_path), f"http://mixed.test:{refused.port}/doc.pdf")

    assert "'mixed.test' resolves to 127.0.0.1: loopback" in line["detail"]
    assert connects == []


async def test_a_server_error_is_detailed_in_the_log_only(tmp_path: Path, allowed: DocumentServer):
    line = await refusal(
        fetcher(tmp_path), f"http://{CREDENTIALED}127.0.0.2:{allowed.port}/absent{QUERY}"
    )

    assert line["detail"] == f"HTTP 404 from http://127.0.0.2:{allowed.port}/absent"
    assert line["url"] == f"http://127.0.0.2:{allowed.port}/absent"


# --- allowed --------------------------------------------------------------------------------


async def test_an_allowed_host_is_fetched_with_its_credentials_across_a_same_origin_redirect(
    tmp_path: Path, allowed: DocumentServer, connects: list[str]
):
    allowed.redirect("/moved", "/doc.pdf", status=301)
    fetch = fetcher(tmp_path)
    try:
        with capture_logs() as logs:
            document = await fetch.fetch(
                f"http://{CREDENTIALED}127.0.0.2:{allowed.port}/moved{QUERY}"
            )
    finally:
        await fetch.close()

    assert b"".join([chunk async for chunk in document.chunks()]) == PDF
    document.close()
    assert [a.path for a in allowed.asked] == [f"/moved?token={SECRETS[1]}", "/doc.pdf"]
    basic = "Basic " + base64.b64encode(f"user:{SECRETS[0]}".encode()).decode()
    assert [a.headers["authorization"] for a in allowed.asked] == [basic, basic]
    assert {a.headers["host"] for a in allowed.asked} == {f"127.0.0.2:{allowed.port}"}
    assert set(connects) == {"127.0.0.2"}
    assert logs == []


async def test_credentials_do_not_follow_a_redirect_to_another_origin(
    tmp_path: Path, allowed: DocumentServer, other: DocumentServer
):
    allowed.redirect("/moved", f"{other.origin}/doc.pdf")
    fetch = fetcher(tmp_path)
    try:
        document = await fetch.fetch(f"http://{CREDENTIALED}127.0.0.2:{allowed.port}/moved")
    finally:
        await fetch.close()
    document.close()

    assert "authorization" in allowed.asked[0].headers
    assert [a.path for a in other.asked] == ["/doc.pdf"]
    assert "authorization" not in other.asked[0].headers


async def test_an_allowed_name_is_connected_to_at_the_address_checked_and_asked_for_by_name(
    tmp_path: Path, allowed: DocumentServer, names: Names, connects: list[str]
):
    # The name resolves once, to the address that is checked and connected to: a resolver
    # answering differently on a second lookup (DNS rebinding) is never asked again.
    names.answers["docs.test"] = ["127.0.0.2"]
    fetch = fetcher(tmp_path, "docs.test")
    try:
        document = await fetch.fetch(f"http://docs.test:{allowed.port}/doc.pdf")
    finally:
        await fetch.close()
    document.close()

    assert names.lookups == ["docs.test"]
    assert connects == ["127.0.0.2"]
    assert allowed.asked[0].headers["host"] == f"docs.test:{allowed.port}"


async def test_an_allowed_network_admits_its_addresses_only(
    tmp_path: Path, allowed: DocumentServer, refused: DocumentServer
):
    fetch = fetcher(tmp_path, "127.0.0.2/32")
    try:
        (await fetch.fetch(f"{allowed.origin}/doc.pdf")).close()
    finally:
        await fetch.close()

    line = await refusal(fetcher(tmp_path, "127.0.0.2/32"), f"{refused.origin}/doc.pdf")
    assert "loopback" in line["detail"]


# --- through the service --------------------------------------------------------------------


@pytest.mark.brokers
async def test_a_refused_document_fails_its_job_for_a_generic_reason_with_the_detail_logged(
    start_service: ServiceFactory,
    amqp: Any,
    publisher: Publisher,
    allowed: DocumentServer,
    refused: DocumentServer,
):
    allowed.redirect("/moved", f"{refused.origin}/doc.pdf")
    allowed.redirect("/gopher", f"gopher://127.0.0.2:{allowed.port}/")
    # job id: its document's URL, and what the log says of the refusal (None: it prints).
    jobs = {
        unique("loopback"): (
            f"http://{CREDENTIALED}127.0.0.1:{refused.port}/doc.pdf{QUERY}",
            "127.0.0.1: loopback",
        ),
        unique("redirect"): (
            f"http://{CREDENTIALED}127.0.0.2:{allowed.port}/moved{QUERY}",
            "redirect 1 (http://127.0.0.1",
        ),
        unique("metadata"): ("http://169.254.169.254/latest/meta-data/", "metadata"),
        unique("v6"): (f"http://[::1]:{refused.port}/doc.pdf", "::1: loopback"),
        unique("hex"): (f"http://0x7f000001:{refused.port}/doc.pdf", "127.0.0.1: loopback"),
        unique("scheme"): (f"{allowed.origin}/gopher", "redirect 1: scheme 'gopher' refused"),
        unique("allowed"): (f"http://{CREDENTIALED}127.0.0.2:{allowed.port}/doc.pdf{QUERY}", None),
    }
    # The contract takes http(s) URLs only: another scheme is refused at create.
    not_http = unique("gopher")
    queue_id = unique("q")
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with start_service(document_allow_hosts="127.0.0.2") as service:
            assert service.settings.document_allow_hosts == ("127.0.0.2",)
            queue = await amqp.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind("print.rejections", f"rejections/{queue_id}")
            listener = Listener(amqp, queue)
            await publisher.create(
                queue_id,
                not_http,
                document={"contentType": "application/pdf", "url": f"gopher://{CREDENTIALED}h/"},
            )
            for job_id, (url, _) in jobs.items():
                await listener.bind_job(job_id)
                await publisher.create(
                    queue_id, job_id, document={"contentType": "application/pdf", "url": url}
                )
            final: dict[str, dict[str, Any]] = {}

            def all_ended(received: Any) -> bool:
                if received.kind == "commandRejected" or received.body.get("status") in (
                    "finished",
                    "failed",
                    "canceled",
                ):
                    final[received.body["jobId"]] = received.body
                return final.keys() == {*jobs, not_http}

            seen = await listener.until(all_ended, timeout=20)

    assert final[not_http]["reason"] == "schema_violation"
    refusals = {line["job_id"]: line for line in logs if line["event"] == "document_unavailable"}
    for job_id, (_, says) in jobs.items():
        if says is None:
            assert final[job_id]["status"] == "finished"
            assert job_id not in refusals
            continue
        assert (final[job_id]["status"], final[job_id]["reason"]) == ("failed", REASON)
        assert says in refusals[job_id]["detail"]
        assert refusals[job_id]["log_level"] == "warning"
    assert refused.asked == []
    everything = json.dumps([r.body for r in seen]) + json.dumps(logs, default=str)
    for secret in SECRETS:
        assert secret not in everything


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for docs.test, made for the test: (certificate, key)."""
    cert, key = tmp_path / "docs.crt", tmp_path / "docs.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=docs.test", "-addext", "subjectAltName=DNS:docs.test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_verifies_the_name_while_connecting_to_the_checked_address(
    tmp_path: Path,
    names: Names,
    connects: list[str],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
):
    cert, key = certificate
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the fetcher's trust store, read lazily
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    names.answers["docs.test"] = ["127.0.0.2"]
    server = DocumentServer("127.0.0.2")
    server.routes["/doc.pdf"] = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(PDF)}\r\n\r\n".encode() + PDF
    )
    listening = await asyncio.start_server(server._serve, "127.0.0.2", 0, ssl=tls)
    port = listening.sockets[0].getsockname()[1]
    try:
        fetch = fetcher(tmp_path, "docs.test", "127.0.0.2")
        try:
            document = await fetch.fetch(f"https://docs.test:{port}/doc.pdf")
        finally:
            await fetch.close()
        # The same server by its address: the certificate does not name it, so no fetch.
        line = await refusal(fetcher(tmp_path, "127.0.0.2"), f"https://127.0.0.2:{port}/doc.pdf")
    finally:
        listening.close()
        await listening.wait_closed()

    assert b"".join([chunk async for chunk in document.chunks()]) == PDF
    document.close()
    assert connects == ["127.0.0.2", "127.0.0.2"]
    assert server.asked[0].headers["host"] == f"docs.test:{port}"
    assert "CERTIFICATE_VERIFY_FAILED" in line["detail"]
