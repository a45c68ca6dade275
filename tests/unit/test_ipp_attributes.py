"""A print request as Print-Job attributes: every option, nothing dropped, fidelity asked."""

from __future__ import annotations

from typing import Any

import pytest

from service.adapters.ipp.attributes import (
    DEFAULT_USER,
    OPTION_ATTRIBUTES,
    ORIENTATION_ENUMS,
    QUALITY_ENUMS,
    JobState,
    PrinterState,
    describe,
    job_template,
    print_job_groups,
)
from service.adapters.ipp.encoding import (
    Attribute,
    Collection,
    GroupTag,
    Message,
    Operation,
    RangeOfInteger,
    Resolution,
    StringWithLanguage,
    Value,
    ValueTag,
    decode,
    encode,
)
from service.models import ColorMode, Orientation, PageRange, PrintOptions, PrintQuality, Sides
from service.ports import InlineDocument, PrintRequest

URI = "ipp://printer.example:631/ipp/print"
PDF = b"%PDF-1.4"


def a_request(
    *, copies: int = 1, user_id: str | None = "alice", title: str = "Report", **options: Any
) -> PrintRequest:
    return PrintRequest(
        job_id="job-1",
        title=title,
        user_id=user_id,
        copies=copies,
        options=PrintOptions(**options),
        document=InlineDocument(PDF),
        content_type="application/pdf",
    )


ALL_OPTIONS: dict[str, Any] = {
    "sides": Sides.two_sided_short_edge,
    "media": "na_letter_8.5x11in",
    "colorMode": ColorMode.color,
    "pageRanges": [PageRange(start=1, end=3), PageRange(start=7, end=7)],
    "orientation": Orientation.reverse_landscape,
    "quality": PrintQuality.draft,
}


def test_the_operation_group_asks_for_fidelity_and_names_the_job():
    operation, _ = print_job_groups(a_request(copies=2), printer_uri=URI)

    assert operation.tag == GroupTag.operation
    assert operation.attributes == (
        Attribute.of("attributes-charset", ValueTag.charset, "utf-8"),
        Attribute.of("attributes-natural-language", ValueTag.natural_language, "en"),
        Attribute.of("printer-uri", ValueTag.uri, URI),
        Attribute.of("requesting-user-name", ValueTag.name_without_language, "alice"),
        Attribute.of("job-name", ValueTag.name_without_language, "Report"),
        Attribute.of("ipp-attribute-fidelity", ValueTag.boolean, True),
        Attribute.of("document-format", ValueTag.mime_media_type, "application/pdf"),
    )


def test_every_option_becomes_its_job_template_attribute():
    _, job = print_job_groups(a_request(copies=3, **ALL_OPTIONS), printer_uri=URI)

    assert job.tag == GroupTag.job
    assert job.attributes == (
        Attribute.of("copies", ValueTag.integer, 3),
        Attribute.of("sides", ValueTag.keyword, "two-sided-short-edge"),
        Attribute.of("media", ValueTag.keyword, "na_letter_8.5x11in"),
        Attribute.of("print-color-mode", ValueTag.keyword, "color"),
        Attribute.of(
            "page-ranges", ValueTag.range_of_integer, RangeOfInteger(1, 3), RangeOfInteger(7, 7)
        ),
        Attribute.of("orientation-requested", ValueTag.enum, 5),
        Attribute.of("print-quality", ValueTag.enum, 3),
    )


def test_a_lone_surrogate_in_a_name_is_replaced_not_raised():
    operation = print_job_groups(a_request(title="Q\ud800", user_id="\udfff"), printer_uri=URI)[0]

    assert operation.get("job-name") == Attribute.of(
        "job-name", ValueTag.name_without_language, "Q?"
    )
    assert operation.get("requesting-user-name") == Attribute.of(
        "requesting-user-name", ValueTag.name_without_language, "?"
    )


def test_the_table_names_every_option_and_what_it_becomes():
    template = job_template(a_request(copies=2, **ALL_OPTIONS))

    assert {row.option for row in OPTION_ATTRIBUTES} == {
        "copies",
        *(f"options.{field}" for field in PrintOptions.model_fields),
    }
    assert [row.attribute for row in OPTION_ATTRIBUTES] == [a.name for a in template]


def test_no_options_and_one_copy_make_no_job_group():
    groups = print_job_groups(a_request(), printer_uri=URI)

    assert [group.tag for group in groups] == [GroupTag.operation]


