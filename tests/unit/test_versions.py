"""CWMP version negotiation (PROTOCOL.md §1 "Detecting the version")."""

from __future__ import annotations

import dataclasses

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import soap
from cwmpgw.cwmp.messages import Envelope, GetRPCMethods
from cwmpgw.cwmp.soap import parse_envelope
from cwmpgw.cwmp.versions import SUPPORTED_VERSIONS, Negotiated, VersionMismatch, negotiate
from tests.support import cpe_envelopes
from tests.support.schema import assert_valid

NS_1_0 = "urn:dslforum-org:cwmp-1-0"
NS_1_1 = "urn:dslforum-org:cwmp-1-1"
NS_1_2 = "urn:dslforum-org:cwmp-1-2"
NS_1_3 = "urn:dslforum-org:cwmp-1-3"


def env(
    namespace: str = NS_1_2,
    session_timeout: int | None = None,
    supported: tuple[str, ...] | None = None,
) -> Envelope:
    return Envelope(namespace, "1", GetRPCMethods(), session_timeout, supported)


class NegotiateTests(SynchronousTestCase):
    def test_supported_versions(self) -> None:
        self.assertEqual(SUPPORTED_VERSIONS, ("1.0", "1.1", "1.2", "1.3", "1.4"))

    def test_highest_common_version(self) -> None:
        cases = [
            (("1.0", "1.1", "1.2", "1.3", "1.4"), "1.4"),
            (("1.4", "1.0"), "1.4"),  # order does not matter
            (("1.0", "1.2"), "1.2"),
            (("1.5", "2.0", "1.3"), "1.3"),  # versions we do not know are skipped
            (("1.10", "x", "1.1"), "1.1"),
        ]
        for ns in (NS_1_2, NS_1_3):
            for offered, chosen in cases:
                for timeout in (None, 60):
                    self.assertEqual(
                        negotiate(env(ns, timeout, offered)), Negotiated(chosen, chosen), offered
                    )

    def test_no_common_version(self) -> None:
        for offered in (("2.0",), ("1.5", "1.6"), ("abc",)):
            with self.assertRaises(VersionMismatch) as cm:
                negotiate(env(NS_1_2, 30, offered))
            self.assertEqual(cm.exception.offered, offered)

    def test_without_supported_versions(self) -> None:
        self.assertEqual(negotiate(env(NS_1_2, 30)), Negotiated("1.3", None))
        self.assertEqual(negotiate(env(NS_1_2)), Negotiated("1.2", None))
        self.assertEqual(negotiate(env(NS_1_3, 45)), Negotiated("1.3", None))
        self.assertEqual(negotiate(env(NS_1_3)), Negotiated("1.2", None))
        self.assertEqual(negotiate(env(NS_1_1)), Negotiated("1.1", None))
        self.assertEqual(negotiate(env(NS_1_0)), Negotiated("1.0", None))

    def test_old_namespaces_ignore_the_version_list(self) -> None:
        """UseCWMPVersion does not exist in cwmp-1-0/1-1: the namespace's version holds."""
        self.assertEqual(negotiate(env(NS_1_0, 30, ("1.0", "1.4"))), Negotiated("1.0", None))
        self.assertEqual(negotiate(env(NS_1_1, None, ("2.0",))), Negotiated("1.1", None))

    def test_negotiated_is_frozen(self) -> None:
        with self.assertRaises(dataclasses.FrozenInstanceError):
            Negotiated("1.4", "1.4").version = "1.0"  # type: ignore[misc]


class FlowTests(SynchronousTestCase):
    """From the CPE's Inform bytes to our InformResponse or fault 8006 bytes."""

    def test_1_4_cpe_gets_use_cwmp_version(self) -> None:
        for ns in (NS_1_2, NS_1_3):
            envelope = parse_envelope(
                cpe_envelopes.inform(
                    namespace=ns,
                    request_id="1001",
                    session_timeout=60,
                    supported_versions="1.0,1.4",
                )
            )
            negotiated = negotiate(envelope)
            self.assertEqual(negotiated, Negotiated("1.4", "1.4"))
            reply = soap.inform_response(
                envelope.namespace,
                envelope.request_id,
                use_cwmp_version=negotiated.use_cwmp_version,
            )
            assert_valid(reply)
            root = etree.fromstring(reply)
            self.assertEqual(root.findtext(f".//{{{ns}}}UseCWMPVersion"), "1.4")
            self.assertEqual(root.findtext(f".//{{{ns}}}ID"), "1001")

    def test_1_2_cpe_gets_no_use_cwmp_version(self) -> None:
        envelope = parse_envelope(cpe_envelopes.inform())
        negotiated = negotiate(envelope)
        self.assertEqual(negotiated, Negotiated("1.2", None))
        reply = soap.inform_response(
            envelope.namespace, envelope.request_id, use_cwmp_version=negotiated.use_cwmp_version
        )
        assert_valid(reply)
        self.assertNotIn(b"UseCWMPVersion", reply)

    def test_old_namespace_with_version_list_gets_a_valid_reply(self) -> None:
        # cpe_envelopes writes the 1.4 headers in any namespace, as a confused CPE would.
        envelope = parse_envelope(
            cpe_envelopes.inform(namespace=NS_1_1, supported_versions="1.1,1.4")
        )
        negotiated = negotiate(envelope)
        self.assertEqual(negotiated, Negotiated("1.1", None))
        assert_valid(
            soap.inform_response(
                envelope.namespace,
                envelope.request_id,
                use_cwmp_version=negotiated.use_cwmp_version,
            )
        )

    def test_fault_8006(self) -> None:
        for ns in (NS_1_2, NS_1_3):
            envelope = parse_envelope(
                cpe_envelopes.inform(namespace=ns, request_id="77", supported_versions="2.0,2.1")
            )
            with self.assertRaises(VersionMismatch):
                negotiate(envelope)
            reply = soap.acs_fault(envelope.namespace, envelope.request_id, 8006)
            assert_valid(reply)
            root = etree.fromstring(reply)
            fault = root.find(f".//{{{ns}}}Fault")
            self.assertEqual(fault.findtext("FaultCode"), "8006")
            self.assertEqual(fault.findtext("FaultString"), "ACS version incompatible with CPE")
            self.assertEqual(root.findtext(f".//{{{ns}}}ID"), "77")
