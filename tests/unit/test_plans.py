"""Task plans driven through a fake CPE: every call is built, schema-checked, answered with
a schema-valid envelope, parsed by the codec and typed by rpc.result, as in a session."""

from __future__ import annotations

import json

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import rpc, soap
from cwmpgw.cwmp.messages import CpeFault, RpcResponse
from cwmpgw.cwmp.rpc import ArgumentError
from cwmpgw.tasks import plans
from cwmpgw.tasks.plans import Call, Plan, TransferPlan, plan_for, restore
from tests.support import cpe_envelopes
from tests.support.cpe_envelopes import Array
from tests.support.schema import FULL_ARGS, assert_schema_valid, parse_request, validate_envelope

NS_1_0 = "urn:dslforum-org:cwmp-1-0"
NS_1_2 = "urn:dslforum-org:cwmp-1-2"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def wifi_model(ssids: int = 2) -> dict[str, tuple[str, str, bool]]:
    """name -> (value, xsi:type, writable): a small Device:2 tree."""
    model = {
        "Device.DeviceInfo.SoftwareVersion": ("1.0.4 Build 220623", "xsd:string", False),
        "Device.DeviceInfo.UpTime": ("3600", "xsd:unsignedInt", False),
        "Device.ManagementServer.ParameterKey": ("", "xsd:string", False),
        "Device.ManagementServer.PeriodicInformInterval": ("300", "xsd:unsignedInt", True),
        "Device.WiFi.SSIDNumberOfEntries": (str(ssids), "xsd:unsignedInt", False),
    }
    for i in range(1, ssids + 1):
        model[f"Device.WiFi.SSID.{i}.Enable"] = ("true", "xsd:boolean", True)
        model[f"Device.WiFi.SSID.{i}.SSID"] = (f"Net{i}", "xsd:string", True)
        model[f"Device.WiFi.SSID.{i}.LastChange"] = ("12", "xsd:unsignedInt", False)
    return model


class FakeCpe:
    """Answers ACS requests from a parameter model, with real envelopes."""

    def __init__(self, model: dict[str, tuple[str, str, bool]], namespace: str = NS_1_2) -> None:
        self.model = model
        self.namespace = namespace
        self.faults: dict[str, tuple[int, str]] = {}  # method -> fault to answer with
        self.transfer_status = 1  # what Download/Upload answer
        self.calls: list[Call] = []
        self.requests: list[etree._Element] = []

    def answer(self, testcase: SynchronousTestCase, call: Call) -> RpcResponse | CpeFault:
        self.calls.append(call)
        request_id = f"acs-{len(self.calls)}"
        request = rpc.build(self.namespace, request_id, call.method, call.args)
        assert_schema_valid(testcase, request)
        el = parse_request(request)
        self.requests.append(el)
        reply = self._reply(call.method, el, request_id)
        testcase.assertEqual(validate_envelope(reply), [], reply.decode())
        envelope = soap.parse_envelope(reply)
        testcase.assertEqual(envelope.request_id, request_id)
        message = envelope.message
        assert isinstance(message, (RpcResponse, CpeFault))
        return message

    # --- the device's behaviour

    def _fault(
        self, request_id: str, code: int, spv: tuple[tuple[str, int, str], ...] = ()
    ) -> bytes:
        return cpe_envelopes.cpe_fault(request_id, code, "", spv, namespace=self.namespace)

    def _objects(self) -> set[str]:
        found = set()
        for name in self.model:
            parts = name.split(".")
            for i in range(1, len(parts)):
                found.add(".".join(parts[:i]) + ".")
        return found

    def _reply(self, method: str, el: etree._Element, request_id: str) -> bytes:
        if method in self.faults:
            code, string = self.faults[method]
            return cpe_envelopes.cpe_fault(request_id, code, string, namespace=self.namespace)
        ns = self.namespace
        if method == "GetParameterNames":
            path, next_level = el[0].text or "", el[1].text == "1"
            objects = self._objects()
            everything = sorted(objects | set(self.model))
            if path and path not in objects and path not in self.model:
                return self._fault(request_id, 9005)
            below = [n for n in everything if n.startswith(path) and n != path]
            if next_level:
                below = [n for n in below if "." not in n[len(path) :].rstrip(".")]
            if path in self.model:  # a full parameter name: just that parameter
                names = [path]
            else:
                names = ([path] if path else []) + below
            infos = [(n, not n.endswith(".") and self.model[n][2]) for n in names]
            return cpe_envelopes.typical_response(
                method, request_id, namespace=ns, parameters=infos
            )
        if method == "GetParameterValues":
            values = []
            for item in el[0]:
                name = item.text or ""
                if name == "" or name.endswith("."):
                    found = [n for n in self.model if n.startswith(name)]
                else:
                    found = [name] if name in self.model else []
                if not found:
                    return self._fault(request_id, 9005)
                values += [(n, self.model[n][0], self.model[n][1]) for n in found]
            return cpe_envelopes.typical_response(
                method, request_id, namespace=ns, parameters=values
            )
        if method == "SetParameterValues":
            problems = []
            changes = {}
            for struct in el[0]:
                name, value = struct[0].text or "", struct[1].text or ""
                if name not in self.model:
                    problems.append((name, 9005, ""))
                elif not self.model[name][2]:
                    problems.append((name, 9008, ""))
                else:
                    changes[name] = (value, struct[1].get(XSI_TYPE), True)
            if problems:  # all or nothing
                return self._fault(request_id, 9003, tuple(problems))
            self.model.update(changes)
            key = el[1].text or ""
            self.model["Device.ManagementServer.ParameterKey"] = (key, "xsd:string", False)
            return cpe_envelopes.typical_response(method, request_id, namespace=ns, status=0)
        if method in ("Download", "Upload"):
            return cpe_envelopes.typical_response(
                method, request_id, namespace=ns, status=self.transfer_status
            )
        return cpe_envelopes.typical_response(method, request_id, namespace=ns)


