"""Shared test support."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from cwmpgw.connreq.interfaces import IConnectionRequester, WakeResult
from cwmpgw.nbi.interfaces import IHealth


@implementer(IConnectionRequester)
class FakeWaker:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.result: WakeResult | Exception | Deferred[WakeResult] = WakeResult(
            "ok", session_started=True, method="http"
        )

    def wake(self, device_id: str) -> Deferred[WakeResult]:
        self.calls.append(device_id)
        if isinstance(self.result, Deferred):
            return self.result
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed(self.result)


@implementer(IHealth)
class FakeHealth:
    def __init__(self) -> None:
        self.report: dict[str, Any] | Exception = {"ok": True, "redis": True, "node": "n1"}

    def check(self) -> Deferred[dict[str, Any]]:
        if isinstance(self.report, Exception):
            return fail(self.report)
        return succeed(dict(self.report))


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> Any:
        assert self.header("content-type") == "application/json", self.headers
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        body = self.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        code: str = body["error"]["code"]
        return code


@dataclass
class Pending:
    """A request sent on its own connection, whose answer may come later."""

    transport: StringTransport
    protocol: Any

    def response(self) -> Response | None:
        return parse_response(self.transport.value())

    def disconnect(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("client went away")))


#: Arguments of every task type, in the forms clients send: defaults left out, nulls,
#: strings of digits and words for numbers and booleans.
EXAMPLE_ARGS: dict[str, dict[str, Any]] = {
    "GetRPCMethods": {},
    "SetParameterValues": {
        "parameters": [
            {
                "name": "Device.ManagementServer.PeriodicInformInterval",
                "value": "3600",
                "type": "xsd:unsignedInt",
            },
            {"name": "Device.WiFi.SSID.1.SSID", "value": "home", "max_length": "32"},
            {"name": "Device.WiFi.Radio.1.Enable", "value": True, "type": "boolean"},
        ],
        "parameter_key": "pi-3600",
    },
    "GetParameterValues": {"parameter_names": ["Device.DeviceInfo.", "Device.Time.Enable"]},
    "GetParameterNames": {"parameter_path": "Device.", "next_level": "true"},
    "SetParameterAttributes": {
        "parameters": [
            {"name": "Device.DeviceInfo.SoftwareVersion", "notification": 2},
            {"name": "Device.WiFi.", "access_list": ["Subscriber"], "notification": None},
        ]
    },
    "GetParameterAttributes": {"parameter_names": ["Device.DeviceInfo.SoftwareVersion"]},
    "AddObject": {"object_name": "Device.IP.Interface."},
    "DeleteObject": {"object_name": "Device.IP.Interface.3.", "parameter_key": None},
    "Download": {
        "file_type": "1 Firmware Upgrade Image",
        "url": "https://fw.example/fw.bin",
        "file_size": 1_048_576,
        "delay_seconds": "30",
    },
    "Reboot": {},
    "GetQueuedTransfers": {},
    "ScheduleInform": {"delay_seconds": 60, "command_key": "si-1"},
    "SetVouchers": {"vouchers": ["QUJD"]},
    "GetOptions": {"option_name": "X_ACME_Option"},
    "Upload": {"file_type": "3 Vendor Configuration File 2", "url": "https://up.example/cfg"},
    "FactoryReset": {},
    "GetAllQueuedTransfers": {},
    "ScheduleDownload": {
        "file_type": "X 00D09E Bundle",
        "url": "https://fw.example/bundle",
        "time_windows": [
            {"window_start": 0, "window_end": 3600, "window_mode": "2 Immediately"},
            {"window_start": "7200", "window_end": 9000, "max_retries": -1},
        ],
    },
    "CancelTransfer": {"command_key": "fw-1"},
    "ChangeDUState": {
        "operations": [
            {"type": "install", "url": "https://du.example/app.ipk"},
            {"type": "uninstall", "uuid": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"},
            {"type": "update", "version": "2.0"},
        ]
    },
    "refresh": {"path": "Device.DeviceInfo."},
    "diagnostic": {
        "kind": "IPPing",
        "parameters": {"Host": "192.0.2.1", "NumberOfRepetitions": 3, "Timeout": 1000},
        "timeout": 120,
    },
}


#: Arguments the server refuses and the schema of their type refuses as well.
BAD_ARGS: list[tuple[str, dict[str, Any]]] = [
    ("Reboot", {"command_key": "k" * 33}),
    ("Reboot", {"bogus": 1}),
    ("GetParameterValues", {}),
    ("GetParameterValues", {"parameter_names": []}),
    ("GetParameterValues", {"parameter_names": [7]}),
    ("GetParameterNames", {"parameter_path": "Device.", "next_level": "maybe"}),
    ("SetParameterValues", {"parameters": [{"name": "Device.X."}]}),
    ("SetParameterValues", {"parameters": [{"name": "Device.X", "value": "1", "other": 1}]}),
    ("SetParameterAttributes", {"parameters": [{"name": "D.X", "access_list": ["Admin"]}]}),
    ("SetParameterAttributes", {"parameters": [{"name": "D.X", "notification": 7}]}),
    ("AddObject", {"object_name": "Device.IP.Interface"}),
    ("Download", {"file_type": "9 Anything", "url": "https://x/"}),
    ("Download", {"file_type": "1 Firmware Upgrade Image", "url": " "}),
    ("Download", {"file_type": "1 Firmware Upgrade Image", "url": "https://x/", "file_size": -1}),
    ("Upload", {"file_type": "3 Vendor Configuration File <i>", "url": "https://x/"}),
    ("ScheduleInform", {"delay_seconds": 0}),
    ("ScheduleInform", {"delay_seconds": True}),
    ("ScheduleDownload", {"file_type": "2 Web Content", "url": "https://x/", "time_windows": []}),
    ("ChangeDUState", {"operations": [{"type": "reinstall"}]}),
    ("ChangeDUState", {"operations": [{"type": "uninstall", "uuid": "not-a-uuid"}]}),
    ("ChangeDUState", {"operations": [{"type": "install"}]}),
    ("SetVouchers", {"vouchers": "QUJD"}),
    ("refresh", {}),
    ("refresh", {"path": "Device.", "depth": 2}),
    ("diagnostic", {}),
    ("diagnostic", {"kind": "Ping"}),
    ("diagnostic", {"kind": "IPPing", "parameters": {"Host": "x", "DSCP": 64}}),
    ("diagnostic", {"kind": "IPPing", "parameters": {"Host": "x", "Bogus": 1}}),
    ("diagnostic", {"kind": "TraceRoute", "parameters": {}}),
    ("diagnostic", {"kind": "IPPing", "parameters": {"Host": "x"}, "timeout": 0}),
    ("diagnostic", {"kind": "ServerSelection", "parameters": {"HostList": []}}),
]


def parse_response(data: bytes) -> Response | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    length = int(headers.get("content-length", ["0"])[0])
    assert len(rest) == length, (len(rest), length)
    return Response(int(lines[0].split(" ")[1]), headers, rest)
