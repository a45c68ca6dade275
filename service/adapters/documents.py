"""Fetches a job's document from its URL into a spool file, with a size and a time limit,
from addresses the operator allows only.

The fetch happens when the job is about to print, not when the create arrives: the command
path stays free of remote I/O, and a URL that stops answering fails only its own job. The
document goes to a spool file as it arrives (`service.adapters.spool`), never whole into
memory. It is asked for and read as it is sent (`Accept-Encoding: identity`): a server that
compresses it anyway is refused rather than inflated, so that `max_bytes` bounds the disk
and a small gzip bomb cannot grow in memory.

The URL is the integrator's, so it is not trusted to point somewhere harmless (SSRF):
- http and https only, refused before any I/O;
- every connection goes through `service.adapters.egress.CheckedBackend`, which resolves
  the host, checks every address (`service.core.addresses`) and connects to the checked
  address, so a name cannot resolve to something else between the check and the connection;
- redirects are followed here, not by the HTTP library (at most `max_redirects`), each hop
  checked like the first: its scheme now, its addresses when it connects;
- no proxy from the environment: the check must see the server's address, not a proxy's.

Whatever fails, the job's reason is the one `REASON`: a reason that named the HTTP status or
the connection error would let an integrator map the operator's network through failed jobs.
The detail goes to the log, at warning level, with the URL redacted (`service.core.urls`)
and the job's id from the context the dispatcher binds.
"""

from __future__ import annotations

import base64
from asyncio import timeout as asyncio_timeout
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import httpcore
import httpx
import structlog

from service.adapters.egress import AddressRefused, CheckedBackend
from service.adapters.spool import Spool, SpooledDocument
from service.core.addresses import AddressPolicy
from service.core.text import capped
from service.core.urls import redacted_url
from service.ports import DocumentUnavailable

__all__ = ["REASON", "DocumentFetcher"]

log = structlog.get_logger(__name__)

REASON: Final = "document_unavailable: the document could not be fetched"
"""The job's reason for every failed fetch, whatever failed."""

_SCHEMES: Final = frozenset({"http", "https"})
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_IDENTITY: Final = frozenset({"", "identity"})
_DETAIL_MAX_BYTES: Final = 300
# The exceptions of a fetch that went wrong on the wire (httpcore's have no common base).
_WIRE_ERRORS: Final = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


class _FetchError(Exception):
    """A fetch that failed; the message is the log's detail, and names no secret."""