def drive(testcase: SynchronousTestCase, plan: Plan, cpe: FakeCpe, limit: int = 50) -> list[Call]:
    """Run a plan to its end (or its wait), as the task layer does across requests."""
    calls = []
    while (call := plan.next_call()) is not None:
        testcase.assertLess(len(calls), limit, "the plan does not end")
        # Until answered, the plan offers the same call again.
        testcase.assertEqual(plan.next_call(), call)
        calls.append(call)
        answer = cpe.answer(testcase, call)
        if isinstance(answer, CpeFault):
            plan.on_fault(rpc.fault(answer))
        else:
            plan.on_result(rpc.result(call.method, answer))
    return calls


def full_model() -> dict[str, tuple[str, str, bool]]:
    """A model holding every parameter FULL_ARGS sets, all writable."""
    model = wifi_model()
    for item in FULL_ARGS["SetParameterValues"]["parameters"]:
        model[item["name"]] = ("", "xsd:string", True)
    return model


class EveryTaskTypeTests(SynchronousTestCase):
    def test_task_types(self) -> None:
        self.assertEqual(set(plans.TASK_TYPES), set(rpc.METHODS) | {"refresh", "diagnostic"})

    def test_every_task_type(self) -> None:
        waiting = {"Download", "Upload", "ScheduleDownload", "ChangeDUState"}
        for task_type in plans.TASK_TYPES:
            if task_type == "diagnostic":
                continue  # two sessions apart: tests/unit/test_diagnostics.py
            args = {"path": "Device.WiFi."} if task_type == "refresh" else FULL_ARGS[task_type]
            cpe = FakeCpe(full_model())
            plan = plan_for(task_type, args)
            self.assertEqual(plan.task_type, task_type)
            self.assertEqual(plan.outcome, "running")
            calls = drive(self, plan, cpe)
            self.assertEqual(
                plan.outcome, "waiting_transfer" if task_type in waiting else "done", task_type
            )
            self.assertIsNone(plan.fault)
            self.assertIsNotNone(plan.result)
            if task_type == "refresh":
                self.assertEqual(
                    [c.method for c in calls], ["GetParameterNames", "GetParameterValues"]
                )
                continue
            # A single-call plan sends exactly the validated arguments.
            self.assertEqual(calls, [Call(task_type, rpc.validate(task_type, args))], task_type)
            self.assertEqual(calls[0].args, plan.snapshot()["args"])
        # And the values: one example per result shape.
        cpe = FakeCpe(full_model())
        plan = plan_for(
            "AddObject", {"object_name": "Device.NAT.PortMapping.", "parameter_key": "t-1"}
        )
        drive(self, plan, cpe)
        self.assertEqual(plan.result, {"instance_number": 3, "status": 0})
        self.assertEqual(plan.parameter_updates, [])


