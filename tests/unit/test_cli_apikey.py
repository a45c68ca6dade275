"""The client commands' API key: PRINT_API_KEY or --api-key-file, never argv."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.cli import main
from service.cli.apikey import (
    ENV_VAR,
    MAX_KEY_FILE_LINE,
    ApiKeyError,
    first_line,
    resolve_api_key,
)
from service.cli.commands import EXIT_CONFIG

SECRET = "k-" + os.urandom(12).hex()


def key_file(tmp_path: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "key"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


# A key as people write them: no line break, no surrounding whitespace.
keys = st.text(st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cs")), min_size=1).map(
    str.strip
)


@given(key=keys.filter(bool), blank=st.sampled_from(["", " ", "\t"]), rest=st.text())
def test_first_line_is_the_key_whatever_follows(key: str, blank: str, rest: str):
    for newline in ("\n", "\r\n", "\r"):
        assert first_line(f"{blank}{key}{blank}{newline}{rest}") == key


@given(text=st.text())
def test_first_line_never_holds_a_line_break(text: str):
    assert not set(first_line(text)) & {"\n", "\r"}


def test_the_file_wins_over_the_environment(tmp_path):
    path = key_file(tmp_path, f"{SECRET}\n# the key of the office printers\n")
    assert resolve_api_key(key_file=path, environ={ENV_VAR: "from-env"}) == SECRET
    assert resolve_api_key(key_file=None, environ={ENV_VAR: f" {SECRET}\n"}) == SECRET
    assert resolve_api_key(key_file=None, environ={ENV_VAR: "  "}) is None
    assert resolve_api_key(key_file=None, environ={}) is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660, 0o666])
def test_a_file_others_can_read_or_write_is_refused(tmp_path, mode):
    path = key_file(tmp_path, SECRET, mode)
    with pytest.raises(ApiKeyError, match=f"mode {mode:04o}.*chmod 600") as refused:
        resolve_api_key(key_file=path, environ={})
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_file_is_read(tmp_path, mode):
    assert resolve_api_key(key_file=key_file(tmp_path, SECRET, mode), environ={}) == SECRET


def test_a_pipe_is_read_whatever_its_mode(tmp_path):
    """A pipe (`--api-key-file <(pass show ...)`) keeps the key nowhere: no mode rule."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    fifo.chmod(0o644)
    writer = threading.Thread(target=fifo.write_text, args=(f"{SECRET}\n",))
    writer.start()
    try:
        assert resolve_api_key(key_file=fifo, environ={}) == SECRET
    finally:
        writer.join(timeout=10)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("", "the first line is empty"),
        ("\nkey-on-line-two\n", "the first line is empty"),
        (b"\xff\xfe key\n", "not UTF-8"),
        ("k" * (MAX_KEY_FILE_LINE + 1), f"over {MAX_KEY_FILE_LINE} bytes"),
    ],
)
def test_a_file_without_a_usable_key_is_refused(tmp_path, content, complaint):
    with pytest.raises(ApiKeyError, match=complaint):
        resolve_api_key(key_file=key_file(tmp_path, content), environ={})


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ApiKeyError, match="No such file"):
        resolve_api_key(key_file=tmp_path / "absent", environ={})


def test_the_command_refuses_a_shared_key_file_before_connecting(tmp_path, capsys):
    # Nothing listens on MQTT_URL/AMQP_URL's defaults in unit tests that matter here: the
    # command stops before any connection.
    path = key_file(tmp_path, SECRET, 0o644)
    assert main(["status", "job-1", "--api-key-file", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "readable or writable by group or others" in err
    assert SECRET not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "job-1", "--api-key", SECRET],
        ["submit", f"--api-key={SECRET}"],
        ["cancel", "job-1", "--api-key"],
    ],
)
def test_a_key_on_the_command_line_is_refused_without_being_repeated(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--api-key is not accepted" in err
    assert ENV_VAR in err
    assert SECRET not in err


def test_no_abbreviation_turns_api_key_into_api_key_file(capsys):
    """`--api-key-f` would otherwise abbreviate `--api-key-file`; prefixes are refused."""
    with pytest.raises(SystemExit):
        main(["status", "job-1", "--api-key-f", SECRET])
    assert "--api-key-f" in capsys.readouterr().err
