"""Device selectors: which devices an inventory query, a bulk task or a profile is about.

Self-contained (it imports nothing of the gateway) so that every part that targets a set
of devices — the inventory query, bulk tasks, profiles, firmware campaigns — speaks the
same language:

- :func:`parse_selector` checks a JSON object (an API body, a command-stream entry, a
  stored profile) and returns a frozen :class:`Selector`, or raises
  :class:`SelectorError` whose ``path`` names the culprit;
- :func:`parse_query` does the same for the flat query string of ``GET /devices``;
- :meth:`Selector.to_dict` is the canonical JSON form (what is stored and echoed back);
- :meth:`Selector.matches` evaluates it against one device (record, tags, cached
  parameters) in Python — the reference the Redis evaluation in
  :mod:`cwmpgw.fleet.inventory` is tested against;
- :meth:`Selector.window` turns the relative time terms into absolute bounds for a
  given ``now``.

The terms (all optional, all must hold):

========================  ===========================================================
``id_prefix``             device ids starting with this
``oui``, ``product_class``, ``software_version``, ``hardware_version``
                          a string, or a list of strings: equal to one of them
``tags``                  a list: the device has every one of these tags
``not_tags``              a list: the device has none of these tags
``source``                an IPv4/IPv6 network (CIDR): the address of its last Inform
``informed_after``        last Inform at or after this time (Unix seconds or RFC 3339)
``informed_before``       last Inform before this time
``informed_within``       last Inform at most this many seconds ago
``not_informed_within``   no Inform for at least this many seconds
``online``                true: informed within the online window (a multiple of the
                          periodic inform interval); false: not
``parameters``            an object ``{name: value}``: the cached value equals this
========================  ===========================================================
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

__all__ = [
    "EQUALITY_FIELDS",
    "QUERY_TERMS",
    "SELECTOR_SCHEMA",
    "Network",
    "Selector",
    "SelectorError",
    "Window",
    "parse_query",
    "parse_selector",
    "parse_time",
    "valid_tag",
]

#: Device-record fields a selector compares for equality (each indexed in Redis).
EQUALITY_FIELDS: Final = ("oui", "product_class", "software_version", "hardware_version")

_TAG_RE: Final = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")
_MAX_VALUES: Final = 64
_MAX_TEXT: Final = 256
_MAX_PARAMS: Final = 16
_MAX_PARAM_NAME: Final = 256
_MAX_SECONDS: Final = 100 * 365 * 86400
_RFC3339_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
_UNIX_RE: Final = re.compile(r"\d{1,12}(\.\d{1,9})?")
_KEYS: Final = (
    "id_prefix",
    *EQUALITY_FIELDS,
    "tags",
    "not_tags",
    "source",
    "informed_after",
    "informed_before",
    "informed_within",
    "not_informed_within",
    "online",
    "parameters",
)


class SelectorError(ValueError):
    """A selector the caller got wrong; ``path`` names the term (``selector.tags[1]``)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


def valid_tag(tag: Any) -> bool:
    """1 to 64 characters of ``A-Z a-z 0-9 _ . : @ + -``."""
    return isinstance(tag, str) and _TAG_RE.fullmatch(tag) is not None


