"""Fetches a job's document from its URL into a spool file, with a size and a time limit.

The fetch happens when the job is about to print, not when the create arrives: the command
path stays free of remote I/O, and a URL that stops answering fails only its own job. The
document goes to a spool file as it arrives (`service.adapters.spool`), never whole into
memory. It is asked for and read as it is sent (`Accept-Encoding: identity`): a server that
compresses it anyway is refused rather than inflated, so that `max_bytes` bounds the disk
and a small gzip bomb cannot grow in memory.
"""

from __future__ import annotations

from asyncio import timeout as asyncio_timeout
from pathlib import Path
from typing import Final

import httpx

from service.adapters.spool import Spool, SpooledDocument
from service.ports import DocumentUnavailable

__all__ = ["DocumentFetcher"]

_IDENTITY: Final = frozenset({"", "identity"})


class DocumentFetcher:
    """`spool_dir` holds the spool files (the system's temporary directory if None): it needs
    room for `max_bytes` per printer printing a document given by URL."""

    def __init__(self, *, max_bytes: int, timeout: float, spool_dir: Path | None = None) -> None:
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._spool_dir = spool_dir
        self._client: httpx.AsyncClient | None = None

    async def fetch(self, url: str) -> SpooledDocument:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=True, max_redirects=5
            )
        try:
            spool = Spool(directory=self._spool_dir)
        except OSError as exc:
            raise DocumentUnavailable(f"document could not be spooled: {exc}") from exc
        try:
            # One deadline for the whole download, not per read: a server trickling bytes
            # must not hold a printer forever.
            async with asyncio_timeout(self._timeout):
                await self._download(self._client, url, spool)
                return await spool.finish()
        except TimeoutError as exc:
            raise DocumentUnavailable(
                f"document fetch timed out after {self._timeout:g} s: {url}"
            ) from exc
        except (httpx.HTTPError, httpx.StreamError) as exc:
            raise DocumentUnavailable(f"document fetch failed: {exc!s} ({url})") from exc
        except OSError as exc:  # the spool's disk: full, or gone
            raise DocumentUnavailable(f"document could not be spooled: {exc}") from exc
        finally:
            spool.close()  # a no-op once finished: the document owns the file then

    async def _download(self, client: httpx.AsyncClient, url: str, spool: Spool) -> None:
        headers = {"Accept-Encoding": "identity"}
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code != httpx.codes.OK:
                raise DocumentUnavailable(
                    f"document fetch failed: HTTP {response.status_code} from {url}"
                )
            encoding = response.headers.get("content-encoding", "").strip().lower()
            if encoding not in _IDENTITY:
                raise DocumentUnavailable(
                    f"document server sent content-encoding {encoding[:40]!r} though"
                    f" identity was asked for: {url}"
                )
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
                raise DocumentUnavailable(self._too_large(url))
            async for chunk in response.aiter_raw():
                if spool.size + len(chunk) > self._max_bytes:
                    raise DocumentUnavailable(self._too_large(url))
                await spool.write(chunk)

    def _too_large(self, url: str) -> str:
        return f"document at {url} is larger than DOCUMENT_MAX_BYTES ({self._max_bytes})"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
