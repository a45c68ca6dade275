"""Spool files: a document reads back whole, in chunks, as often as asked; it never has a name
on disk, and its file is released once closed, dropped, or thrown away unfinished."""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path
from typing import Final

import pytest

from service.adapters.printers.simulated import SimulatedPrinter
from service.adapters.spool import CHUNK_BYTES, Spool, SpooledDocument
from service.models import PrintOptions
from service.ports import Document, InlineDocument, PrintOutcome, PrintRequest

_PROC_FD: Final = Path("/proc/self/fd")
DATA: Final = bytes(range(256)) * (3 * CHUNK_BYTES // 256) + b"tail"  # several chunks, uneven


def open_files_in(directory: Path) -> list[str]:
    """Files under `directory` this process holds open; a nameless spool file reads as
    `<directory>/#123 (deleted)` or similar."""
    if not _PROC_FD.is_dir():
        pytest.skip("needs /proc/self/fd")
    links = []
    for entry in _PROC_FD.iterdir():
        with contextlib.suppress(OSError):
            links.append(os.readlink(entry))
    return [link for link in links if link.startswith(f"{directory}{os.sep}")]


def names_in(directory: Path) -> list[str]:
    return os.listdir(directory)


async def spooled(directory: Path, data: bytes = DATA) -> SpooledDocument:
    spool = Spool(directory=directory)
    for start in range(0, len(data), 10_000):  # small writes, as a network gives them
        await spool.write(data[start : start + 10_000])
    return await spool.finish()


async def read(document: Document) -> list[bytes]:
    return [chunk async for chunk in document.chunks()]


async def test_a_spooled_document_reads_back_whole_in_chunks_and_again(tmp_path: Path):
    document = await spooled(tmp_path)

    first = await read(document)
    again = await read(document)  # a printer that resubmits reads from the start

    assert document.size == len(DATA)
    assert b"".join(first) == DATA
    assert again == first
    assert max(len(chunk) for chunk in first) <= CHUNK_BYTES
    assert len(first) == 4
    document.close()


async def test_a_spool_file_never_has_a_name_and_is_released_when_closed(tmp_path: Path):
    spool = Spool(directory=tmp_path)
    await spool.write(DATA)
    assert names_in(tmp_path) == []
    assert len(open_files_in(tmp_path)) == 1
    document = await spool.finish()
    spool.close()  # after finish: the document owns the file now
    assert len(open_files_in(tmp_path)) == 1

    document.close()
    document.close()  # idempotent

    assert document.closed
    assert open_files_in(tmp_path) == []
    assert names_in(tmp_path) == []
    with pytest.raises(OSError, match="closed"):
        await read(document)


async def test_a_spool_thrown_away_unfinished_releases_its_file(tmp_path: Path):
    spool = Spool(directory=tmp_path)
    await spool.write(DATA)

    spool.close()

    assert open_files_in(tmp_path) == []


async def test_a_document_dropped_unclosed_releases_its_file(tmp_path: Path):
    # What happens to a job stopped between its fetch and its print: nobody closes it.
    document = await spooled(tmp_path)
    assert len(open_files_in(tmp_path)) == 1

    del document
    gc.collect()

    assert open_files_in(tmp_path) == []


async def test_an_empty_document_has_no_chunks(tmp_path: Path):
    document = await spooled(tmp_path, b"")

    assert document.size == 0
    assert await read(document) == []
    assert await read(InlineDocument(b"")) == []
    document.close()


async def test_an_inline_document_is_its_bytes():
    document = InlineDocument(b"%PDF-1.4")

    assert document.size == 8
    assert await read(document) == [b"%PDF-1.4"]
    document.close()
    assert await read(document) == [b"%PDF-1.4"]  # nothing to release


async def test_the_simulated_printer_releases_the_document(tmp_path: Path):
    document = await spooled(tmp_path)
    request = PrintRequest(
        job_id="job-1",
        title="Report",
        user_id=None,
        copies=1,
        options=PrintOptions(),
        document=document,
        content_type="application/pdf",
    )

    result = await SimulatedPrinter(name="sim", duration=0).print(request)

    assert result.outcome is PrintOutcome.completed
    assert document.closed
    assert open_files_in(tmp_path) == []
