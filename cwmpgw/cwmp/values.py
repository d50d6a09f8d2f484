"""CWMP parameter data types (TR-069 A.2.1, TR-106): JSON values in, wire text out.

A SetParameterValues value reaches a CPE as text with an ``xsi:type``. A CPE answers a
wrongly typed or out-of-range value with fault 9006/9007 for the whole request, and some
CPEs apply garbage silently, so values are checked here, before anything is queued.

Type spellings are normalised: ``unsignedInt``, ``xsd:unsignedInt`` and the TR-106 data
model forms ``string(64)``, ``base64(256)``, ``hexBinary(8)`` (a maximum length) are all
accepted. The canonical spelling is the one the codec reports for a CPE's values
(``xsd:<type>``, base64 as ``xsd:base64``), so a type read back from the parameter cache can
be passed straight back.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta
from typing import Any, Final

__all__ = [
    "TYPES",
    "UNKNOWN_TIME",
    "check_value",
    "normalise_type",
    "xsi_type",
]

#: The canonical type names, as :func:`normalise_type` returns them.
TYPES: Final = (
    "xsd:string",
    "xsd:int",
    "xsd:unsignedInt",
    "xsd:long",
    "xsd:unsignedLong",
    "xsd:boolean",
    "xsd:dateTime",
    "xsd:base64",
    "xsd:hexBinary",
)

#: The "unknown time" of TR-069 (A.2.1): a dateTime that means "not known".
UNKNOWN_TIME: Final = "0001-01-01T00:00:00Z"

_INTEGER_RANGES: Final = {
    "xsd:int": (-(2**31), 2**31 - 1),
    "xsd:unsignedInt": (0, 2**32 - 1),
    "xsd:long": (-(2**63), 2**63 - 1),
    "xsd:unsignedLong": (0, 2**64 - 1),
}

# Local names (case-insensitive) to canonical types. base64Binary is the XSD name of
# TR-069's base64, which CPEs also send as xsd:base64 and soap-enc:base64.
_ALIASES: Final = {t.partition(":")[2].lower(): t for t in TYPES} | {
    "base64binary": "xsd:base64",
}
# Any prefix: the name is what counts, whatever prefix a CPE bound to the XSD namespace.
_TYPE_RE: Final = re.compile(
    r"\s*(?:(?P<prefix>[A-Za-z][\w.-]*):)?(?P<local>[A-Za-z][A-Za-z0-9]*)\s*"
    r"(?:\(\s*(?P<length>[0-9]+)\s*\))?\s*",
    re.ASCII,
)
_LENGTH_TYPES: Final = frozenset({"xsd:string", "xsd:base64", "xsd:hexBinary"})

_INTEGER_RE: Final = re.compile(r"[+-]?[0-9]+", re.ASCII)
_HEX_RE: Final = re.compile(r"(?:[0-9A-Fa-f]{2})*", re.ASCII)
_BASE64_WS: Final = re.compile(r"[ \t\r\n]+")
_DATETIME_RE: Final = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.[0-9]+)?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
# Characters XML 1.0 cannot carry at all (C0 controls other than tab, LF and CR; lone
# surrogates; U+FFFE and U+FFFF): lxml would refuse them, and a CPE could not read them.
_BAD_CHARS: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_TRUE: Final = frozenset({"true", "1"})
_FALSE: Final = frozenset({"false", "0"})


def normalise_type(type_: str) -> tuple[str, int | None]:
    """The canonical type (one of :data:`TYPES`) and the maximum length it names, if any.

    Raises ValueError for a type that is not a CWMP type.
    """
    if not isinstance(type_, str):
        raise ValueError("type must be a string")
    match = _TYPE_RE.fullmatch(type_)
    canonical = _ALIASES.get(match.group("local").lower()) if match else None
    if match is None or canonical is None:
        raise ValueError(f"unknown type {type_!r} (expected one of {', '.join(TYPES)})")
    length = match.group("length")
    if length is None:
        return canonical, None
    if canonical not in _LENGTH_TYPES:
        raise ValueError(f"type {type_!r}: only string, base64 and hexBinary take a length")
    return canonical, int(length)


def xsi_type(type_: str) -> str:
    """The ``xsi:type`` to write on a Value of this type.

    base64 is written ``xsd:base64Binary``, its XSD name (TR-106 maps base64 onto it):
    the XSD namespace has no type named base64, so ``xsd:base64``, common on the wire, is
    not schema-valid. The codec reads either back as ``xsd:base64``.
    """
    canonical, _ = normalise_type(type_)
    return "xsd:base64Binary" if canonical == "xsd:base64" else canonical


def check_value(
    type_: str,
    value: Any,
    *,
    max_length: int | None = None,
    boolean_digits: bool = False,
) -> str:
    """The wire text of ``value`` as ``type_``, or ValueError saying what is wrong.

    ``max_length`` (and a length in the type, the smaller wins) limits a string's
    characters, and the decoded bytes of base64 and hexBinary (as TR-106 sizes them).
    ``boolean_digits`` writes booleans as ``1``/``0`` for CPEs that reject ``true``.
    """
    canonical, type_length = normalise_type(type_)
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 0:
            raise ValueError("max_length must be a non-negative integer")
        type_length = max_length if type_length is None else min(type_length, max_length)
    if canonical in _INTEGER_RANGES:
        return _integer(canonical, value)
    if canonical == "xsd:boolean":
        return _boolean(value, boolean_digits)
    if canonical == "xsd:dateTime":
        return _datetime(value)
    if canonical == "xsd:base64":
        return _base64(value, type_length)
    if canonical == "xsd:hexBinary":
        return _hex(value, type_length)
    return _string(value, type_length)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(canonical: str, value: Any) -> str:
    name = canonical.partition(":")[2]
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGER_RE.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise ValueError(f"{name}: expected an integer, got {_describe(value)}")
    low, high = _INTEGER_RANGES[canonical]
    if not low <= number <= high:
        raise ValueError(f"{name}: {number} is out of range [{low}, {high}]")
    return str(number)


def _boolean(value: Any, digits: bool) -> str:
    flag: bool | None = None
    if isinstance(value, bool):
        flag = value
    elif isinstance(value, int) and value in (0, 1):
        flag = bool(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        flag = True if text in _TRUE else False if text in _FALSE else None
    if flag is None:
        raise ValueError(f"boolean: expected true, false, 1 or 0, got {_describe(value)}")
    if digits:
        return "1" if flag else "0"
    return "true" if flag else "false"


def _datetime(value: Any) -> str:
    if isinstance(value, datetime):
        offset = value.utcoffset()
        if offset is None:
            raise ValueError("dateTime: a datetime without a time zone is ambiguous")
        return _format_datetime(value.replace(microsecond=0), offset)
    if not isinstance(value, str):
        raise ValueError(f"dateTime: expected an ISO 8601 string, got {_describe(value)}")
    text = value.strip()
    match = _DATETIME_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"dateTime: {_describe(value)} is not YYYY-MM-DDThh:mm:ss[.fff] with Z or ±hh:mm"
        )
    tz = match.group("tz")
    offset = timedelta(0)
    if tz != "Z":
        hours, minutes = int(tz[1:3]), int(tz[4:6])
        if hours > 14 or minutes > 59 or (hours == 14 and minutes):
            raise ValueError(f"dateTime: time zone offset {tz} is out of range")
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if tz[0] == "-" else 1)
    try:
        # Validates the calendar (February 30th, hour 24...); the offset is kept as sent
        # rather than converted, so the unknown time 0001-01-01 never underflows.
        moment = datetime(
            int(match.group("year")),
            int(match.group("month")),
            int(match.group("day")),
            int(match.group("hour")),
            int(match.group("minute")),
            int(match.group("second")),
        )
    except ValueError as e:
        raise ValueError(f"dateTime: {_describe(value)}: {e}") from None
    return _format_datetime(moment, offset)


def _format_datetime(moment: datetime, offset: timedelta) -> str:
    text = moment.replace(tzinfo=None).isoformat(timespec="seconds")
    if not offset:
        return text + "Z"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    if abs(int(offset.total_seconds())) % 60:
        raise ValueError("dateTime: time zone offsets must be whole minutes")
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _check_length(kind: str, size: int, limit: int | None, unit: str) -> None:
    if limit is not None and size > limit:
        raise ValueError(f"{kind}: {size} {unit}, more than the maximum {limit}")


def _base64(value: Any, limit: int | None) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        _check_length("base64", len(raw), limit, "bytes")
        return base64.b64encode(raw).decode("ascii")
    if not isinstance(value, str):
        raise ValueError(f"base64: expected a base64 string or bytes, got {_describe(value)}")
    text = _BASE64_WS.sub("", value)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError(f"base64: {_describe(value)} is not valid base64") from None
    _check_length("base64", len(raw), limit, "bytes")
    return text


def _hex(value: Any, limit: int | None) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        _check_length("hexBinary", len(raw), limit, "bytes")
        return raw.hex().upper()
    if not isinstance(value, str) or not _HEX_RE.fullmatch(value.strip()):
        raise ValueError(
            f"hexBinary: expected an even number of hex digits, got {_describe(value)}"
        )
    text = value.strip()
    _check_length("hexBinary", len(text) // 2, limit, "bytes")
    return text


def _string(value: Any, limit: int | None) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"string: expected a string, got {_describe(value)}")
    text = value if isinstance(value, str) else str(value)
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        raise ValueError(
            f"string: character U+{ord(bad.group()):04X} at {bad.start()} cannot be sent"
        )
    _check_length("string", len(text), limit, "characters")
    return text
