"""The IPP message format: every value tag both ways, 1setOf, nested collections, and input
that is truncated or garbage always failing with IppDecodeError."""

from __future__ import annotations

import contextlib
import random
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.adapters.ipp.encoding import (
    Attribute,
    Collection,
    Group,
    GroupTag,
    IppDecodeError,
    IppEncodeError,
    Message,
    Operation,
    RangeOfInteger,
    Resolution,
    Status,
    StringWithLanguage,
    Value,
    ValueTag,
    decode,
    encode,
    status_keyword,
)

MEDIA_COL = Collection(
    (
        Attribute.of(
            "media-size",
            ValueTag.beg_collection,
            Collection(
                (
                    Attribute.of("x-dimension", ValueTag.integer, 21000),
                    Attribute.of("y-dimension", ValueTag.integer, 29700),
                )
            ),
        ),
        Attribute.of("media-type", ValueTag.keyword, "stationery"),
        Attribute.of("media-source-properties", ValueTag.keyword, "main", "alternate"),
    )
)


def every_tag() -> tuple[Attribute, ...]:
    when = datetime(2026, 11, 21, 8, 12, 44, 700_000, tzinfo=timezone(timedelta(hours=-5)))
    return (
        Attribute.of("an-integer", ValueTag.integer, -(2**31)),
        Attribute.of("a-boolean", ValueTag.boolean, True),
        Attribute.of("an-enum", ValueTag.enum, 4),
        Attribute.of("octets", ValueTag.octet_string, b"\x00\xff\x10"),
        Attribute.of("when", ValueTag.date_time, when),
        Attribute.of("resolution", ValueTag.resolution, Resolution(600, 300, 3)),
        Attribute.of("range", ValueTag.range_of_integer, RangeOfInteger(1, 2**31 - 1)),
        Attribute.of("media-col", ValueTag.beg_collection, MEDIA_COL),
        Attribute.of("text-lang", ValueTag.text_with_language, StringWithLanguage("Grüße", "de")),
        Attribute.of("name-lang", ValueTag.name_with_language, StringWithLanguage("Ana", "es")),
        Attribute.of("text", ValueTag.text_without_language, "naïve text"),
        Attribute.of("name", ValueTag.name_without_language, "a name"),
        Attribute.of("keyword", ValueTag.keyword, "one-sided"),
        Attribute.of("uri", ValueTag.uri, "ipp://printer.example/ipp/print"),
        Attribute.of("uri-scheme", ValueTag.uri_scheme, "ipps"),
        Attribute.of("charset", ValueTag.charset, "utf-8"),
        Attribute.of("language", ValueTag.natural_language, "en-gb"),
        Attribute.of("format", ValueTag.mime_media_type, "application/pdf"),
        Attribute.of("oob-unsupported", ValueTag.unsupported, None),
        Attribute.of("oob-unknown", ValueTag.unknown, None),
        Attribute.of("oob-no-value", ValueTag.no_value, None),
    )


def a_message() -> Message:
    return Message(
        version=(1, 1),
        code=Operation.print_job,
        request_id=42,
        groups=(
            Group(
                GroupTag.operation,
                (
                    Attribute.of("attributes-charset", ValueTag.charset, "utf-8"),
                    Attribute.of("attributes-natural-language", ValueTag.natural_language, "en"),
                ),
            ),
            Group(GroupTag.job, every_tag()),
            Group(
                GroupTag.printer,
                (
                    Attribute.of("sides-supported", ValueTag.keyword, "one-sided", "two-sided"),
                    Attribute.of(
                        "media-col-database", ValueTag.beg_collection, MEDIA_COL, MEDIA_COL
                    ),
                    # A 1setOf may mix tags: each value keeps its own.
                    Attribute(
                        "media-source",
                        (
                            Value(ValueTag.keyword, "main"),
                            Value(ValueTag.name_without_language, "Tray 9"),
                            Value(ValueTag.no_value, None),
                        ),
                    ),
                ),
            ),
            Group(
                GroupTag.unsupported,
                (Attribute.of("print-color-mode", ValueTag.keyword, "color"),),
            ),
            Group(GroupTag.job, (Attribute.of("job-id", ValueTag.integer, 7),)),
        ),
        data=b"%PDF-1.4 the document",
    )