@dataclass(frozen=True, slots=True)
class Network:
    """An IP network and its address range as integers (for the Redis score index)."""

    text: str
    version: int
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> Network:
        net = ipaddress.ip_network(text, strict=False)
        return cls(str(net), net.version, int(net.network_address), int(net.broadcast_address))

    def contains(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return ip.version == self.version and self.first <= int(ip) <= self.last


@dataclass(frozen=True, slots=True)
class Window:
    """Absolute bounds on the last Inform: ``low <= last_inform < high`` (None = open)."""

    low: float | None = None
    high: float | None = None

    @property
    def empty(self) -> bool:
        return self.low is not None and self.high is not None and self.low >= self.high

    def contains(self, ts: float) -> bool:
        return (self.low is None or ts >= self.low) and (self.high is None or ts < self.high)


@dataclass(frozen=True, slots=True)
class Selector:
    id_prefix: str = ""
    oui: tuple[str, ...] = ()
    product_class: tuple[str, ...] = ()
    software_version: tuple[str, ...] = ()
    hardware_version: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    not_tags: tuple[str, ...] = ()
    source: Network | None = None
    informed_after: float | None = None
    informed_before: float | None = None
    informed_within: float | None = None
    not_informed_within: float | None = None
    online: bool | None = None
    parameters: tuple[tuple[str, str], ...] = ()

    # -- forms -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form: only the terms given; lists for the equality terms."""
        out: dict[str, Any] = {}
        if self.id_prefix:
            out["id_prefix"] = self.id_prefix
        for name in EQUALITY_FIELDS:
            values = getattr(self, name)
            if values:
                out[name] = list(values)
        if self.tags:
            out["tags"] = list(self.tags)
        if self.not_tags:
            out["not_tags"] = list(self.not_tags)
        if self.source is not None:
            out["source"] = self.source.text
        for name in ("informed_after", "informed_before", "informed_within"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.not_informed_within is not None:
            out["not_informed_within"] = self.not_informed_within
        if self.online is not None:
            out["online"] = self.online
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        return out

    @property
    def empty(self) -> bool:
        """True if it selects every device."""
        return not self.to_dict()

    def equality(self) -> list[tuple[str, tuple[str, ...]]]:
        """The equality terms given: (field, accepted values)."""
        return [(name, getattr(self, name)) for name in EQUALITY_FIELDS if getattr(self, name)]

    def window(self, now: float, online_window: float) -> Window:
        """The time terms as absolute bounds on the last Inform, for ``now``."""
        lows: list[float] = []
        highs: list[float] = []
        if self.informed_after is not None:
            lows.append(self.informed_after)
        if self.informed_before is not None:
            highs.append(self.informed_before)
        if self.informed_within is not None:
            lows.append(now - self.informed_within)
        if self.not_informed_within is not None:
            highs.append(now - self.not_informed_within)
        if self.online is True:
            lows.append(now - online_window)
        elif self.online is False:
            highs.append(now - online_window)
        return Window(max(lows) if lows else None, min(highs) if highs else None)

    # -- evaluation ------------------------------------------------------------------

    def matches(
        self,
        record: Mapping[str, Any],
        *,
        tags: Iterable[str] = (),
        parameters: Mapping[str, Any] | None = None,
        now: float,
        online_window: float,
    ) -> bool:
        """Whether one device is selected. ``record`` is the device record (the API's
        fields), ``parameters`` its cached parameters (``name -> {"value", "type"}`` or
        ``name -> value``), ``tags`` its tags."""
        device_id = str(record.get("id", ""))
        if not device_id.startswith(self.id_prefix):
            return False
        for name, values in self.equality():
            if str(record.get(name, "")) not in values:
                return False
        have = set(tags)
        if any(t not in have for t in self.tags) or any(t in have for t in self.not_tags):
            return False
        if self.source is not None and not self.source.contains(str(record.get("last_source", ""))):
            return False
        window = self.window(now, online_window)
        if (window.low is not None or window.high is not None) and not window.contains(
            float(record.get("last_inform") or 0.0)
        ):
            return False
        cached = parameters or {}
        for name, value in self.parameters:
            got = cached.get(name)
            if isinstance(got, Mapping):
                got = got.get("value")
            if got is None or str(got) != value:
                return False
        return True


# -- parsing ---------------------------------------------------------------------------


def parse_time(value: Any, where: str) -> float:
    """Unix seconds (number or digits) or RFC 3339 with an offset, as Unix seconds."""
    if isinstance(value, bool):
        raise SelectorError("a time: Unix seconds or RFC 3339", where)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise SelectorError("a time: Unix seconds or RFC 3339", where)
        return float(value)
    if isinstance(value, str):
        if _UNIX_RE.fullmatch(value):
            return float(value)
        m = _RFC3339_RE.fullmatch(value)
        if m:
            date, clock, fraction, offset = m.groups()
            fraction = (fraction or ".0")[:7]
            offset = "+00:00" if offset in ("Z", "z") else offset
            try:
                return datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}").timestamp()
            except ValueError:
                pass
    raise SelectorError("an RFC 3339 time (2025-05-25T22:24:29Z) or Unix seconds", where)


def _text(value: Any, where: str, *, max_length: int = _MAX_TEXT, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SelectorError("expected a string", where)
    if not value and not empty:
        raise SelectorError("must not be empty", where)
    if len(value) > max_length:
        raise SelectorError(f"at most {max_length} characters", where)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SelectorError("control characters are not allowed", where)
    return value


def _values(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise SelectorError("give at least one value", where)
    if len(items) > _MAX_VALUES:
        raise SelectorError(f"at most {_MAX_VALUES} values", where)
    listed = isinstance(value, list)
    return tuple(
        sorted({_text(v, f"{where}[{i}]" if listed else where) for i, v in enumerate(items)})
    )


def _tags(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if len(items) > _MAX_VALUES:
        raise SelectorError(f"at most {_MAX_VALUES} tags", where)
    for i, tag in enumerate(items):
        if not valid_tag(tag):
            raise SelectorError(
                "a tag is 1 to 64 characters of A-Z a-z 0-9 _ . : @ + -", f"{where}[{i}]"
            )
    return tuple(sorted(set(items)))


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, str) and _UNIX_RE.fullmatch(value):
        value = float(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_SECONDS
    ):
        raise SelectorError("a number of seconds, 0 or more", where)
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise SelectorError("true or false", where)


def _network(value: Any, where: str) -> Network:
    text = _text(value, where, max_length=64)
    try:
        return Network.parse(text)
    except ValueError:
        raise SelectorError(
            "an IPv4 or IPv6 address or network (203.0.113.0/24, 2001:db8::/32)", where
        ) from None


def _parameters(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise SelectorError("expected an object {name: value}", where)
    if len(value) > _MAX_PARAMS:
        raise SelectorError(f"at most {_MAX_PARAMS} parameters", where)
    out = []
    for name, v in value.items():
        _text(name, f"{where}.{name}", max_length=_MAX_PARAM_NAME)
        if name.endswith(".") or not name.startswith(("Device.", "InternetGatewayDevice.")):
            raise SelectorError(
                "a parameter name under Device. or InternetGatewayDevice.", f"{where}.{name}"
            )
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        out.append((name, _text(v, f"{where}.{name}", max_length=1024, empty=True)))
    return tuple(sorted(out))


def parse_selector(obj: Any, where: str = "selector") -> Selector:
    """Check a selector given as a JSON object; raises SelectorError naming the term."""
    if not isinstance(obj, Mapping):
        raise SelectorError("expected an object", where)
    for key in obj:
        if key not in _KEYS:
            raise SelectorError(
                f"unknown term (allowed: {', '.join(_KEYS)})", f"{where}.{str(key)[:64]}"
            )
    kw: dict[str, Any] = {}
    for key, value in obj.items():
        path = f"{where}.{key}"
        if value is None:
            continue
        if key == "id_prefix":
            kw[key] = _text(value, path, max_length=1024, empty=True)
        elif key in EQUALITY_FIELDS:
            kw[key] = _values(value, path)
        elif key in ("tags", "not_tags"):
            kw[key] = _tags(value, path)
        elif key == "source":
            kw[key] = _network(value, path)
        elif key in ("informed_after", "informed_before"):
            kw[key] = parse_time(value, path)
        elif key in ("informed_within", "not_informed_within"):
            kw[key] = _seconds(value, path)
        elif key == "online":
            kw[key] = _bool(value, path)
        elif key == "parameters":
            kw[key] = _parameters(value, path)
    return Selector(**kw)


#: Query-string names of ``GET /devices`` and what each means (lists are comma-separated).
QUERY_TERMS: Final[Mapping[str, str]] = {
    "id_prefix": "Device ids starting with this.",
    "oui": "OUI, or several separated by commas (any of them).",
    "product_class": "ProductClass, or several separated by commas.",
    "software_version": "SoftwareVersion, or several separated by commas.",
    "hardware_version": "HardwareVersion, or several separated by commas.",
    "tags": "Tags separated by commas: the device has all of them.",
    "not_tags": "Tags separated by commas: the device has none of them.",
    "source": "The last Inform came from this IPv4/IPv6 network (CIDR) or address.",
    "informed_after": "Last Inform at or after this time: RFC 3339 or Unix seconds.",
    "informed_before": "Last Inform before this time: RFC 3339 or Unix seconds.",
    "informed_within": "Last Inform at most this many seconds ago.",
    "not_informed_within": "No Inform for at least this many seconds.",
    "online": "`true`: informed within the online window; `false`: not.",
    "parameter": "`Name=Value`: the cached value of the parameter equals Value.",
}


def parse_query(query: Mapping[str, str]) -> Selector:
    """The selector of a flat query string (names of :data:`QUERY_TERMS`; others ignored)."""
    obj: dict[str, Any] = {}
    for key, raw in query.items():
        if key not in QUERY_TERMS or raw == "":
            continue
        if key in EQUALITY_FIELDS or key in ("tags", "not_tags"):
            parts = raw.split(",")
            obj[key] = parts if len(parts) > 1 or key.endswith("tags") else parts[0]
        elif key == "parameter":
            name, eq, value = raw.partition("=")
            if not eq:
                raise SelectorError("Name=Value", "parameter")
            obj["parameters"] = {name: value}
        else:
            obj[key] = raw
    return parse_selector(obj, "")


_STRINGS: Final = {
    "oneOf": [
        {"type": "string", "maxLength": _MAX_TEXT},
        {
            "type": "array",
            "minItems": 1,
            "maxItems": _MAX_VALUES,
            "items": {"type": "string", "maxLength": _MAX_TEXT},
        },
    ]
}
_TAG_LIST: Final = {
    "type": "array",
    "maxItems": _MAX_VALUES,
    "items": {"type": "string", "pattern": "^[A-Za-z0-9_.:@+-]{1,64}$"},
}
_TIME: Final = {
    "type": ["number", "string"],
    "description": "Unix seconds or RFC 3339 with an offset.",
}

#: The JSON Schema of a selector (for the OpenAPI document).
SELECTOR_SCHEMA: Final[Mapping[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Which devices: every term given must hold; `{}` selects every device.",
    "properties": {
        "id_prefix": {"type": "string", "maxLength": 1024},
        **{
            name: {**_STRINGS, "description": f"`{name}` equals this (or one of these)."}
            for name in EQUALITY_FIELDS
        },
        "tags": {**_TAG_LIST, "description": "The device has every one of these tags."},
        "not_tags": {**_TAG_LIST, "description": "The device has none of these tags."},
        "source": {
            "type": "string",
            "description": "Network (CIDR) of the last Inform's address.",
            "examples": ["203.0.113.0/24", "2001:db8::/32"],
        },
        "informed_after": _TIME,
        "informed_before": _TIME,
        "informed_within": {"type": "number", "minimum": 0, "description": "Seconds."},
        "not_informed_within": {"type": "number", "minimum": 0, "description": "Seconds."},
        "online": {
            "type": "boolean",
            "description": "Informed within the online window (fleet.online_window).",
        },
        "parameters": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "description": (
                f"Cached parameter value equals this (name → value; at most {_MAX_PARAMS})."
            ),
        },
    },
    "examples": [{"oui": "9CA2F4", "tags": ["pilot"], "online": True}],
}
