"""The ACS→CPE RPCs of CWMP 1.0-1.4: JSON arguments in, envelopes out, JSON results back.

Sans-IO like the rest of :mod:`cwmpgw.cwmp`: :func:`validate` checks a back-office
request before it is queued (so a bad one is refused at once, not after a session),
:func:`build` writes the envelope in the CPE's namespace, :func:`result` turns the CPE's
answer into typed JSON and :func:`fault` does the same for its SOAP fault.

JSON argument keys are the schema's element names in snake_case (``ParameterKey`` →
``parameter_key``); the lists are ``parameters`` (ParameterList), ``parameter_names``,
``time_windows``, ``operations`` and ``vouchers``. :data:`METHODS` describes them all.

Output is schema-valid for the namespace it is written in: an RPC, a Notification value or
a FileType that the CPE's schema version does not have is refused with
:class:`ArgumentError` instead of being sent. Booleans in RPC arguments (NextLevel,
NotificationChange, AccessListChange) are written ``1``/``0``: valid everywhere, and
what CPEs that read them with ``atoi`` understand.

What :func:`result` returns, by method::

    GetRPCMethods            {"methods": [str]}
    GetParameterNames        {"parameters": [{"name", "writable": bool}]}
    GetParameterValues       {"parameters": [{"name", "value": str, "type"}]}
    GetParameterAttributes   {"parameters": [{"name", "notification": int,
                                              "access_list": [str]}]}
    SetParameterValues       {"status": 0 | 1}          (DeleteObject too)
    AddObject                {"instance_number": int, "status": 0 | 1}
    Download, Upload         {"status": 0 | 1, "start_time", "complete_time"}
    GetQueuedTransfers       {"transfers": [{"command_key", "state": 1 | 2 | 3}]}
    GetAllQueuedTransfers    {"transfers": [{"command_key", "state", "is_download": bool,
                                             "file_type", "file_size": int,
                                             "target_file_name"}]}
    GetOptions               {"options": [{"option_name", "voucher_sn": int, "state": int,
                                           "mode": int, "start_date",
                                           "expiration_date": str | None,
                                           "is_transferable": int}]}
    every other method       {}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from lxml import etree  # type: ignore[import-untyped,unused-ignore]

from cwmpgw.cwmp import soap, values
from cwmpgw.cwmp.faults import cpe_fault_string
from cwmpgw.cwmp.messages import CpeFault, RpcResponse

__all__ = [
    "DOWNLOAD_FILE_TYPES",
    "METHODS",
    "TIME_WINDOW_MODES",
    "UPLOAD_FILE_TYPES",
    "Argument",
    "ArgumentError",
    "MethodSpec",
    "ResponseError",
    "argument_schema",
    "arguments_schema",
    "build",
    "fault",
    "result",
    "validate",
]

# ---------------------------------------------------------------------------------------
# Errors


class ArgumentError(ValueError):
    """Arguments that cannot be sent; ``path`` names the culprit (``parameters[2].value``).

    ``path`` is empty when the problem is the method itself (unknown, or not in the
    CPE's CWMP version).
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class ResponseError(ValueError):
    """A CPE response that does not say what its schema promises (e.g. no InstanceNumber)."""


# ---------------------------------------------------------------------------------------
# Method catalogue

_VERSION_OF_NAMESPACE: Final = MappingProxyType(
    {soap.CWMP_1_0: "1.0", soap.CWMP_1_1: "1.1", soap.CWMP_1_2: "1.2", soap.CWMP_1_3: "1.2"}
)

#: Standard Download/ScheduleDownload FileType values (TR-069 A.3.2.8).
DOWNLOAD_FILE_TYPES: Final = (
    "1 Firmware Upgrade Image",
    "2 Web Content",
    "3 Vendor Configuration File",
    "4 Tone File",
    "5 Ringer File",
)
#: Standard Upload FileType values (A.4.1.5); 3 and 4 take an instance number suffix.
UPLOAD_FILE_TYPES: Final = (
    "1 Vendor Configuration File",
    "2 Vendor Log File",
    "3 Vendor Configuration File <i>",
    "4 Vendor Log File <i>",
)
#: Standard ScheduleDownload WindowMode values (A.4.1.8).
TIME_WINDOW_MODES: Final = (
    "1 At Any Time",
    "2 Immediately",
    "3 When Idle",
    "4 Confirmation Needed",
)
# FileTypes the cwmp-1-0 and cwmp-1-1 schemas know (besides vendor ones).
_OLD_DOWNLOAD_FILE_TYPES: Final = frozenset(DOWNLOAD_FILE_TYPES[:3])
_OLD_UPLOAD_FILE_TYPES: Final = frozenset(UPLOAD_FILE_TYPES[:2])
_UPLOAD_INSTANCE_RE: Final = re.compile(
    r"(3 Vendor Configuration File|4 Vendor Log File) [1-9][0-9]*"
)
_VENDOR_RE: Final = re.compile(r"X [0-9A-F]{6} [^\r\n]+")
_UUID_RE: Final = re.compile(
    r"[A-Fa-f0-9]{8}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{4}-[A-Fa-f0-9]{12}"
)


_NAME_LENGTH: Final = 256  # parameter and object names
_FILE_TYPE_LENGTH: Final = 64  # FileType, WindowMode


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


@dataclass(frozen=True, slots=True)
class Argument:
    """One argument of an RPC, in schema order.

    ``kind`` is ``string``, ``url`` (a non-empty string), ``object_name``,
    ``unsignedInt``, ``boolean``, ``download_file_type``, ``upload_file_type`` or a list
    kind: ``parameter_names``, ``parameter_values``, ``parameter_attributes``,
    ``time_windows``, ``operations``, ``vouchers``. Optional arguments get ``default``
    when left out (or null).
    """

    key: str  # the JSON key
    element: str  # the schema's element name
    kind: str
    required: bool = False
    default: Any = None
    max_length: int | None = None
    minimum: int | None = None


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """An ACS→CPE RPC: its arguments and the CWMP version whose schema introduced it."""

    name: str
    arguments: tuple[Argument, ...]
    since: str  # "1.0", "1.1" or "1.2" (1.3 and 1.4 kept the cwmp-1-2 namespace)

    def available_in(self, namespace: str) -> bool:
        """Whether the schema of this cwmp namespace has the method."""
        version = _VERSION_OF_NAMESPACE.get(namespace)
        return version is not None and _version(version) >= _version(self.since)


def _key(max_length: int, element: str, key: str) -> Argument:
    return Argument(key, element, "string", default="", max_length=max_length)


_COMMAND_KEY: Final = _key(32, "CommandKey", "command_key")
_PARAMETER_KEY: Final = _key(32, "ParameterKey", "parameter_key")
_URL: Final = Argument("url", "URL", "url", required=True, max_length=256)
_USERNAME: Final = _key(256, "Username", "username")
_PASSWORD: Final = _key(256, "Password", "password")
_FILE_SIZE: Final = Argument("file_size", "FileSize", "unsignedInt", default=0)
_TARGET: Final = _key(256, "TargetFileName", "target_file_name")
_DELAY: Final = Argument("delay_seconds", "DelaySeconds", "unsignedInt", default=0)
_DOWNLOAD_TYPE: Final = Argument("file_type", "FileType", "download_file_type", required=True)


def _spec(name: str, since: str, *arguments: Argument) -> tuple[str, MethodSpec]:
    return name, MethodSpec(name, arguments, since)


#: Every ACS→CPE RPC, by method name.
METHODS: Final[Mapping[str, MethodSpec]] = MappingProxyType(
    dict(
        [
            _spec("GetRPCMethods", "1.0"),
            _spec(
                "SetParameterValues",
                "1.0",
                Argument("parameters", "ParameterList", "parameter_values", required=True),
                _PARAMETER_KEY,
            ),
            _spec(
                "GetParameterValues",
                "1.0",
                Argument("parameter_names", "ParameterNames", "parameter_names", required=True),
            ),
            _spec(
                "GetParameterNames",
                "1.0",
                Argument(
                    "parameter_path", "ParameterPath", "string", required=True, max_length=256
                ),
                Argument("next_level", "NextLevel", "boolean", default=False),
            ),
            _spec(
                "SetParameterAttributes",
                "1.0",
                Argument("parameters", "ParameterList", "parameter_attributes", required=True),
            ),
            _spec(
                "GetParameterAttributes",
                "1.0",
                Argument("parameter_names", "ParameterNames", "parameter_names", required=True),
            ),
            _spec(
                "AddObject",
                "1.0",
                Argument("object_name", "ObjectName", "object_name", required=True),
                _PARAMETER_KEY,
            ),
            _spec(
                "DeleteObject",
                "1.0",
                Argument("object_name", "ObjectName", "object_name", required=True),
                _PARAMETER_KEY,
            ),
            _spec(
                "Download",
                "1.0",
                _COMMAND_KEY,
                _DOWNLOAD_TYPE,
                _URL,
                _USERNAME,
                _PASSWORD,
                _FILE_SIZE,
                _TARGET,
                _DELAY,
                _key(256, "SuccessURL", "success_url"),
                _key(256, "FailureURL", "failure_url"),
            ),
            _spec("Reboot", "1.0", _COMMAND_KEY),
            _spec("GetQueuedTransfers", "1.0"),
            _spec(
                "ScheduleInform",
                "1.0",
                Argument("delay_seconds", "DelaySeconds", "unsignedInt", required=True, minimum=1),
                _COMMAND_KEY,
            ),
            _spec(
                "SetVouchers",
                "1.0",
                Argument("vouchers", "VoucherList", "vouchers", required=True),
            ),
            _spec("GetOptions", "1.0", _key(64, "OptionName", "option_name")),
            _spec(
                "Upload",
                "1.0",
                _COMMAND_KEY,
                Argument("file_type", "FileType", "upload_file_type", required=True),
                _URL,
                _USERNAME,
                _PASSWORD,
                _DELAY,
            ),
            _spec("FactoryReset", "1.0"),
            _spec("GetAllQueuedTransfers", "1.1"),
            _spec(
                "ScheduleDownload",
                "1.2",
                _COMMAND_KEY,
                _DOWNLOAD_TYPE,
                _URL,
                _USERNAME,
                _PASSWORD,
                _FILE_SIZE,
                _TARGET,
                Argument("time_windows", "TimeWindowList", "time_windows", required=True),
            ),
            _spec(
                "CancelTransfer",
                "1.2",
                Argument("command_key", "CommandKey", "string", required=True, max_length=32),
            ),
            _spec(
                "ChangeDUState",
                "1.2",
                Argument("operations", "Operations", "operations", required=True),
                _COMMAND_KEY,
            ),
        ]
    )
)


# ---------------------------------------------------------------------------------------
# Validation

_Checker = Callable[[Argument, Any, str], Any]


def _string(value: Any, path: str, max_length: int | None) -> str:
    if not isinstance(value, str):
        raise ArgumentError(path, f"expected a string, got {type(value).__name__}")
    try:
        return values.check_value("xsd:string", value, max_length=max_length)
    except ValueError as e:
        raise ArgumentError(path, str(e).removeprefix("string: ")) from None


def _unsigned(value: Any, path: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ArgumentError(path, f"expected an unsigned integer, got {type(value).__name__}")
    try:
        number = int(values.check_value("xsd:unsignedInt", value))
    except ValueError as e:
        raise ArgumentError(path, str(e)) from None
    if minimum is not None and number < minimum:
        raise ArgumentError(path, f"must be at least {minimum}")
    return number


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ArgumentError(path, f"expected an integer, got {type(value).__name__}")
    try:
        number = int(values.check_value("xsd:int", value))
    except ValueError as e:
        raise ArgumentError(path, str(e)) from None
    if not low <= number <= high:
        raise ArgumentError(path, f"{number} is out of range [{low}, {high}]")
    return number


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, (bool, int, str)):
        raise ArgumentError(path, f"expected a boolean, got {type(value).__name__}")
    try:
        return values.check_value("xsd:boolean", value) == "true"
    except ValueError as e:
        raise ArgumentError(path, str(e)) from None


def _list(value: Any, path: str, minimum: int, maximum: int | None = None) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArgumentError(path, "expected a list")
    if len(value) < minimum:
        raise ArgumentError(path, f"needs at least {minimum} item{'s' * (minimum > 1)}")
    if maximum is not None and len(value) > maximum:
        raise ArgumentError(path, f"holds at most {maximum} items")
    return list(value)


def _object(
    value: Any, path: str, required: Sequence[str], optional: Sequence[str]
) -> dict[str, Any]:
    """A JSON object with only the given keys; null counts as absent."""
    if not isinstance(value, Mapping):
        raise ArgumentError(path, "expected an object")
    for key in value:
        if key not in required and key not in optional:
            raise ArgumentError(f"{path}.{key}", "unknown key")
    present = {k: v for k, v in value.items() if v is not None}
    for key in required:
        if key not in present:
            raise ArgumentError(f"{path}.{key}", "missing")
    return present


def _file_type(value: Any, path: str, standard: Sequence[str], upload: bool) -> str:
    text = _string(value, path, _FILE_TYPE_LENGTH)
    if (text in standard and "<i>" not in text) or _VENDOR_RE.fullmatch(text):
        return text
    if upload and _UPLOAD_INSTANCE_RE.fullmatch(text):
        return text
    raise ArgumentError(
        path, f"unknown file type {text!r} (standard: {', '.join(standard)}, or 'X <OUI> <name>')"
    )


def _check_string(arg: Argument, value: Any, path: str) -> str:
    return _string(value, path, arg.max_length)


def _check_url(arg: Argument, value: Any, path: str) -> str:
    text = _string(value, path, arg.max_length)
    if not text.strip():
        raise ArgumentError(path, "must not be empty")
    return text


def _check_object_name(arg: Argument, value: Any, path: str) -> str:
    text = _string(value, path, _NAME_LENGTH)
    if not text.endswith("."):
        raise ArgumentError(path, "an object name must end with '.'")
    return text


def _check_unsigned(arg: Argument, value: Any, path: str) -> int:
    return _unsigned(value, path, arg.minimum)


def _check_bool(arg: Argument, value: Any, path: str) -> bool:
    return _bool(value, path)


def _check_download_type(arg: Argument, value: Any, path: str) -> str:
    return _file_type(value, path, DOWNLOAD_FILE_TYPES, upload=False)


def _check_upload_type(arg: Argument, value: Any, path: str) -> str:
    return _file_type(value, path, UPLOAD_FILE_TYPES, upload=True)


def _check_names(arg: Argument, value: Any, path: str) -> list[str]:
    items = _list(value, path, 1)
    return [_string(item, f"{path}[{i}]", _NAME_LENGTH) for i, item in enumerate(items)]


# The keys of the list items: (required, optional). The checkers and the JSON Schemas
# (:func:`argument_schema`) both read them.
_PARAMETER_VALUE_KEYS: Final = (("name", "value"), ("type", "max_length"))
_PARAMETER_ATTRIBUTE_KEYS: Final = (
    ("name",),
    ("notification_change", "notification", "access_list_change", "access_list"),
)
_TIME_WINDOW_KEYS: Final = (
    ("window_start", "window_end"),
    ("window_mode", "user_message", "max_retries"),
)
_NOTIFICATION_RANGE: Final = (0, 6)
_MAX_RETRIES_RANGE: Final = (-1, 2**31 - 1)
_ACCESS_LIST_ENTRIES: Final = ("Subscriber",)


def _check_parameter_values(arg: Argument, value: Any, path: str) -> list[dict[str, str]]:
    """SetParameterValues' list: may be empty (sets only the ParameterKey), no duplicates."""
    checked: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(value, path, 0)):
        where = f"{path}[{i}]"
        fields = _object(item, where, *_PARAMETER_VALUE_KEYS)
        name = _string(fields["name"], f"{where}.name", _NAME_LENGTH)
        if not name or name.endswith("."):
            raise ArgumentError(f"{where}.name", "must be a parameter name, not an object path")
        if name in seen:
            raise ArgumentError(f"{where}.name", f"{name} is set twice")
        seen.add(name)
        type_text = fields.get("type", "xsd:string")
        if not isinstance(type_text, str):
            raise ArgumentError(f"{where}.type", "expected a string")
        try:
            canonical, _ = values.normalise_type(type_text)
        except ValueError as e:
            raise ArgumentError(f"{where}.type", str(e)) from None
        max_length = fields.get("max_length")
        if max_length is not None:
            max_length = _unsigned(max_length, f"{where}.max_length")
        try:
            text = values.check_value(type_text, fields["value"], max_length=max_length)
        except ValueError as e:
            raise ArgumentError(f"{where}.value", str(e)) from None
        checked.append({"name": name, "value": text, "type": canonical})
    return checked


