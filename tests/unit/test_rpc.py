"""ACS→CPE RPCs: validation, schema-valid requests in every namespace, typed results."""

from __future__ import annotations

from typing import Any

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import rpc, soap
from cwmpgw.cwmp.messages import CpeFault, ParameterValue, RpcResponse, SetParameterValuesFault
from cwmpgw.cwmp.rpc import ArgumentError, ResponseError
from tests.support import cpe_envelopes
from tests.support.cpe_envelopes import Array, Typed
from tests.support.schema import (
    FULL_ARGS,
    UUID,
    assert_schema_valid,
    parse_request,
    validate_envelope,
)

NS_1_0 = "urn:dslforum-org:cwmp-1-0"
NS_1_1 = "urn:dslforum-org:cwmp-1-1"
NS_1_2 = "urn:dslforum-org:cwmp-1-2"
NS_1_3 = "urn:dslforum-org:cwmp-1-3"
ALL_NS = (NS_1_0, NS_1_1, NS_1_2, NS_1_3)
SOAP_ENC = "http://schemas.xmlsoap.org/soap/encoding/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
ARRAY_TYPE = f"{{{SOAP_ENC}}}arrayType"
XSI_TYPE = f"{{{XSI}}}type"


#: Only the required arguments.
MINIMAL_ARGS: dict[str, dict[str, Any]] = {
    "GetRPCMethods": {},
    "SetParameterValues": {"parameters": []},
    "GetParameterValues": {"parameter_names": [""]},
    "GetParameterNames": {"parameter_path": ""},
    "SetParameterAttributes": {"parameters": [{"name": "Device.A"}]},
    "GetParameterAttributes": {"parameter_names": ["Device."]},
    "AddObject": {"object_name": "Device.NAT.PortMapping."},
    "DeleteObject": {"object_name": "Device.NAT.PortMapping.1."},
    "Download": {"file_type": "3 Vendor Configuration File", "url": "http://127.0.0.1/c"},
    "Reboot": {},
    "GetQueuedTransfers": {},
    "ScheduleInform": {"delay_seconds": 1},
    "SetVouchers": {"vouchers": [""]},
    "GetOptions": {},
    "Upload": {"file_type": "1 Vendor Configuration File", "url": "http://127.0.0.1/u"},
    "FactoryReset": {},
    "GetAllQueuedTransfers": {},
    "ScheduleDownload": {
        "file_type": "2 Web Content",
        "url": "http://127.0.0.1/w",
        "time_windows": [{"window_start": 10, "window_end": 10}],
    },
    "CancelTransfer": {"command_key": ""},
    "ChangeDUState": {"operations": [{"type": "update"}]},
}

SINCE = {
    "GetAllQueuedTransfers": "1.1",
    "ScheduleDownload": "1.2",
    "CancelTransfer": "1.2",
    "ChangeDUState": "1.2",
}


def texts(el: etree._Element) -> list[str]:
    return [child.text or "" for child in el]


def names(el: etree._Element) -> list[str]:
    return [etree.QName(child).localname for child in el]


class CatalogueTests(SynchronousTestCase):
    def test_every_method(self) -> None:
        self.assertEqual(set(rpc.METHODS), set(FULL_ARGS))
        self.assertEqual(len(rpc.METHODS), 20)
        for name, spec in rpc.METHODS.items():
            self.assertEqual(spec.name, name)
            self.assertEqual(spec.since, SINCE.get(name, "1.0"), name)

    def test_available_in(self) -> None:
        spec = rpc.METHODS["GetAllQueuedTransfers"]
        self.assertEqual([spec.available_in(ns) for ns in ALL_NS], [False, True, True, True])
        spec = rpc.METHODS["ChangeDUState"]
        self.assertEqual([spec.available_in(ns) for ns in ALL_NS], [False, False, True, True])
        self.assertFalse(rpc.METHODS["Reboot"].available_in("urn:dslforum-org:cwmp-2-0"))


