"""The IPP/1.1 and 2.x binary message format (RFC 8010), both ways, with no I/O.

We do not use pyipp: it silently drops attributes it does not model (page-ranges,
collections, print-color-mode among them), and a print option must never be lost without
a word. Here nothing is dropped: every value keeps its own tag (a 1setOf may mix tags),
collections nest, values of tags we do not know stay raw bytes, so what we send is exactly
what the caller built and what a printer answers can be reported in full.

A message is a header (version, operation-id or status-code, request-id), groups of
attributes, the end-of-attributes tag, then the document's bytes (`Message.data`).
`decode` raises `IppDecodeError`, and nothing else, on input it cannot read; `encode`
raises `IppEncodeError` on a message that cannot be written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Final

__all__ = [
    "Attribute",
    "Collection",
    "Data",
    "Group",
    "GroupTag",
    "IppDecodeError",
    "IppEncodeError",
    "Message",
    "Operation",
    "RangeOfInteger",
    "Resolution",
    "Status",
    "StringWithLanguage",
    "Value",
    "ValueTag",
    "decode",
    "encode",
    "status_keyword",
]


class IppDecodeError(ValueError):
    """The bytes are not a well-formed IPP message (truncated, garbage, or inconsistent)."""


class IppEncodeError(ValueError):
    """The message cannot be written: a value does not fit its tag, or a length overflows."""


class GroupTag(IntEnum):
    """Delimiter tags: each starts a group of attributes, `end` ends them all."""

    operation = 0x01
    job = 0x02
    end = 0x03
    printer = 0x04
    unsupported = 0x05
    subscription = 0x06
    event_notification = 0x07
    resource = 0x08
    document = 0x09
    system = 0x0A


class ValueTag(IntEnum):
    # Out-of-band: no value, the tag is the meaning.
    unsupported = 0x10
    unknown = 0x12
    no_value = 0x13
    not_settable = 0x15
    delete_attribute = 0x16
    admin_define = 0x17
    # Integers.
    integer = 0x21
    boolean = 0x22
    enum = 0x23
    # Octet strings.
    octet_string = 0x30
    date_time = 0x31
    resolution = 0x32
    range_of_integer = 0x33
    beg_collection = 0x34
    text_with_language = 0x35
    name_with_language = 0x36
    end_collection = 0x37
    # Character strings.
    text_without_language = 0x41
    name_without_language = 0x42
    keyword = 0x44
    uri = 0x45
    uri_scheme = 0x46
    charset = 0x47
    natural_language = 0x48
    mime_media_type = 0x49
    member_attr_name = 0x4A


class Operation(IntEnum):
    print_job = 0x0002
    validate_job = 0x0004
    create_job = 0x0005
    send_document = 0x0006
    cancel_job = 0x0008
    get_job_attributes = 0x0009
    get_jobs = 0x000A
    get_printer_attributes = 0x000B
    hold_job = 0x000C
    release_job = 0x000D
    pause_printer = 0x0010
    resume_printer = 0x0011


class Status(IntEnum):
    """Status codes (RFC 8011 §4.1.6 and registrations); `status_keyword` spells them."""

    successful_ok = 0x0000
    successful_ok_ignored_or_substituted_attributes = 0x0001
    successful_ok_conflicting_attributes = 0x0002
    client_error_bad_request = 0x0400
    client_error_forbidden = 0x0401
    client_error_not_authenticated = 0x0402
    client_error_not_authorized = 0x0403
    client_error_not_possible = 0x0404
    client_error_timeout = 0x0405
    client_error_not_found = 0x0406
    client_error_gone = 0x0407
    client_error_request_entity_too_large = 0x0408
    client_error_request_value_too_long = 0x0409
    client_error_document_format_not_supported = 0x040A
    client_error_attributes_or_values_not_supported = 0x040B
    client_error_uri_scheme_not_supported = 0x040C
    client_error_charset_not_supported = 0x040D
    client_error_conflicting_attributes = 0x040E
    client_error_compression_not_supported = 0x040F
    client_error_compression_error = 0x0410
    client_error_document_format_error = 0x0411
    client_error_document_access_error = 0x0412
    server_error_internal_error = 0x0500
    server_error_operation_not_supported = 0x0501
    server_error_service_unavailable = 0x0502
    server_error_version_not_supported = 0x0503
    server_error_device_error = 0x0504
    server_error_temporary_error = 0x0505
    server_error_not_accepting_jobs = 0x0506
    server_error_busy = 0x0507
    server_error_job_canceled = 0x0508
    server_error_multiple_document_jobs_not_supported = 0x0509


def status_keyword(code: int) -> str:
    """`client-error-not-found` for 0x0406; the hex code for one we do not know."""
    try:
        return Status(code).name.replace("_", "-")
    except ValueError:
        return f"status 0x{code:04x}"


@dataclass(frozen=True, slots=True)
class Resolution:
    cross_feed: int
    feed: int
    units: int
    """3: dots per inch, 4: dots per centimetre."""


@dataclass(frozen=True, slots=True)
class RangeOfInteger:
    lower: int
    upper: int


@dataclass(frozen=True, slots=True)
class StringWithLanguage:
    """textWithLanguage or nameWithLanguage."""

    text: str
    language: str


@dataclass(frozen=True, slots=True)
class Collection:
    members: tuple[Attribute, ...]

    def get(self, name: str) -> Attribute | None:
        return next((member for member in self.members if member.name == name), None)


Data = (
    int
    | bool
    | str
    | bytes
    | datetime
    | Resolution
    | RangeOfInteger
    | StringWithLanguage
    | Collection
    | None
)
"""What a value holds, by tag: int (integer, enum), bool, str (character strings), bytes
(octetString and tags we do not know), datetime (aware), Resolution, RangeOfInteger,
StringWithLanguage, Collection, None (out-of-band)."""


@dataclass(frozen=True, slots=True)
class Value:
    tag: int
    data: Data


@dataclass(frozen=True, slots=True)
class Attribute:
    """A named attribute and its values: one, or several for a 1setOf."""

    name: str
    values: tuple[Value, ...]

    @classmethod
    def of(cls, name: str, tag: int, *data: Data) -> Attribute:
        """An attribute whose values all have the same tag."""
        return cls(name, tuple(Value(tag, item) for item in data))

    @property
    def first(self) -> Data:
        return self.values[0].data if self.values else None

    @property
    def all(self) -> tuple[Data, ...]:
        return tuple(value.data for value in self.values)


@dataclass(frozen=True, slots=True)
class Group:
    tag: int
    attributes: tuple[Attribute, ...]

    def get(self, name: str) -> Attribute | None:
        return next((item for item in self.attributes if item.name == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A request (`code` is the operation-id) or a response (`code` is the status-code)."""

    code: int
    request_id: int
    groups: tuple[Group, ...] = ()
    version: tuple[int, int] = (2, 0)
    data: bytes = b""

    def group(self, tag: int) -> Group | None:
        return next((group for group in self.groups if group.tag == tag), None)

    def groups_of(self, tag: int) -> tuple[Group, ...]:
        return tuple(group for group in self.groups if group.tag == tag)