class DocumentFetcher:
    """`spool_dir` holds the spool files (the system's temporary directory if None): it needs
    room for `max_bytes` per printer printing a document given by URL. `allow_hosts` are the
    `DOCUMENT_ALLOW_HOSTS` entries: host names and networks fetched although not public."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        spool_dir: Path | None = None,
        allow_hosts: Iterable[str] = (),
        max_redirects: int = 5,
    ) -> None:
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._spool_dir = spool_dir
        self._policy = AddressPolicy.from_entries(allow_hosts)
        self._max_redirects = max_redirects
        self._pool: httpcore.AsyncConnectionPool | None = None

    async def fetch(self, url: str) -> SpooledDocument:
        try:
            return await self._fetch(url)
        except _FetchError as exc:
            detail = capped(str(exc), _DETAIL_MAX_BYTES * 3)
            log.warning("document_unavailable", url=redacted_url(url), detail=detail)
            raise DocumentUnavailable(REASON) from None

    async def _fetch(self, url: str) -> SpooledDocument:
        first = _checked_url(url, what="the URL")  # before any I/O: no spool file either
        try:
            spool = Spool(directory=self._spool_dir)
        except OSError as exc:
            raise _FetchError(f"document could not be spooled: {exc}") from exc
        try:
            # One deadline for the whole download, redirects included, not per read: a
            # server trickling bytes must not hold a printer forever.
            async with asyncio_timeout(self._timeout):
                await self._follow(first, spool)
                return await spool.finish()
        except TimeoutError as exc:
            raise _FetchError(f"timed out after {self._timeout:g} s") from exc
        except _WIRE_ERRORS as exc:
            detail = capped(str(exc), _DETAIL_MAX_BYTES)
            raise _FetchError(f"{type(exc).__name__}: {detail}") from exc
        except OSError as exc:  # the spool's disk: full, or gone
            raise _FetchError(f"document could not be spooled: {exc}") from exc
        finally:
            spool.close()  # a no-op once finished: the document owns the file then

    async def _follow(self, first: httpx.URL, spool: Spool) -> None:
        """GET `first`, following redirects: each hop's scheme is checked here, its
        addresses when it connects; credentials go only to the URL's own origin."""
        url, what = first, "the URL"
        for hop in range(self._max_redirects + 1):
            authorization = _basic_auth(first) if _same_origin(url, first) else None
            try:
                location = await self._get(url, authorization, spool)
            except AddressRefused as exc:
                raise _FetchError(f"{what} ({redacted_url(str(url))}): refused, {exc}") from exc
            if location is None:
                return
            if hop == self._max_redirects:
                break
            what = f"redirect {hop + 1}"
            try:
                target = url.join(location)
            except httpx.InvalidURL as exc:
                raise _FetchError(f"{what}: invalid URL") from exc
            url = _checked_url(str(target), what=what)
        raise _FetchError(f"more than {self._max_redirects} redirects")

    async def _get(self, url: httpx.URL, authorization: bytes | None, spool: Spool) -> str | None:
        """The document at `url` into `spool`; or where it redirects to (nothing spooled)."""
        headers = [(b"Host", url.netloc), (b"Accept-Encoding", b"identity")]
        if authorization is not None:
            headers.append((b"Authorization", authorization))
        request = httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        extensions = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), self._timeout)}
        async with self._client().stream(
            "GET", request, headers=headers, extensions=extensions
        ) as response:
            shown = redacted_url(str(url))
            if response.status in _REDIRECTS:
                location = _header(response, b"location")
                if location is None:
                    raise _FetchError(f"HTTP {response.status} without a Location from {shown}")
                return location
            if response.status != 200:
                raise _FetchError(f"HTTP {response.status} from {shown}")
            encoding = (_header(response, b"content-encoding") or "").strip().lower()
            if encoding not in _IDENTITY:
                raise _FetchError(
                    f"the server sent content-encoding {capped(encoding, 40)!r} though"
                    f" identity was asked for: {shown}"
                )
            declared = _header(response, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
                raise _FetchError(self._too_large(shown))
            async for chunk in response.aiter_stream():
                if spool.size + len(chunk) > self._max_bytes:
                    raise _FetchError(self._too_large(shown))
                await spool.write(chunk)
        return None

    def _client(self) -> httpcore.AsyncConnectionPool:
        if self._pool is None:
            self._pool = httpcore.AsyncConnectionPool(
                # httpx's context: the system's CAs, SSL_CERT_FILE and SSL_CERT_DIR honoured.
                ssl_context=httpx.create_ssl_context(),
                network_backend=CheckedBackend(policy=self._policy, inner=httpcore.AnyIOBackend()),
                max_keepalive_connections=8,
                keepalive_expiry=5.0,
            )
        return self._pool

    def _too_large(self, shown: str) -> str:
        return f"larger than DOCUMENT_MAX_BYTES ({self._max_bytes}): {shown}"

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None


def _checked_url(url: str, *, what: str) -> httpx.URL:
    """`url` parsed, if it is an absolute http(s) URL with a host; the detail never quotes
    the URL (a parser's message can hold a part of it, credentials included)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise _FetchError(f"{what}: invalid URL") from exc
    if parsed.scheme not in _SCHEMES:
        scheme = capped(parsed.scheme, 20)
        raise _FetchError(f"{what}: scheme {scheme!r} refused (http and https only)")
    if not parsed.raw_host:
        raise _FetchError(f"{what}: no host")
    return parsed.copy_with(fragment=None)


def _basic_auth(url: httpx.URL) -> bytes | None:
    """The Authorization header for the URL's own credentials (as httpx would send it)."""
    if not url.userinfo:
        return None
    credentials = f"{url.username}:{url.password}".encode()
    return b"Basic " + base64.b64encode(credentials)


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.raw_host, a.port) == (b.scheme, b.raw_host, b.port)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None
