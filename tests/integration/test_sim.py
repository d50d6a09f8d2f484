"""The CPE simulator: its answers (schema-valid, CPE-correct), its memory, its retry
schedule, and whole fleets against the real gateway over TLS with a real Redis.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
import tracemalloc
import urllib.error
import urllib.request
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from cwmpgw.cwmp import rpc, soap
from cwmpgw.cwmp.messages import CpeFault, DeviceId, RpcResponse
from cwmpgw.sim import __main__ as cli
from cwmpgw.sim.datamodel import builtin_template, load_csv, parse_csv
from cwmpgw.sim.device import (
    Behaviour,
    SessionFailed,
    SimDevice,
    credential_templates,
    read_credentials_csv,
    retry_wait_range,
)
from cwmpgw.sim.fleet import Fleet, Rate, Storm
from tests.support.fleetkit import EC220, FleetGatewayBase
from tests.support.paths import DATA
from tests.support.schema import assert_valid, validate_envelope

BM632W = str(DATA / "data_model_202BC1-BM632w-8KA8WA1151100043.csv")
FILE = "http://127.0.0.1:8080/"

#: One call of every ACS→CPE RPC (all valid for the EC220 data model).
EVERY_RPC: list[tuple[str, dict[str, Any]]] = [
    ("GetRPCMethods", {}),
    ("GetParameterNames", {"parameter_path": "Device.WiFi.", "next_level": True}),
    ("GetParameterValues", {"parameter_names": ["Device.WiFi.SSID.1.SSID", "Device.Time."]}),
    ("SetParameterValues", {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "x"}]}),
    ("GetParameterAttributes", {"parameter_names": ["Device.WiFi.SSID.1."]}),
    (
        "SetParameterAttributes",
        {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "notification": 2}]},
    ),
    ("AddObject", {"object_name": "Device.WiFi.SSID."}),
    ("DeleteObject", {"object_name": "Device.WiFi.SSID.3."}),
    ("Download", {"file_type": "1 Firmware Upgrade Image", "url": FILE + "fw.bin"}),
    ("Upload", {"file_type": "1 Vendor Configuration File", "url": FILE + "up"}),
    ("ScheduleInform", {"delay_seconds": 60, "command_key": "si"}),
    (
        "ScheduleDownload",
        {
            "command_key": "sd",
            "file_type": "1 Firmware Upgrade Image",
            "url": FILE + "fw2.bin",
            "time_windows": [{"window_start": 3600, "window_end": 7200}],
        },
    ),
    ("GetQueuedTransfers", {}),
    ("GetAllQueuedTransfers", {}),
    ("CancelTransfer", {"command_key": "sd"}),
    ("ChangeDUState", {"operations": [{"type": "install", "url": FILE + "du.ipk"}]}),
    ("SetVouchers", {"vouchers": ["dm91Y2hlcg=="]}),
    ("GetOptions", {}),
    ("Reboot", {"command_key": "rb"}),
    ("FactoryReset", {}),
]


def make_device(template: Any = None, *, index: int = 1, cr_url: str | None = None) -> SimDevice:
    template = template or load_csv(EC220)
    identity = DeviceId(
        template.identity.manufacturer,
        template.identity.oui,
        template.identity.product_class,
        f"SIM{index:06d}",
    )
    creds = credential_templates("{device_id}", "pw-{serial}")(index, identity, "")
    return SimDevice(index, identity, template, creds, cr_url=cr_url)


def open_session(device: SimDevice, now: float = 1_700_000_000.0, **kw: Any) -> Any:
    session = device.begin(now, "https://acs.example/", Behaviour(**kw))
    assert_valid(session.inform())
    assert session.receive(200, soap.inform_response(soap.CWMP_1_2, "1")) == b""
    return session


def ask(session: Any, method: str, args: dict[str, Any], namespace: str = soap.CWMP_1_2) -> Any:
    """The CPE's answer to one request, checked against the schema and parsed."""
    body = session.receive(200, rpc.build(namespace, "req-1", method, args))
    assert_valid(body)
    envelope = soap.parse_envelope(body)
    assert envelope.request_id == "req-1"
    message = envelope.message
    if isinstance(message, CpeFault):
        return rpc.fault(message)
    assert isinstance(message, RpcResponse)
    return rpc.result(method, message)