_OUT_OF_BAND: Final = range(0x10, 0x20)
_EXTENSION: Final = 0x7F
_MAX_LENGTH: Final = 0x7FFF  # names and values are prefixed by a SIGNED-SHORT length
_INT32: Final = range(-(2**31), 2**31)
# Too deep a nesting is garbage, not a printer's answer; a bound keeps recursion safe.
_MAX_DEPTH: Final = 32
_STRING_TAGS: Final = frozenset(
    {
        ValueTag.text_without_language,
        ValueTag.name_without_language,
        ValueTag.keyword,
        ValueTag.uri,
        ValueTag.uri_scheme,
        ValueTag.charset,
        ValueTag.natural_language,
        ValueTag.mime_media_type,
        ValueTag.member_attr_name,
    }
)
# Text and names are for people: a printer's stray byte must not make its answer unreadable.
_LENIENT_TAGS: Final = frozenset({ValueTag.text_without_language, ValueTag.name_without_language})


# --- encoding --------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The message's bytes, document data included."""
    major, minor = message.version
    if not (0 <= major <= 0xFF and 0 <= minor <= 0xFF):
        raise IppEncodeError(f"bad version {message.version}")
    if not 0 <= message.code <= 0xFFFF:
        raise IppEncodeError(f"bad operation or status code {message.code}")
    if message.request_id not in _INT32:
        raise IppEncodeError(f"bad request-id {message.request_id}")
    out = bytearray(struct.pack(">BBHi", major, minor, message.code, message.request_id))
    for group in message.groups:
        if not 0x01 <= group.tag <= 0x0F or group.tag == GroupTag.end:
            raise IppEncodeError(f"bad group tag 0x{group.tag:02x}")
        out.append(group.tag)
        for attribute in group.attributes:
            _encode_attribute(out, attribute)
    out.append(GroupTag.end)
    out += message.data
    return bytes(out)