class BuildTests(SynchronousTestCase):
    def test_every_method_is_schema_valid_where_it_exists(self) -> None:
        built = 0
        for ns in ALL_NS:
            for method in rpc.METHODS:
                for table in (FULL_ARGS, MINIMAL_ARGS):
                    args = dict(table[method])
                    if not rpc.METHODS[method].available_in(ns):
                        with self.assertRaisesRegex(ArgumentError, f"{method} needs CWMP"):
                            rpc.build(ns, "r1", method, args)
                        continue
                    data = rpc.build(ns, f"r-{method}", method, args)
                    assert_schema_valid(self, data)
                    el = parse_request(data)
                    self.assertEqual(etree.QName(el).namespace, ns)
                    self.assertEqual(etree.QName(el).localname, method)
                    for child in el.iter():
                        if child is not el:
                            self.assertIsNone(etree.QName(child).namespace, child.tag)
                    # Every argument is present, in schema order.
                    expected = [a.element for a in rpc.METHODS[method].arguments]
                    got = names(el)
                    if method == "ChangeDUState":
                        count = len(args["operations"])
                        expected = ["Operations"] * count + ["CommandKey"]
                    self.assertEqual(got, expected, method)
                    built += 1
        self.assertEqual(built, 2 * (16 + 17 + 20 + 20))

    def test_header(self) -> None:
        data = rpc.build(NS_1_2, "acs-7", "Reboot", {}, hold_requests=True)
        root = etree.fromstring(data)
        header = root[0]
        self.assertEqual(names(header), ["ID", "HoldRequests"])
        self.assertEqual(texts(header), ["acs-7", "1"])
        self.assertTrue(data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'))
        root = etree.fromstring(rpc.build(NS_1_2, "acs-8", "Reboot", {}))
        self.assertEqual(names(root[0]), ["ID"])

    def test_set_parameter_values(self) -> None:
        el = parse_request(
            rpc.build(NS_1_2, "r", "SetParameterValues", FULL_ARGS["SetParameterValues"])
        )
        plist, key = el
        self.assertEqual(plist.get(ARRAY_TYPE), "cwmp:ParameterValueStruct[10]")
        self.assertEqual(key.text, "k1")
        got = [(s[0].text, s[1].text or "", s[1].get(XSI_TYPE)) for s in plist]
        self.assertEqual(
            got,
            [
                ("Device.ManagementServer.PeriodicInformInterval", "60", "xsd:unsignedInt"),
                ("Device.WiFi.SSID.1.Enable", "true", "xsd:boolean"),
                ("Device.WiFi.SSID.1.SSID", "MyNet", "xsd:string"),
                ("Device.X_Blob", "aGk=", "xsd:base64Binary"),
                ("Device.X_Hex", "0aff", "xsd:hexBinary"),
                ("Device.Time.X_When", "2025-01-01T00:00:00+01:00", "xsd:dateTime"),
                ("Device.X_Int", "-5", "xsd:int"),
                ("Device.X_Long", "-9000000000", "xsd:long"),
                ("Device.X_ULong", "18446744073709551615", "xsd:unsignedLong"),
                ("Device.X_Untyped", "plain", "xsd:string"),
            ],
        )
        # The CPE reads it back as we meant it.
        el = parse_request(
            rpc.build(
                NS_1_2,
                "r",
                "SetParameterValues",
                {"parameters": [{"name": "Device.A", "value": True, "type": "boolean"}]},
                boolean_digits=True,
            )
        )
        self.assertEqual(el[0][0][1].text, "1")
        empty = parse_request(rpc.build(NS_1_0, "r", "SetParameterValues", {"parameters": []}))
        self.assertEqual(empty[0].get(ARRAY_TYPE), "cwmp:ParameterValueStruct[0]")
        self.assertEqual(empty[1].text, None)  # an empty ParameterKey

    def test_names_and_paths(self) -> None:
        el = parse_request(
            rpc.build(NS_1_2, "r", "GetParameterValues", FULL_ARGS["GetParameterValues"])
        )
        self.assertEqual(el[0].get(ARRAY_TYPE), "xsd:string[3]")
        self.assertEqual(names(el[0]), ["string"] * 3)
        self.assertEqual(texts(el[0]), ["Device.DeviceInfo.SoftwareVersion", "Device.WiFi.", ""])
        el = parse_request(
            rpc.build(NS_1_2, "r", "GetParameterNames", FULL_ARGS["GetParameterNames"])
        )
        self.assertEqual(texts(el), ["Device.", "1"])  # numeric booleans, as GenieACS sends
        el = parse_request(
            rpc.build(NS_1_2, "r", "GetParameterNames", {"parameter_path": "Device."})
        )
        self.assertEqual(texts(el), ["Device.", "0"])
        el = parse_request(rpc.build(NS_1_2, "r", "AddObject", FULL_ARGS["AddObject"]))
        self.assertEqual(texts(el), ["Device.IP.Interface.", "k2"])

    def test_set_parameter_attributes(self) -> None:
        el = parse_request(
            rpc.build(NS_1_2, "r", "SetParameterAttributes", FULL_ARGS["SetParameterAttributes"])
        )
        plist = el[0]
        self.assertEqual(plist.get(ARRAY_TYPE), "cwmp:SetParameterAttributesStruct[3]")
        first, second, third = plist
        self.assertEqual(texts(first)[:4], ["Device.WiFi.SSID.1.SSID", "1", "2", "1"])
        self.assertEqual(first[4].get(ARRAY_TYPE), "xsd:string[1]")
        self.assertEqual(texts(first[4]), ["Subscriber"])
        self.assertEqual(texts(second)[:4], ["Device.Hosts.", "1", "1", "0"])
        self.assertEqual(second[4].get(ARRAY_TYPE), "xsd:string[0]")
        self.assertEqual(texts(third)[:4], ["Device.X", "0", "0", "1"])

    def test_lightweight_notification_needs_cwmp_1_2(self) -> None:
        args = {"parameters": [{"name": "Device.A", "notification": 5}]}
        for ns in (NS_1_0, NS_1_1):
            with self.assertRaises(ArgumentError) as cm:
                rpc.build(ns, "r", "SetParameterAttributes", args)
            self.assertEqual(cm.exception.path, "parameters[0].notification")
        for ns in (NS_1_2, NS_1_3):
            assert_schema_valid(self, rpc.build(ns, "r", "SetParameterAttributes", args))

    def test_download(self) -> None:
        el = parse_request(rpc.build(NS_1_2, "r", "Download", FULL_ARGS["Download"]))
        self.assertEqual(
            texts(el),
            [
                "fw-42",
                "1 Firmware Upgrade Image",
                "http://127.0.0.1:8080/fw.bin",
                "u",
                "p",
                "8388608",
                "fw.bin",
                "5",
                "http://127.0.0.1/ok",
                "http://127.0.0.1/ko",
            ],
        )
        # Defaults: all ten arguments, empty strings and zeros (as GenieACS sends them).
        el = parse_request(rpc.build(NS_1_0, "r", "Download", MINIMAL_ARGS["Download"]))
        self.assertEqual(
            texts(el),
            ["", "3 Vendor Configuration File", "http://127.0.0.1/c", "", "", "0", "", "0", "", ""],
        )

    def test_file_types_per_namespace(self) -> None:
        newer = [
            ("Download", "4 Tone File"),
            ("Download", "5 Ringer File"),
            ("Upload", "3 Vendor Configuration File 2"),
            ("Upload", "4 Vendor Log File 10"),
        ]
        for method, file_type in newer:
            args = {"file_type": file_type, "url": "http://127.0.0.1/x"}
            for ns in (NS_1_0, NS_1_1):
                with self.assertRaises(ArgumentError) as cm:
                    rpc.build(ns, "r", method, args)
                self.assertEqual(cm.exception.path, "file_type")
            assert_schema_valid(self, rpc.build(NS_1_2, "r", method, args))
        for ns in ALL_NS:  # vendor types exist everywhere
            args = {"file_type": "X 00D09E Special Image", "url": "http://127.0.0.1/x"}
            assert_schema_valid(self, rpc.build(ns, "r", "Download", args))
            assert_schema_valid(self, rpc.build(ns, "r", "Upload", args))

    def test_schedule_download(self) -> None:
        el = parse_request(
            rpc.build(NS_1_2, "r", "ScheduleDownload", FULL_ARGS["ScheduleDownload"])
        )
        windows = el[7]
        self.assertEqual(windows.get(ARRAY_TYPE), "cwmp:TimeWindowStruct[2]")
        self.assertEqual(texts(windows[0]), ["0", "3600", "1 At Any Time", "", "-1"])
        self.assertEqual(
            texts(windows[1]), ["7200", "9000", "4 Confirmation Needed", "Update tonight?", "3"]
        )

    def test_change_du_state(self) -> None:
        el = parse_request(rpc.build(NS_1_3, "r", "ChangeDUState", FULL_ARGS["ChangeDUState"]))
        install, update, uninstall, key = el
        self.assertEqual(install.get(XSI_TYPE), "cwmp:InstallOpStruct")
        self.assertEqual(names(install), ["URL", "UUID", "Username", "Password", "ExecutionEnvRef"])
        self.assertEqual(update.get(XSI_TYPE), "cwmp:UpdateOpStruct")
        self.assertEqual(names(update), ["UUID", "Version", "URL"])
        self.assertEqual(uninstall.get(XSI_TYPE), "cwmp:UninstallOpStruct")
        self.assertEqual(texts(uninstall), [UUID, "2.0"])
        self.assertEqual(key.text, "du-1")
        # The xsi:type prefix resolves to the envelope's cwmp namespace.
        self.assertEqual(install.nsmap["cwmp"], NS_1_3)

    def test_vouchers_and_options(self) -> None:
        el = parse_request(rpc.build(NS_1_0, "r", "SetVouchers", FULL_ARGS["SetVouchers"]))
        self.assertEqual(el[0].get(ARRAY_TYPE), "soap-enc:base64[2]")
        self.assertEqual(names(el[0]), ["base64", "base64"])
        el = parse_request(rpc.build(NS_1_0, "r", "GetOptions", {}))
        self.assertEqual(texts(el), [""])

    def test_unknown_method_or_namespace(self) -> None:
        with self.assertRaises(ArgumentError) as cm:
            rpc.build(NS_1_2, "r", "Inform", {})
        self.assertEqual(cm.exception.path, "")
        self.assertIn("unknown method 'Inform'", str(cm.exception))
        with self.assertRaisesRegex(ArgumentError, "unknown CWMP namespace"):
            rpc.build("urn:dslforum-org:cwmp-9-9", "r", "Reboot", {})

    def test_build_validates(self) -> None:
        with self.assertRaises(ArgumentError) as cm:
            rpc.build(NS_1_2, "r", "Reboot", {"command_key": "x" * 33})
        self.assertEqual(cm.exception.path, "command_key")


class ValidateTests(SynchronousTestCase):
    def test_defaults_and_idempotence(self) -> None:
        for method in rpc.METHODS:
            for table in (FULL_ARGS, MINIMAL_ARGS):
                checked = rpc.validate(method, table[method])
                self.assertEqual(list(checked), [a.key for a in rpc.METHODS[method].arguments])
                self.assertEqual(rpc.validate(method, checked), checked, method)
        self.assertEqual(
            rpc.validate("Download", MINIMAL_ARGS["Download"]),
            {
                "command_key": "",
                "file_type": "3 Vendor Configuration File",
                "url": "http://127.0.0.1/c",
                "username": "",
                "password": "",
                "file_size": 0,
                "target_file_name": "",
                "delay_seconds": 0,
                "success_url": "",
                "failure_url": "",
            },
        )
        self.assertEqual(
            rpc.validate(
                "SetParameterAttributes", {"parameters": [{"name": "A", "notification": "2"}]}
            ),
            {
                "parameters": [
                    {
                        "name": "A",
                        "notification_change": True,
                        "notification": 2,
                        "access_list_change": False,
                        "access_list": [],
                    }
                ]
            },
        )
        self.assertEqual(
            rpc.validate(
                "SetParameterValues",
                {"parameters": [{"name": "A", "value": "1", "type": "boolean"}]},
            ),
            {
                "parameters": [{"name": "A", "value": "true", "type": "xsd:boolean"}],
                "parameter_key": "",
            },
        )
        self.assertEqual(
            rpc.validate("GetParameterNames", {"parameter_path": "Device.", "next_level": "true"}),
            {"parameter_path": "Device.", "next_level": True},
        )
        # null is "not given".
        self.assertEqual(rpc.validate("Reboot", {"command_key": None}), {"command_key": ""})

    def test_errors(self) -> None:
        long = "x" * 257
        cases: list[tuple[str, Any, str, str]] = [
            ("Nope", {}, "", "unknown method"),
            ("Reboot", [], "", "must be an object"),
            ("Reboot", {"commandKey": "x"}, "commandKey", "unknown argument of Reboot"),
            ("GetRPCMethods", {"x": 1}, "x", "unknown argument"),
            ("Reboot", {"command_key": 5}, "command_key", "expected a string"),
            ("Reboot", {"command_key": "x" * 33}, "command_key", "more than the maximum 32"),
            ("FactoryReset", {"y": None}, "y", "unknown argument"),
            ("GetQueuedTransfers", {"a": 1}, "a", "unknown argument"),
            ("GetAllQueuedTransfers", {"a": 1}, "a", "unknown argument"),
            ("SetParameterValues", {}, "parameters", "missing"),
            ("SetParameterValues", {"parameters": "Device.A"}, "parameters", "expected a list"),
            (
                "SetParameterValues",
                {"parameters": [["Device.A", 1]]},
                "parameters[0]",
                "expected an object",
            ),
            ("SetParameterValues", {"parameters": [{"value": 1}]}, "parameters[0].name", "missing"),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A"}]},
                "parameters[0].value",
                "missing",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A", "value": 1, "typ": "int"}]},
                "parameters[0].typ",
                "unknown key",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A", "value": 1, "type": "float"}]},
                "parameters[0].type",
                "unknown type",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A.", "value": 1}]},
                "parameters[0].name",
                "not an object path",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": long, "value": 1}]},
                "parameters[0].name",
                "maximum 256",
            ),
            (
                "SetParameterValues",
                {
                    "parameters": [
                        {"name": "A", "value": 1},
                        {"name": "B", "value": 2},
                        {"name": "C", "value": -1, "type": "unsignedInt"},
                    ]
                },
                "parameters[2].value",
                "out of range",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A", "value": "abcd", "type": "string(3)"}]},
                "parameters[0].value",
                "maximum 3",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A", "value": "abc", "max_length": 2}]},
                "parameters[0].value",
                "maximum 2",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A", "value": 1, "max_length": -2}]},
                "parameters[0].max_length",
                "out of range",
            ),
            (
                "SetParameterValues",
                {"parameters": [{"name": "A", "value": 1}, {"name": "A", "value": 2}]},
                "parameters[1].name",
                "set twice",
            ),
            (
                "SetParameterValues",
                {"parameters": [], "parameter_key": "k" * 33},
                "parameter_key",
                "maximum 32",
            ),
            ("GetParameterValues", {"parameter_names": []}, "parameter_names", "at least 1 item"),
            (
                "GetParameterValues",
                {"parameter_names": ["A", 3]},
                "parameter_names[1]",
                "expected a string",
            ),
            (
                "GetParameterValues",
                {"parameter_names": ["A", long]},
                "parameter_names[1]",
                "maximum 256",
            ),
            (
                "GetParameterValues",
                {"parameter_names": ["A\x00"]},
                "parameter_names[0]",
                "cannot be sent",
            ),
            ("GetParameterNames", {}, "parameter_path", "missing"),
            (
                "GetParameterNames",
                {"parameter_path": "A", "next_level": "maybe"},
                "next_level",
                "boolean",
            ),
            ("SetParameterAttributes", {"parameters": []}, "parameters", "at least 1"),
            (
                "SetParameterAttributes",
                {"parameters": [{"name": "A", "notification": 7}]},
                "parameters[0].notification",
                "out of range [0, 6]",
            ),
            (
                "SetParameterAttributes",
                {"parameters": [{"name": "A", "notification_change": True}]},
                "parameters[0].notification",
                "missing",
            ),
            (
                "SetParameterAttributes",
                {"parameters": [{"name": "A", "access_list_change": True}]},
                "parameters[0].access_list",
                "missing",
            ),
            (
                "SetParameterAttributes",
                {"parameters": [{"name": "A", "access_list": ["Admin"]}]},
                "parameters[0].access_list[0]",
                "Subscriber",
            ),
            (
                "GetParameterAttributes",
                {"parameter_names": "A"},
                "parameter_names",
                "expected a list",
            ),
            (
                "AddObject",
                {"object_name": "Device.IP.Interface"},
                "object_name",
                "must end with '.'",
            ),
            (
                "AddObject",
                {"object_name": "Device." + "x" * 250 + "."},
                "object_name",
                "maximum 256",
            ),
            ("DeleteObject", {}, "object_name", "missing"),
            (
                "DeleteObject",
                {"object_name": "Device.A.1.", "parameter_key": 1},
                "parameter_key",
                "expected a string",
            ),
            ("Download", {"url": "http://h/"}, "file_type", "missing"),
            ("Download", {"file_type": "1 Firmware Upgrade Image"}, "url", "missing"),
            (
                "Download",
                {"file_type": "1 Firmware upgrade image", "url": "u"},
                "file_type",
                "unknown file type",
            ),
            ("Download", {"file_type": "X 00d09e x", "url": "u"}, "file_type", "unknown file type"),
            ("Download", {"file_type": "2 Web Content", "url": " "}, "url", "must not be empty"),
            ("Upload", {"file_type": "2 Vendor Log File", "url": ""}, "url", "must not be empty"),
            (
                "Download",
                {"file_type": "2 Vendor Log File", "url": "u"},
                "file_type",
                "unknown file type",
            ),
            ("Download", {"file_type": "2 Web Content", "url": "u" * 257}, "url", "maximum 256"),
            (
                "Download",
                {"file_type": "2 Web Content", "url": "u", "file_size": -1},
                "file_size",
                "out of range",
            ),
            (
                "Download",
                {"file_type": "2 Web Content", "url": "u", "file_size": 2**32},
                "file_size",
                "out of range",
            ),
            (
                "Download",
                {"file_type": "2 Web Content", "url": "u", "delay_seconds": 1.5},
                "delay_seconds",
                "unsigned integer",
            ),
            (
                "Download",
                {"file_type": "2 Web Content", "url": "u", "delay_seconds": True},
                "delay_seconds",
                "unsigned integer",
            ),
            (
                "Download",
                {"file_type": "2 Web Content", "url": "u", "password": "p" * 257},
                "password",
                "maximum 256",
            ),
            (
                "Download",
                {"file_type": "2 Web Content", "url": "u", "failure_url": "f" * 257},
                "failure_url",
                "maximum 256",
            ),
            (
                "Upload",
                {"file_type": "1 Firmware Upgrade Image", "url": "u"},
                "file_type",
                "unknown file type",
            ),
            (
                "Upload",
                {"file_type": "3 Vendor Configuration File 0", "url": "u"},
                "file_type",
                "unknown file type",
            ),
            (
                "Upload",
                {"file_type": "3 Vendor Configuration File <i>", "url": "u"},
                "file_type",
                "unknown file type",
            ),
            ("ScheduleInform", {}, "delay_seconds", "missing"),
            ("ScheduleInform", {"delay_seconds": 0}, "delay_seconds", "at least 1"),
            ("SetVouchers", {"vouchers": []}, "vouchers", "at least 1"),
            ("SetVouchers", {"vouchers": ["not base64!"]}, "vouchers[0]", "not valid base64"),
            ("GetOptions", {"option_name": "o" * 65}, "option_name", "maximum 64"),
            (
                "ScheduleDownload",
                {"file_type": "2 Web Content", "url": "u"},
                "time_windows",
                "missing",
            ),
            (
                "ScheduleDownload",
                {"file_type": "2 Web Content", "url": "u", "time_windows": []},
                "time_windows",
                "at least 1",
            ),
            (
                "ScheduleDownload",
                {
                    "file_type": "2 Web Content",
                    "url": "u",
                    "time_windows": [{"window_start": 0, "window_end": 1}] * 3,
                },
                "time_windows",
                "at most 2",
            ),
            (
                "ScheduleDownload",
                {
                    "file_type": "2 Web Content",
                    "url": "u",
                    "time_windows": [{"window_start": 5, "window_end": 1}],
                },
                "time_windows[0].window_end",
                "ends before",
            ),
            (
                "ScheduleDownload",
                {
                    "file_type": "2 Web Content",
                    "url": "u",
                    "time_windows": [
                        {"window_start": 0, "window_end": 10},
                        {"window_start": 5, "window_end": 20},
                    ],
                },
                "time_windows[1].window_start",
                "overlaps",
            ),
            (
                "ScheduleDownload",
                {
                    "file_type": "2 Web Content",
                    "url": "u",
                    "time_windows": [{"window_start": 0, "window_end": 1, "window_mode": "Now"}],
                },
                "time_windows[0].window_mode",
                "unknown mode",
            ),
            (
                "ScheduleDownload",
                {
                    "file_type": "2 Web Content",
                    "url": "u",
                    "time_windows": [{"window_start": 0, "window_end": 1, "max_retries": -2}],
                },
                "time_windows[0].max_retries",
                "out of range",
            ),
            (
                "ScheduleDownload",
                {"file_type": "2 Web Content", "url": "u", "time_windows": [{"window_start": 0}]},
                "time_windows[0].window_end",
                "missing",
            ),
            ("CancelTransfer", {}, "command_key", "missing"),
            ("ChangeDUState", {"operations": []}, "operations", "at least 1"),
            (
                "ChangeDUState",
                {"operations": [{"type": "reinstall"}]},
                "operations[0].type",
                "install",
            ),
            (
                "ChangeDUState",
                {"operations": [{"type": "install"}]},
                "operations[0].url",
                "missing",
            ),
            (
                "ChangeDUState",
                {"operations": [{"type": "install", "url": ""}]},
                "operations[0].url",
                "must not be empty",
            ),
            (
                "ChangeDUState",
                {"operations": [{"type": "uninstall"}]},
                "operations[0].uuid",
                "missing",
            ),
            (
                "ChangeDUState",
                {"operations": [{"type": "uninstall", "uuid": "1234"}]},
                "operations[0].uuid",
                "not a UUID",
            ),
            (
                "ChangeDUState",
                {"operations": [{"type": "uninstall", "uuid": UUID, "url": "u"}]},
                "operations[0].url",
                "unknown key",
            ),
            (
                "ChangeDUState",
                {"operations": [{"type": "update", "version": "v" * 33}]},
                "operations[0].version",
                "maximum 32",
            ),
        ]
        covered = set()
        for method, args, path, message in cases:
            with self.assertRaises(ArgumentError, msg=f"{method} {args}") as cm:
                rpc.validate(method, args)
            self.assertEqual(cm.exception.path, path, f"{method} {args}: {cm.exception}")
            self.assertIn(message, str(cm.exception), f"{method} {args}")
            self.assertIsInstance(cm.exception, ValueError)
            covered.add(method)
        self.assertEqual(covered - {"Nope"}, set(rpc.METHODS))

    def test_error_text(self) -> None:
        with self.assertRaises(ArgumentError) as cm:
            rpc.validate(
                "SetParameterValues", {"parameters": [{"name": "A", "value": "x", "type": "int"}]}
            )
        self.assertEqual(cm.exception.path, "parameters[0].value")
        self.assertEqual(
            str(cm.exception), "parameters[0].value: int: expected an integer, got 'x'"
        )
        self.assertEqual(cm.exception.message, "int: expected an integer, got 'x'")


