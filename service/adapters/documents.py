"""Fetches a job's document from its URL, with a size and a time limit.

The fetch happens when the job is about to print, not when the create arrives: the command
path stays free of remote I/O, and a URL that stops answering fails only its own job.
"""

from __future__ import annotations

from asyncio import timeout as asyncio_timeout

import httpx

from service.ports import DocumentUnavailable

__all__ = ["DocumentFetcher"]


class DocumentFetcher:
    def __init__(self, *, max_bytes: int, timeout: float) -> None:
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def fetch(self, url: str) -> bytes:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=True, max_redirects=5
            )
        try:
            # One deadline for the whole download, not per read: a server trickling bytes
            # must not hold a printer forever.
            async with (
                asyncio_timeout(self._timeout),
                self._client.stream("GET", url) as response,
            ):
                if response.status_code != httpx.codes.OK:
                    raise DocumentUnavailable(
                        f"document fetch failed: HTTP {response.status_code} from {url}"
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
                    raise DocumentUnavailable(self._too_large(url))
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise DocumentUnavailable(self._too_large(url))
                    chunks.append(chunk)
                return b"".join(chunks)
        except TimeoutError as exc:
            raise DocumentUnavailable(
                f"document fetch timed out after {self._timeout:g} s: {url}"
            ) from exc
        except httpx.HTTPError as exc:
            raise DocumentUnavailable(f"document fetch failed: {exc!s} ({url})") from exc

    def _too_large(self, url: str) -> str:
        return f"document at {url} is larger than DOCUMENT_MAX_BYTES ({self._max_bytes})"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