def test_a_message_with_every_tag_round_trips():
    message = a_message()

    assert decode(encode(message)) == message


def test_groups_of_the_same_tag_stay_apart_and_in_order():
    decoded = decode(encode(a_message()))

    assert [group.tag for group in decoded.groups] == [1, 2, 4, 5, 2]
    assert [len(group.attributes) for group in decoded.groups_of(GroupTag.job)] == [21, 1]
    assert decoded.group(GroupTag.job) == decoded.groups[1]
    assert decoded.group(GroupTag.subscription) is None


def test_header_and_a_simple_attribute_are_the_bytes_of_rfc_8010():
    message = Message(
        code=Operation.get_printer_attributes,
        request_id=1,
        groups=(Group(GroupTag.operation, (Attribute.of("copies", ValueTag.integer, 2),)),),
    )

    assert encode(message) == (
        b"\x02\x00"  # version 2.0
        b"\x00\x0b"  # Get-Printer-Attributes
        b"\x00\x00\x00\x01"  # request-id
        b"\x01"  # operation-attributes-tag
        b"\x21\x00\x06copies\x00\x04\x00\x00\x00\x02"
        b"\x03"  # end-of-attributes-tag
    )


def test_1setof_values_after_the_first_have_an_empty_name():
    attribute = Attribute.of("page-ranges", ValueTag.range_of_integer, *[RangeOfInteger(1, 2)] * 2)
    raw = encode(Message(code=2, request_id=1, groups=(Group(GroupTag.job, (attribute,)),)))

    value = struct.pack(">ii", 1, 2)
    assert raw[9:] == (
        b"\x33\x00\x0bpage-ranges\x00\x08" + value + b"\x33\x00\x00\x00\x08" + value + b"\x03"
    )
    assert decode(raw).groups[0].attributes == (attribute,)


def test_a_collection_is_written_as_in_rfc_8010_and_nests():
    inner = Collection((Attribute.of("x-dimension", ValueTag.integer, 1),))
    outer = Collection(
        (
            Attribute.of("media-size", ValueTag.beg_collection, inner),
            Attribute.of("media-type", ValueTag.keyword, "a", "b"),
        )
    )
    attribute = Attribute.of("media-col", ValueTag.beg_collection, outer)
    raw = encode(Message(code=2, request_id=1, groups=(Group(GroupTag.job, (attribute,)),)))

    assert raw[9:] == (
        b"\x34\x00\x09media-col\x00\x00"
        b"\x4a\x00\x00\x00\x0amedia-size"
        b"\x34\x00\x00\x00\x00"
        b"\x4a\x00\x00\x00\x0bx-dimension"
        b"\x21\x00\x00\x00\x04\x00\x00\x00\x01"
        b"\x37\x00\x00\x00\x00"
        b"\x4a\x00\x00\x00\x0amedia-type"
        b"\x44\x00\x00\x00\x01a"
        b"\x44\x00\x00\x00\x01b"
        b"\x37\x00\x00\x00\x00"
        b"\x03"
    )
    decoded = decode(raw).groups[0].attributes[0]
    assert decoded == attribute
    assert isinstance(decoded.first, Collection)
    assert decoded.first.get("media-type") == Attribute.of("media-type", ValueTag.keyword, "a", "b")
    assert decoded.first.get("absent") is None


def test_values_are_decoded_to_their_types():
    job = decode(encode(a_message())).groups[1]

    def first(name: str) -> object:
        attribute = job.get(name)
        assert attribute is not None
        return attribute.first

    assert first("an-integer") == -(2**31)
    assert first("a-boolean") is True
    when = first("when")
    assert isinstance(when, datetime)
    assert when.astimezone(UTC) == datetime(2026, 11, 21, 13, 12, 44, 700_000, tzinfo=UTC)
    assert first("text-lang") == StringWithLanguage(text="Grüße", language="de")
    assert first("oob-no-value") is None
    assert job.get("oob-no-value") == Attribute.of("oob-no-value", ValueTag.no_value, None)