def _access_list(value: Any, path: str) -> list[str]:
    items = [_string(item, f"{path}[{i}]", 64) for i, item in enumerate(_list(value, path, 0))]
    for i, item in enumerate(items):
        if item not in _ACCESS_LIST_ENTRIES:
            raise ArgumentError(f"{path}[{i}]", "the only access list entry is 'Subscriber'")
    return items


def _check_parameter_attributes(arg: Argument, value: Any, path: str) -> list[dict[str, Any]]:
    """SetParameterAttributes' list.

    ``notification_change`` defaults to whether ``notification`` is given, and
    ``access_list_change`` to whether ``access_list`` is; a change needs its value.
    """
    checked: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, path, 1)):
        where = f"{path}[{i}]"
        fields = _object(item, where, *_PARAMETER_ATTRIBUTE_KEYS)
        name = _string(fields["name"], f"{where}.name", _NAME_LENGTH)
        notify_change = _bool(
            fields.get("notification_change", "notification" in fields),
            f"{where}.notification_change",
        )
        notification = 0
        if "notification" in fields:
            notification = _int(
                fields["notification"], f"{where}.notification", *_NOTIFICATION_RANGE
            )
        elif notify_change:
            raise ArgumentError(f"{where}.notification", "missing (notification_change is true)")
        access_change = _bool(
            fields.get("access_list_change", "access_list" in fields),
            f"{where}.access_list_change",
        )
        access_list: list[str] = []
        if "access_list" in fields:
            access_list = _access_list(fields["access_list"], f"{where}.access_list")
        elif access_change:
            raise ArgumentError(f"{where}.access_list", "missing (access_list_change is true)")
        checked.append(
            {
                "name": name,
                "notification_change": notify_change,
                "notification": notification,
                "access_list_change": access_change,
                "access_list": access_list,
            }
        )
    return checked