def respond(method: str, body: bytes) -> RpcResponse:
    message = soap.parse_envelope(body).message
    assert isinstance(message, RpcResponse), message
    return message


class ResultTests(SynchronousTestCase):
    def test_every_method(self) -> None:
        expected: dict[str, dict[str, Any]] = {
            "GetRPCMethods": {
                "methods": [
                    "GetRPCMethods",
                    "SetParameterValues",
                    "GetParameterValues",
                    "GetParameterNames",
                    "SetParameterAttributes",
                    "GetParameterAttributes",
                    "AddObject",
                    "DeleteObject",
                    "Download",
                    "Reboot",
                    "FactoryReset",
                    "Upload",
                    "ScheduleInform",
                ]
            },
            "SetParameterValues": {"status": 0},
            "GetParameterValues": {
                "parameters": [
                    {"name": n, "value": v, "type": t}
                    for n, v, t in cpe_envelopes.DEFAULT_PARAMETERS
                ]
            },
            "GetParameterNames": {
                "parameters": [
                    {"name": "Device.WiFi.", "writable": False},
                    {"name": "Device.WiFi.SSID.", "writable": False},
                    {"name": "Device.WiFi.SSID.1.", "writable": False},
                    {"name": "Device.WiFi.SSID.1.Enable", "writable": True},
                    {"name": "Device.WiFi.SSID.1.SSID", "writable": True},
                ]
            },
            "SetParameterAttributes": {},
            "GetParameterAttributes": {
                "parameters": [
                    {
                        "name": "Device.WiFi.SSID.1.SSID",
                        "notification": 2,
                        "access_list": ["Subscriber"],
                    },
                    {
                        "name": "Device.DeviceInfo.SoftwareVersion",
                        "notification": 0,
                        "access_list": [],
                    },
                ]
            },
            "AddObject": {"instance_number": 3, "status": 0},
            "DeleteObject": {"status": 0},
            "Download": {
                "status": 1,
                "start_time": "0001-01-01T00:00:00Z",
                "complete_time": "0001-01-01T00:00:00Z",
            },
            "Reboot": {},
            "GetQueuedTransfers": {
                "transfers": [
                    {"command_key": "fw-42", "state": 2},
                    {"command_key": "cfg-1", "state": 1},
                ]
            },
            "ScheduleInform": {},
            "SetVouchers": {},
            "GetOptions": {
                "options": [
                    {
                        "option_name": "X_VOIP",
                        "voucher_sn": 17,
                        "state": 1,
                        "mode": 2,
                        "start_date": "2025-01-01T00:00:00Z",
                        "expiration_date": "2026-01-01T00:00:00Z",
                        "is_transferable": 0,
                    },
                    {
                        "option_name": "X_IPTV",
                        "voucher_sn": 18,
                        "state": 0,
                        "mode": 0,
                        "start_date": "2025-01-01T00:00:00Z",
                        "expiration_date": None,
                        "is_transferable": 1,
                    },
                ]
            },
            "Upload": {
                "status": 1,
                "start_time": "0001-01-01T00:00:00Z",
                "complete_time": "0001-01-01T00:00:00Z",
            },
            "FactoryReset": {},
            "GetAllQueuedTransfers": {
                "transfers": [
                    {
                        "command_key": "fw-42",
                        "state": 2,
                        "is_download": True,
                        "file_type": "1 Firmware Upgrade Image",
                        "file_size": 8388608,
                        "target_file_name": "fw.bin",
                    },
                    {
                        "command_key": "",
                        "state": 1,
                        "is_download": False,
                        "file_type": "4 Vendor Log File",
                        "file_size": 0,
                        "target_file_name": "",
                    },
                ]
            },
            "ScheduleDownload": {},
            "CancelTransfer": {},
            "ChangeDUState": {},
        }
        self.assertEqual(set(expected), set(rpc.METHODS))
        for ns in ALL_NS:
            for method, result in expected.items():
                if not rpc.METHODS[method].available_in(ns):
                    continue
                data = cpe_envelopes.typical_response(method, "a1", namespace=ns)
                self.assertEqual(validate_envelope(data), [], f"{ns} {method}")
                self.assertEqual(
                    rpc.result(method, respond(method, data)), result, f"{ns} {method}"
                )

    def test_variants(self) -> None:
        data = cpe_envelopes.typical_response(
            "Download",
            "a",
            status=0,
            start_time="2025-05-25T22:30:01Z",
            complete_time="2025-05-25T22:31:47Z",
        )
        self.assertEqual(
            rpc.result("Download", respond("Download", data)),
            {
                "status": 0,
                "start_time": "2025-05-25T22:30:01Z",
                "complete_time": "2025-05-25T22:31:47Z",
            },
        )
        for method, key in (
            ("GetRPCMethods", "methods"),
            ("GetQueuedTransfers", "transfers"),
            ("GetOptions", "options"),
            ("GetParameterValues", "parameters"),
        ):
            data = cpe_envelopes.typical_response(method, "a", **{key: ()})
            if method != "GetRPCMethods":  # the schema wants at least one method
                self.assertEqual(validate_envelope(data), [])
            self.assertEqual(rpc.result(method, respond(method, data)), {key: []}, method)

    def test_tolerant_input(self) -> None:
        # No arrayType, qualified children, pretty-printing, a lone item, "true" booleans.
        data = (
            b'<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"'
            b' xmlns:cwmp="urn:dslforum-org:cwmp-1-0"><soap-env:Body>'
            b"<cwmp:GetParameterNamesResponse>\n  <cwmp:ParameterList>\n"
            b"    <ParameterInfoStruct><Name> Device.A </Name><Writable>true</Writable></ParameterInfoStruct>\n"
            b"  </cwmp:ParameterList>\n</cwmp:GetParameterNamesResponse></soap-env:Body></soap-env:Envelope>"
        )
        self.assertEqual(
            rpc.result("GetParameterNames", respond("GetParameterNames", data)),
            {"parameters": [{"name": "Device.A", "writable": True}]},
        )
        data = cpe_envelopes.response(
            "GetParameterAttributes",
            "a",
            [
                (
                    "ParameterList",
                    [
                        (
                            "ParameterAttributeStruct",
                            [("Name", "A"), ("Notification", "1"), ("AccessList", "")],
                        )
                    ],
                )
            ],
        )
        self.assertEqual(
            rpc.result("GetParameterAttributes", respond("GetParameterAttributes", data)),
            {"parameters": [{"name": "A", "notification": 1, "access_list": []}]},
        )
        # Missing Start/CompleteTime read as the unknown time.
        data = cpe_envelopes.response("Upload", "a", [("Status", "1")])
        self.assertEqual(
            rpc.result("Upload", respond("Upload", data)),
            {
                "status": 1,
                "start_time": "0001-01-01T00:00:00Z",
                "complete_time": "0001-01-01T00:00:00Z",
            },
        )

    def test_malformed(self) -> None:
        cases: list[tuple[str, Any, str]] = [
            ("AddObject", [("Status", "0")], "AddObjectResponse has no InstanceNumber"),
            (
                "AddObject",
                [("InstanceNumber", "x"), ("Status", "0")],
                "InstanceNumber is not a number",
            ),
            ("AddObject", [("InstanceNumber", "0"), ("Status", "0")], "less than 1"),
            ("SetParameterValues", [("Status", "ok")], "Status is not a number"),
            ("SetParameterValues", [], "has no Status"),
            ("DeleteObject", [("Status", "2")], "Status is 2, not one of [0, 1]"),
            ("Download", [("Status", "")], "Status is not a number"),
            (
                "GetParameterNames",
                [
                    (
                        "ParameterList",
                        Array("cwmp:ParameterInfoStruct", [[("Name", "A"), ("Writable", "yes")]]),
                    )
                ],
                "Writable is not a boolean",
            ),
            (
                "GetQueuedTransfers",
                [("TransferList", Array("cwmp:QueuedTransferStruct", [[("State", "1")]]))],
                "TransferList[0] has no CommandKey",
            ),
            (
                "GetQueuedTransfers",
                [("TransferList", Array("cwmp:QueuedTransferStruct", ["A"]))],
                "TransferList[0] is not a structure",
            ),
            ("GetParameterNames", [], "has no ParameterList"),
            ("GetParameterValues", [], "has no ParameterList"),
            (
                "GetParameterAttributes",
                [
                    (
                        "ParameterList",
                        Array(
                            "cwmp:ParameterAttributeStruct",
                            [
                                [
                                    ("Name", "A"),
                                    ("Notification", "9"),
                                    ("AccessList", Array("xsd:string")),
                                ]
                            ],
                        ),
                    )
                ],
                "Notification is 9",
            ),
            ("GetRPCMethods", [], "has no MethodList"),
            (
                "GetRPCMethods",
                [("MethodList", Array("xsd:string", [[("x", "y")]]))],
                "MethodList[0] is not a simple value",
            ),
            (
                "GetQueuedTransfers",
                [
                    (
                        "TransferList",
                        Array("cwmp:QueuedTransferStruct", [[("CommandKey", "k"), ("State", "4")]]),
                    )
                ],
                "State is 4",
            ),
            (
                "GetAllQueuedTransfers",
                [
                    (
                        "TransferList",
                        Array(
                            "cwmp:AllQueuedTransferStruct",
                            [[("CommandKey", "k"), ("State", "1"), ("IsDownload", "x")]],
                        ),
                    )
                ],
                "IsDownload is not a boolean",
            ),
            (
                "GetOptions",
                [("OptionList", Array("cwmp:OptionStruct", [[("OptionName", "o")]]))],
                "has no VoucherSN",
            ),
        ]
        for method, children, message in cases:
            response = respond(method, cpe_envelopes.response(method, "a", children))
            with self.assertRaises(ResponseError, msg=f"{method} {children}") as cm:
                rpc.result(method, response)
            self.assertIn(message, str(cm.exception), method)
            self.assertIsInstance(cm.exception, ValueError)

    def test_codec_rejects_nameless_structs(self) -> None:
        data = cpe_envelopes.response(
            "GetParameterNames",
            "a",
            [("ParameterList", Array("cwmp:ParameterInfoStruct", [[("Writable", "1")]]))],
        )
        with self.assertRaises(soap.InvalidMessage):
            soap.parse_envelope(data)

    def test_wrong_method(self) -> None:
        response = respond("Reboot", cpe_envelopes.typical_response("Reboot", "a"))
        with self.assertRaisesRegex(ResponseError, "RebootResponse does not answer FactoryReset"):
            rpc.result("FactoryReset", response)
        with self.assertRaises(ArgumentError):
            rpc.result("Inform", response)

    def test_hand_made_responses(self) -> None:
        """A response built without the codec (no body tree) is still readable."""
        self.assertEqual(
            rpc.result(
                "AddObject", RpcResponse("AddObject", {"InstanceNumber": "4", "Status": "1"})
            ),
            {"instance_number": 4, "status": 1},
        )
        self.assertEqual(
            rpc.result(
                "GetParameterNames",
                RpcResponse(
                    "GetParameterNames", parameters=(ParameterValue("A", "0", "xsd:boolean"),)
                ),
            ),
            {"parameters": [{"name": "A", "writable": False}]},
        )
        self.assertEqual(
            rpc.result(
                "GetParameterAttributes",
                RpcResponse(
                    "GetParameterAttributes", parameters=(ParameterValue("A", "2", "xsd:int"),)
                ),
            ),
            {"parameters": [{"name": "A", "notification": 2, "access_list": []}]},
        )
        self.assertEqual(
            rpc.result("GetParameterValues", RpcResponse("GetParameterValues")), {"parameters": []}
        )


