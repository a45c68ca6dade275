"""Spool files: a fetched document waits on disk, not in memory, until it is printed.

A spool file has no name from the moment it is made (`tempfile.TemporaryFile`: O_TMPFILE on
Linux, or unlinked at once): nothing can be left behind on disk, even by a killed process,
and its space comes back when the document is closed (or, failing that, garbage collected).
Disk I/O runs in a worker thread, so a slow disk does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

__all__ = ["CHUNK_BYTES", "Spool", "SpooledDocument"]

CHUNK_BYTES: Final = 256 * 1024
"""What is written or read at a time: few thread hops, little memory."""


class SpooledDocument:
    """A document in a spool file; implements `service.ports.Document`."""

    def __init__(self, file: io.FileIO, size: int) -> None:
        self._fd = file.fileno()
        self._size = size
        self._closed = False
        # A document dropped unclosed (a job stopped before its print) still frees its space.
        self._finalizer = weakref.finalize(self, file.close)

    @property
    def size(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    async def chunks(self) -> AsyncIterator[bytes]:
        offset = 0
        while offset < self._size:
            if self._closed:
                raise OSError("the spool file was closed while it was read")
            # pread: no shared file position, so a resubmission reads from the start safely.
            data = await asyncio.to_thread(
                os.pread, self._fd, min(CHUNK_BYTES, self._size - offset), offset
            )
            if not data:
                raise OSError(f"the spool file ended at {offset} of {self._size} bytes")
            offset += len(data)
            yield data

    def close(self) -> None:
        self._closed = True
        self._finalizer()


class Spool:
    """Writes one document to a new spool file in `directory` (the system's temporary
    directory if None); `finish` makes it a `SpooledDocument`, `close` throws it away."""

    def __init__(self, *, directory: Path | None = None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115 - kept open by the document
        self._finalizer = weakref.finalize(self, self._file.close)
        self._pending = bytearray()
        self._size = 0
        self._finished = False

    @property
    def size(self) -> int:
        """Bytes given to `write` so far."""
        return self._size

    async def write(self, data: bytes) -> None:
        self._pending += data
        self._size += len(data)
        if len(self._pending) >= CHUNK_BYTES:
            await self._flush()

    async def finish(self) -> SpooledDocument:
        await self._flush()
        self._finished = True
        self._finalizer.detach()
        return SpooledDocument(self._file, self._size)

    def close(self) -> None:
        """Throws the spool file away unless `finish` made a document of it."""
        if not self._finished:
            self._finalizer()

    async def _flush(self) -> None:
        if self._pending:
            block, self._pending = bytes(self._pending), bytearray()
            await asyncio.to_thread(_write_all, self._file.fileno(), block)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