def _check_time_windows(arg: Argument, value: Any, path: str) -> list[dict[str, Any]]:
    """ScheduleDownload's 1-2 windows, in order and not overlapping (A.4.1.8)."""
    checked: list[dict[str, Any]] = []
    for i, item in enumerate(_list(value, path, 1, 2)):
        where = f"{path}[{i}]"
        fields = _object(item, where, *_TIME_WINDOW_KEYS)
        start = _unsigned(fields["window_start"], f"{where}.window_start")
        end = _unsigned(fields["window_end"], f"{where}.window_end")
        if end < start:
            raise ArgumentError(f"{where}.window_end", "ends before window_start")
        if checked and start < checked[-1]["window_end"]:
            raise ArgumentError(f"{where}.window_start", "overlaps the previous window")
        mode = _string(
            fields.get("window_mode", TIME_WINDOW_MODES[0]),
            f"{where}.window_mode",
            _FILE_TYPE_LENGTH,
        )
        if mode not in TIME_WINDOW_MODES and not _VENDOR_RE.fullmatch(mode):
            raise ArgumentError(
                f"{where}.window_mode",
                f"unknown mode {mode!r} (standard: {', '.join(TIME_WINDOW_MODES)})",
            )
        checked.append(
            {
                "window_start": start,
                "window_end": end,
                "window_mode": mode,
                "user_message": _string(
                    fields.get("user_message", ""), f"{where}.user_message", 256
                ),
                "max_retries": _int(
                    fields.get("max_retries", -1), f"{where}.max_retries", *_MAX_RETRIES_RANGE
                ),
            }
        )
    return checked