class FaultTests(SynchronousTestCase):
    def test_set_parameter_values_fault(self) -> None:
        data = cpe_envelopes.cpe_fault(
            "a",
            9003,
            "",
            (
                ("Device.A", 9007, "Invalid parameter value"),
                ("Device.B", 9008, ""),
                ("Device.C", 9801, ""),
            ),
        )
        self.assertEqual(validate_envelope(data), [])
        message = soap.parse_envelope(data).message
        assert isinstance(message, CpeFault)
        self.assertEqual(
            rpc.fault(message),
            {
                "code": 9003,
                "string": "Invalid arguments",
                "parameters": [
                    {"name": "Device.A", "code": 9007, "string": "Invalid parameter value"},
                    {
                        "name": "Device.B",
                        "code": 9008,
                        "string": "Attempt to set a non-writable parameter",
                    },
                    {"name": "Device.C", "code": 9801, "string": "Vendor-specific fault"},
                ],
            },
        )

    def test_strings_filled_in(self) -> None:
        self.assertEqual(
            rpc.fault(CpeFault(9005, "", (SetParameterValuesFault("X", 9006, ""),))),
            {
                "code": 9005,
                "string": "Invalid parameter name",
                "parameters": [{"name": "X", "code": 9006, "string": "Invalid parameter type"}],
            },
        )
        self.assertEqual(
            rpc.fault(CpeFault(9010, "server said no")),
            {"code": 9010, "string": "server said no", "parameters": []},
        )


