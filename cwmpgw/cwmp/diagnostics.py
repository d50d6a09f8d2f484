"""The diagnostics of TR-098 / TR-181 and TR-143, as data: where they are, what they take,
and how their results read. Sans-IO; the task plan and the simulator share it.

A diagnostic is an object with a writable ``DiagnosticsState``: the ACS sets the inputs
and ``DiagnosticsState = Requested`` in one SetParameterValues; after the session the CPE
runs the test, sets ``DiagnosticsState`` to ``Complete`` or an ``Error_…`` value, and
informs with ``8 DIAGNOSTICS COMPLETE``; the ACS then reads the object.

The object's path depends on the data model: ``Device.`` (TR-181) or
``InternetGatewayDevice.`` (TR-098, whose NSLookup and ServerSelection objects came with
later amendments). Inputs have the same names in both; results differ (TR-098's
TraceRoute hops are ``HopHost``, ``HopRTTimes``…), so results are read as the CPE names
them, typed by the ``xsi:type`` it sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from cwmpgw.cwmp import values

__all__ = [
    "DIAGNOSTICS_COMPLETE",
    "KINDS",
    "STATE",
    "Input",
    "Kind",
    "check_inputs",
    "kind_of_object",
    "object_path",
    "parse_time",
    "typed_results",
]

#: The Inform event a CPE sends when a diagnostic the ACS requested has ended.
DIAGNOSTICS_COMPLETE: Final = "8 DIAGNOSTICS COMPLETE"
#: The parameter that starts a diagnostic and reports how it ended.
STATE: Final = "DiagnosticsState"


@dataclass(frozen=True, slots=True)
class Input:
    """One writable test parameter: its type and the range TR-181 gives it."""

    type: str = "xsd:string"
    low: int | None = None
    high: int | None = None
    enum: tuple[str, ...] = ()
    max_length: int | None = 256
    listed: int = 0  # a comma-separated list of at most this many items (0: not a list)


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    tr181: str  # the object under Device.
    tr098: str  # the object under InternetGatewayDevice.
    inputs: Mapping[str, Input]
    required: tuple[str, ...]
    lists: frozenset[str] = field(default_factory=frozenset)  # comma-separated results
    url: str = ""  # DownloadURL / UploadURL: the gateway's throughput endpoint can fill it


_U = "xsd:unsignedInt"
_INTERFACE = Input()
_PROTOCOL_VERSION = Input(enum=("Any", "IPv4", "IPv6"), max_length=None)
_DSCP = Input(_U, 0, 63)
_PRIORITY = Input(_U, 0, 7)
_TIMEOUT_MS = Input(_U, 1)
_REPETITIONS = Input(_U, 1)
_TRANSFER: Final = {
    "Interface": _INTERFACE,
    "DSCP": _DSCP,
    "EthernetPriority": _PRIORITY,
    "TimeBasedTestDuration": Input(_U, 0, 999),
    "TimeBasedTestMeasurementInterval": Input(_U, 0, 999),
    "TimeBasedTestMeasurementOffset": Input(_U, 0, 255),
    "ProtocolVersion": _PROTOCOL_VERSION,
    "NumberOfConnections": Input(_U, 1),
    "EnablePerConnectionResults": Input("xsd:boolean", max_length=None),
}


def _kind(*args: Any, **kw: Any) -> tuple[str, Kind]:
    kind = Kind(*args, **kw)
    return kind.name, kind


KINDS: Final[Mapping[str, Kind]] = MappingProxyType(
    dict(
        [
            _kind(
                "IPPing",
                "Device.IP.Diagnostics.IPPing.",
                "InternetGatewayDevice.IPPingDiagnostics.",
                {
                    "Interface": _INTERFACE,
                    "ProtocolVersion": _PROTOCOL_VERSION,
                    "Host": Input(),
                    "NumberOfRepetitions": _REPETITIONS,
                    "Timeout": _TIMEOUT_MS,
                    "DataBlockSize": Input(_U, 1, 65535),
                    "DSCP": _DSCP,
                },
                ("Host",),
            ),
            _kind(
                "TraceRoute",
                "Device.IP.Diagnostics.TraceRoute.",
                "InternetGatewayDevice.TraceRouteDiagnostics.",
                {
                    "Interface": _INTERFACE,
                    "ProtocolVersion": _PROTOCOL_VERSION,
                    "Host": Input(),
                    "NumberOfTries": Input(_U, 1, 3),
                    "Timeout": _TIMEOUT_MS,
                    "DataBlockSize": Input(_U, 1, 65535),
                    "DSCP": _DSCP,
                    "MaxHopCount": Input(_U, 1, 64),
                },
                ("Host",),
                frozenset({"RTTimes", "HopRTTimes"}),
            ),
            _kind(
                "DownloadDiagnostics",
                "Device.IP.Diagnostics.DownloadDiagnostics.",
                "InternetGatewayDevice.DownloadDiagnostics.",
                {**_TRANSFER, "DownloadURL": Input()},
                (),
                url="DownloadURL",
            ),
            _kind(
                "UploadDiagnostics",
                "Device.IP.Diagnostics.UploadDiagnostics.",
                "InternetGatewayDevice.UploadDiagnostics.",
                {**_TRANSFER, "UploadURL": Input(), "TestFileLength": Input(_U, 0)},
                ("TestFileLength",),
                url="UploadURL",
            ),
            _kind(
                "NSLookup",
                "Device.DNS.Diagnostics.NSLookupDiagnostics.",
                "InternetGatewayDevice.NSLookupDiagnostics.",
                {
                    "Interface": _INTERFACE,
                    "HostName": Input(),
                    "DNSServer": Input(),
                    "Timeout": _TIMEOUT_MS,
                    "NumberOfRepetitions": _REPETITIONS,
                },
                ("HostName",),
                frozenset({"IPAddresses"}),
            ),
            _kind(
                "ServerSelection",
                "Device.IP.Diagnostics.ServerSelectionDiagnostics.",
                "InternetGatewayDevice.ServerSelectionDiagnostics.",
                {
                    "Interface": _INTERFACE,
                    "ProtocolVersion": _PROTOCOL_VERSION,
                    "Protocol": Input(enum=("ICMP", "UDP Echo"), max_length=None),
                    "HostList": Input(listed=10),
                    "NumberOfRepetitions": _REPETITIONS,
                    "Timeout": _TIMEOUT_MS,
                },
                ("HostList",),
            ),
        ]
    )
)


def object_path(kind: str, root: str) -> str:
    """The diagnostic's object in a data model whose root is ``Device`` or
    ``InternetGatewayDevice``."""
    k = KINDS[kind]
    return k.tr098 if root == "InternetGatewayDevice" else k.tr181


def kind_of_object(path: str) -> Kind | None:
    """The diagnostic whose object ``path`` is (either data model), or None."""
    for k in KINDS.values():
        if path in (k.tr181, k.tr098):
            return k
    return None


def check_inputs(kind: str, given: Any, path: str = "parameters") -> dict[str, str]:
    """The wire text of each test parameter, or ValueError("<path>: <why>").

    JSON numbers and booleans are accepted for the numeric and boolean inputs, a JSON
    array for a list input (``HostList``).
    """
    k = KINDS[kind]
    if not isinstance(given, Mapping):
        raise ValueError(f"{path}: expected an object")
    out: dict[str, str] = {}
    for name, value in given.items():
        where = f"{path}.{name}"
        spec = k.inputs.get(name)
        if spec is None:
            raise ValueError(f"{where}: not a test parameter of {kind}")
        if spec.listed:
            if not isinstance(value, list) or not 1 <= len(value) <= spec.listed:
                raise ValueError(f"{where}: expected a list of 1 to {spec.listed} strings")
            items = [_text(spec, item, f"{where}[{i}]") for i, item in enumerate(value)]
            if any("," in item or not item.strip() for item in items):
                raise ValueError(f"{where}: an item is empty or holds a comma")
            text = ",".join(items)
        else:
            text = _text(spec, value, where)
        if spec.enum and text not in spec.enum:
            raise ValueError(f"{where}: expected one of {', '.join(spec.enum)}")
        if spec.type == _U:
            number = int(text)
            if (spec.low is not None and number < spec.low) or (
                spec.high is not None and number > spec.high
            ):
                raise ValueError(f"{where}: out of range {spec.low}..{spec.high}")
        out[name] = text
    for name in k.required:
        if not out.get(name, "").strip():
            raise ValueError(f"{path}.{name}: required by {kind}")
    return out


def _text(spec: Input, value: Any, where: str) -> str:
    try:
        return values.check_value(spec.type, value, max_length=spec.max_length)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


# List results whose items are numbers (TR-181: "list of unsignedInt"), sent as strings.
_NUMBER_LISTS: Final = frozenset({"RTTimes", "HopRTTimes"})


def _typed(value: str, type_: str, listed: bool, numbers: bool = False) -> Any:
    try:
        canonical, _ = values.normalise_type(type_)
    except ValueError:
        canonical = "xsd:string"
    if listed:
        items = [item.strip() for item in value.split(",") if item.strip()]
        item_type = "xsd:unsignedInt" if numbers else canonical
        return [_typed(item, item_type, False) for item in items]
    text = value.strip()
    if canonical in ("xsd:int", "xsd:unsignedInt", "xsd:long", "xsd:unsignedLong"):
        try:
            return int(text)
        except ValueError:
            return value  # what the CPE said, as it said it
    if canonical == "xsd:boolean":
        return text.lower() in ("1", "true")
    return value


def typed_results(kind: str, obj: str, parameters: Iterable[Mapping[str, str]]) -> dict[str, Any]:
    """The results under ``obj`` (GetParameterValues' ``parameters``), typed and nested.

    Integers and booleans become JSON numbers and booleans, list results (``RTTimes``,
    ``IPAddresses``) arrays; a multi-instance table (``RouteHops.{i}.``, ``Result.{i}.``)
    becomes an array in instance order. Inputs and ``DiagnosticsState`` are left out.
    """
    k = KINDS[kind]
    tree: dict[str, Any] = {}
    for p in parameters:
        name = p["name"]
        if not name.startswith(obj):
            continue
        parts = name[len(obj) :].split(".")
        if len(parts) == 1 and (parts[0] in k.inputs or parts[0] == STATE):
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            leaf = parts[-1]
            node[leaf] = _typed(
                p["value"], p.get("type", "xsd:string"), leaf in k.lists, leaf in _NUMBER_LISTS
            )
    return _tables(tree)


def _tables(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            if value and all(i.isdigit() for i in value):
                out[key] = [
                    _tables(value[i]) if isinstance(value[i], dict) else value[i]
                    for i in sorted(value, key=int)
                ]
            else:
                out[key] = _tables(value)
        else:
            out[key] = value
    return out


def parse_time(text: str) -> float | None:
    """Unix seconds of an xsd:dateTime with microseconds (``BOMTime``), or None."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if moment.tzinfo is None or moment.year < 1971:
        return None
    return moment.timestamp()