def test_a_datetime_east_of_utc_round_trips():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    attribute = Attribute.of("t", ValueTag.date_time, when)
    raw = encode(Message(code=0, request_id=1, groups=(Group(GroupTag.job, (attribute,)),)))

    assert raw[9 + 6 : 9 + 6 + 11] == b"\x07\xea\x01\x02\x03\x04\x05\x00+\x05\x1e"
    assert decode(raw).groups[0].attributes[0].first == when


def test_unknown_value_tags_are_kept_as_bytes_and_written_back_unchanged():
    raw = (
        b"\x02\x00\x00\x00\x00\x00\x00\x01\x04"
        b"\x4f\x00\x06vendor\x00\x03abc"  # an unassigned character-string tag
        b"\x7f\x00\x03ext\x00\x06\x00\x00\x12\x34hi"  # extension: the tag is in the value
        b"\x03"
    )

    printer = decode(raw).groups[0]

    assert printer.attributes == (
        Attribute.of("vendor", 0x4F, b"abc"),
        Attribute.of("ext", 0x1234, b"hi"),
    )
    assert encode(decode(raw)) == raw


def test_text_that_is_not_utf8_is_read_with_replacements():
    raw = b"\x02\x00\x00\x00\x00\x00\x00\x01\x02\x41\x00\x03msg\x00\x02\xff!\x03"

    assert decode(raw).groups[0].attributes[0].first == "\ufffd!"


def test_status_keywords():
    assert status_keyword(Status.client_error_not_found) == "client-error-not-found"
    assert status_keyword(0x040B) == "client-error-attributes-or-values-not-supported"
    assert status_keyword(0x0777) == "status 0x0777"


def test_message_data_follows_the_end_tag():
    raw = encode(a_message())

    assert raw.endswith(b"\x03%PDF-1.4 the document")
    assert decode(raw).data == b"%PDF-1.4 the document"


# --- bad input ------------------------------------------------------------------------------


def test_every_truncation_of_a_message_is_a_decode_error():
    raw = encode(a_message())
    end = raw.index(b"%PDF")  # past the end tag, a shorter document is still a message

    for size in range(end):
        with pytest.raises(IppDecodeError, match=r"^truncated|no end"):
            decode(raw[:size])


def test_garbage_never_raises_anything_but_a_decode_error():
    rng = random.Random(8010)
    valid = encode(a_message())
    for _ in range(3000):
        if rng.random() < 0.5:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        else:  # a valid message with a few bytes changed: deeper into the decoder
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            raw = bytes(mutated)
        with contextlib.suppress(IppDecodeError):
            decode(raw)


HEADER = b"\x02\x00\x00\x00\x00\x00\x00\x01"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x21\x00\x01a\x00\x04\x00\x00\x00\x01\x03", "before any group"),
        (b"\x01\x21\x00\x00\x00\x04\x00\x00\x00\x01\x03", "no attribute name"),
        (b"\x01\x21\x00\x01a\x00\x03\x00\x00\x01\x03", "integer of 3 bytes, expected 4"),
        (b"\x01\x22\x00\x01a\x00\x01\x02\x03", "boolean of value 2"),
        (b"\x01\x21\x00\x01a\xff\xff\x03", "negative length"),
        (b"\x01\x4a\x00\x00\x00\x01a\x03", "member_attr_name outside a collection"),
        (b"\x01\x37\x00\x01a\x00\x00\x03", "end_collection outside a collection"),
        (b"\x01\x34\x00\x01c\x00\x00\x03", "group tag 0x03 inside a collection"),
        (b"\x01\x34\x00\x01c\x00\x00\x44\x00\x00\x00\x01x\x37\x00\x00\x00\x00\x03", "before"),
        (b"\x01\x34\x00\x01c\x00\x00\x4a\x00\x00\x00\x01m\x37\x00\x00\x00\x00\x03", "no value"),
        (b"\x01\x34\x00\x01c\x00\x00\x4a\x00\x00\x00\x00", "empty member name"),
        (b"\x01\x34\x00\x01c\x00\x00\x44\x00\x01n\x00\x00", "named attribute inside"),
        (b"\x00\x03", "reserved tag"),
        (b"\x01\x31\x00\x01t\x00\x0b\x07\xea\x0d\x01\x00\x00\x00\x00+\x00\x00\x03", "bad value"),
        (b"\x01\x31\x00\x01t\x00\x0b\x07\xea\x01\x01\x00\x00\x00\x00*\x00\x00\x03", "direction"),
        (b"\x01\x35\x00\x01t\x00\x05\x00\x01e\x00\x05\x03", "truncated"),
        (b"\x01\x35\x00\x01t\x00\x06\x00\x00\x00\x00zz\x03", "trailing bytes"),
        (b"\x01\x44\x00\x01k\x00\x01\xff\x03", "bad value"),
        (b"\x01\x7f\x00\x01x\x00\x02\x00\x00\x03", "extension tag"),
        (b"\x01\x7f\x00\x01x\x00\x04\x00\x00\x00\x21\x03", "extension tag of 0x21"),
        (b"\x01\x7f\x00\x01x\x00\x04\x80\x00\x00\x00\x03", "extension tag of 0x80000000"),
    ],
)
def test_malformed_input_says_what_is_wrong(body, error):
    with pytest.raises(IppDecodeError, match=error):
        decode(HEADER + body)