class BodyTreeTests(SynchronousTestCase):
    """RpcResponse.body, the generic tree the codec builds for every response."""

    def test_shapes(self) -> None:
        data = cpe_envelopes.response(
            "X_Vendor",
            "a",
            [
                ("Leaf", "  text  "),
                ("Empty", ""),
                ("EmptyArray", Array("cwmp:Thing")),
                ("Struct", [("A", "1"), ("B", [("C", "2")])]),
                ("Repeated", [("Item", "1"), ("Item", "2")]),
                ("Mixed", [("K", "k"), ("V", "1"), ("V", "2")]),
                ("Twice", "1"),
                ("Twice", "2"),
                ("ParameterList", _pvs([("A", " padded ", "xsd:string"), ("B", " 5 ", "xsd:int")])),
                ("Values", _pvs([("A", " padded ", "xsd:string")])),
                ("Array", Array("cwmp:Pair", [[("K", "k")]])),
                ("MethodList", [("string", "Reboot")]),  # a known container, no arrayType
                ("TransferList", ""),
            ],
        )
        message = respond("X_Vendor", data)
        self.assertEqual(
            message.body,
            {
                "Leaf": "text",
                "Empty": "",
                "EmptyArray": [],
                "Struct": {"A": "1", "B": {"C": "2"}},
                "Repeated": ["1", "2"],
                "Mixed": {"K": "k", "V": ["1", "2"]},
                "Twice": ["1", "2"],
                # ParameterList values as in ``parameters``: strings keep their spaces.
                "ParameterList": [{"Name": "A", "Value": " padded "}, {"Name": "B", "Value": "5"}],
                "Values": [{"Name": "A", "Value": "padded"}],
                "Array": [{"K": "k"}],
                "MethodList": ["Reboot"],
                "TransferList": [],
            },
        )
        # The existing fields keep their meaning.
        self.assertEqual(
            message.parameters,
            (ParameterValue("A", " padded ", "xsd:string"), ParameterValue("B", "5", "xsd:int")),
        )
        self.assertEqual(message.fields["Leaf"], "text")
        self.assertEqual(message.fields["Twice"], "1")

    def test_empty_and_not_compared(self) -> None:
        message = respond("Reboot", cpe_envelopes.typical_response("Reboot", "a"))
        self.assertEqual(message.body, {})
        self.assertEqual(message, RpcResponse("Reboot"))  # body is not part of equality

    def test_parameter_list_without_value_structs(self) -> None:
        data = cpe_envelopes.typical_response("GetParameterAttributes", "a")
        body = respond("GetParameterAttributes", data).body
        self.assertEqual(
            body["ParameterList"][0],
            {"Name": "Device.WiFi.SSID.1.SSID", "Notification": "2", "AccessList": ["Subscriber"]},
        )