def _encode_attribute(out: bytearray, attribute: Attribute) -> None:
    if not attribute.name:
        raise IppEncodeError("an attribute needs a name")
    if not attribute.values:
        raise IppEncodeError(f"attribute {attribute.name} has no value")
    for index, value in enumerate(attribute.values):
        # Additional values of a 1setOf have an empty name.
        _encode_value(out, attribute.name if index == 0 else "", value, attribute.name)


def _encode_value(out: bytearray, name: str, value: Value, context: str) -> None:
    if value.tag == ValueTag.beg_collection:
        if not isinstance(value.data, Collection):
            raise IppEncodeError(f"{context}: begCollection needs a Collection")
        _write(out, value.tag, name, b"")
        for member in value.data.members:
            if not member.name:
                raise IppEncodeError(f"{context}: a collection member needs a name")
            if not member.values:
                raise IppEncodeError(f"{context}: member {member.name} has no value")
            _write(out, ValueTag.member_attr_name, "", _ascii(member.name, context))
            for member_value in member.values:
                _encode_value(out, "", member_value, f"{context}.{member.name}")
        _write(out, ValueTag.end_collection, "", b"")
        return
    if value.tag > 0xFF:
        # A tag past one octet goes in the value, after the extension tag (RFC 8010 §3.5.2).
        if not isinstance(value.data, bytes):
            raise IppEncodeError(f"{context}: extension tag 0x{value.tag:x} needs bytes")
        if value.tag > 0x7FFFFFFF:
            raise IppEncodeError(f"{context}: tag 0x{value.tag:x} does not fit in 4 octets")
        _write(out, _EXTENSION, name, value.tag.to_bytes(4, "big") + value.data)
        return
    _write(out, value.tag, name, _encode_data(value.tag, value.data, context))


def _write(out: bytearray, tag: int, name: str, value: bytes) -> None:
    encoded_name = _ascii(name, name)
    if len(encoded_name) > _MAX_LENGTH or len(value) > _MAX_LENGTH:
        raise IppEncodeError(f"{name or 'a value'}: longer than {_MAX_LENGTH} bytes")
    out.append(tag)
    out += struct.pack(">H", len(encoded_name))
    out += encoded_name
    out += struct.pack(">H", len(value))
    out += value


def _ascii(text: str, context: str) -> bytes:
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise IppEncodeError(f"{context}: names are US-ASCII, got {text!r}") from None


def _encode_data(tag: int, data: Data, context: str) -> bytes:  # noqa: PLR0911, PLR0912
    if not 0x10 <= tag <= 0xFF or tag in {_EXTENSION, ValueTag.end_collection}:
        raise IppEncodeError(f"{context}: tag 0x{tag:02x} cannot be written as a value")
    if tag in _OUT_OF_BAND:
        if data is not None:
            raise IppEncodeError(f"{context}: an out-of-band value holds None")
        return b""
    if tag in {ValueTag.integer, ValueTag.enum}:
        if not isinstance(data, int) or isinstance(data, bool) or data not in _INT32:
            raise IppEncodeError(f"{context}: {ValueTag(tag).name} needs a 32-bit int")
        return struct.pack(">i", data)
    if tag == ValueTag.boolean:
        if not isinstance(data, bool):
            raise IppEncodeError(f"{context}: boolean needs a bool")
        return bytes([data])
    if tag == ValueTag.date_time:
        return _encode_datetime(data, context)
    if tag == ValueTag.resolution:
        if not isinstance(data, Resolution):
            raise IppEncodeError(f"{context}: resolution needs a Resolution")
        return _pack(">iib", context, data.cross_feed, data.feed, data.units)
    if tag == ValueTag.range_of_integer:
        if not isinstance(data, RangeOfInteger):
            raise IppEncodeError(f"{context}: rangeOfInteger needs a RangeOfInteger")
        return _pack(">ii", context, data.lower, data.upper)
    if tag in {ValueTag.text_with_language, ValueTag.name_with_language}:
        if not isinstance(data, StringWithLanguage):
            raise IppEncodeError(f"{context}: {ValueTag(tag).name} needs a StringWithLanguage")
        language = data.language.encode()
        text = data.text.encode()
        return struct.pack(">H", len(language)) + language + struct.pack(">H", len(text)) + text
    if tag in _STRING_TAGS:
        if not isinstance(data, str):
            raise IppEncodeError(f"{context}: {ValueTag(tag).name} needs a str")
        return data.encode()
    if not isinstance(data, bytes):
        raise IppEncodeError(f"{context}: tag 0x{tag:02x} needs bytes")
    return data