def test_collections_nested_too_deeply_are_refused():
    depth = 40
    body = b"\x01\x34\x00\x01c\x00\x00" + (b"\x4a\x00\x00\x00\x01m\x34\x00\x00\x00\x00") * depth

    with pytest.raises(IppDecodeError, match="nested deeper"):
        decode(HEADER + body)


@pytest.mark.parametrize(
    ("attribute", "error"),
    [
        (Attribute.of("n", ValueTag.integer, 2**31), "32-bit int"),
        (Attribute.of("n", ValueTag.integer, True), "32-bit int"),
        (Attribute.of("n", ValueTag.enum, "3"), "32-bit int"),
        (Attribute.of("n", ValueTag.boolean, 1), "needs a bool"),
        (Attribute.of("n", ValueTag.keyword, b"raw"), "needs a str"),
        (Attribute.of("n", ValueTag.octet_string, "text"), "needs bytes"),
        (Attribute.of("n", ValueTag.date_time, datetime(2026, 1, 1)), "timezone-aware"),  # noqa: DTZ001
        (Attribute.of("n", ValueTag.resolution, (1, 2)), "needs a Resolution"),  # type: ignore[arg-type]
        (Attribute.of("n", ValueTag.resolution, Resolution(1, 2, 300)), "n:"),
        (Attribute.of("n", ValueTag.range_of_integer, 5), "needs a RangeOfInteger"),
        (Attribute.of("n", ValueTag.text_with_language, "t"), "StringWithLanguage"),
        (Attribute.of("n", ValueTag.beg_collection, "c"), "needs a Collection"),
        (Attribute.of("n", ValueTag.no_value, 0), "out-of-band"),
        (Attribute.of("n", ValueTag.end_collection, None), "cannot be written"),
        (Attribute.of("n", ValueTag.keyword), "has no value"),
        (Attribute.of("", ValueTag.keyword, "k"), "needs a name"),
        (Attribute.of("née", ValueTag.keyword, "k"), "US-ASCII"),
        (Attribute.of("n", ValueTag.octet_string, b"x" * 40000), "longer than"),
        (
            Attribute.of(
                "c", ValueTag.beg_collection, Collection((Attribute.of("m", ValueTag.keyword),))
            ),
            "member m has no value",
        ),
    ],
)
def test_values_that_do_not_fit_their_tag_are_not_encoded(attribute, error):
    message = Message(code=2, request_id=1, groups=(Group(GroupTag.job, (attribute,)),))

    with pytest.raises(IppEncodeError, match=error):
        encode(message)


@pytest.mark.parametrize(
    "message",
    [
        Message(code=0x10000, request_id=1),
        Message(code=2, request_id=2**31),
        Message(code=2, request_id=1, version=(256, 0)),
        Message(code=2, request_id=1, groups=(Group(GroupTag.end, ()),)),
    ],
)
def test_bad_headers_and_group_tags_are_not_encoded(message):
    with pytest.raises(IppEncodeError):
        encode(message)