# ChangeDUState operation fields: (JSON key, element, max length), in schema order.
_OPERATION_FIELDS: Final = MappingProxyType(
    {
        "install": (
            ("url", "URL", 1024),
            ("uuid", "UUID", 36),
            ("username", "Username", 256),
            ("password", "Password", 256),
            ("execution_env_ref", "ExecutionEnvRef", 256),
        ),
        "update": (
            ("uuid", "UUID", 36),
            ("version", "Version", 32),
            ("url", "URL", 1024),
            ("username", "Username", 256),
            ("password", "Password", 256),
        ),
        "uninstall": (
            ("uuid", "UUID", 36),
            ("version", "Version", 32),
            ("execution_env_ref", "ExecutionEnvRef", 256),
        ),
    }
)
_OPERATION_REQUIRED: Final = MappingProxyType(
    {"install": ("url",), "update": (), "uninstall": ("uuid",)}
)
_OPERATION_XSI_TYPES: Final = MappingProxyType(
    {
        "install": "cwmp:InstallOpStruct",
        "update": "cwmp:UpdateOpStruct",
        "uninstall": "cwmp:UninstallOpStruct",
    }
)


def _check_operations(arg: Argument, value: Any, path: str) -> list[dict[str, str]]:
    """ChangeDUState operations: ``{"type": "install"|"update"|"uninstall", ...fields}``."""
    checked: list[dict[str, str]] = []
    for i, item in enumerate(_list(value, path, 1)):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            raise ArgumentError(where, "expected an object")
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in _OPERATION_FIELDS:
            raise ArgumentError(f"{where}.type", "must be 'install', 'update' or 'uninstall'")
        spec = _OPERATION_FIELDS[kind]
        fields = _object(
            item, where, ("type", *_OPERATION_REQUIRED[kind]), tuple(k for k, _, _ in spec)
        )
        operation = {"type": kind}
        for key, _, limit in spec:
            if key not in fields:
                continue
            text = _string(fields[key], f"{where}.{key}", limit)
            if key == "uuid" and not _UUID_RE.fullmatch(text):
                raise ArgumentError(f"{where}.uuid", "not a UUID (8-4-4-4-12 hex digits)")
            if key == "url" and kind == "install" and not text:
                raise ArgumentError(f"{where}.url", "must not be empty")
            operation[key] = text
        checked.append(operation)
    return checked


def _check_vouchers(arg: Argument, value: Any, path: str) -> list[str]:
    checked: list[str] = []
    for i, item in enumerate(_list(value, path, 1)):
        where = f"{path}[{i}]"
        if not isinstance(item, str):
            raise ArgumentError(where, "expected a base64 string")
        try:
            checked.append(values.check_value("xsd:base64", item))
        except ValueError as e:
            raise ArgumentError(where, str(e)) from None
    return checked


_CHECKERS: Final[Mapping[str, _Checker]] = MappingProxyType(
    {
        "string": _check_string,
        "url": _check_url,
        "object_name": _check_object_name,
        "unsignedInt": _check_unsigned,
        "boolean": _check_bool,
        "download_file_type": _check_download_type,
        "upload_file_type": _check_upload_type,
        "parameter_names": _check_names,
        "parameter_values": _check_parameter_values,
        "parameter_attributes": _check_parameter_attributes,
        "time_windows": _check_time_windows,
        "operations": _check_operations,
        "vouchers": _check_vouchers,
    }
)