def _pack(fmt: str, context: str, *values: int) -> bytes:
    try:
        return struct.pack(fmt, *values)
    except struct.error as exc:
        raise IppEncodeError(f"{context}: {exc}") from None


def _encode_datetime(data: Data, context: str) -> bytes:
    if not isinstance(data, datetime) or data.utcoffset() is None:
        raise IppEncodeError(f"{context}: dateTime needs a timezone-aware datetime")
    offset = data.utcoffset() or timedelta(0)
    direction = b"-" if offset < timedelta(0) else b"+"
    minutes = abs(int(offset.total_seconds())) // 60
    return (
        struct.pack(
            ">HBBBBBB",
            data.year,
            data.month,
            data.day,
            data.hour,
            data.minute,
            data.second,
            data.microsecond // 100_000,
        )
        + direction
        + bytes([minutes // 60, minutes % 60])
    )


# --- decoding --------------------------------------------------------------------------------


def decode(raw: bytes) -> Message:
    """The message in `raw`; what follows the end-of-attributes tag is `data`."""
    reader = _Reader(raw)
    try:
        return _decode(reader)
    except IppDecodeError:
        raise
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        # Field lengths are checked before reading, so this is a value that does not parse
        # (a dateTime of month 13); say where, in the one exception callers catch.
        raise IppDecodeError(f"bad value before offset {reader.pos}: {exc}") from exc


class _Reader:
    __slots__ = ("_raw", "pos")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self.pos = 0

    def take(self, size: int, what: str) -> bytes:
        left = len(self._raw) - self.pos
        if size > left:
            raise IppDecodeError(
                f"truncated: {what} needs {size} bytes at offset {self.pos}, {left} left"
            )
        start = self.pos
        self.pos += size
        return self._raw[start : self.pos]

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def sized(self, what: str) -> bytes:
        """A field prefixed by its SIGNED-SHORT length."""
        (size,) = struct.unpack(">h", self.take(2, f"the length of {what}"))
        if size < 0:
            raise IppDecodeError(f"negative length of {what} at offset {self.pos - 2}")
        return self.take(size, what)

    def rest(self) -> bytes:
        rest = self._raw[self.pos :]
        self.pos = len(self._raw)
        return rest


def _decode(reader: _Reader) -> Message:
    major, minor, code, request_id = struct.unpack(">BBHi", reader.take(8, "the header"))
    groups: list[Group] = []
    group_tag: int | None = None
    attributes: list[Attribute] = []
    name = ""
    values: list[Value] = []

    def close_attribute() -> None:
        if name:
            attributes.append(Attribute(name, tuple(values)))

    while True:
        tag = reader.byte("a tag (no end-of-attributes-tag)")
        if tag < 0x10:
            close_attribute()
            name, values = "", []
            if group_tag is not None:
                groups.append(Group(group_tag, tuple(attributes)))
            if tag == GroupTag.end:
                break
            if tag == 0x00:
                raise IppDecodeError(f"reserved tag 0x00 at offset {reader.pos - 1}")
            group_tag, attributes = tag, []
            continue
        if group_tag is None:
            raise IppDecodeError(f"an attribute before any group at offset {reader.pos - 1}")
        value_name, value = _read_value(reader, tag, depth=0)
        if value_name:
            close_attribute()
            name, values = value_name, [value]
        elif name:
            values.append(value)
        else:
            raise IppDecodeError(f"a value with no attribute name at offset {reader.pos}")
    return Message(
        version=(major, minor),
        code=code,
        request_id=request_id,
        groups=tuple(groups),
        data=reader.rest(),
    )


def _read_value(reader: _Reader, tag: int, *, depth: int) -> tuple[str, Value]:
    at = reader.pos - 1
    name = reader.sized("an attribute name").decode("ascii")
    raw = reader.sized(f"the value of {name or 'an additional value'}")
    if tag in {ValueTag.end_collection, ValueTag.member_attr_name}:
        raise IppDecodeError(f"{ValueTag(tag).name} outside a collection at offset {at}")
    if tag == ValueTag.beg_collection:
        return name, Value(tag, _read_collection(reader, depth + 1))
    if tag == _EXTENSION:
        # The real tag is the value's first four octets (RFC 8010 §3.5.2); keep the rest raw.
        if len(raw) < 4:
            raise IppDecodeError(f"extension tag without its 4-byte tag at offset {at}")
        extended = int.from_bytes(raw[:4], "big")
        if not 0xFF < extended <= 0x7FFFFFFF:
            raise IppDecodeError(f"extension tag of 0x{extended:x} at offset {at}")
        return name, Value(extended, raw[4:])
    return name, Value(tag, _decode_data(tag, raw))


def _read_collection(reader: _Reader, depth: int) -> Collection:
    if depth > _MAX_DEPTH:
        raise IppDecodeError(f"collections nested deeper than {_MAX_DEPTH}")
    members: list[Attribute] = []
    member = ""
    values: list[Value] = []
    while True:
        at = reader.pos
        tag = reader.byte("a collection member (no endCollection)")
        if tag < 0x10:
            raise IppDecodeError(f"group tag 0x{tag:02x} inside a collection at offset {at}")
        if reader.sized("a member's name"):
            raise IppDecodeError(f"a named attribute inside a collection at offset {at}")
        if tag == ValueTag.beg_collection:
            reader.sized("a begCollection value")
            if not member:
                raise IppDecodeError(f"a collection value before its member name at offset {at}")
            values.append(Value(tag, _read_collection(reader, depth + 1)))
            continue
        raw = reader.sized("a member value")
        if tag in {ValueTag.member_attr_name, ValueTag.end_collection}:
            if member:
                if not values:
                    raise IppDecodeError(f"member {member} has no value (offset {at})")
                members.append(Attribute(member, tuple(values)))
            if tag == ValueTag.end_collection:
                return Collection(tuple(members))
            member, values = raw.decode("ascii"), []
            if not member:
                raise IppDecodeError(f"an empty member name at offset {at}")
            continue
        if not member:
            raise IppDecodeError(f"a member value before its name at offset {at}")
        values.append(Value(tag, _decode_data(tag, raw)))


_FIXED_SIZES: Final[dict[int, int]] = {
    ValueTag.integer: 4,
    ValueTag.enum: 4,
    ValueTag.boolean: 1,
    ValueTag.date_time: 11,
    ValueTag.resolution: 9,
    ValueTag.range_of_integer: 8,
}


def _decode_data(tag: int, raw: bytes) -> Data:  # noqa: PLR0911
    if tag in _OUT_OF_BAND:
        # Out-of-band values are empty by definition; any bytes there carry no meaning.
        return None
    size = _FIXED_SIZES.get(tag)
    if size is not None and len(raw) != size:
        raise IppDecodeError(f"{ValueTag(tag).name} of {len(raw)} bytes, expected {size}")
    if tag in {ValueTag.integer, ValueTag.enum}:
        return int(struct.unpack(">i", raw)[0])
    if tag == ValueTag.boolean:
        if raw[0] > 1:
            raise IppDecodeError(f"boolean of value {raw[0]}")
        return raw[0] == 1
    if tag == ValueTag.date_time:
        return _decode_datetime(raw)
    if tag == ValueTag.resolution:
        cross_feed, feed, units = struct.unpack(">iib", raw)
        return Resolution(cross_feed, feed, units)
    if tag == ValueTag.range_of_integer:
        lower, upper = struct.unpack(">ii", raw)
        return RangeOfInteger(lower, upper)
    if tag in {ValueTag.text_with_language, ValueTag.name_with_language}:
        inner = _Reader(raw)
        language = inner.sized("a language").decode()
        text = inner.sized("a text").decode(errors="replace")
        if inner.rest():
            raise IppDecodeError(f"{ValueTag(tag).name} with trailing bytes")
        return StringWithLanguage(text=text, language=language)
    if tag in _LENIENT_TAGS:
        return raw.decode(errors="replace")
    if tag in _STRING_TAGS:
        return raw.decode()
    return raw


def _decode_datetime(raw: bytes) -> datetime:
    year, month, day, hour, minute, second, deci = struct.unpack(">HBBBBBB", raw[:8])
    direction, hours, minutes = raw[8:9], raw[9], raw[10]
    if direction not in {b"+", b"-"}:
        raise IppDecodeError(f"dateTime with UTC direction {direction!r}")
    offset = timedelta(hours=hours, minutes=minutes)
    tz = timezone(-offset if direction == b"-" else offset)
    return datetime(year, month, day, hour, minute, second, deci * 100_000, tzinfo=tz)
