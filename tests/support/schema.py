"""Offline validation of envelopes against the Broadband Forum CWMP schemas.

Loads the vendored validator (tests/data/cwmp/validate.py) by path, so tests need neither
the network nor that file on sys.path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from tests.support.paths import DATA

UUID = "12345678-1234-1234-1234-123456789abc"

__all__ = ["assert_valid", "validate_envelope"]

_VALIDATOR_PATH = DATA / "validate.py"


def _load() -> Callable[[bytes], list[str]]:
    spec = importlib.util.spec_from_file_location("_cwmp_schema_validate", _VALIDATOR_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_VALIDATOR_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    validate: Callable[[bytes], list[str]] = module.validate_envelope
    return validate


validate_envelope = _load()


def assert_valid(envelope: bytes) -> None:
    """Fail with every schema problem of ``envelope`` listed."""
    problems = validate_envelope(envelope)
    if problems:
        listing = "\n  ".join(problems)
        raise AssertionError(
            f"envelope is not schema-valid:\n  {listing}\n{envelope.decode('utf-8', 'replace')}"
        )


#: Every argument given, for every method.
FULL_ARGS: dict[str, dict[str, Any]] = {
    "GetRPCMethods": {},
    "SetParameterValues": {
        "parameters": [
            {
                "name": "Device.ManagementServer.PeriodicInformInterval",
                "value": 60,
                "type": "unsignedInt",
            },
            {"name": "Device.WiFi.SSID.1.Enable", "value": True, "type": "xsd:boolean"},
            {"name": "Device.WiFi.SSID.1.SSID", "value": "MyNet", "type": "string(32)"},
            {"name": "Device.X_Blob", "value": "aGk=", "type": "base64"},
            {"name": "Device.X_Hex", "value": "0aff", "type": "hexBinary"},
            {
                "name": "Device.Time.X_When",
                "value": "2025-01-01T00:00:00.5+01:00",
                "type": "dateTime",
            },
            {"name": "Device.X_Int", "value": -5, "type": "int"},
            {"name": "Device.X_Long", "value": "-9000000000", "type": "long"},
            {"name": "Device.X_ULong", "value": 2**64 - 1, "type": "unsignedLong"},
            {"name": "Device.X_Untyped", "value": "plain"},
        ],
        "parameter_key": "k1",
    },
    "GetParameterValues": {
        "parameter_names": ["Device.DeviceInfo.SoftwareVersion", "Device.WiFi.", ""]
    },
    "GetParameterNames": {"parameter_path": "Device.", "next_level": True},
    "SetParameterAttributes": {
        "parameters": [
            {"name": "Device.WiFi.SSID.1.SSID", "notification": 2, "access_list": ["Subscriber"]},
            {"name": "Device.Hosts.", "notification": 1},
            {"name": "Device.X", "access_list": [], "notification_change": False},
        ]
    },
    "GetParameterAttributes": {"parameter_names": ["Device.WiFi.SSID.1.SSID", "Device.Hosts."]},
    "AddObject": {"object_name": "Device.IP.Interface.", "parameter_key": "k2"},
    "DeleteObject": {"object_name": "Device.IP.Interface.3.", "parameter_key": "k3"},
    "Download": {
        "command_key": "fw-42",
        "file_type": "1 Firmware Upgrade Image",
        "url": "http://127.0.0.1:8080/fw.bin",
        "username": "u",
        "password": "p",
        "file_size": 8388608,
        "target_file_name": "fw.bin",
        "delay_seconds": 5,
        "success_url": "http://127.0.0.1/ok",
        "failure_url": "http://127.0.0.1/ko",
    },
    "Reboot": {"command_key": "reboot-1"},
    "GetQueuedTransfers": {},
    "ScheduleInform": {"delay_seconds": 60, "command_key": "si-1"},
    "SetVouchers": {"vouchers": ["aGVsbG8=", "d29ybGQ="]},
    "GetOptions": {"option_name": "X_VOIP"},
    "Upload": {
        "command_key": "up-1",
        "file_type": "2 Vendor Log File",
        "url": "http://127.0.0.1:8080/upload",
        "username": "u",
        "password": "p",
        "delay_seconds": 0,
    },
    "FactoryReset": {},
    "GetAllQueuedTransfers": {},
    "ScheduleDownload": {
        "command_key": "sd-1",
        "file_type": "X 00D09E Bundle",
        "url": "http://127.0.0.1:8080/b",
        "username": "",
        "password": "",
        "file_size": 0,
        "target_file_name": "",
        "time_windows": [
            {"window_start": 0, "window_end": 3600},
            {
                "window_start": 7200,
                "window_end": 9000,
                "window_mode": "4 Confirmation Needed",
                "user_message": "Update tonight?",
                "max_retries": 3,
            },
        ],
    },
    "CancelTransfer": {"command_key": "sd-1"},
    "ChangeDUState": {
        "operations": [
            {
                "type": "install",
                "url": "http://127.0.0.1/du.ipk",
                "uuid": UUID,
                "username": "u",
                "password": "p",
                "execution_env_ref": "Device.SoftwareModules.ExecEnv.1.",
            },
            {"type": "update", "uuid": UUID, "version": "2.0", "url": "http://127.0.0.1/du2.ipk"},
            {"type": "uninstall", "uuid": UUID, "version": "2.0"},
        ],
        "command_key": "du-1",
    },
}


def assert_schema_valid(testcase: SynchronousTestCase, data: bytes) -> None:
    """Schema-valid, allowing one limitation of validate.py.

    Its first pass checks the envelope against the SOAP schema alone, where an xsi:type
    naming a CWMP type (ChangeDUState's ``cwmp:InstallOpStruct``) cannot resolve; its
    second pass checks the RPC against the CWMP schema, which defines those types, and
    that one must be clean.
    """
    problems = [
        p
        for p in validate_envelope(data)
        if not (
            p.startswith("envelope:")
            and "OpStruct' of the xsi:type attribute does not resolve" in p
        )
    ]
    testcase.assertEqual(problems, [], data.decode())


def parse_request(data: bytes) -> etree._Element:
    """The RPC element of an envelope we built (parsed independently of soap.py)."""
    root = etree.fromstring(data)
    body = root[-1]
    assert etree.QName(body).localname == "Body"
    assert len(body) == 1
    return body[0]