class SetAndGetTests(SynchronousTestCase):
    def test_set_parameter_values_updates_cache_and_device(self) -> None:
        cpe = FakeCpe(wifi_model())
        plan = plan_for(
            "SetParameterValues",
            {
                "parameters": [
                    {"name": "Device.WiFi.SSID.1.SSID", "value": "Guest"},
                    {"name": "Device.WiFi.SSID.2.Enable", "value": 0, "type": "boolean"},
                ],
                "parameter_key": "task-17",
            },
        )
        calls = drive(self, plan, cpe)
        self.assertEqual(len(calls), 1)
        self.assertEqual((plan.outcome, plan.result), ("done", {"status": 0}))
        self.assertEqual(
            plan.parameter_updates,
            [
                ("Device.WiFi.SSID.1.SSID", "Guest", "xsd:string"),
                ("Device.WiFi.SSID.2.Enable", "false", "xsd:boolean"),
            ],
        )
        self.assertEqual(cpe.model["Device.WiFi.SSID.2.Enable"][:2], ("false", "xsd:boolean"))
        self.assertEqual(cpe.model["Device.ManagementServer.ParameterKey"][0], "task-17")

    def test_set_parameter_values_fault(self) -> None:
        cpe = FakeCpe(wifi_model())
        plan = plan_for(
            "SetParameterValues",
            {
                "parameters": [
                    {"name": "Device.WiFi.SSID.1.SSID", "value": "Guest"},
                    {"name": "Device.DeviceInfo.UpTime", "value": 1, "type": "unsignedInt"},
                    {"name": "Device.Nope", "value": "x"},
                ]
            },
        )
        drive(self, plan, cpe)
        self.assertEqual(plan.outcome, "failed")
        self.assertIsNone(plan.result)
        self.assertEqual(
            plan.fault,
            {
                "code": 9003,
                "string": "Invalid arguments",
                "parameters": [
                    {
                        "name": "Device.DeviceInfo.UpTime",
                        "code": 9008,
                        "string": "Attempt to set a non-writable parameter",
                    },
                    {"name": "Device.Nope", "code": 9005, "string": "Invalid parameter name"},
                ],
            },
        )
        self.assertEqual(plan.parameter_updates, [])  # nothing was applied
        self.assertEqual(cpe.model["Device.WiFi.SSID.1.SSID"][0], "Net1")
        self.assertIsNone(plan.next_call())

    def test_get_parameter_values_in_batches(self) -> None:
        model = wifi_model(ssids=84)  # 5 + 3 * 84 = 257 parameters
        cpe = FakeCpe(model)
        names = sorted(model)
        plan = plan_for("GetParameterValues", {"parameter_names": names}, gpv_batch=100)
        calls = drive(self, plan, cpe)
        self.assertEqual([len(c.args["parameter_names"]) for c in calls], [100, 100, 57])
        self.assertEqual([c.method for c in calls], ["GetParameterValues"] * 3)
        self.assertEqual(plan.outcome, "done")
        assert plan.result is not None
        expected = [{"name": n, "value": model[n][0], "type": model[n][1]} for n in names]
        self.assertEqual(plan.result["parameters"], expected)
        self.assertEqual(plan.parameter_updates, [(n, model[n][0], model[n][1]) for n in names])

    def test_get_parameter_values_fault_in_a_later_batch(self) -> None:
        cpe = FakeCpe(wifi_model())
        names = ["Device.WiFi.SSID.1.SSID", "Device.WiFi.SSID.2.SSID", "Device.Nope"]
        plan = plan_for("GetParameterValues", {"parameter_names": names}, gpv_batch=2)
        calls = drive(self, plan, cpe)
        self.assertEqual(len(calls), 2)
        self.assertEqual(plan.outcome, "failed")
        self.assertEqual(
            plan.fault, {"code": 9005, "string": "Invalid parameter name", "parameters": []}
        )
        self.assertIsNone(plan.result)
        # What the first batch read is still good for the cache.
        self.assertEqual(len(plan.parameter_updates), 2)


