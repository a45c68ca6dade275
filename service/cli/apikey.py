"""The API key the client commands send as `x-api-key`: from the environment or a file.

Never from the command line: argv is readable by every user of the machine (`ps`,
/proc/<pid>/cmdline) and lands in shell history. A process's environment is readable only
by its own user and root, and a file by whoever its permissions say.

    PRINT_API_KEY=...  print-service status JOB
    print-service status JOB --api-key-file ~/.config/print-service/key    # chmod 600
    print-service status JOB --api-key-file <(pass show print/key)          # a pipe

A key file must not be readable or writable by its group or others (the rule ssh applies to
private keys and libpq to ~/.pgpass): a key that other users can read is as exposed as one
on argv was, and refusing makes that visible the first time instead of leaking quietly.
Pipes and other non-regular files (process substitution, /dev/stdin) are not stored
anywhere, so the rule does not apply to them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "ENV_VAR",
    "MAX_KEY_FILE_LINE",
    "PIN_ENV_VAR",
    "ApiKeyError",
    "first_line",
    "resolve_api_key",
    "resolve_release_pin",
]

ENV_VAR: Final = "PRINT_API_KEY"
# A held job's release PIN: the same rules as the key (never on argv).
PIN_ENV_VAR: Final = "PRINT_RELEASE_PIN"
# Read no more than this of a key file: enough for any key, and `--api-key-file /dev/zero`
# (or a document named by mistake) does not fill the memory.
MAX_KEY_FILE_LINE: Final = 4096
_PRIVATE_MODE_BITS: Final = stat.S_IRWXG | stat.S_IRWXO


class ApiKeyError(Exception):
    """The key cannot be read, or is refused; the message says what to fix (never the key)."""


def first_line(text: str) -> str:
    """The key a file holds: its first line without surrounding whitespace.

    Only the first line, so that a trailing newline (every editor adds one) or a comment
    line after the key is not sent as part of it.
    """
    lines = text.splitlines()
    return lines[0].strip() if lines else ""


def resolve_api_key(*, key_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The key to send: `key_file` when given (an explicit choice for this invocation wins
    over the ambient environment), else PRINT_API_KEY, else None (no header is sent)."""
    if key_file is not None:
        return _read_key_file(key_file)
    key = environ.get(ENV_VAR, "").strip()
    return key or None


def resolve_release_pin(*, pin_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """A release PIN, read as the key is: `pin_file` (`--pin-file`), else PRINT_RELEASE_PIN."""
    if pin_file is not None:
        return _read_key_file(pin_file, option="--pin-file")
    pin = environ.get(PIN_ENV_VAR, "").strip()
    return pin or None


def _read_key_file(path: Path, *, option: str = "--api-key-file") -> str:
    try:
        with path.open("rb") as stream:
            info = os.fstat(stream.fileno())  # the file opened, not a name that may change
            if stat.S_ISREG(info.st_mode) and info.st_mode & _PRIVATE_MODE_BITS:
                raise ApiKeyError(
                    f"{option} {path}: readable or writable by group or others "
                    f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
                )
            raw = stream.readline(MAX_KEY_FILE_LINE + 1)
    except OSError as exc:
        raise ApiKeyError(f"{option} {path}: {exc.strerror}") from None
    if len(raw) > MAX_KEY_FILE_LINE:
        raise ApiKeyError(f"{option} {path}: first line over {MAX_KEY_FILE_LINE} bytes")
    try:
        key = first_line(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiKeyError(f"{option} {path}: not UTF-8 text") from None
    if not key:
        raise ApiKeyError(f"{option} {path}: the first line is empty")
    return key