def _pvs(parameters: list[tuple[str, str, str]]) -> Array:
    return Array(
        "cwmp:ParameterValueStruct",
        [[("Name", n), ("Value", Typed(v, t))] for n, v, t in parameters],
    )


class ArgumentSchemaTests(SynchronousTestCase):
    """The JSON Schemas come from the table the checks use: they agree on every sample."""

    def test_every_kind_has_a_schema(self) -> None:
        self.assertEqual(set(rpc._KIND_SCHEMAS), set(rpc._CHECKERS))

    def test_what_validate_accepts_the_schema_accepts(self) -> None:
        from tests.support.json_schema import errors
        from tests.support.nbikit import EXAMPLE_ARGS

        for method in rpc.METHODS:
            schema = rpc.arguments_schema(method)
            args = EXAMPLE_ARGS[method]
            checked = rpc.validate(method, args)
            self.assertEqual(errors(schema, schema, args), [], method)
            self.assertEqual(errors(schema, schema, checked), [], (method, checked))
            # Every optional argument may be null (left out); no required one may be.
            spec = rpc.METHODS[method]
            nulls = {a.key: None for a in spec.arguments if not a.required}
            self.assertEqual(errors(schema, schema, {**args, **nulls}), [], method)
            rpc.validate(method, {**args, **nulls})
            for arg in spec.arguments:
                if arg.required:
                    without = {k: v for k, v in args.items() if k != arg.key}
                    self.assertRaises(ArgumentError, rpc.validate, method, without)
                    self.assertTrue(errors(schema, schema, without), (method, arg.key))

    def test_what_validate_refuses_the_schema_refuses(self) -> None:
        from tests.support.json_schema import errors
        from tests.support.nbikit import BAD_ARGS

        for method, args in BAD_ARGS:
            if method not in rpc.METHODS:
                continue
            schema = rpc.arguments_schema(method)
            self.assertRaises(ArgumentError, rpc.validate, method, args)
            self.assertTrue(errors(schema, schema, args), (method, args))
            self.assertTrue(errors(schema, schema, {**args, "unknown": 1}), method)