def _method(method: str) -> MethodSpec:
    spec = METHODS.get(method) if isinstance(method, str) else None
    if spec is None:
        raise ArgumentError("", f"unknown method {method!r}")
    return spec


def validate(method: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Checked and normalised arguments of ``method``, every optional one filled in.

    Values come out in their wire form (SetParameterValues values as text with a
    canonical type) so the result is JSON, and validating it again gives it back.
    Raises :class:`ArgumentError`.
    """
    spec = _method(method)
    if not isinstance(args, Mapping):
        raise ArgumentError("", "arguments must be an object")
    known = {arg.key for arg in spec.arguments}
    for key in args:
        if key not in known:
            raise ArgumentError(str(key), f"unknown argument of {method}")
    checked: dict[str, Any] = {}
    for arg in spec.arguments:
        value = args.get(arg.key)
        if value is None:
            if arg.required:
                raise ArgumentError(arg.key, "missing")
            checked[arg.key] = arg.default
            continue
        checked[arg.key] = _CHECKERS[arg.kind](arg, value, arg.key)
    return checked


# ---------------------------------------------------------------------------------------
# JSON Schemas of the arguments
#
# Built from the same table, constants and key lists the checkers above use, so the
# document a client reads and the check its request meets cannot drift apart. A schema
# accepts everything :func:`validate` accepts (the API echoes a task's arguments back,
# and they must match what the document says) and is as tight as JSON Schema can say it
# simply: a range that the checker applies to a string of digits is not in the schema.
# Null stands for "left out" wherever an argument or key is optional, as in validate.

_INTEGER_TEXT: Final = r"^\s*[+-]?[0-9]+\s*$"
_BOOLEAN_TEXT: Final = r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[01])\s*$"
_VENDOR_PATTERN: Final = "^" + _VENDOR_RE.pattern + "$"


def _integer_schema(low: int, high: int, description: str) -> dict[str, Any]:
    return {
        "oneOf": [
            {"type": "integer", "minimum": low, "maximum": high},
            {"type": "string", "pattern": _INTEGER_TEXT},
        ],
        "description": description + " (a string of digits is accepted too)",
    }


def _unsigned_schema(minimum: int | None = None) -> dict[str, Any]:
    return _integer_schema(minimum or 0, 2**32 - 1, "An xsd:unsignedInt")


def _boolean_schema() -> dict[str, Any]:
    return {
        "oneOf": [
            {"type": "boolean"},
            {"type": "integer", "enum": [0, 1]},
            {"type": "string", "pattern": _BOOLEAN_TEXT},
        ],
        "description": "true or false (1, 0 and those words as strings are accepted too)",
    }


def _string_schema(max_length: int | None, **more: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **more}
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def _choice_schema(standard: Sequence[str], *patterns: str, max_length: int) -> dict[str, Any]:
    """A standard value, or one of the patterns (vendor values)."""
    return {
        "type": "string",
        "maxLength": max_length,
        "oneOf": [{"enum": list(standard)}, *({"pattern": p} for p in patterns)],
    }


def _nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema, or null (which counts as left out)."""
    out = dict(schema)
    if "oneOf" in out and "type" not in out:
        out["oneOf"] = [*out["oneOf"], {"type": "null"}]
    elif isinstance(out.get("type"), str) and "oneOf" not in out:
        out["type"] = [out["type"], "null"]
    else:
        out = {"oneOf": [out, {"type": "null"}]}
    return out


def _struct_schema(
    keys: tuple[Sequence[str], Sequence[str]], schemas: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """An item of a list argument, as :func:`_object` checks it."""
    required, optional = keys
    assert set(schemas) == {*required, *optional}, "a key without a schema"
    return {
        "type": "object",
        "required": list(required),
        "additionalProperties": False,
        "properties": {
            **{k: dict(schemas[k]) for k in required},
            **{k: _nullable(schemas[k]) for k in optional},
        },
    }


def _array_schema(
    items: Mapping[str, Any], minimum: int, maximum: int | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "minItems": minimum, "items": dict(items)}
    if maximum is not None:
        schema["maxItems"] = maximum
    return schema


def _operation_schema(kind: str) -> dict[str, Any]:
    fields = {key: _string_schema(limit) for key, _, limit in _OPERATION_FIELDS[kind]}
    fields["uuid"] = _string_schema(36, pattern="^" + _UUID_RE.pattern + "$")
    if kind == "install":
        fields["url"] = _string_schema(1024, minLength=1)
    fields["type"] = {"const": kind}
    optional = tuple(k for k, _, _ in _OPERATION_FIELDS[kind] if k not in _OPERATION_REQUIRED[kind])
    schema = _struct_schema((("type", *_OPERATION_REQUIRED[kind]), optional), fields)
    schema["title"] = kind
    return schema


_KIND_SCHEMAS: Final[Mapping[str, Callable[[Argument], dict[str, Any]]]] = MappingProxyType(
    {
        "string": lambda arg: _string_schema(arg.max_length),
        "url": lambda arg: _string_schema(arg.max_length, minLength=1, pattern=r"\S"),
        "object_name": lambda arg: _string_schema(
            _NAME_LENGTH, pattern=r"\.$", description="An object path ending with '.'."
        ),
        "unsignedInt": lambda arg: _unsigned_schema(arg.minimum),
        "boolean": lambda arg: _boolean_schema(),
        "download_file_type": lambda arg: _choice_schema(
            DOWNLOAD_FILE_TYPES, _VENDOR_PATTERN, max_length=_FILE_TYPE_LENGTH
        ),
        "upload_file_type": lambda arg: _choice_schema(
            [t for t in UPLOAD_FILE_TYPES if "<i>" not in t],
            "^" + _UPLOAD_INSTANCE_RE.pattern + "$",
            _VENDOR_PATTERN,
            max_length=_FILE_TYPE_LENGTH,
        ),
        "parameter_names": lambda arg: _array_schema(_string_schema(_NAME_LENGTH), 1),
        "parameter_values": lambda arg: _array_schema(
            _struct_schema(
                _PARAMETER_VALUE_KEYS,
                {
                    "name": _string_schema(_NAME_LENGTH, minLength=1, pattern=r"[^.]$"),
                    "value": {
                        "type": ["string", "integer", "boolean"],
                        "description": "Checked against `type`; sent as text.",
                    },
                    "type": {
                        "type": "string",
                        "default": "xsd:string",
                        "description": "One of " + ", ".join(values.TYPES) + " (or `string(64)`).",
                    },
                    "max_length": _unsigned_schema(),
                },
            ),
            0,
        ),
        "parameter_attributes": lambda arg: _array_schema(
            _struct_schema(
                _PARAMETER_ATTRIBUTE_KEYS,
                {
                    "name": _string_schema(_NAME_LENGTH),
                    "notification_change": _boolean_schema(),
                    "notification": _integer_schema(
                        *_NOTIFICATION_RANGE, "0 off, 1 passive, 2 active, 3-6 lightweight"
                    ),
                    "access_list_change": _boolean_schema(),
                    "access_list": _array_schema(
                        _string_schema(64, enum=list(_ACCESS_LIST_ENTRIES)), 0
                    ),
                },
            ),
            1,
        ),
        "time_windows": lambda arg: _array_schema(
            _struct_schema(
                _TIME_WINDOW_KEYS,
                {
                    "window_start": _unsigned_schema(),
                    "window_end": _unsigned_schema(),
                    "window_mode": _choice_schema(
                        TIME_WINDOW_MODES, _VENDOR_PATTERN, max_length=_FILE_TYPE_LENGTH
                    ),
                    "user_message": _string_schema(256),
                    "max_retries": _integer_schema(*_MAX_RETRIES_RANGE, "-1: the CPE decides"),
                },
            ),
            1,
            2,
        ),
        "operations": lambda arg: _array_schema(
            {
                "oneOf": [_operation_schema(kind) for kind in _OPERATION_FIELDS],
                "discriminator": {"propertyName": "type"},
            },
            1,
        ),
        "vouchers": lambda arg: _array_schema({"type": "string", "contentEncoding": "base64"}, 1),
    }
)


def argument_schema(arg: Argument) -> dict[str, Any]:
    """The JSON Schema of one argument's value (nullable if the argument is optional)."""
    schema = _KIND_SCHEMAS[arg.kind](arg)
    if arg.required:
        return schema
    schema = _nullable(schema)
    if arg.default is not None:
        schema["default"] = arg.default
    return schema


def arguments_schema(method: str) -> dict[str, Any]:
    """The JSON Schema of ``method``'s arguments object: what :func:`validate` accepts."""
    spec = _method(method)
    schema: dict[str, Any] = {"type": "object"}
    required = [a.key for a in spec.arguments if a.required]
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    schema["properties"] = {a.key: argument_schema(a) for a in spec.arguments}
    return schema


# ---------------------------------------------------------------------------------------
# Envelopes

_XSI_TYPE: Final = f"{{{soap.XSI}}}type"


_leaf = soap.leaf
_array = soap.array


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _check_namespace(spec: MethodSpec, namespace: str, args: Mapping[str, Any]) -> None:
    """Refuse what the namespace's schema cannot carry (the older schemas are narrower)."""
    if not spec.available_in(namespace):
        raise ArgumentError(
            "", f"{spec.name} needs CWMP {spec.since} or later (namespace {namespace})"
        )
    if _version(_VERSION_OF_NAMESPACE[namespace]) >= (1, 2):
        return
    if spec.name == "SetParameterAttributes":
        for i, item in enumerate(args["parameters"]):
            if item["notification"] > 2:
                raise ArgumentError(
                    f"parameters[{i}].notification",
                    "lightweight notification (3-6) needs the cwmp-1-2 namespace",
                )
    old_types = {"Download": _OLD_DOWNLOAD_FILE_TYPES, "Upload": _OLD_UPLOAD_FILE_TYPES}
    allowed = old_types.get(spec.name)
    if allowed is not None:
        file_type = args["file_type"]
        if file_type not in allowed and not _VENDOR_RE.fullmatch(file_type):
            raise ArgumentError("file_type", f"{file_type!r} needs the cwmp-1-2 namespace")


def _emit(rpc: etree._Element, arg: Argument, value: Any, *, boolean_digits: bool) -> None:
    kind = arg.kind
    if kind == "boolean":
        _leaf(rpc, arg.element, _flag(value))
    elif kind == "unsignedInt":
        _leaf(rpc, arg.element, str(value))
    elif kind == "parameter_names":
        array = _array(rpc, arg.element, "xsd:string", len(value))
        for name in value:
            _leaf(array, "string", name)
    elif kind == "parameter_values":
        array = _array(rpc, arg.element, "cwmp:ParameterValueStruct", len(value))
        for item in value:
            struct = etree.SubElement(array, "ParameterValueStruct")
            _leaf(struct, "Name", item["name"])
            text = item["value"]
            if boolean_digits and item["type"] == "xsd:boolean":
                text = "1" if text in ("true", "1") else "0"
            _leaf(struct, "Value", text).set(_XSI_TYPE, values.xsi_type(item["type"]))
    elif kind == "parameter_attributes":
        array = _array(rpc, arg.element, "cwmp:SetParameterAttributesStruct", len(value))
        for item in value:
            struct = etree.SubElement(array, "SetParameterAttributesStruct")
            _leaf(struct, "Name", item["name"])
            _leaf(struct, "NotificationChange", _flag(item["notification_change"]))
            _leaf(struct, "Notification", str(item["notification"]))
            _leaf(struct, "AccessListChange", _flag(item["access_list_change"]))
            access = _array(struct, "AccessList", "xsd:string", len(item["access_list"]))
            for entry in item["access_list"]:
                _leaf(access, "string", entry)
    elif kind == "time_windows":
        array = _array(rpc, arg.element, "cwmp:TimeWindowStruct", len(value))
        for item in value:
            struct = etree.SubElement(array, "TimeWindowStruct")
            _leaf(struct, "WindowStart", str(item["window_start"]))
            _leaf(struct, "WindowEnd", str(item["window_end"]))
            _leaf(struct, "WindowMode", item["window_mode"])
            _leaf(struct, "UserMessage", item["user_message"])
            _leaf(struct, "MaxRetries", str(item["max_retries"]))
    elif kind == "operations":
        # Not an array: repeated Operations elements whose xsi:type picks the struct.
        for item in value:
            operation = etree.SubElement(rpc, arg.element)
            operation.set(_XSI_TYPE, _OPERATION_XSI_TYPES[item["type"]])
            for key, element, _ in _OPERATION_FIELDS[item["type"]]:
                if key in item:
                    _leaf(operation, element, item[key])
    elif kind == "vouchers":
        array = _array(rpc, arg.element, "soap-enc:base64", len(value))
        for voucher in value:
            _leaf(array, "base64", voucher)
    else:  # the string kinds
        _leaf(rpc, arg.element, value)


def build(
    namespace: str,
    request_id: str,
    method: str,
    args: Mapping[str, Any],
    *,
    hold_requests: bool = False,
    boolean_digits: bool = False,
) -> bytes:
    """The request envelope, schema-valid in ``namespace`` (the CPE's).

    ``args`` are validated (already validated ones pass unchanged).
    ``boolean_digits`` writes xsd:boolean SetParameterValues values as ``1``/``0`` for
    CPEs that reject ``true``/``false``. Raises :class:`ArgumentError`, also for an RPC
    or a value that the namespace's schema version does not have.
    """
    spec = _method(method)
    if namespace not in _VERSION_OF_NAMESPACE:
        raise ArgumentError("", f"unknown CWMP namespace {namespace!r}")
    checked = validate(method, args)
    _check_namespace(spec, namespace, checked)
    rpc = soap.rpc_element(namespace, method)
    for arg in spec.arguments:
        _emit(rpc, arg, checked[arg.key], boolean_digits=boolean_digits)
    return soap.envelope(namespace, request_id, rpc, hold_requests=hold_requests)


# ---------------------------------------------------------------------------------------
# Results

# Sign, then at most 20 significant digits (an unsignedLong has 20): Python's int() refuses
# strings of more than 4300 digits with a ValueError that is not a ResponseError.
_INT_RE: Final = re.compile(r"\s*([+-]?)0*([0-9]{1,20})\s*", re.ASCII)


def _body(response: RpcResponse, method: str) -> dict[str, Any]:
    """The response tree; rebuilt from ``fields``/``parameters`` for a hand-made response."""
    if isinstance(response.body, dict):
        return response.body
    body: dict[str, Any] = dict(response.fields)
    if method in ("GetParameterValues", "GetParameterNames", "GetParameterAttributes"):
        # The codec maps Writable and Notification into ParameterValue.value.
        key = {"GetParameterNames": "Writable", "GetParameterAttributes": "Notification"}
        body["ParameterList"] = [
            {"Name": p.name, key.get(method, "Value"): p.value} for p in response.parameters
        ]
    return body


def _field(struct: Any, name: str, where: str) -> Any:
    if not isinstance(struct, dict):
        raise ResponseError(f"{where} is not a structure")
    if name not in struct:
        raise ResponseError(f"{where} has no {name}")
    return struct[name]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ResponseError(f"{where} is not a simple value")
    return value


def _number(value: Any, where: str, allowed: Sequence[int] | None = None, low: int = 0) -> int:
    text = _text(value, where)
    match = _INT_RE.fullmatch(text)
    if match is None:
        raise ResponseError(f"{where} is not a number: {text[:40]!r}")
    number = int(match.group(1) + match.group(2))
    if allowed is not None and number not in allowed:
        raise ResponseError(f"{where} is {number}, not one of {list(allowed)}")
    if allowed is None and number < low:
        raise ResponseError(f"{where} is {number}, less than {low}")
    return number


def _truth(value: Any, where: str) -> bool:
    text = _text(value, where).strip().lower()
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise ResponseError(f"{where} is not a boolean: {text[:40]!r}")


def _items(body: dict[str, Any], name: str, where: str) -> list[Any]:
    """An array of the response; a lone item or an empty element count as lists too."""
    if name not in body:
        raise ResponseError(f"{where} has no {name}")
    value = body[name]
    if isinstance(value, list):
        return value
    if value == "":
        return []
    return [value]


def _optional_text(struct: dict[str, Any], name: str, where: str) -> str:
    value = struct.get(name, values.UNKNOWN_TIME)
    return _text(value, f"{where}.{name}")


def _result_methods(body: dict[str, Any], where: str) -> dict[str, Any]:
    methods = _items(body, "MethodList", where)
    return {"methods": [_text(m, f"{where}.MethodList[{i}]") for i, m in enumerate(methods)]}


def _result_names(body: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = []
    for i, item in enumerate(_items(body, "ParameterList", where)):
        at = f"{where}.ParameterList[{i}]"
        parameters.append(
            {
                "name": _text(_field(item, "Name", at), f"{at}.Name"),
                "writable": _truth(_field(item, "Writable", at), f"{at}.Writable"),
            }
        )
    return {"parameters": parameters}


def _result_attributes(body: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = []
    for i, item in enumerate(_items(body, "ParameterList", where)):
        at = f"{where}.ParameterList[{i}]"
        access = item.get("AccessList", []) if isinstance(item, dict) else []
        if access == "":
            access = []
        elif not isinstance(access, list):
            access = [access]
        parameters.append(
            {
                "name": _text(_field(item, "Name", at), f"{at}.Name"),
                "notification": _number(
                    _field(item, "Notification", at), f"{at}.Notification", range(7)
                ),
                "access_list": [_text(a, f"{at}.AccessList") for a in access],
            }
        )
    return {"parameters": parameters}


def _status(body: dict[str, Any], where: str) -> int:
    return _number(_field(body, "Status", where), f"{where}.Status", (0, 1))


def _result_status(body: dict[str, Any], where: str) -> dict[str, Any]:
    return {"status": _status(body, where)}


def _result_add_object(body: dict[str, Any], where: str) -> dict[str, Any]:
    instance = _number(_field(body, "InstanceNumber", where), f"{where}.InstanceNumber", low=1)
    return {"instance_number": instance, "status": _status(body, where)}


def _result_transfer(body: dict[str, Any], where: str) -> dict[str, Any]:
    return {
        "status": _status(body, where),
        "start_time": _optional_text(body, "StartTime", where),
        "complete_time": _optional_text(body, "CompleteTime", where),
    }


def _result_queued(body: dict[str, Any], where: str) -> dict[str, Any]:
    transfers = []
    for i, item in enumerate(_items(body, "TransferList", where)):
        at = f"{where}.TransferList[{i}]"
        transfers.append(
            {
                "command_key": _text(_field(item, "CommandKey", at), f"{at}.CommandKey"),
                "state": _number(_field(item, "State", at), f"{at}.State", (1, 2, 3)),
            }
        )
    return {"transfers": transfers}


def _result_all_queued(body: dict[str, Any], where: str) -> dict[str, Any]:
    transfers = _result_queued(body, where)["transfers"]
    for i, (item, transfer) in enumerate(
        zip(_items(body, "TransferList", where), transfers, strict=True)
    ):
        at = f"{where}.TransferList[{i}]"
        transfer["is_download"] = _truth(_field(item, "IsDownload", at), f"{at}.IsDownload")
        transfer["file_type"] = _text(_field(item, "FileType", at), f"{at}.FileType")
        transfer["file_size"] = _number(_field(item, "FileSize", at), f"{at}.FileSize")
        transfer["target_file_name"] = _text(item.get("TargetFileName", ""), f"{at}.TargetFileName")
    return {"transfers": transfers}


def _result_options(body: dict[str, Any], where: str) -> dict[str, Any]:
    options = []
    for i, item in enumerate(_items(body, "OptionList", where)):
        at = f"{where}.OptionList[{i}]"
        expiration = item.get("ExpirationDate") if isinstance(item, dict) else None
        options.append(
            {
                "option_name": _text(_field(item, "OptionName", at), f"{at}.OptionName"),
                "voucher_sn": _number(_field(item, "VoucherSN", at), f"{at}.VoucherSN"),
                "state": _number(_field(item, "State", at), f"{at}.State", (0, 1, 2, 3)),
                "mode": _number(_field(item, "Mode", at), f"{at}.Mode", (0, 1, 2)),
                "start_date": _text(_field(item, "StartDate", at), f"{at}.StartDate"),
                "expiration_date": (
                    None if expiration is None else _text(expiration, f"{at}.ExpirationDate")
                ),
                "is_transferable": _number(
                    _field(item, "IsTransferable", at), f"{at}.IsTransferable", (0, 1)
                ),
            }
        )
    return {"options": options}


def _result_empty(body: dict[str, Any], where: str) -> dict[str, Any]:
    return {}


_RESULTS: Final[Mapping[str, Callable[[dict[str, Any], str], dict[str, Any]]]] = MappingProxyType(
    {
        "GetRPCMethods": _result_methods,
        "SetParameterValues": _result_status,
        "GetParameterNames": _result_names,
        "SetParameterAttributes": _result_empty,
        "GetParameterAttributes": _result_attributes,
        "AddObject": _result_add_object,
        "DeleteObject": _result_status,
        "Download": _result_transfer,
        "Reboot": _result_empty,
        "GetQueuedTransfers": _result_queued,
        "ScheduleInform": _result_empty,
        "SetVouchers": _result_empty,
        "GetOptions": _result_options,
        "Upload": _result_transfer,
        "FactoryReset": _result_empty,
        "GetAllQueuedTransfers": _result_all_queued,
        "ScheduleDownload": _result_empty,
        "CancelTransfer": _result_empty,
        "ChangeDUState": _result_empty,
    }
)


def result(method: str, response: RpcResponse) -> dict[str, Any]:
    """Typed JSON of the CPE's response to ``method`` (shapes in the module docs).

    GetParameterValues values stay the text the CPE sent, with its type: CPEs send
    values that do not parse as their type, and the cache keeps what the device said.
    Raises :class:`ResponseError` for a response that lacks what its schema requires.
    """
    _method(method)
    where = f"{method}Response"
    if response.method != method:
        raise ResponseError(f"{response.method}Response does not answer {method}")
    body = _body(response, method)
    if method == "GetParameterValues":
        if "ParameterList" not in body:
            raise ResponseError(f"{where} has no ParameterList")
        return {
            "parameters": [
                {"name": p.name, "value": p.value, "type": p.type} for p in response.parameters
            ]
        }
    return _RESULTS[method](body, where)


def fault(f: CpeFault) -> dict[str, Any]:
    """A CPE fault as JSON, with the standard fault strings where the CPE sent none."""
    return {
        "code": f.fault_code,
        "string": f.fault_string or cpe_fault_string(f.fault_code),
        "parameters": [
            {
                "name": p.parameter_name,
                "code": p.fault_code,
                "string": p.fault_string or cpe_fault_string(p.fault_code),
            }
            for p in f.set_parameter_values_faults
        ],
    }
