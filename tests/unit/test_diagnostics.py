"""Diagnostic tasks without I/O: the plan, the typed results, and the wait for
8 DIAGNOSTICS COMPLETE in the in-memory task service."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.cwmp import diagnostics, rpc
from cwmpgw.tasks.memory import MemoryTaskService
from cwmpgw.tasks.plans import DiagnosticPlan, args_schema, plan_for
from cwmpgw.tasks.rules import is_reported

DEV = "00CAFE-SimCPE-SIM000001"


def gpv(*rows: tuple[str, str, str]) -> dict[str, Any]:
    return {"parameters": [{"name": n, "value": v, "type": t} for n, v, t in rows]}


class PlanTests(SynchronousTestCase):
    def test_request_then_wait(self) -> None:
        plan = plan_for(
            "diagnostic",
            {"kind": "IPPing", "parameters": {"Host": "127.0.0.1", "NumberOfRepetitions": 3}},
        )
        call = plan.next_call()
        assert call is not None
        self.assertEqual(call.method, "SetParameterValues")
        rpc.validate(call.method, call.args)  # sendable as it is
        self.assertEqual(
            [(p["name"], p["value"], p["type"]) for p in call.args["parameters"]],
            [
                ("Device.IP.Diagnostics.IPPing.Host", "127.0.0.1", "xsd:string"),
                ("Device.IP.Diagnostics.IPPing.NumberOfRepetitions", "3", "xsd:unsignedInt"),
                ("Device.IP.Diagnostics.IPPing.DiagnosticsState", "Requested", "xsd:string"),
            ],
        )
        plan.on_result({"status": 0})
        self.assertEqual(plan.outcome, "waiting_transfer")
        self.assertIsNone(plan.next_call())

    def test_tr098_root(self) -> None:
        plan = plan_for(
            "diagnostic",
            {"kind": "TraceRoute", "parameters": {"Host": "h"}},
            root="InternetGatewayDevice",
            reported=True,
        )
        call = plan.next_call()
        assert call is not None
        self.assertEqual(
            call.args, {"parameter_names": ["InternetGatewayDevice.TraceRouteDiagnostics."]}
        )
        o = "InternetGatewayDevice.TraceRouteDiagnostics."
        plan.on_result(
            gpv(
                (o + "DiagnosticsState", "Complete", "xsd:string"),
                (o + "Host", "h", "xsd:string"),
                (o + "ResponseTime", "12", "xsd:unsignedInt"),
                (o + "RouteHopsNumberOfEntries", "2", "xsd:unsignedInt"),
                (o + "RouteHops.2.HopHost", "b", "xsd:string"),
                (o + "RouteHops.2.HopRTTimes", "3,4", "xsd:string"),
                (o + "RouteHops.1.HopHost", "a", "xsd:string"),
                (o + "RouteHops.1.HopRTTimes", "1, 2 ,", "xsd:string"),
            )
        )
        self.assertEqual(plan.outcome, "done")
        self.assertEqual(
            plan.result,
            {
                "kind": "TraceRoute",
                "object": o,
                "diagnostics_state": "Complete",
                "results": {
                    "ResponseTime": 12,
                    "RouteHopsNumberOfEntries": 2,
                    "RouteHops": [
                        {"HopHost": "a", "HopRTTimes": [1, 2]},
                        {"HopHost": "b", "HopRTTimes": [3, 4]},
                    ],
                },
            },
        )

    def test_error_state_fails(self) -> None:
        plan = plan_for(
            "diagnostic", {"kind": "NSLookup", "parameters": {"HostName": "x"}}, reported=True
        )
        plan.next_call()
        o = "Device.DNS.Diagnostics.NSLookupDiagnostics."
        plan.on_result(gpv((o + "DiagnosticsState", "Error_DNSServerNotResolved", "xsd:string")))
        self.assertEqual(plan.outcome, "failed")
        assert plan.fault is not None
        self.assertEqual(plan.fault["diagnostics_state"], "Error_DNSServerNotResolved")

    def test_still_requested_waits_again(self) -> None:
        plan = plan_for(
            "diagnostic", {"kind": "IPPing", "parameters": {"Host": "x"}}, reported=True
        )
        plan.next_call()
        o = "Device.IP.Diagnostics.IPPing."
        plan.on_result(gpv((o + "DiagnosticsState", "Requested", "xsd:string")))
        self.assertEqual(plan.outcome, "waiting_transfer")

    def test_download_throughput(self) -> None:
        plan = plan_for("diagnostic", {"kind": "DownloadDiagnostics"}, url="http://gw/d/1")
        call = plan.next_call()
        assert call is not None
        names = {p["name"].rsplit(".", 1)[1]: p["value"] for p in call.args["parameters"]}
        self.assertEqual(names["DownloadURL"], "http://gw/d/1")
        reported = plan_for("diagnostic", {"kind": "DownloadDiagnostics"}, reported=True)
        reported.next_call()
        o = "Device.IP.Diagnostics.DownloadDiagnostics."
        reported.on_result(
            gpv(
                (o + "DiagnosticsState", "Complete", "xsd:string"),
                (o + "BOMTime", "2025-01-01T00:00:00.000000Z", "xsd:dateTime"),
                (o + "EOMTime", "2025-01-01T00:00:02.000000Z", "xsd:dateTime"),
                (o + "TestBytesReceived", "1000000", "xsd:unsignedInt"),
            )
        )
        assert reported.result is not None
        self.assertEqual(reported.result["throughput_bps"], 4_000_000.0)

    def test_no_url_and_no_endpoint_fails_before_sending(self) -> None:
        plan = plan_for(
            "diagnostic", {"kind": "UploadDiagnostics", "parameters": {"TestFileLength": 10}}
        )
        self.assertIsNone(plan.next_call())
        self.assertEqual(plan.outcome, "failed")

    def test_bad_arguments(self) -> None:
        for args, path in [
            ({"kind": "Ping"}, "kind"),
            ({"kind": "IPPing", "parameters": {"Host": "x", "DSCP": 64}}, "parameters.DSCP"),
            ({"kind": "IPPing"}, "parameters.Host"),
            ({"kind": "IPPing", "parameters": {"Host": "x"}, "timeout": 0}, "timeout"),
            (
                {"kind": "IPPing", "parameters": {"Host": "x"}, "throughput_bytes": 5},
                "throughput_bytes",
            ),
            (
                {"kind": "ServerSelection", "parameters": {"HostList": ["a,b"]}},
                "parameters.HostList",
            ),
        ]:
            with self.assertRaises(rpc.ArgumentError) as e:
                plan_for("diagnostic", args)
            self.assertEqual(e.exception.path, path, args)

    def test_host_list_and_schema(self) -> None:
        plan = plan_for(
            "diagnostic", {"kind": "ServerSelection", "parameters": {"HostList": ["a", "b"]}}
        )
        assert isinstance(plan, DiagnosticPlan)
        self.assertEqual(plan.args["parameters"], {"HostList": "a,b"})
        schema = args_schema("diagnostic")
        self.assertEqual(schema["properties"]["kind"]["enum"], list(diagnostics.KINDS))


class MemoryServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.tasks = MemoryTaskService(events=MemoryEventBus(), clock=self.clock)
        self.tasks.add_device(DEV)

    def start(self, timeout: float = 60) -> Any:
        args = {"kind": "IPPing", "parameters": {"Host": "x"}, "timeout": timeout}
        self.successResultOf(self.tasks.submit(DEV, "diagnostic", args))
        task = self.successResultOf(self.tasks.next_for_device(DEV))
        return self.successResultOf(self.tasks.wait_for_transfer(task))

    def test_waits_then_resumes(self) -> None:
        waiting = self.start()
        self.assertEqual(waiting.result, {"phase": "requested"})
        self.assertEqual(waiting.expires, self.clock.seconds() + 60)
        self.assertIsNone(self.successResultOf(self.tasks.next_for_device(DEV)))
        (resumed,) = self.successResultOf(self.tasks.diagnostics_complete(DEV))
        self.assertTrue(is_reported(resumed))
        again = self.successResultOf(self.tasks.next_for_device(DEV))
        self.assertEqual((again.id, again.status, again.attempts), (waiting.id, "running", 2))
        self.assertTrue(is_reported(again))
        self.assertEqual(self.successResultOf(self.tasks.diagnostics_complete(DEV)), [])

    def test_timeout(self) -> None:
        waiting = self.start(timeout=30)
        self.clock.advance(31)
        self.assertEqual(self.successResultOf(self.tasks.expire_due()), 1)
        task = self.successResultOf(self.tasks.get(waiting.id))
        self.assertEqual(task.status, "failed")
        self.assertIn("8 DIAGNOSTICS COMPLETE", task.fault["reason"])

    def test_requested_again_fails_the_first(self) -> None:
        first = self.start()
        second = self.start()
        self.assertEqual(self.successResultOf(self.tasks.get(first.id)).status, "failed")
        self.assertEqual(self.successResultOf(self.tasks.get(second.id)).status, "running")