class DataModelTests(SynchronousTestCase):
    def test_both_csv_formats_and_the_builtin_model_load(self) -> None:
        ui = load_csv(EC220)
        self.assertEqual(
            (ui.root, ui.identity.oui, ui.identity.manufacturer), ("Device", "9CA2F4", "TP-Link")
        )
        self.assertNotIn("Events.Inform", ui.params)  # GenieACS's own rows are not the device's
        self.assertEqual(ui.params["Device.WiFi.SSID.1.SSID"].value, "TP-Link_0CE8")
        self.assertIn("Device.WiFi.SSID.1.", ui.objects)
        sim = load_csv(BM632W)
        self.assertEqual(sim.root, "InternetGatewayDevice")
        self.assertEqual(sim.identity.serial_number, "8KA8WA1151100043")
        self.assertEqual(
            sim.params["InternetGatewayDevice.DeviceInfo.UpTime"].type, "xsd:unsignedInt"
        )
        self.assertTrue(sim.forced[-1].endswith("WANIPConnection.1.ExternalIPAddress"))
        self.assertEqual(builtin_template().identity.oui, "00CAFE")
        with self.assertRaises(ValueError):
            parse_csv("Parameter,Value\nDevice.X,1\n")

    def test_a_device_stores_only_its_differences(self) -> None:
        device = make_device()
        template = device.model.template
        self.assertIs(device.model.template.params, template.params)
        self.assertLessEqual(len(device.model.values or {}), 6)
        self.assertIsNone(device.model.extra)