class RefreshTests(SynchronousTestCase):
    def test_refresh_many_parameters(self) -> None:
        model = wifi_model(ssids=80)  # 1 + 240 under Device.WiFi.
        cpe = FakeCpe(model)
        plan = plan_for("refresh", {"path": "Device.WiFi."}, gpv_batch=100)
        calls = drive(self, plan, cpe)
        self.assertEqual(
            [c.method for c in calls],
            ["GetParameterNames"] + ["GetParameterValues"] * 3,
        )
        self.assertEqual(calls[0].args, {"parameter_path": "Device.WiFi.", "next_level": False})
        gpn = cpe.requests[0]
        self.assertEqual([c.text for c in gpn], ["Device.WiFi.", "0"])
        asked = [n for c in calls[1:] for n in c.args["parameter_names"]]
        wifi = sorted(n for n in model if n.startswith("Device.WiFi."))
        self.assertEqual(len(wifi), 241)
        self.assertEqual(sorted(asked), wifi)  # parameters only, no object paths
        self.assertEqual([len(c.args["parameter_names"]) for c in calls[1:]], [100, 100, 41])
        self.assertEqual(plan.outcome, "done")
        assert plan.result is not None
        got = {p["name"]: (p["value"], p["type"]) for p in plan.result["parameters"]}
        self.assertEqual(got, {n: model[n][:2] for n in wifi})
        self.assertEqual(len(plan.parameter_updates), 241)

    def test_refresh_of_one_parameter(self) -> None:
        cpe = FakeCpe(wifi_model())
        plan = plan_for("refresh", {"path": "Device.DeviceInfo.UpTime"})
        drive(self, plan, cpe)
        self.assertEqual(
            plan.result,
            {
                "parameters": [
                    {"name": "Device.DeviceInfo.UpTime", "value": "3600", "type": "xsd:unsignedInt"}
                ]
            },
        )

    def test_refresh_with_nothing_below(self) -> None:
        cpe = FakeCpe(wifi_model())
        plan = plan_for("refresh", {"path": "Device.WiFi."})
        plan.next_call()
        plan.on_result({"parameters": [{"name": "Device.WiFi.", "writable": False}]})
        self.assertEqual((plan.outcome, plan.result), ("done", {"parameters": []}))
        self.assertIsNone(plan.next_call())
        self.assertEqual(cpe.calls, [])

    def test_refresh_fault(self) -> None:
        cpe = FakeCpe(wifi_model())
        plan = plan_for("refresh", {"path": "Device.Nope."})
        calls = drive(self, plan, cpe)
        self.assertEqual(len(calls), 1)
        self.assertEqual(plan.outcome, "failed")
        self.assertEqual(
            plan.fault, {"code": 9005, "string": "Invalid parameter name", "parameters": []}
        )

    def test_refresh_with_unusable_names(self) -> None:
        plan = plan_for("refresh", {"path": ""})
        plan.next_call()
        plan.on_result({"parameters": [{"name": "Device.A" + "x" * 300, "writable": False}]})
        self.assertEqual(plan.outcome, "failed")
        assert plan.fault is not None
        self.assertIn("unusable parameter name", plan.fault["reason"])
        self.assertIsNone(plan.next_call())

    def test_refresh_arguments(self) -> None:
        for args, path in (
            ({}, "path"),
            ({"path": 5}, "path"),
            ({"path": "x" * 257}, "path"),
            ({"path": "A", "deep": True}, "deep"),
        ):
            with self.assertRaises(ArgumentError) as cm:
                plan_for("refresh", args)
            self.assertEqual(cm.exception.path, path)