def test_a_job_without_a_user_is_requested_by_the_service():
    operation = print_job_groups(a_request(user_id=None), printer_uri=URI)[0]

    assert operation.get("requesting-user-name") == Attribute.of(
        "requesting-user-name", ValueTag.name_without_language, DEFAULT_USER
    )


def test_a_long_title_is_cut_to_255_octets_on_a_character_boundary():
    operation = print_job_groups(a_request(title="é" * 200), printer_uri=URI)[0]

    name = operation.get("job-name")
    assert name is not None
    assert name.first == "é" * 127  # 254 octets: a 128th would need 256


@pytest.mark.parametrize(
    ("orientation", "number"),
    [
        (Orientation.portrait, 3),
        (Orientation.landscape, 4),
        (Orientation.reverse_landscape, 5),
        (Orientation.reverse_portrait, 6),
    ],
)
def test_orientations_are_the_ipp_enums(orientation, number):
    [attribute] = job_template(a_request(orientation=orientation))

    assert attribute == Attribute.of("orientation-requested", ValueTag.enum, number)
    assert describe(attribute) == f"orientation-requested={orientation.value}"


@pytest.mark.parametrize(
    ("quality", "number"),
    [(PrintQuality.draft, 3), (PrintQuality.normal, 4), (PrintQuality.high, 5)],
)
def test_qualities_are_the_ipp_enums(quality, number):
    [attribute] = job_template(a_request(quality=quality))

    assert attribute == Attribute.of("print-quality", ValueTag.enum, number)
    assert describe(attribute) == f"print-quality={quality.value}"


def test_the_tables_cover_every_enum_member():
    assert set(ORIENTATION_ENUMS) == set(Orientation)
    assert set(QUALITY_ENUMS) == set(PrintQuality)


def test_a_print_job_survives_the_wire_whole():
    request = a_request(copies=2, **ALL_OPTIONS)
    message = Message(
        code=Operation.print_job,
        request_id=9,
        groups=print_job_groups(request, printer_uri=URI),
        data=PDF,
    )

    assert decode(encode(message)) == message


def test_job_and_printer_states():
    assert [(state.value, state.keyword) for state in JobState] == [
        (3, "pending"),
        (4, "pending-held"),
        (5, "processing"),
        (6, "processing-stopped"),
        (7, "canceled"),
        (8, "aborted"),
        (9, "completed"),
    ]
    assert {state for state in JobState if state.terminal} == {
        JobState.canceled,
        JobState.aborted,
        JobState.completed,
    }
    assert [(state.name, state.value) for state in PrinterState] == [
        ("idle", 3),
        ("processing", 4),
        ("stopped", 5),
    ]


@pytest.mark.parametrize(
    ("attribute", "text"),
    [
        (Attribute.of("media", ValueTag.keyword, "iso_a3_297x420mm"), "media=iso_a3_297x420mm"),
        (
            Attribute.of("page-ranges", ValueTag.range_of_integer, *[RangeOfInteger(1, 2)] * 2),
            "page-ranges=1-2,1-2",
        ),
        (Attribute.of("sides", ValueTag.unsupported, None), "sides=unsupported"),
        (Attribute("x", (Value(0x1F, None),)), "x=tag-0x1f"),
        (Attribute.of("copies", ValueTag.integer, 1000), "copies=1000"),
        (Attribute.of("print-quality", ValueTag.enum, 9), "print-quality=9"),
        (Attribute.of("f", ValueTag.boolean, False), "f=false"),
        (Attribute.of("r", ValueTag.resolution, Resolution(600, 600, 3)), "r=600x600dpi"),
        (Attribute.of("t", ValueTag.text_with_language, StringWithLanguage("hi", "en")), "t=hi"),
        (Attribute.of("o", ValueTag.octet_string, b"\x01\xff"), "o=01ff"),
        (
            Attribute.of(
                "media-col",
                ValueTag.beg_collection,
                Collection(
                    (
                        Attribute.of("media-type", ValueTag.keyword, "photo"),
                        Attribute.of("media-source", ValueTag.keyword, "main"),
                    )
                ),
            ),
            "media-col={media-type=photo media-source=main}",
        ),
    ],
)
def test_refused_attributes_are_described_for_people(attribute, text):
    assert describe(attribute) == text
