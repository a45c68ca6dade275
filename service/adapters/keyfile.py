"""`API_KEYS_FILE`, read at start and again whenever it changes, without a restart.

The file is polled (its inode, size and modification time, about once a second): no new
dependency, and it works wherever the file lives, a Kubernetes Secret's volume included
(whose update swaps a symlink: a new inode). A new file that parses replaces the keys in one
assignment (`AccessControl.replace`); one that does not keeps the keys in force, is logged
as an error and counted (`print_api_key_reloads_total{outcome="refused"}`), and is not read
again until it changes once more.

A file read while it is being written is not applied: the file is looked at before and
after the read, and applied only if it did not change in between. (Write it elsewhere and
rename it over the old one, and no reader ever sees half of it.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from service.aio import sleep_unless
from service.core.access import AccessConfigError, AccessControl, KeyTable
from service.metrics import Metrics

__all__ = ["KeyFile"]

log = structlog.get_logger(__name__)

Signature = tuple[int, int, int, int]
"""What tells a changed file: device, inode, size, modification time (ns)."""


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: Path) -> tuple[Signature | None, str | None, str | None]:
    """The file's signature, its text, and why it could not be read (one of the two)."""
    before = _signature(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return before, None, f"cannot read {path}: {exc.strerror}"
    after = _signature(path)
    if before != after:
        return None, None, None  # changed while read: the next look reads it again
    try:
        return after, data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return after, None, f"{path} is not valid TOML: not UTF-8 ({exc.reason})"


class KeyFile:
    """Keeps `access` holding the plain keys and the file's, as the file is now."""

    def __init__(
        self,
        *,
        access: AccessControl,
        plain: Sequence[str],
        path: Path,
        metrics: Metrics,
        interval: float = 1.0,
    ) -> None:
        self._access = access
        self._plain = KeyTable.plain(plain)
        self._path = path
        self._metrics = metrics
        self._interval = interval
        self._seen: Signature | None = None

    def load(self) -> None:
        """Read the file now (at start): an AccessConfigError if it cannot be used."""
        signature, text, error = _read(self._path)
        if text is None:
            raise AccessConfigError(error or f"{self._path} changed while it was read")
        table = self._table(text)
        self._access.replace(table)
        self._seen = signature
        self._announce(table, "api_keys_loaded")

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll the file until `stopping`; apply each change that parses."""
        while not await sleep_unless(stopping, self._interval):
            if await asyncio.to_thread(_signature, self._path) == self._seen:
                continue
            signature, text, error = await asyncio.to_thread(_read, self._path)
            if signature is None and error is None:
                continue  # being written: looked at again on the next poll
            self._seen = signature
            table = self._parse(text, error)
            if isinstance(table, str):
                self._metrics.key_reloads.labels("refused").inc()
                log.error(
                    "api_keys_reload_refused",
                    file=str(self._path),
                    error=table,
                    detail="the keys in force stay until the file is fixed",
                )
                continue
            self._access.replace(table)
            self._metrics.key_reloads.labels("applied").inc()
            self._announce(table, "api_keys_reloaded")

    def _parse(self, text: str | None, error: str | None) -> KeyTable | str:
        """The keys `text` holds, or why it cannot be used."""
        if text is None:
            return error or "unreadable"
        try:
            return self._table(text)
        except AccessConfigError as exc:
            return str(exc)

    def _table(self, text: str) -> KeyTable:
        return self._plain.merged(KeyTable.from_toml(text, source=str(self._path)))

    def _announce(self, table: KeyTable, event: str) -> None:
        # Names only: never a key, nor its digest.
        log.info(event, file=str(self._path), keys=sorted(k.name for k in table.keys))
        if not table.keys:
            log.warning(
                "no_api_keys", file=str(self._path), detail="every command is refused: no key"
            )
