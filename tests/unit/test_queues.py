"""The queue configuration: what a file may say, and what a queue accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.config import ConfigError, Settings
from service.core.queues import QueueConfigError, QueueMap
from service.models import CreatePrintJob, RejectionReason

CONFIG = """
unknown_queue = "reject"

[printers.office-1]
uri = "ipp://printer-1.example.com/ipp/print"
offline_deadline = 60
on_lost_job = "retry"

[printers.office-2]
uri = "ipps://printer-2.example.com:443/ipp/print"

[printers.screen]
backend = "simulated"
duration = 0.5

[queues.office]
printers = ["office-1", "office-2"]
document_formats = ["application/pdf"]

[queues.test]
printers = ["screen"]
"""

PDF = {"contentType": "application/pdf", "data": "JVBERi0xLjQK"}


def a_create(**fields: Any) -> CreatePrintJob:
    return CreatePrintJob.model_validate({"jobId": "job-1", **fields})


def a_map(tmp_path: Path, text: str = CONFIG) -> QueueMap:
    del tmp_path
    return QueueMap.from_toml(text, source="queues.toml")


def test_a_file_maps_queues_to_named_printers(tmp_path: Path) -> None:
    queues = a_map(tmp_path)

    assert [p.name for p in queues.printers_of("office")] == ["office-1", "office-2"]
    office_1 = queues.printers["office-1"]
    assert (office_1.backend, office_1.offline_deadline, office_1.on_lost_job) == (
        "ipp",
        60,
        "retry",
    )
    assert queues.printers["screen"].backend == "simulated"
    assert queues.lane("office") == "office"
    assert queues.lane("elsewhere") is None


def test_without_a_file_every_queue_id_is_its_own_lane() -> None:
    queues = QueueMap.dynamic()

    assert queues.lane("anything") == "anything"
    assert queues.printers_of("anything") == ()
    assert queues.check_create("anything", a_create()) is None


def test_a_default_queue_takes_unknown_queue_ids(tmp_path: Path) -> None:
    queues = a_map(tmp_path, CONFIG.replace('unknown_queue = "reject"', 'unknown_queue = "test"'))

    assert queues.lane("elsewhere") == "test"
    assert queues.check_create("elsewhere", a_create()) is None


def test_an_unknown_queue_is_rejected_with_the_known_ones(tmp_path: Path) -> None:
    refusal = a_map(tmp_path).check_create("elsewhere", a_create(document=PDF))

    assert refusal is not None
    assert refusal.reason is RejectionReason.unknown_queue
    assert "office, test" in refusal.message


def test_a_real_printer_needs_a_document(tmp_path: Path) -> None:
    queues = a_map(tmp_path)

    refusal = queues.check_create("office", a_create())

    assert refusal is not None
    assert refusal.reason is RejectionReason.document_required
    assert queues.check_create("office", a_create(document=PDF)) is None
    assert queues.check_create("test", a_create()) is None  # a simulated printer does not


def test_a_document_format_the_queue_does_not_take_is_rejected(tmp_path: Path) -> None:
    document = {"contentType": "image/png", "url": "https://files.example.com/a.png"}

    refusal = a_map(tmp_path).check_create("office", a_create(document=document))

    assert refusal is not None
    assert refusal.reason is RejectionReason.unsupported_document
    assert "application/pdf" in refusal.message


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[queues.a]\nprinters = ['nope']\n", "unknown printer 'nope'"),
        ("[printers.p]\nbackend = 'ipp'\n[queues.a]\nprinters = ['p']\n", "needs a uri"),
        ("[printers.p]\nuri = 'http://x/ipp'\n[queues.a]\nprinters = ['p']\n", "printers.p.uri"),
        (
            "[printers.p]\nbackend = 'simulated'\n[queues.a]\nprinters = ['p']\n"
            "[queues.b]\nprinters = ['p']\n",
            "serves both",
        ),
        ("[printers.p]\nbackend = 'simulated'\n", "no queue"),
        ("[queues.a]\nprinters = []\n", "queues.a.printers"),
        ("unknown_queue = 'zzz'\n" + CONFIG.split("\n", 2)[2], "not 'zzz'"),
        (
            "[printers.p]\nbackend = 'simulated'\ncolour = 1\n[queues.a]\nprinters = ['p']\n",
            "colour",
        ),
        ("[queues.a\n", "not valid TOML"),
    ],
    ids=[
        "unknown-printer",
        "ipp-without-uri",
        "uri-not-ipp",
        "printer-in-two-queues",
        "no-queue",
        "empty-pool",
        "bad-default",
        "unknown-key",
        "not-toml",
    ],
)
def test_a_bad_file_is_refused_with_where_and_why(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(QueueConfigError) as raised:
        a_map(tmp_path, text)

    assert complaint in str(raised.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        Settings(print_queues_file=tmp_path / "absent.toml")


def test_a_file_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    path.write_text(CONFIG)
    settings = Settings(print_queues_file=path)
    path.unlink()  # gone between reading the settings and reading the file
    with pytest.raises(ConfigError, match="PRINT_QUEUES_FILE: cannot read"):
        settings.queue_map()


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queues.toml"
    path.write_bytes(b"[queues.office]\nprinters = ['\xff']\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        Settings(print_queues_file=path).queue_map()