class AnswerTests(SynchronousTestCase):
    """Every ACS request answered schema-valid and as a CPE would (sans-IO)."""

    def test_every_rpc_gets_a_schema_valid_answer(self) -> None:
        for template in (load_csv(EC220), builtin_template()):
            session = open_session(make_device(template))
            for method, args in EVERY_RPC:
                if method == "DeleteObject" and template.source == "built-in":
                    args = {"object_name": "Device.WiFi.SSID.2."}
                result = ask(session, method, args)
                self.assertNotIn("code", result, (template.source, method, result))
            self.assertEqual(session.answered, [m for m, _ in EVERY_RPC])
            self.assertEqual(session.faults, [])

    def test_a_pending_change_du_state_is_not_a_transfer(self) -> None:
        session = open_session(make_device())
        du = {"operations": [{"type": "install", "url": FILE + "du.ipk"}], "command_key": "du"}
        self.assertEqual(ask(session, "ChangeDUState", du), {})
        download = {"file_type": "1 Firmware Upgrade Image", "url": FILE + "fw.bin"}
        self.assertEqual(ask(session, "Download", dict(download, command_key="fw"))["status"], 1)
        queued = ask(session, "GetAllQueuedTransfers", {})["transfers"]
        self.assertEqual([t["command_key"] for t in queued], ["fw"])
        self.assertEqual(ask(session, "CancelTransfer", {"command_key": "du"})["code"], 9003)

    def test_old_namespaces_and_unknown_methods(self) -> None:
        device = make_device()
        session = device.begin(0.0, "https://acs/", Behaviour(namespace=soap.CWMP_1_0))
        assert_valid(session.inform())
        session.receive(200, soap.inform_response(soap.CWMP_1_0, "1"))
        info = ask(
            session,
            "GetParameterValues",
            {"parameter_names": ["Device.DeviceInfo."]},
            soap.CWMP_1_0,
        )
        self.assertIn("Device.DeviceInfo.SerialNumber", [p["name"] for p in info["parameters"]])
        methods = ask(session, "GetRPCMethods", {}, soap.CWMP_1_0)["methods"]
        self.assertNotIn("ScheduleDownload", methods)  # not in the cwmp-1-0 schema
        unknown = session.receive(
            200,
            b'<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"'
            b' xmlns:cwmp="urn:dslforum-org:cwmp-1-0"><soap-env:Header>'
            b'<cwmp:ID soap-env:mustUnderstand="1">u1</cwmp:ID></soap-env:Header>'
            b"<soap-env:Body><cwmp:X_VENDOR_Frobnicate/></soap-env:Body></soap-env:Envelope>",
        )
        assert_valid(unknown)
        message = soap.parse_envelope(unknown).message
        assert isinstance(message, CpeFault)
        self.assertEqual(message.fault_code, 9000)

    def test_parameter_values_and_names(self) -> None:
        session = open_session(make_device())
        ssid = ask(session, "GetParameterValues", {"parameter_names": ["Device.WiFi.SSID.1."]})
        self.assertIn(
            {"name": "Device.WiFi.SSID.1.SSID", "value": "TP-Link_0CE8", "type": "xsd:string"},
            ssid["parameters"],
        )
        self.assertEqual(
            ask(session, "GetParameterValues", {"parameter_names": ["Device.Nope"]})["code"], 9005
        )
        password = ask(
            session,
            "GetParameterValues",
            {"parameter_names": ["Device.ManagementServer.Password"]},
        )
        self.assertEqual(password["parameters"][0]["value"], "")  # passwords read back empty
        names = ask(
            session,
            "GetParameterNames",
            {"parameter_path": "Device.WiFi.SSID.", "next_level": True},
        )
        self.assertEqual(
            [p["name"] for p in names["parameters"]],
            [f"Device.WiFi.SSID.{i}." for i in (1, 2, 3, 4)],
        )
        whole = ask(
            session,
            "GetParameterNames",
            {"parameter_path": "Device.WiFi.SSID.1.", "next_level": False},
        )
        self.assertEqual(whole["parameters"][0], {"name": "Device.WiFi.SSID.1.", "writable": False})
        self.assertIn({"name": "Device.WiFi.SSID.1.SSID", "writable": True}, whole["parameters"])
        leaf = ask(
            session,
            "GetParameterNames",
            {"parameter_path": "Device.WiFi.SSID.1.SSID", "next_level": True},
        )
        self.assertEqual(leaf["code"], 9003)

    def test_set_parameter_values_is_all_or_nothing(self) -> None:
        device = make_device()
        session = open_session(device)
        bad = ask(
            session,
            "SetParameterValues",
            {
                "parameters": [
                    {"name": "Device.WiFi.SSID.1.SSID", "value": "new"},
                    {"name": "Device.DeviceInfo.SoftwareVersion", "value": "9"},
                    {"name": "Device.Nope", "value": "1"},
                    {"name": "Device.WiFi.SSID.1.Enable", "value": "maybe"},
                ],
                "parameter_key": "k1",
            },
        )
        self.assertEqual(bad["code"], 9003)
        self.assertEqual(
            [(p["name"], p["code"]) for p in bad["parameters"]],
            [
                ("Device.DeviceInfo.SoftwareVersion", 9008),
                ("Device.Nope", 9005),
                ("Device.WiFi.SSID.1.Enable", 9007),
            ],
        )
        self.assertEqual(device.model.value("Device.WiFi.SSID.1.SSID"), "TP-Link_0CE8")
        self.assertEqual(device.model.value("Device.ManagementServer.ParameterKey"), "")
        ok = ask(
            session,
            "SetParameterValues",
            {
                "parameters": [
                    {"name": "Device.WiFi.SSID.1.SSID", "value": "new"},
                    {"name": "Device.WiFi.SSID.1.Enable", "value": "0", "type": "xsd:boolean"},
                ],
                "parameter_key": "k2",
            },
        )
        self.assertEqual(ok, {"status": 0})
        self.assertEqual(device.model.value("Device.WiFi.SSID.1.SSID"), "new")
        self.assertEqual(device.model.value("Device.WiFi.SSID.1.Enable"), "false")
        self.assertEqual(device.model.value("Device.ManagementServer.ParameterKey"), "k2")

    def test_objects_and_attributes(self) -> None:
        device = make_device()
        session = open_session(device)
        self.assertEqual(
            ask(session, "AddObject", {"object_name": "Device.WiFi.SSID."})["instance_number"], 5
        )
        self.assertEqual(
            ask(session, "AddObject", {"object_name": "Device.WiFi.SSID."})["instance_number"], 6
        )
        values = ask(session, "GetParameterValues", {"parameter_names": ["Device.WiFi.SSID.6."]})
        self.assertIn("Device.WiFi.SSID.6.SSID", [p["name"] for p in values["parameters"]])
        delete, add = {"object_name": "Device.WiFi.SSID.6."}, {"object_name": "Device.WiFi.SSID."}
        self.assertEqual(ask(session, "DeleteObject", delete), {"status": 0})
        self.assertEqual(ask(session, "AddObject", add)["instance_number"], 7)  # 6 not reused
        self.assertEqual(
            ask(session, "DeleteObject", {"object_name": "Device.WiFi.SSID.7."}), {"status": 0}
        )
        fresh = open_session(make_device(index=2))
        ask(fresh, "DeleteObject", {"object_name": "Device.WiFi.SSID.4."})
        self.assertEqual(ask(fresh, "AddObject", add)["instance_number"], 5)
        self.assertEqual(
            ask(session, "DeleteObject", {"object_name": "Device.WiFi.SSID.2."}), {"status": 0}
        )
        self.assertEqual(
            ask(session, "DeleteObject", {"object_name": "Device.WiFi.SSID.2."})["code"], 9005
        )
        self.assertEqual(
            ask(session, "AddObject", {"object_name": "Device.DeviceInfo."})["code"], 9005
        )
        after = ask(
            session,
            "GetParameterNames",
            {"parameter_path": "Device.WiFi.SSID.", "next_level": True},
        )
        self.assertEqual(
            [p["name"] for p in after["parameters"]],
            [f"Device.WiFi.SSID.{i}." for i in (1, 3, 4, 5)],
        )
        ask(
            session,
            "SetParameterAttributes",
            {
                "parameters": [
                    {"name": "Device.WiFi.", "notification": 1, "access_list": ["Subscriber"]}
                ]
            },
        )
        attrs = ask(
            session, "GetParameterAttributes", {"parameter_names": ["Device.WiFi.SSID.1.SSID"]}
        )
        self.assertEqual(
            attrs["parameters"],
            [{"name": "Device.WiFi.SSID.1.SSID", "notification": 1, "access_list": ["Subscriber"]}],
        )

    def test_transfers_complete_in_a_later_session(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        device = make_device()
        device.events = None
        session = open_session(device, clock.seconds(), transfer_time=5.0, reboot_delay=2.0)
        result = ask(
            session,
            "Download",
            {"command_key": "fw-1", "file_type": "1 Firmware Upgrade Image", "url": FILE + "fw"},
        )
        self.assertEqual(result["status"], 1)
        queued = ask(session, "GetQueuedTransfers", {})
        self.assertEqual(queued["transfers"], [{"command_key": "fw-1", "state": 1}])
        self.assertIsNone(session.receive(204, b""))
        device.finish(session, clock.seconds(), random.Random(1), ok=True)
        self.assertFalse(device.fire(clock.seconds(), Behaviour(), random.Random(1)))
        self.assertEqual(device.next_wakeup(), clock.seconds() + 5.0)
        clock.advance(5)
        self.assertTrue(device.fire(clock.seconds(), Behaviour(), random.Random(1)))
        later = device.begin(clock.seconds(), "https://acs/", Behaviour())
        codes = [c for c, _ in later.events]
        self.assertEqual(codes, ["1 BOOT", "7 TRANSFER COMPLETE", "M Download"])
        self.assertEqual(later.events[-1], ("M Download", "fw-1"))
        later.inform()
        report = later.receive(200, soap.inform_response(soap.CWMP_1_2, "1"))
        assert_valid(report)
        message = soap.parse_envelope(report).message
        self.assertEqual(
            (type(message).__name__, message.command_key), ("TransferComplete", "fw-1")
        )  # type: ignore[union-attr]
        # Kept until acknowledged: the transfer events are still pending here.
        self.assertIn(("M Download", "fw-1"), device.events or [])
        self.assertEqual(
            later.receive(200, soap.transfer_complete_response(soap.CWMP_1_2, "2")), b""
        )
        self.assertIsNone(later.receive(204, b""))
        self.assertIsNone(device.events)
        self.assertIsNone(device.transfers)

    def test_hold_requests_defers_the_transfer_complete(self) -> None:
        device = make_device()
        device.events = None
        session = open_session(device, 10.0, transfer_time=1.0)
        ask(
            session,
            "Upload",
            {"command_key": "up-1", "file_type": "2 Vendor Log File", "url": FILE},
        )
        session.receive(204, b"")
        device.finish(session, 11.0, random.Random(1), ok=True)
        self.assertTrue(device.fire(12.0, Behaviour(), random.Random(1)))
        later = device.begin(12.0, "https://acs/", Behaviour())
        later.inform()
        held = soap.inform_response(soap.CWMP_1_2, "1", hold_requests=True)
        self.assertEqual(later.receive(200, held), b"")  # the ACS's turn first
        report = later.receive(204, b"")  # then the held TransferComplete
        self.assertIn(b"<CommandKey>up-1</CommandKey>", report)
        self.assertEqual(
            later.receive(200, soap.transfer_complete_response(soap.CWMP_1_2, "2")), b""
        )
        self.assertIsNone(later.receive(204, b""))
        self.assertIsNone(device.events)

    def test_reboot_and_factory_reset_take_effect_after_the_session(self) -> None:
        device = make_device()
        session = open_session(device, 100.0)
        ask(
            session,
            "SetParameterValues",
            {"parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "mine"}]},
        )
        ask(session, "Reboot", {"command_key": "rb-7"})
        session.receive(204, b"")
        device.finish(session, 101.0, random.Random(1), ok=True)
        self.assertEqual(device.events, [("1 BOOT", ""), ("M Reboot", "rb-7")])
        self.assertFalse(device.wants_session(101.5))  # still rebooting
        self.assertTrue(device.wants_session(102.0))
        session = open_session(device, 103.0)
        ask(session, "FactoryReset", {})
        session.receive(204, b"")
        device.finish(session, 104.0, random.Random(1), ok=True)
        self.assertEqual(device.events, [("0 BOOTSTRAP", ""), ("1 BOOT", "")])
        self.assertEqual(device.model.value("Device.WiFi.SSID.1.SSID"), "TP-Link_0CE8")

    def test_new_credentials_apply_from_the_next_session(self) -> None:
        device = make_device()
        old = device.username, device.password
        session = open_session(device)
        ms = "Device.ManagementServer."
        ask(
            session,
            "SetParameterValues",
            {
                "parameters": [
                    {"name": ms + "Username", "value": "new-user"},
                    {"name": ms + "Password", "value": "new-password"},
                    {"name": ms + "ConnectionRequestUsername", "value": "cr-new"},
                    {"name": ms + "ConnectionRequestPassword", "value": "cr-pass"},
                ]
            },
        )
        self.assertEqual((device.username, device.password), old)  # this session goes on
        self.assertEqual((device.cr_username, device.cr_password), ("cr-new", "cr-pass"))
        session.receive(204, b"")
        device.finish(session, 1.0, random.Random(1), ok=True)
        self.assertEqual((device.username, device.password), ("new-user", "new-password"))
        self.assertNotIn("new-password", repr(device.credentials()))

    def test_value_change_notifications(self) -> None:
        device = make_device()
        device.events = None
        self.assertIsNone(device.local_change("Device.WiFi.SSID.1.SSID", "a"))  # notification off
        self.assertIsNone(device.events)
        device.model.set_attribute("Device.WiFi.SSID.1.SSID", 2, None)
        self.assertEqual(device.local_change("Device.WiFi.SSID.1.SSID", "b"), "active")
        session = device.begin(0.0, "https://acs/", Behaviour())
        inform = soap.parse_envelope(session.inform()).message
        self.assertEqual([e.code for e in inform.events], ["4 VALUE CHANGE"])  # type: ignore[union-attr]
        self.assertIn(
            ("Device.WiFi.SSID.1.SSID", "b"), [(p.name, p.value) for p in inform.parameters]
        )  # type: ignore[union-attr]


class RetryTests(SynchronousTestCase):
    """TR-069 §3.2.1.1 back-off, computed on a Clock."""

    def test_the_wait_ranges_are_the_tr069_table(self) -> None:
        table = [retry_wait_range(n) for n in range(1, 13)]
        self.assertEqual(table[:4], [(5, 10), (10, 20), (20, 40), (40, 80)])
        self.assertEqual(table[9], (2560, 5120))
        self.assertEqual(table[11], (2560, 5120))  # the range stops growing at the 10th

    def test_failures_back_off_and_count_in_the_inform(self) -> None:
        clock = Clock()
        rng = random.Random(7)
        device = make_device()
        for attempt in range(1, 12):
            self.assertTrue(device.wants_session(clock.seconds()))
            session = device.begin(clock.seconds(), "https://acs/", Behaviour())
            inform = soap.parse_envelope(session.inform()).message
            self.assertEqual(inform.retry_count, attempt - 1)  # type: ignore[union-attr]
            self.assertEqual([e.code for e in inform.events], ["0 BOOTSTRAP", "1 BOOT"])  # type: ignore[union-attr]
            with self.assertRaises(SessionFailed):
                session.receive(500, b"")
            device.finish(session, clock.seconds(), rng, ok=False)
            low, high = retry_wait_range(attempt)
            wait = device.retry_at - clock.seconds()  # type: ignore[operator]
            self.assertTrue(low <= wait <= high, (attempt, wait))
            self.assertFalse(device.wants_session(clock.seconds() + low - 0.001))
            self.assertEqual(device.next_wakeup(), device.retry_at)
            clock.advance(wait)
        # A session that completes resets the count.
        session = open_session(device, clock.seconds())
        self.assertIsNone(session.receive(204, b""))
        device.finish(session, clock.seconds(), rng, ok=True)
        self.assertEqual((device.retry_count, device.retry_at), (0, None))

    def test_retry_after_is_honoured_and_connection_requests_are_not_retried(self) -> None:
        clock = Clock()
        device = make_device()
        session = device.begin(clock.seconds(), "https://acs/", Behaviour())
        session.inform()
        with self.assertRaises(SessionFailed) as caught:
            session.receive(503, b"busy\n", 120.0)
        device.finish(
            session, 0.0, random.Random(1), ok=False, retry_after=caught.exception.retry_after
        )
        self.assertTrue(120.0 <= device.retry_at <= 132.0)  # type: ignore[operator]
        device.events = [("6 CONNECTION REQUEST", "")]
        device.retry_count = 0
        session = device.begin(0.0, "https://acs/", Behaviour())
        device.finish(session, 0.0, random.Random(1), ok=False)
        self.assertIsNone(device.events)
        self.assertIsNone(device.retry_at)
        self.assertIsNone(device.next_wakeup())


class MemoryTests(SynchronousTestCase):
    def test_two_thousand_devices_stay_under_100_kb_each(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        template = load_csv(EC220)  # shared: loaded before measuring
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            fleet = Fleet(
                MemoryReactorClock(),
                "https://127.0.0.1:7547/",
                devices=2000,
                template=template,
                credentials=credential_templates("{device_id}", "{device_id}-0123456789abcdef"),
            )
            # Each device as after a provisioning session: new credentials, a value.
            for device in fleet.devices:
                device.model.set("Device.ManagementServer.Password", f"pw-{device.index:032d}")
                device.model.set("Device.WiFi.SSID.1.SSID", f"ssid-{device.index}")
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        per_device = used / len(fleet.devices)
        self.assertEqual(len(fleet.devices), 2000)
        self.assertLess(per_device, 100 * 1024)
        self.assertLess(fleet.memory_per_device(), 100 * 1024)


class CommandLineTests(SynchronousTestCase):
    def test_write_credentials_is_what_the_import_command_reads(self) -> None:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "creds.csv")
        code = cli.main(
            [
                "--acs",
                "https://127.0.0.1:7547/",
                "--devices",
                "3",
                "--password-template",
                "pw-{serial}-secret",
                "--write-credentials",
                path,
                "--write-only",
            ]
        )
        self.assertEqual(code, 0)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        from cwmpgw.credentials import read_rows

        with open(path) as f:
            text = f.read()
        rows, errors = read_rows(text)
        self.assertEqual(errors, [])
        self.assertEqual(
            [r.device_id for r in rows], [f"00CAFE-SimCPE-SIM00000{i}" for i in range(3)]
        )
        self.assertEqual(rows[1].password, "pw-SIM000001-secret")
        self.assertEqual(sorted(read_credentials_csv(text)), [r.device_id for r in rows])
        self.assertEqual(cli.main(["--acs", "ftp://x/", "--password-template", "p"]), 2)


# ---------------------------------------------------------------------------------------
# Against the real gateway


class FleetAgainstGatewayTests(FleetGatewayBase):
    async def test_fifty_devices_boot_over_tls_with_digest_and_wake_on_request(self) -> None:
        service = await self.start_gateway()
        fleet = await self.start_fleet(
            devices=50, credentials=credential_templates("{device_id}", "{serial}-Zq6-secret")
        )
        await self.import_fleet(fleet)

        stats = await fleet.run_sessions(count=50)
        self.assertEqual((stats.completed, dict(stats.failures)), (50, {}))
        self.assertEqual(stats.events["0 BOOTSTRAP"], 50)
        self.assertEqual(stats.events["1 BOOT"], 50)
        # The gateway's BOOTSTRAP presets (periodic inform) were applied by every CPE.
        self.assertEqual(stats.rpcs["SetParameterValues"], 50)
        self.assertEqual(stats.faults, {})
        self.assertEqual(self.redis.zcard(self.prefix + "devices"), 50)
        registered = {e["device"]["id"] for e in self.events("device.registered")}
        self.assertEqual(registered, {d.device_id for d in fleet.devices})
        for body in self.sent:
            self.assertEqual(validate_envelope(body), [], body[:300])

        again = await fleet.run_sessions(count=50)
        self.assertEqual((again.completed, again.events["2 PERIODIC"]), (50, 50))

        # A connection request from the gateway reaches the fleet's one listener.
        device = fleet.devices[7]
        self.assertTrue(device.cr_url.startswith(fleet.listener.base_url + "/cr/"))  # type: ignore[union-attr]
        following = fleet.next_session(device)
        outcome = await service.connreq.wake(device.device_id)
        self.assertEqual(
            (outcome.outcome, outcome.method, outcome.session_started), ("ok", "http", True)
        )
        session = await following
        self.assertEqual((session.ok, session.events), (True, ("6 CONNECTION REQUEST",)))
        self.assertEqual(fleet.listener.accepted, 1)  # type: ignore[union-attr]

        # Another device's path, or a wrong password, wakes nobody.
        def wrong() -> int:
            handler = urllib.request.HTTPDigestAuthHandler()
            handler.add_password("cwmpgw-sim", device.cr_url, device.cr_username, "wrong")
            try:
                urllib.request.build_opener(handler).open(device.cr_url, timeout=5)
            except urllib.error.HTTPError as e:
                return e.code
            return 200

        self.assertEqual(await deferToThread(wrong), 401)
        self.assertEqual(fleet.listener.accepted, 1)  # type: ignore[union-attr]
        self.assertEqual(fleet.active + fleet.queued, 0)

    async def test_returning_devices_re_use_their_nonce_and_resume_tls(self) -> None:
        """``reuse_nonce``: a device's next session answers its last challenge again with
        the next nonce count, so the gateway sends no 401; ``tls_resume``: it offers its
        last TLS session and the gateway resumes it."""
        await self.start_gateway(provision={"credentials": False, "periodic_inform": False})
        fleet = await self.start_fleet(
            devices=5,
            credentials=credential_templates("{device_id}", "{serial}-Zq6-secret"),
            bootstrap=False,
            reuse_nonce=True,
            tls_resume=True,
        )
        await self.import_fleet(fleet)

        def informs() -> int:
            return sum(1 for body in self.sent if b"Inform>" in body and b"cwmp:Inform" in body)

        first = await fleet.run_sessions(count=5)
        self.assertEqual((first.completed, dict(first.failures)), (5, {}))
        self.assertEqual(informs(), 10)  # each Inform twice: before and after the 401
        self.assertEqual(dict(fleet.tls_handshakes), {"full": 5})
        again = await fleet.run_sessions(count=5)
        self.assertEqual((again.completed, dict(again.failures)), (5, {}))
        self.assertEqual(informs(), 15)  # once each: no 401
        self.assertEqual(dict(fleet.tls_handshakes), {"full": 5, "resumed": 5})
        self.assertEqual([n for _, n in fleet.nonces.values()], [2] * 5)

    async def test_queued_tasks_are_answered_like_a_cpe(self) -> None:
        service = await self.start_gateway()
        fleet = await self.start_fleet(
            devices=1, credentials=credential_templates("{device_id}", "task-password-1")
        )
        await self.import_fleet(fleet)
        device = fleet.devices[0]
        self.assertTrue((await fleet.inform(device)).ok)

        ssid = "Device.WiFi.SSID.1.SSID"
        submit = service.tasks.submit
        tasks = [
            await submit(device.device_id, "GetParameterValues", {"parameter_names": [ssid]}),
            await submit(
                device.device_id,
                "SetParameterValues",
                {"parameters": [{"name": ssid, "value": "home"}]},
            ),
            await submit(device.device_id, "GetParameterValues", {"parameter_names": [ssid]}),
            await submit(
                device.device_id,
                "SetParameterValues",
                # A vendor parameter passes the data-model check; the CPE refuses it.
                {"parameters": [{"name": "Device.Hosts.Host.1.X_TP_DevphyAddress", "value": "x"}]},
            ),
            await submit(device.device_id, "AddObject", {"object_name": "Device.WiFi.SSID."}),
            await submit(device.device_id, "refresh", {"path": "Device.Time."}),
            await submit(
                device.device_id,
                "Download",
                {"file_type": "1 Firmware Upgrade Image", "url": FILE + "fw.bin"},
            ),
            await submit(
                device.device_id,
                "ChangeDUState",
                {
                    "operations": [
                        {"type": "install", "url": FILE + "du.ipk"},
                        {"type": "uninstall", "uuid": "6f0c1f1a-0000-4000-8000-0000000000aa"},
                    ]
                },
            ),
        ]
        following = fleet.next_session(device)
        session = await fleet.inform(device)
        self.assertTrue(session.ok)
        self.assertEqual(session.faults, (("SetParameterValues", 9003),))
        final = [await service.tasks.get(t.id) for t in tasks]
        self.assertEqual(
            [t.status for t in final],
            ["done", "done", "done", "failed", "done", "done", "running", "running"],
        )
        self.assertEqual(final[0].result["parameters"][0]["value"], "TP-Link_0CE8")
        self.assertEqual(final[2].result["parameters"][0]["value"], "home")
        self.assertEqual(final[3].fault["code"], 9003)
        self.assertEqual(
            [(p["name"], p["code"]) for p in final[3].fault["parameters"]],
            [("Device.Hosts.Host.1.X_TP_DevphyAddress", 9008)],
        )
        self.assertEqual(final[4].result["instance_number"], 5)

        # The firmware download completes: the CPE reboots and reports it, on its own.
        del following
        transfer = await fleet.next_session(device)
        self.assertTrue(transfer.ok)
        self.assertEqual(
            transfer.events,
            (
                "1 BOOT",
                "7 TRANSFER COMPLETE",
                "M Download",
                "11 DU STATE CHANGE COMPLETE",
                "M ChangeDUState",
            ),
        )
        self.assertEqual((await service.tasks.get(tasks[-2].id)).status, "done")
        # And the deployment-unit change, by its DUStateChangeComplete.
        du = await service.tasks.get(tasks[-1].id)
        self.assertEqual(du.status, "done")
        self.assertEqual(
            [(r["uuid"][-2:], r["current_state"]) for r in du.result["results"]][1:],
            [("aa", "Uninstalled")],
        )
        self.assertEqual(du.result["results"][0]["current_state"], "Installed")
        cached = self.redis.hgetall(self.prefix + "device:" + device.device_id + ":params")
        self.assertEqual(json.loads(cached[ssid])[0], "home")
        for body in self.sent:
            self.assertEqual(validate_envelope(body), [], body[:300])

    async def test_zero_touch_provisioning_then_a_connection_request(self) -> None:
        bootstrap_user, bootstrap_password = "bootstrap", "shared-bootstrap-secret-1"
        service = await self.start_gateway(
            auth={
                "unknown_devices": "enroll",
                "bootstrap_username": bootstrap_user,
                "bootstrap_password": bootstrap_password,
            }
        )
        fleet = await self.start_fleet(
            devices=3, credentials=credential_templates(bootstrap_user, bootstrap_password)
        )
        first = await fleet.run_sessions(count=3)
        # Credentials, STUN credentials (a SetParameterValues of their own), presets.
        self.assertEqual((first.completed, first.rpcs["SetParameterValues"]), (3, 9))
        for device in fleet.devices:
            self.assertEqual(
                await service.connreq_credentials.stun_passwords(device.device_id),
                (device.model.value(device.ms + "STUNPassword"),),
            )
            self.assertEqual(device.username, device.device_id)
            self.assertNotEqual(device.password, bootstrap_password)
            cr = await service.connreq_credentials.get(device.device_id)
            self.assertEqual((cr.username, cr.password), (device.cr_username, device.cr_password))

        second = await fleet.run_sessions(count=3)
        self.assertEqual((second.completed, dict(second.failures)), (3, {}))
        phases = [e["data"]["phase"] for e in self.events("credentials.changed")]
        self.assertEqual(phases.count("active"), 3)

        # The gateway wakes a device with the credential it set itself.
        device = fleet.devices[2]
        following = fleet.next_session(device)
        outcome = await service.connreq.wake(device.device_id)
        self.assertEqual((outcome.outcome, outcome.session_started), ("ok", True))
        self.assertEqual((await following).events, ("6 CONNECTION REQUEST",))


class _Refusing(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        request.setResponseCode(503)
        request.setHeader(b"retry-after", b"30")
        return b"busy\n"


class FleetFailureTests(TestCase):
    """Refused and unreachable sessions are retried on the TR-069 schedule."""

    async def run_one(self, url: str) -> Fleet:
        fleet = Fleet(reactor, url, devices=1, arrival=Rate(None), seed=3, connect_timeout=2)
        await fleet.start()
        self.addCleanup(fleet.stop)
        stats = await fleet.run_sessions(count=1)
        self.assertEqual(stats.completed, 0)
        return fleet

    async def test_503_retry_after_is_honoured(self) -> None:
        port = reactor.listenTCP(0, Site(_Refusing()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        started = reactor.seconds()
        fleet = await self.run_one(f"http://127.0.0.1:{port.getHost().port}/")
        self.assertEqual(dict(fleet.stats.failures), {"http 503": 1})
        device = fleet.devices[0]
        self.assertEqual(device.retry_count, 1)
        self.assertGreaterEqual(device.retry_at - started, 30)  # type: ignore[operator]
        self.assertEqual(device.wake_at, device.retry_at)  # the fleet will retry then

    async def test_unreachable_acs_backs_off(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        fleet = await self.run_one(f"http://127.0.0.1:{closed}/")
        self.assertEqual(dict(fleet.stats.failures), {"connect: refused": 1})
        device = fleet.devices[0]
        low, high = retry_wait_range(1)
        wait = device.retry_at - fleet.stats.started  # type: ignore[operator]
        self.assertTrue(low <= wait <= high + 1, wait)

    async def test_a_run_ending_drops_what_it_queued(self) -> None:
        port = reactor.listenTCP(0, Site(_Refusing()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        fleet = Fleet(
            reactor,
            f"http://127.0.0.1:{port.getHost().port}/",
            devices=20,
            arrival=Storm(window=0),
            concurrency=1,
            seed=3,
        )
        await fleet.start()
        self.addCleanup(fleet.stop)
        stats = await fleet.run_sessions(count=2)
        self.assertEqual(stats.sessions, 2)  # the 18 still waiting for the slot never began
        self.assertEqual((fleet.active, fleet.queued), (0, 0))
        self.assertEqual(sum(d.retry_count for d in fleet.devices), 2)
        self.assertEqual(sum(d.busy for d in fleet.devices), 0)


class PeriodicTests(SynchronousTestCase):
    def test_periodic_informs_follow_the_interval_and_its_phase(self) -> None:
        clock = Clock()
        clock.advance(1_000_000)
        rng = random.Random(5)
        behaviour = Behaviour(jitter=0.1)
        device = make_device(builtin_template())
        device.events = None
        device.schedule_periodic(clock.seconds(), behaviour, rng)
        first = device.next_periodic
        assert first is not None
        self.assertTrue(1_000_000 + 270 <= first <= 1_000_000 + 330)  # 300 s ± 10 %
        clock.advance(first - clock.seconds())
        self.assertTrue(device.fire(clock.seconds(), behaviour, rng))
        self.assertEqual(device.events, [("2 PERIODIC", "")])
        # Missed informs (the simulator paused) are not made up for in a burst.
        device.events = None
        clock.advance(10 * 300)
        device.fire(clock.seconds(), behaviour, rng)
        self.assertGreater(device.next_periodic, clock.seconds())  # type: ignore[arg-type]
        # The ACS's PeriodicInformTime sets the phase.
        device.model.set("Device.ManagementServer.PeriodicInformTime", "1970-01-01T00:01:40Z")
        device.schedule_periodic(clock.seconds(), behaviour, rng, force=True)
        offset = (device.next_periodic - 100) % 300  # type: ignore[operator]
        self.assertLessEqual(offset, 30)
        self.assertGreater(device.next_periodic, clock.seconds())  # type: ignore[arg-type]
        # Outside a periodic run, a due periodic inform is dropped, not sent.
        device.events = None
        clock.advance(device.next_periodic - clock.seconds())  # type: ignore[operator]
        self.assertFalse(device.fire(clock.seconds(), Behaviour(periodic=False), rng))
        self.assertEqual((device.events, device.next_periodic), (None, None))
