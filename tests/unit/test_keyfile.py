"""`API_KEYS_FILE` read at start and again when it changes (service/adapters/keyfile.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service.adapters.keyfile import KeyFile
from service.core.access import AccessConfigError, AccessControl, ApiKey, KeyTable, Unauthorized
from service.metrics import Metrics
from tests.waits import wait_until

FIRST: Final = secrets.token_urlsafe(24)
SECOND: Final = secrets.token_urlsafe(24)
PLAIN: Final = secrets.token_urlsafe(24)


def entry(name: str, key: str, scopes: str = '"write:job", "read:job"') -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f'[keys.{name}]\nsha256 = "{digest}"\nqueues = ["*"]\nscopes = [{scopes}]\n'


def write(path: Path, text: str) -> None:
    """As an operator should: a new file renamed over the old one (no half-read file)."""
    temporary = path.with_suffix(".new")
    temporary.write_text(text)
    os.replace(temporary, path)


class Watched:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.access = AccessControl(KeyTable(), rate=0.0, burst=1)
        self.metrics = Metrics(CollectorRegistry())
        self.file = KeyFile(
            access=self.access, plain=[PLAIN], path=path, metrics=self.metrics, interval=0.01
        )

    def knows(self, key: str) -> bool:
        return isinstance(self.access.authenticate(key), ApiKey)

    def reloads(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "print_api_key_reloads_total", {"outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
async def watched(tmp_path: Path) -> AsyncIterator[Watched]:
    path = tmp_path / "keys.toml"
    write(path, entry("first", FIRST))
    keys = Watched(path)
    keys.file.load()
    stopping = asyncio.Event()
    task = asyncio.create_task(keys.file.run(stopping))
    try:
        yield keys
    finally:
        stopping.set()
        await asyncio.wait_for(task, 5)


async def test_the_file_and_the_plain_keys_are_in_force_from_the_start(watched: Watched) -> None:
    assert watched.knows(FIRST)
    assert watched.knows(PLAIN)
    assert not watched.knows(SECOND)


async def test_a_changed_file_replaces_the_keys(watched: Watched) -> None:
    write(watched.path, entry("second", SECOND))

    await wait_until(lambda: watched.knows(SECOND), what="the new key to be in force")
    assert not watched.knows(FIRST)  # revoked
    assert watched.knows(PLAIN)
    assert watched.reloads("applied") == 1


async def test_a_file_rewritten_in_place_is_read_again(watched: Watched) -> None:
    # Not renamed: the same inode, a new size and modification time.
    watched.path.write_text(entry("first", FIRST) + entry("second", SECOND))

    await wait_until(lambda: watched.knows(SECOND), what="the added key to be in force")
    assert watched.knows(FIRST)


@pytest.mark.parametrize(
    "text",
    ["[keys.first\n", entry("first", FIRST, scopes='"root"'), entry("plain", PLAIN)],
    ids=["not-toml", "bad-scope", "a-plain-key-again"],
)
async def test_a_bad_file_keeps_the_keys_in_force(watched: Watched, text: str) -> None:
    with capture_logs() as logs:
        write(watched.path, text)
        await wait_until(lambda: watched.reloads("refused") == 1, what="the bad file refused")

    assert watched.knows(FIRST)
    (refused,) = [e for e in logs if e["event"] == "api_keys_reload_refused"]
    assert refused["log_level"] == "error"
    assert str(watched.path) in refused["file"]
    # Fixed, it is taken.
    write(watched.path, entry("second", SECOND))
    await wait_until(lambda: watched.knows(SECOND), what="the fixed file to be in force")


async def test_a_removed_file_keeps_the_keys_and_its_return_is_read(watched: Watched) -> None:
    watched.path.unlink()
    await wait_until(lambda: watched.reloads("refused") == 1, what="the missing file noticed")
    assert watched.knows(FIRST)

    write(watched.path, entry("second", SECOND))
    await wait_until(lambda: watched.knows(SECOND), what="the file back")
    assert watched.reloads("refused") == 1  # the missing file was reported once


async def test_an_emptied_file_revokes_every_file_key(watched: Watched) -> None:
    with capture_logs() as logs:
        write(watched.path, "")
        await wait_until(lambda: not watched.knows(FIRST), what="the keys revoked")
    assert watched.knows(PLAIN)  # API_KEYS is not the file's to revoke
    assert isinstance(watched.access.authenticate(FIRST), Unauthorized)
    assert any(e["event"] == "api_keys_reloaded" and e["keys"] == ["API_KEYS[1]"] for e in logs)


def test_a_bad_file_at_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text("keys = 1")
    with pytest.raises(AccessConfigError, match=r"keys\.toml"):
        Watched(path).file.load()


def test_the_logs_name_the_keys_never_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(entry("first", FIRST))
    with capture_logs() as logs:
        Watched(path).file.load()
    text = repr(logs)
    assert "first" in text
    assert FIRST not in text
    assert PLAIN not in text
    assert hashlib.sha256(FIRST.encode()).hexdigest() not in text
