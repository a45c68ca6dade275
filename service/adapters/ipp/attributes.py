"""Our print requests as IPP attributes, and IPP's job and printer states. No I/O.

Every option becomes one job-template attribute (`OPTION_ATTRIBUTES`, which the README
cites), and a Print-Job says `ipp-attribute-fidelity: true`: a printer that cannot honour
an option refuses the whole job and names the attribute, instead of printing without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from service.adapters.ipp.encoding import (
    Attribute,
    Collection,
    Data,
    Group,
    GroupTag,
    RangeOfInteger,
    Resolution,
    StringWithLanguage,
    Value,
    ValueTag,
)
from service.models import Orientation, PrintQuality
from service.ports import PrintRequest

__all__ = [
    "DEFAULT_USER",
    "OPTION_ATTRIBUTES",
    "ORIENTATION_ENUMS",
    "QUALITY_ENUMS",
    "JobState",
    "OptionAttribute",
    "PrinterState",
    "describe",
    "job_template",
    "operation_attributes",
    "print_job_groups",
]

DEFAULT_USER: Final = "print-service"
"""requesting-user-name of a job without a user, and of our own requests (state, cancel)."""

# name(MAX) and text(MAX) are at most 255 octets (RFC 8011 §5.1.3); a printer may refuse more.
_NAME_MAX: Final = 255


@dataclass(frozen=True, slots=True)
class OptionAttribute:
    """One row of the mapping: our field, the IPP attribute, its IPP syntax."""

    option: str
    attribute: str
    syntax: str


OPTION_ATTRIBUTES: Final = (
    OptionAttribute("copies", "copies", "integer (sent when not 1)"),
    OptionAttribute("options.sides", "sides", "keyword"),
    OptionAttribute("options.media", "media", "keyword"),
    OptionAttribute("options.colorMode", "print-color-mode", "keyword"),
    OptionAttribute("options.pageRanges", "page-ranges", "1setOf rangeOfInteger"),
    OptionAttribute("options.orientation", "orientation-requested", "enum"),
    OptionAttribute("options.quality", "print-quality", "enum"),
)

ORIENTATION_ENUMS: Final = {
    Orientation.portrait: 3,
    Orientation.landscape: 4,
    Orientation.reverse_landscape: 5,
    Orientation.reverse_portrait: 6,
}
QUALITY_ENUMS: Final = {PrintQuality.draft: 3, PrintQuality.normal: 4, PrintQuality.high: 5}


class JobState(IntEnum):
    pending = 3
    pending_held = 4
    processing = 5
    processing_stopped = 6
    canceled = 7
    aborted = 8
    completed = 9

    @property
    def keyword(self) -> str:
        return self.name.replace("_", "-")

    @property
    def terminal(self) -> bool:
        return self >= JobState.canceled


class PrinterState(IntEnum):
    idle = 3
    processing = 4
    stopped = 5


def _name(text: str) -> str:
    """`text` cut to name(MAX) octets, on a character boundary; a lone surrogate is "?"."""
    return text.encode(errors="replace")[:_NAME_MAX].decode(errors="ignore")


def operation_attributes(*, printer_uri: str, user_name: str = DEFAULT_USER) -> list[Attribute]:
    """What every request starts with; charset and language first, as RFC 8011 requires."""
    return [
        Attribute.of("attributes-charset", ValueTag.charset, "utf-8"),
        Attribute.of("attributes-natural-language", ValueTag.natural_language, "en"),
        Attribute.of("printer-uri", ValueTag.uri, printer_uri),
        Attribute.of("requesting-user-name", ValueTag.name_without_language, _name(user_name)),
    ]


def job_template(request: PrintRequest) -> list[Attribute]:
    """The request's copies and options as job-template attributes, one per option set."""
    attributes: list[Attribute] = []
    if request.copies != 1:
        attributes.append(Attribute.of("copies", ValueTag.integer, request.copies))
    options = request.options
    if options.sides is not None:
        attributes.append(Attribute.of("sides", ValueTag.keyword, options.sides.value))
    if options.media is not None:
        attributes.append(Attribute.of("media", ValueTag.keyword, options.media))
    if options.colorMode is not None:
        attributes.append(
            Attribute.of("print-color-mode", ValueTag.keyword, options.colorMode.value)
        )
    if options.pageRanges:
        ranges = [RangeOfInteger(item.start, item.end) for item in options.pageRanges]
        attributes.append(Attribute.of("page-ranges", ValueTag.range_of_integer, *ranges))
    if options.orientation is not None:
        enum = ORIENTATION_ENUMS[options.orientation]
        attributes.append(Attribute.of("orientation-requested", ValueTag.enum, enum))
    if options.quality is not None:
        attributes.append(
            Attribute.of("print-quality", ValueTag.enum, QUALITY_ENUMS[options.quality])
        )
    return attributes


def print_job_groups(request: PrintRequest, *, printer_uri: str) -> tuple[Group, ...]:
    """The operation and job groups of a Print-Job for `request`."""
    operation = [
        *operation_attributes(printer_uri=printer_uri, user_name=request.user_id or DEFAULT_USER),
        Attribute.of("job-name", ValueTag.name_without_language, _name(request.title)),
        Attribute.of("ipp-attribute-fidelity", ValueTag.boolean, True),  # noqa: FBT003
        Attribute.of("document-format", ValueTag.mime_media_type, request.content_type),
    ]
    groups = [Group(GroupTag.operation, tuple(operation))]
    template = job_template(request)
    if template:
        groups.append(Group(GroupTag.job, tuple(template)))
    return tuple(groups)


# Enums read back as their keywords, so a refusal says "print-quality=high", not "=5".
_ENUM_KEYWORDS: Final[dict[str, dict[int, str]]] = {
    "orientation-requested": {number: key.value for key, number in ORIENTATION_ENUMS.items()},
    "print-quality": {number: key.value for key, number in QUALITY_ENUMS.items()},
}


def describe(attribute: Attribute) -> str:
    """`name=value[,value…]` for people: `page-ranges=1-2,5-6`, `sides=unsupported`."""
    return f"{attribute.name}={','.join(_value(attribute.name, v) for v in attribute.values)}"


def _value(name: str, value: Value) -> str:  # noqa: PLR0911
    data: Data = value.data
    if data is None:
        try:
            return ValueTag(value.tag).name.replace("_", "-")
        except ValueError:
            return f"tag-0x{value.tag:02x}"
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, int):
        return _ENUM_KEYWORDS.get(name, {}).get(data, str(data))
    if isinstance(data, RangeOfInteger):
        return f"{data.lower}-{data.upper}"
    if isinstance(data, Resolution):
        return f"{data.cross_feed}x{data.feed}{'dpi' if data.units == 3 else 'dpcm'}"
    if isinstance(data, StringWithLanguage):
        return data.text
    if isinstance(data, Collection):
        return "{" + " ".join(describe(member) for member in data.members) + "}"
    if isinstance(data, bytes):
        return data.hex()
    return str(data)