class TransferTests(SynchronousTestCase):
    def test_download_waits_then_completes(self) -> None:
        cpe = FakeCpe(wifi_model())
        args = {
            "command_key": "task-9",
            "file_type": "1 Firmware Upgrade Image",
            "url": "http://127.0.0.1/fw",
        }
        plan = plan_for("Download", args)
        assert isinstance(plan, TransferPlan)
        calls = drive(self, plan, cpe)
        self.assertEqual(len(calls), 1)
        self.assertEqual(plan.outcome, "waiting_transfer")
        self.assertEqual(plan.command_key, "task-9")
        self.assertEqual(cpe.requests[0][0].text, "task-9")  # the caller's key, as given
        self.assertIsNone(plan.next_call())
        # Later (another session): the CPE's TransferComplete, through the codec.
        tc = soap.parse_envelope(cpe_envelopes.transfer_complete(command_key="task-9")).message
        plan.on_transfer_complete(tc.fault_code, tc.fault_string, tc.start_time, tc.complete_time)
        self.assertEqual(plan.outcome, "done")
        self.assertEqual(
            plan.result,
            {
                "status": 1,
                "start_time": "2025-05-25T22:30:01Z",
                "complete_time": "2025-05-25T22:31:47Z",
            },
        )
        self.assertIsNone(plan.fault)
        with self.assertRaisesRegex(RuntimeError, "not waiting"):
            plan.on_transfer_complete(0, "", "", "")

    def test_download_transfer_fails(self) -> None:
        cpe = FakeCpe(wifi_model())
        plan = plan_for("Download", {"command_key": "k", "file_type": "2 Web Content", "url": "u"})
        assert isinstance(plan, TransferPlan)
        drive(self, plan, cpe)
        plan.on_transfer_complete(9016, "", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z")
        self.assertEqual(plan.outcome, "failed")
        self.assertEqual(
            plan.fault,
            {
                "code": 9016,
                "string": "File transfer failure: unable to access file",
                "parameters": [],
            },
        )
        self.assertIsNone(plan.result)

    def test_download_done_at_once(self) -> None:
        cpe = FakeCpe(wifi_model())
        cpe.transfer_status = 0
        for method, file_type in (
            ("Download", "3 Vendor Configuration File"),
            ("Upload", "2 Vendor Log File"),
        ):
            plan = plan_for(
                method, {"command_key": "k", "file_type": file_type, "url": "http://127.0.0.1/x"}
            )
            drive(self, plan, cpe)
            self.assertEqual(plan.outcome, "done", method)
            self.assertEqual(
                plan.result,
                {
                    "status": 0,
                    "start_time": "2025-05-25T22:30:01Z",
                    "complete_time": "2025-05-25T22:31:47Z",
                },
            )
            with self.assertRaises(RuntimeError):
                plan.on_transfer_complete(0, "", "", "")  # type: ignore[attr-defined]

    def test_upload_and_schedule_download_wait(self) -> None:
        cpe = FakeCpe(wifi_model())
        upload = plan_for("Upload", FULL_ARGS["Upload"])
        drive(self, upload, cpe)
        self.assertEqual(upload.outcome, "waiting_transfer")
        assert isinstance(upload, TransferPlan)
        self.assertEqual(upload.command_key, "up-1")
        upload.on_transfer_complete(0, "", "2025-05-26T01:00:00Z", "2025-05-26T01:00:02Z")
        self.assertEqual(upload.outcome, "done")

        schedule = plan_for("ScheduleDownload", FULL_ARGS["ScheduleDownload"])
        drive(self, schedule, cpe)
        assert isinstance(schedule, TransferPlan)
        self.assertEqual((schedule.outcome, schedule.result), ("waiting_transfer", {}))
        self.assertEqual(schedule.command_key, "sd-1")
        schedule.on_transfer_complete(9020, "window missed", "", "")
        self.assertEqual(
            schedule.fault, {"code": 9020, "string": "window missed", "parameters": []}
        )

    def test_download_refused(self) -> None:
        cpe = FakeCpe(wifi_model())
        cpe.faults["Download"] = (9013, "")
        plan = plan_for("Download", {"file_type": "2 Web Content", "url": "gopher://x"})
        drive(self, plan, cpe)
        self.assertEqual(plan.outcome, "failed")
        self.assertEqual(
            plan.fault,
            {"code": 9013, "string": "Unsupported protocol for file transfer", "parameters": []},
        )


class ProtocolTests(SynchronousTestCase):
    def test_misuse(self) -> None:
        plan = plan_for("Reboot", {"command_key": "r"})
        with self.assertRaisesRegex(RuntimeError, "no call"):
            plan.on_result({})
        call = plan.next_call()
        self.assertEqual(call, Call("Reboot", {"command_key": "r"}))
        plan.on_result({})
        self.assertEqual((plan.outcome, plan.result), ("done", {}))
        self.assertIsNone(plan.next_call())
        with self.assertRaises(RuntimeError):
            plan.on_result({})
        with self.assertRaisesRegex(RuntimeError, "already done"):
            plan.on_fault({"code": 9002, "string": "x", "parameters": []})

    def test_fault_from_the_caller(self) -> None:
        """The task layer may end a plan itself (an unusable response, an expiry)."""
        plan = plan_for("Download", {"command_key": "k", "file_type": "2 Web Content", "url": "u"})
        plan.next_call()
        plan.on_result({"status": 1, "start_time": "", "complete_time": ""})
        self.assertEqual(plan.outcome, "waiting_transfer")
        plan.on_fault({"reason": "expired"})
        self.assertEqual(
            (plan.outcome, plan.fault, plan.result), ("failed", {"reason": "expired"}, None)
        )

    def test_plan_for_errors(self) -> None:
        with self.assertRaises(ArgumentError) as cm:
            plan_for("Explode", {})
        self.assertEqual(cm.exception.path, "")
        with self.assertRaises(ArgumentError) as cm:
            plan_for(
                "SetParameterValues", {"parameters": [{"name": "A", "value": "x", "type": "int"}]}
            )
        self.assertEqual(cm.exception.path, "parameters[0].value")
        for bad in (0, -1, True, 1.5):
            with self.assertRaises(ValueError):
                plan_for("GetParameterValues", {"parameter_names": ["A"]}, gpv_batch=bad)  # type: ignore[arg-type]

    def test_old_cwmp_version(self) -> None:
        """The plan is version-agnostic; building for a 1.0 CPE is where a 1.2 RPC stops."""
        plan = plan_for("CancelTransfer", {"command_key": "k"})
        call = plan.next_call()
        assert call is not None
        with self.assertRaisesRegex(ArgumentError, "needs CWMP 1.2"):
            rpc.build(NS_1_0, "r", call.method, call.args)
        cpe = FakeCpe(wifi_model(), namespace=NS_1_0)
        plan = plan_for("refresh", {"path": "Device.WiFi.SSID.1."})
        drive(self, plan, cpe)
        self.assertEqual(plan.outcome, "done")


class SnapshotTests(SynchronousTestCase):
    def test_resume_batches_elsewhere(self) -> None:
        model = wifi_model(ssids=10)
        cpe = FakeCpe(model)
        plan = plan_for("refresh", {"path": "Device.WiFi."}, gpv_batch=8)
        for _ in range(2):  # names, then the first batch of values
            call = plan.next_call()
            assert call is not None
            answer = cpe.answer(self, call)
            assert isinstance(answer, RpcResponse)
            plan.on_result(rpc.result(call.method, answer))
        pending = plan.next_call()  # sent, but the session died before the answer
        saved = json.loads(json.dumps(plan.snapshot()))
        resumed = restore(saved)
        self.assertEqual(resumed.outcome, "running")
        self.assertEqual(resumed.next_call(), pending)  # sent again in the next session
        drive(self, resumed, cpe)
        self.assertEqual(resumed.outcome, "done")
        assert resumed.result is not None
        self.assertEqual(len(resumed.result["parameters"]), 31)
        self.assertEqual(len({p["name"] for p in resumed.result["parameters"]}), 31)

    def test_waiting_transfer_survives(self) -> None:
        cpe = FakeCpe(wifi_model())
        plan = plan_for(
            "Download", {"command_key": "task-3", "file_type": "2 Web Content", "url": "u"}
        )
        drive(self, plan, cpe)
        saved = json.loads(json.dumps(plan.snapshot()))
        resumed = restore(saved)
        assert isinstance(resumed, TransferPlan)
        self.assertEqual((resumed.outcome, resumed.command_key), ("waiting_transfer", "task-3"))
        self.assertIsNone(resumed.next_call())
        resumed.on_transfer_complete(0, "", "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z")
        self.assertEqual(resumed.outcome, "done")
        # The original is untouched by what happened to the copy.
        self.assertEqual(plan.outcome, "waiting_transfer")

    def test_every_kind_round_trips(self) -> None:
        for task_type, args in (
            ("Reboot", {}),
            ("GetParameterValues", {"parameter_names": ["A", "B"]}),
            ("refresh", {"path": "Device."}),
            ("Upload", {"file_type": "2 Vendor Log File", "url": "u"}),
        ):
            plan = plan_for(task_type, args, gpv_batch=1)
            snapshot = plan.snapshot()
            self.assertEqual(restore(json.loads(json.dumps(snapshot))).snapshot(), snapshot)
        with self.assertRaisesRegex(ValueError, "not a plan snapshot"):
            restore({"kind": "teleport"})


class CpeBuilderTests(SynchronousTestCase):
    def test_generic_response_validates(self) -> None:
        data = cpe_envelopes.response(
            "GetRPCMethods", "a1", [("MethodList", Array("xsd:string", ["Reboot", "Download"]))]
        )
        self.assertEqual(validate_envelope(data), [])
        message = soap.parse_envelope(data).message
        assert isinstance(message, RpcResponse)
        self.assertEqual(message.body, {"MethodList": ["Reboot", "Download"]})
