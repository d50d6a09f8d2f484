"""The sans-IO session machine: message order, replies, effects, and schema-valid output."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import soap
from cwmpgw.cwmp.messages import CpeFault, RpcResponse, TransferComplete
from cwmpgw.cwmp.session import (
    ACS_METHODS,
    AcsRequest,
    CwmpSession,
    Outcome,
    ResponseReceived,
    SessionEnded,
    TransferReceived,
)
from cwmpgw.cwmp.versions import negotiate
from tests.support import cpe_envelopes as cpe
from tests.support.schema import assert_valid

NAMESPACES = (
    "urn:dslforum-org:cwmp-1-0",
    "urn:dslforum-org:cwmp-1-1",
    "urn:dslforum-org:cwmp-1-2",
    "urn:dslforum-org:cwmp-1-3",
)


def start(namespace: str = "urn:dslforum-org:cwmp-1-2", **kw: object) -> CwmpSession:
    envelope = soap.parse_envelope(cpe.inform(namespace=namespace, request_id="inf-1"))
    return CwmpSession("s1", envelope, negotiate(envelope), **kw)  # type: ignore[arg-type]


def parse(body: bytes) -> soap.Envelope:  # type: ignore[name-defined]
    return soap.parse_envelope(body)


def gpv(session: CwmpSession, request_id: str = "acs-1") -> AcsRequest:
    body = soap.get_parameter_values(
        session.namespace, request_id, ["Device.DeviceInfo."], hold_requests=session.hold_requests
    )
    return AcsRequest("GetParameterValues", request_id, body)


class SessionFlowTests(SynchronousTestCase):
    def test_inform_response_echoes_id_in_cpe_namespace_and_validates(self) -> None:
        for ns in NAMESPACES:
            reply = start(ns).inform_response()
            self.assertEqual(reply.status, 200)
            assert_valid(reply.body)
            env = reply.body.decode()
            self.assertIn(ns, env)
            self.assertIn(">inf-1<", env)
            self.assertIn("<MaxEnvelopes>1</MaxEnvelopes>", env)

    def test_hold_requests_in_inform_response(self) -> None:
        reply = start(hold_requests=True).inform_response()
        assert_valid(reply.body)
        self.assertIn(b"HoldRequests", reply.body)
        self.assertNotIn(b"HoldRequests", start().inform_response().body)

    def test_get_rpc_methods_answered(self) -> None:
        for ns in NAMESPACES:
            s = start(ns)
            step = s.receive(parse(cpe.get_rpc_methods(namespace=ns, request_id="g1")))
            assert step.reply is not None
            assert_valid(step.reply.body)
            for method in ACS_METHODS:
                self.assertIn(f"<string>{method}</string>".encode(), step.reply.body)
            self.assertIn(b">g1<", step.reply.body)
            self.assertEqual(s.cpe_requests, 2)

    def test_transfer_complete_acknowledged_with_effect(self) -> None:
        s = start()
        step = s.receive(parse(cpe.transfer_complete(request_id="t1", command_key="fw-42")))
        assert step.reply is not None
        assert_valid(step.reply.body)
        self.assertIn(b"TransferCompleteResponse", step.reply.body)
        (effect,) = step.effects
        assert isinstance(effect, TransferReceived)
        assert isinstance(effect.message, TransferComplete)
        self.assertEqual(effect.message.command_key, "fw-42")

    def test_autonomous_transfer_complete_acknowledged(self) -> None:
        for ns in NAMESPACES[1:]:
            s = start(ns)
            step = s.receive(parse(cpe.autonomous_transfer_complete(namespace=ns)))
            assert step.reply is not None
            assert_valid(step.reply.body)
            self.assertIn(b"AutonomousTransferCompleteResponse", step.reply.body)
            self.assertIsInstance(step.effects[0], TransferReceived)

    def test_unknown_cpe_method_gets_fault_8000(self) -> None:
        for ns in NAMESPACES:
            s = start(ns)
            step = s.receive(parse(cpe.unknown_request("Kicked", namespace=ns, request_id="k1")))
            assert step.reply is not None
            assert_valid(step.reply.body)
            self.assertIn(b"<FaultCode>8000</FaultCode>", step.reply.body)
            self.assertIn(b">k1<", step.reply.body)
            self.assertFalse(s.closed)

    def test_empty_post_then_finish_is_204_and_closes(self) -> None:
        s = start()
        self.assertIsNone(s.receive(None).reply)
        step = s.finish()
        assert step.reply is not None
        self.assertEqual(step.reply.status, 204)
        self.assertEqual(step.reply.body, b"")
        self.assertEqual(step.effects, (SessionEnded(Outcome.COMPLETED),))
        self.assertTrue(s.closed)

    def test_acs_request_and_response(self) -> None:
        s = start()
        s.receive(None)
        request = gpv(s)
        reply = s.send_request(request)
        assert_valid(reply.body)
        answer = cpe.rpc_response(
            "GetParameterValues", "acs-1", parameters=[("Device.DeviceInfo.X", "1", "xsd:int")]
        )
        step = s.receive(parse(answer))
        self.assertIsNone(step.reply)
        (effect,) = step.effects
        assert isinstance(effect, ResponseReceived)
        self.assertIs(effect.request, request)
        assert isinstance(effect.response, RpcResponse)
        self.assertEqual(effect.response.parameters[0].value, "1")
        self.assertEqual((s.cpe_requests, s.acs_requests), (1, 1))

    def test_cpe_fault_answers_the_request(self) -> None:
        s = start()
        s.receive(None)
        s.send_request(gpv(s))
        step = s.receive(parse(cpe.cpe_fault("acs-1", 9005, "Invalid parameter name")))
        assert isinstance(step.effects[0], ResponseReceived)
        fault = step.effects[0].response
        assert isinstance(fault, CpeFault)
        self.assertEqual(fault.fault_code, 9005)

    def test_hold_requests_keeps_session_open_after_204(self) -> None:
        s = start(hold_requests=True)
        s.receive(None)
        step = s.finish()
        assert step.reply is not None
        self.assertEqual(step.reply.status, 204)
        self.assertFalse(s.closed)
        self.assertTrue(s.may_end_quietly)
        # The CPE now sends what it held back, then its empty POST.
        tc = s.receive(parse(cpe.transfer_complete()))
        self.assertIsInstance(tc.effects[0], TransferReceived)
        self.assertIsNone(s.receive(None).reply)
        self.assertEqual(s.finish().effects, (SessionEnded(Outcome.COMPLETED),))
        self.assertTrue(s.closed)

    def test_hold_requests_header_on_acs_requests(self) -> None:
        s = start(hold_requests=True)
        s.receive(None)
        reply = s.send_request(gpv(s))
        assert_valid(reply.body)
        self.assertIn(b"HoldRequests", reply.body)


class SessionErrorTests(SynchronousTestCase):
    def assertProtocolError(self, s: CwmpSession, body: bytes | None) -> None:
        step = s.receive(parse(body) if body is not None else None)
        assert step.reply is not None
        self.assertEqual(step.reply.status, 400)
        self.assertTrue(step.reply.reason)
        self.assertEqual(step.effects[0], SessionEnded(Outcome.PROTOCOL_ERROR, step.reply.reason))
        self.assertTrue(s.closed)
        # A closed session refuses more input without changing.
        again = s.receive(None)
        assert again.reply is not None
        self.assertEqual(again.reply.status, 400)
        self.assertEqual(again.effects, ())

    def test_response_without_outstanding_request(self) -> None:
        self.assertProtocolError(start(), cpe.rpc_response("GetParameterValues", "x"))

    def test_second_inform_in_session(self) -> None:
        self.assertProtocolError(start(), cpe.inform())

    def test_wrong_cwmp_id(self) -> None:
        s = start()
        s.receive(None)
        s.send_request(gpv(s, "acs-7"))
        self.assertProtocolError(s, cpe.rpc_response("GetParameterValues", "acs-8"))

    def test_response_to_a_different_method(self) -> None:
        s = start()
        s.receive(None)
        s.send_request(gpv(s))
        self.assertProtocolError(s, cpe.rpc_response("SetParameterValues", "acs-1"))

    def test_empty_post_while_request_outstanding(self) -> None:
        s = start()
        s.receive(None)
        s.send_request(gpv(s))
        self.assertProtocolError(s, None)

    def test_cpe_request_while_request_outstanding(self) -> None:
        s = start()
        s.receive(None)
        s.send_request(gpv(s))
        self.assertProtocolError(s, cpe.transfer_complete())

    def test_send_request_out_of_turn_is_a_bug(self) -> None:
        s = start()
        self.assertRaises(RuntimeError, s.send_request, gpv(s))
        self.assertRaises(RuntimeError, s.finish)

    def test_end_from_outside_reports_once(self) -> None:
        s = start()
        self.assertEqual(s.end(Outcome.TIMEOUT, "idle"), SessionEnded(Outcome.TIMEOUT, "idle"))
        self.assertIsNone(s.end(Outcome.SUPERSEDED))
        self.assertEqual(s.outcome, Outcome.TIMEOUT)
