"""Full data models (issue 13): the large TR-181 generator and the incremental parse of
large answers. The end-to-end checks over TLS are in test_bigmodel_integration.py."""

from __future__ import annotations

from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import rpc, soap
from cwmpgw.cwmp.messages import RpcResponse
from cwmpgw.sim import cwmp as sim_cwmp
from cwmpgw.sim.datamodel import DeviceModel
from cwmpgw.sim.tr181 import large_tr181, large_tr181_csv

NS = "urn:dslforum-org:cwmp-1-2"


def _answers(parameters: int) -> tuple[bytes, bytes, DeviceModel]:
    model = DeviceModel(large_tr181(parameters))
    names = sim_cwmp.parameter_names_response(NS, "n1", model.names("Device.", False))
    values = []
    for name in model.leaves("Device."):
        param = model.param(name)
        assert param is not None
        values.append((name, param.value, param.type))
    return names, sim_cwmp.parameter_values_response(NS, "v1", values), model


def _whole(body: bytes) -> RpcResponse:
    """What the whole-tree parse makes of ``body`` (the reference for the streamed one)."""
    root = etree.fromstring(body, soap.PARSER)
    message = soap._map_body(root[-1][0], NS, "x")
    assert isinstance(message, RpcResponse)
    return message


class LargeModelTests(SynchronousTestCase):
    def test_sizes_and_shape(self) -> None:
        for wanted in (10_000, 50_000):
            template = large_tr181(wanted)
            self.assertGreaterEqual(len(template.params), wanted)
            self.assertLess(len(template.params), wanted + 60)
        names = set(template.params)
        for name in (
            "Device.Hosts.Host.1000.PhysAddress",
            "Device.WiFi.AccessPoint.2.AssociatedDevice.200.SignalStrength",
            "Device.IP.Interface.2.IPv4Address.1.IPAddress",
            "Device.DHCPv4.Server.Pool.1.Client.1000.Chaddr",
            "Device.NAT.PortMapping.100.ExternalPort",
            "Device.Routing.Router.1.IPv4Forwarding.20.DestIPAddress",
            "Device.DeviceInfo.ProcessStatus.Process.40.Command",
            "Device.ManagementServer.ConnectionRequestURL",
        ):
            self.assertTrue(name in names, name)
        hosts = int(template.params["Device.Hosts.HostNumberOfEntries"].value)
        self.assertTrue(f"Device.Hosts.Host.{hosts}.HostName" in names)
        self.assertFalse(f"Device.Hosts.Host.{hosts + 1}.HostName" in names)
        types = {p.type for p in template.params.values()}
        self.assertLessEqual(
            {"xsd:string", "xsd:boolean", "xsd:unsignedInt", "xsd:int", "xsd:unsignedLong"},
            types,
        )
        self.assertEqual(template.identity.product_class, "SimCPE-XL")

    def test_reproducible(self) -> None:
        self.assertEqual(large_tr181_csv(2000), large_tr181_csv(2000))
        self.assertNotEqual(large_tr181_csv(2000), large_tr181_csv(2000, seed=2))


class StreamingParseTests(SynchronousTestCase):
    """Bodies over soap.STREAM_ABOVE are parsed incrementally: same messages, same limits."""

    def test_same_messages_as_the_whole_tree(self) -> None:
        names, values, model = _answers(10_000)
        for body, method in ((names, "GetParameterNames"), (values, "GetParameterValues")):
            self.assertGreater(len(body), soap.STREAM_ABOVE)
            message = soap.parse_envelope(body, max_elements=1_000_000).message
            assert isinstance(message, RpcResponse)
            reference = _whole(body)
            self.assertEqual(message, reference)
            self.assertEqual(message.body, reference.body)
            self.assertEqual(rpc.result(method, message), rpc.result(method, reference))
        result = rpc.result(
            "GetParameterValues", soap.parse_envelope(values, max_elements=10**6).message
        )  # type: ignore[arg-type]
        self.assertEqual(len(result["parameters"]), len(model.leaves("Device.")))

    def test_limits_hold_while_streaming(self) -> None:
        names, _, _ = _answers(10_000)
        elements = sum(1 for _ in etree.fromstring(names).iter())
        soap.parse_envelope(names, max_elements=elements)
        with self.assertRaises(soap.SoapError) as e:
            soap.parse_envelope(names, max_elements=elements - 1)
        self.assertEqual(e.exception.reason, "too many elements")
        with self.assertRaises(soap.SoapError) as e:
            soap.parse_envelope(names, max_elements=10**6, max_depth=4)
        self.assertEqual(e.exception.reason, "XML nested too deeply")

    def test_hostile_large_bodies(self) -> None:
        pad = "<x>" + "a" * (soap.STREAM_ABOVE + 10) + "</x>"
        body = (
            '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            f'<soap-env:Envelope xmlns:soap-env="{soap.SOAP_ENV}" xmlns:cwmp="{NS}">'
            f"<soap-env:Body><cwmp:GetRPCMethodsResponse>&b;{pad}"
            "</cwmp:GetRPCMethodsResponse></soap-env:Body></soap-env:Envelope>"
        ).encode()
        with self.assertRaises(soap.SoapError) as e:
            soap.parse_envelope(body)
        self.assertEqual(e.exception.reason, "DTD not allowed")
        # A flood of tiny elements stops at the limit, not after building them all.
        flat = (
            f'<soap-env:Envelope xmlns:soap-env="{soap.SOAP_ENV}" xmlns:cwmp="{NS}">'
            "<soap-env:Body><cwmp:GetRPCMethodsResponse>"
            + "<a/>" * 500_000
            + "</cwmp:GetRPCMethodsResponse></soap-env:Body></soap-env:Envelope>"
        ).encode()
        with self.assertRaises(soap.SoapError) as e:
            soap.parse_envelope(flat, max_elements=20_000)
        self.assertEqual(e.exception.reason, "too many elements")
        deep = flat.replace(
            b"<a/>" * 500_000, b"<a>" * 40 + b" " * soap.STREAM_ABOVE + b"</a>" * 40
        )
        with self.assertRaises(soap.SoapError) as e:
            soap.parse_envelope(deep)
        self.assertEqual(e.exception.reason, "XML nested too deeply")
        truncated = flat[: len(flat) // 2]
        with self.assertRaises(soap.SoapError) as e:
            soap.parse_envelope(truncated, max_elements=10**6)
        self.assertEqual(e.exception.reason, "malformed XML")

    def test_invalid_struct_in_a_streamed_list(self) -> None:
        names, _, _ = _answers(3_000)
        broken = names.replace(b"<Name>Device.Hosts.Host.1.PhysAddress</Name>", b"", 1)
        self.assertNotEqual(broken, names)
        with self.assertRaises(soap.InvalidMessage) as e:
            soap.parse_envelope(broken, max_elements=10**6)
        self.assertEqual(e.exception.reason, "ParameterInfoStruct without Name")
        self.assertEqual((e.exception.namespace, e.exception.request_id), (NS, "n1"))
