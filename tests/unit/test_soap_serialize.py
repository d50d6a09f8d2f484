"""The fast serialisation of cwmpgw.cwmp.soap: byte for byte what the lxml tree writes.

envelope() and inform_response() write the envelope around the body as text when that
text is certain (tests/integration/test_soap.py checks the results against the schemas);
here every output is compared with the reference, soap._tree_envelope, which builds the
whole document as one lxml tree: the same bytes, hence the same canonical form.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import rpc, soap
from tests.support.schema import FULL_ARGS, assert_valid

KNOWN = sorted(soap.CWMP_NAMESPACES)
NEGOTIATING = ("urn:dslforum-org:cwmp-1-2", "urn:dslforum-org:cwmp-1-3")

namespaces = st.sampled_from(KNOWN) | st.from_regex(
    r"urn:dslforum-org:cwmp-[0-9]{1,4}-[0-9]{1,4}", fullmatch=True
)
# Every character lxml takes in text (XML 1.0 Char), the escaped ones often.
xml_text = st.text(
    st.sampled_from("&<>\r\t\n\"' 1a-.") | st.characters(codec="utf-8"), max_size=12
).filter(lambda s: all(soap._xml_char(ord(c)) for c in s))
request_ids = st.none() | xml_text | st.from_regex(r"[0-9a-z-]{0,10}", fullmatch=True)


def c14n(document: bytes) -> bytes:
    return etree.tostring(etree.fromstring(document), method="c14n")  # type: ignore[no-any-return]


class FastEnvelopeTests(SynchronousTestCase):
    def same(self, fast: bytes, reference: bytes) -> None:
        self.assertEqual(fast, reference)
        self.assertEqual(c14n(fast), c14n(reference))

    @given(
        namespace=namespaces,
        request_id=request_ids,
        hold=st.booleans(),
        version=st.none() | st.sampled_from(["1.0", "1.4"]) | xml_text,
    )
    def test_inform_response(
        self, namespace: str, request_id: str | None, hold: bool, version: str | None
    ) -> None:
        if namespace not in NEGOTIATING:
            version = None
        fast = soap.inform_response(
            namespace, request_id, use_cwmp_version=version, hold_requests=hold
        )
        reference = soap._tree_envelope(
            namespace, request_id, soap._inform_response_rpc(namespace), hold, version
        )
        self.same(fast, reference)

    def test_inform_response_fast_path_taken(self) -> None:
        for namespace in KNOWN:
            body = soap._inform_response_body(namespace)
            self.assertIsNotNone(soap._envelope_xml(namespace, "1", body, True, "1.4"))
            self.assertIsNotNone(soap._envelope_xml(namespace, None, body, False, None))

    def test_inform_response_schema_valid(self) -> None:
        for namespace in KNOWN:
            for version in ("1.4", None) if namespace in NEGOTIATING else (None,):
                for request_id in ("1", "", None):
                    assert_valid(
                        soap.inform_response(
                            namespace, request_id, use_cwmp_version=version, hold_requests=True
                        )
                    )

    def test_use_cwmp_version_refused_outside_1_2(self) -> None:
        with self.assertRaises(ValueError):
            soap.inform_response("urn:dslforum-org:cwmp-1-0", "1", use_cwmp_version="1.4")

    @given(namespace=namespaces, request_id=request_ids, names=st.lists(xml_text, max_size=4))
    def test_get_parameter_values(
        self, namespace: str, request_id: str | None, names: list[str]
    ) -> None:
        fast = soap.get_parameter_values(namespace, request_id, names, hold_requests=True)
        body = soap.rpc_element(namespace, "GetParameterValues")
        soap._string_array(body, "ParameterNames", names)
        self.same(fast, soap._tree_envelope(namespace, request_id, body, True, None))

    @given(
        namespace=namespaces,
        request_id=request_ids,
        code=st.sampled_from([8000, 8003, 8005]),
        text=st.none() | xml_text,
    )
    def test_acs_fault(
        self, namespace: str, request_id: str | None, code: int, text: str | None
    ) -> None:
        fast = soap.acs_fault(namespace, request_id, code, text)
        fault = soap._acs_fault_element(namespace, code, text)
        self.same(fast, soap._tree_envelope(namespace, request_id, fault, False, None))

    def test_every_request_the_gateway_builds(self) -> None:
        for namespace in NEGOTIATING:
            for method, args in FULL_ARGS.items():
                for hold in (False, True):
                    spec = rpc._method(method)
                    checked = rpc.validate(method, args)
                    rpc._check_namespace(spec, namespace, checked)

                    def body(
                        spec: rpc.MethodSpec = spec, checked: dict[str, Any] = checked
                    ) -> etree._Element:
                        element = soap.rpc_element(namespace, spec.name)
                        for arg in spec.arguments:
                            rpc._emit(element, arg, checked[arg.key], boolean_digits=False)
                        return element

                    self.assertIsNotNone(soap._body_xml(namespace, body()))  # the fast path
                    self.same(
                        soap.envelope(namespace, "id-1", body(), hold_requests=hold),
                        soap._tree_envelope(namespace, "id-1", body(), hold, None),
                    )

    def test_odd_bodies_take_the_tree_path(self) -> None:
        """Bodies the text path does not take: the result is still the tree's."""
        ns = "urn:dslforum-org:cwmp-1-2"
        odd: list[Callable[[], etree._Element]] = [
            lambda: etree.Element(f"{{{ns}}}X"),  # no namespace map: a prefix of its own
            lambda: etree.Element(f"{{{ns}}}X", nsmap={"c": ns}),
            lambda: etree.Element(f"{{{ns}}}X", nsmap={**soap._nsmap(ns), "o": "urn:o"}),
            lambda: etree.Element(f"{{{ns}}}X", nsmap=soap._nsmap(ns), a="1"),
            lambda: etree.Element(f"{{{ns}}}X", nsmap=soap._nsmap("urn:dslforum-org:cwmp-1-0")),
            lambda: etree.Element("Unqualified"),
            lambda: etree.SubElement(soap.rpc_element(ns, "P"), f"{{{ns}}}Child"),
        ]
        for make in odd:
            with_tail = make()
            with_tail.tail = "t"
            for body in (make, lambda: copy.copy(with_tail)):
                self.same(
                    soap.envelope(ns, "1", body()),
                    soap._tree_envelope(ns, "1", body(), False, None),
                )

    def test_rpc_element_is_a_fresh_copy(self) -> None:
        ns = "urn:dslforum-org:cwmp-1-1"
        first = soap.rpc_element(ns, "Reboot")
        etree.SubElement(first, "CommandKey").text = "k"
        second = soap.rpc_element(ns, "Reboot")
        self.assertEqual(len(second), 0)
        self.assertEqual(second.nsmap, soap._nsmap(ns))
        self.assertIsNone(second.getparent())
        self.assertEqual(
            etree.tostring(second),
            etree.tostring(etree.Element(f"{{{ns}}}Reboot", nsmap=soap._nsmap(ns))),
        )
