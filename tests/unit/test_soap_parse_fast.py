"""The parser's fast paths agree with the general code they shortcut (cwmpgw.cwmp.soap).

Each fast path is compared, on generated input, with a reference: the general mapping it
stands in for, or the code it replaced (kept here verbatim).
"""

from __future__ import annotations

import codecs
import re

from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import soap
from cwmpgw.cwmp.messages import ParameterValue

XSI = soap.XSI
NS = "urn:dslforum-org:cwmp-1-2"

# --- ParameterList items: the common shape, and every way a CPE strays from it.

texts = st.sampled_from(["", " ", "\n  ", "a", " a b ", "Device.X.1.Name", "1", "&amp;<"])
types = st.sampled_from(
    [
        None,
        'xsi:type="xsd:string"',
        'xsi:type="xsd:int"',
        'xsi:type=" xsd:unsignedInt "',
        'xsi:type="xsd:base64Binary"',
        'xsi:type="s:boolean"',
        'xsi:type="xsd:"',
        'xsi:type="timeInstant"',
        'xsi99:type="xsd99:timeInstant"',
        'xsi99:type="xsd:dateTime"',
        'other="1"',
    ]
)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


@st.composite
def items(draw: st.DrawFn) -> str:
    name = f"<Name>{_escape(draw(texts))}</Name>"
    attr = draw(types)
    value_text = _escape(draw(texts))
    value = f"<Value {attr}>{value_text}</Value>" if attr else f"<Value>{value_text}</Value>"
    shape = draw(
        st.sampled_from(
            ["common"] * 6
            + [
                "swapped",
                "no-value",
                "no-name",
                "qualified",
                "extra",
                "nested-value",
                "nested-name",
                "info",
                "unknown",
                "qualified-item",
                "empty-value",
            ]
        )
    )
    parts = {
        "common": name + value,
        "swapped": value + name,
        "no-value": name,
        "no-name": value,
        "qualified": name.replace("Name>", "cwmp:Name>") + value,
        "extra": name + value + "<Extra/>",
        "nested-value": name + "<Value>x<b>y</b>z</Value>",
        "nested-name": "<Name>n<i/></Name>" + value,
        "empty-value": name + "<Value/>",
    }
    if shape == "info":
        return f"<ParameterInfoStruct>{name}<Writable>1</Writable></ParameterInfoStruct>"
    if shape == "unknown":
        return f"<Other>{name}{value}</Other>"
    if shape == "qualified-item":
        return f"<cwmp:ParameterValueStruct>{name}{value}</cwmp:ParameterValueStruct>"
    return f"<ParameterValueStruct>{parts[shape]}</ParameterValueStruct>"


def parameter_list(body: str) -> etree._Element:
    document = (
        f'<ParameterList xmlns:cwmp="{NS}" xmlns:xsi="{XSI}" xmlns:xsd="{soap.XSD}"'
        f' xmlns:xsi99="{soap.XSI_1999}" xmlns:xsd99="{soap.XSD_1999}">{body}</ParameterList>'
    )
    return etree.fromstring(document.encode(), soap.PARSER)  # type: ignore[no-any-return]


def general(container: etree._Element) -> tuple[ParameterValue, ...] | str:
    """What _parameter_list maps without its fast path (or the error it raises)."""
    result = []
    try:
        for item in container:
            parameter = soap._parameter_struct(item, etree.QName(item).localname)
            if parameter is not None:
                result.append(parameter)
    except soap._Invalid as e:
        return str(e)
    return tuple(result)


class ValueStructTests(SynchronousTestCase):
    @given(st.lists(items(), max_size=6))
    def test_fast_path_agrees_with_the_general_mapping(self, parts: list[str]) -> None:
        container = parameter_list("".join(parts))
        reference = general(container)
        fast = soap._value_structs(container)
        if fast is not None:
            self.assertEqual(fast, reference)
        try:
            mapped: tuple[ParameterValue, ...] | str = soap._parameter_list(container)
        except soap._Invalid as e:
            mapped = str(e)
        self.assertEqual(mapped, reference)

    def test_the_common_shape_takes_the_fast_path(self) -> None:
        container = parameter_list(
            "<ParameterValueStruct><Name> A.B </Name>"
            '<Value xsi:type="xsd:int"> 7 </Value></ParameterValueStruct>'
            "<ParameterValueStruct><Name>A.C</Name><Value> x </Value></ParameterValueStruct>"
            "<ParameterValueStruct><Name>A.D</Name>"
            '<Value xsi:type="xsd:string">\n  </Value></ParameterValueStruct>'
        )
        self.assertEqual(
            soap._value_structs(container),
            (
                ParameterValue("A.B", "7", "xsd:int"),
                ParameterValue("A.C", " x ", "xsd:string"),
                ParameterValue("A.D", "", "xsd:string"),
            ),
        )

    def test_empty_list(self) -> None:
        self.assertEqual(soap._value_structs(parameter_list("")), ())

    def test_items_not_in_document_order_shape(self) -> None:
        """Item counts that fit 3 per item but not item by item go the general way."""
        container = parameter_list(
            "<ParameterValueStruct><Name>a</Name></ParameterValueStruct>"
            "<ParameterValueStruct><Name>b</Name><Value>1</Value><Value>2</Value>"
            "</ParameterValueStruct>"
        )
        self.assertIsNone(soap._value_structs(container))
        self.assertEqual(
            soap._parameter_list(container),
            (ParameterValue("a", "", "xsd:string"), ParameterValue("b", "1", "xsd:string")),
        )


# --- _source_encoding: the code before its caches, verbatim.

_CHARSET_RE = re.compile(r"""charset\s*=\s*["']?([^"';,\s]*)""", re.IGNORECASE)


def reference_source_encoding(data: bytes, content_type: str | None) -> tuple[str, bool]:
    codec = "utf-8"
    if content_type:
        match = _CHARSET_RE.search(content_type)
        if match is not None:
            codec = soap._codec(match.group(1))
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        codec = "utf-8"
    elif data.startswith(soap._NOT_ASCII_COMPATIBLE):
        raise soap.SoapError(415, "character encoding not supported")
    if not data.startswith(b"<?xml"):
        return codec, False
    decl = soap._DECL_RE.match(data, 0, soap._MAX_DECL)
    if decl is None:
        raise soap.SoapError(400, "malformed XML")
    encoding = soap._DECL_ENCODING_RE.search(decl.group())
    if encoding is None:
        return codec, False
    return soap._codec(encoding.group(2)), True


def outcome(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except soap.SoapError as e:
        return (e.status, e.reason)


content_types = st.none() | st.sampled_from(
    [
        "",
        "text/xml",
        'text/xml; charset="utf-8"',
        "text/xml; charset=UTF-8",
        "text/xml;charset=iso-8859-1",
        "text/xml; charset=utf-16",
        "text/xml; charset=koi8-r",
        "application/soap+xml; charset='us-ascii'; action=x",
    ]
)
declarations = st.sampled_from(
    [
        b"",
        b'<?xml version="1.0" encoding="UTF-8"?>',
        b"<?xml version='1.0' encoding='UTF-8'?>",
        b'<?xml version="1.0" encoding="utf-8"?>',
        b"<?xml version='1.0' encoding='utf-8'?>",
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
        b'<?xml version="1.0" encoding="ISO-8859-1"?>',
        b'<?xml version="1.0" encoding="UTF-16"?>',
        b'<?xml version="1.0"?>',
        b'<?xml version="1.0" encoding="UTF-8"',
        b'<?xml  version="1.0" encoding="UTF-8"?>',
        b"\xef\xbb\xbf",
        b"\xef\xbb\xbf<?xml version='1.0' encoding='UTF-8'?>",
        b"\xff\xfe",
        b"<\x00",
    ]
)
rests = st.sampled_from([b"", b"<a/>", b"?><a/>", b"\n<a>\xe9</a>"])


class SourceEncodingTests(SynchronousTestCase):
    @given(content_types, declarations, rests)
    def test_same_as_before(self, content_type: str | None, decl: bytes, rest: bytes) -> None:
        data = decl + rest
        self.assertEqual(
            outcome(lambda: soap._source_encoding(data, content_type)),
            outcome(lambda: reference_source_encoding(data, content_type)),
        )
        # Twice: the second answer comes from the cache.
        self.assertEqual(
            outcome(lambda: soap._source_encoding(data, content_type)),
            outcome(lambda: reference_source_encoding(data, content_type)),
        )

    def test_the_cache_is_bounded(self) -> None:
        for n in range(soap._MAX_CONTENT_TYPES * 2):
            soap._source_encoding(b"<a/>", f"text/xml; charset=utf-8; n={n}")
        self.assertLessEqual(len(soap._CONTENT_TYPE_CODECS), soap._MAX_CONTENT_TYPES)
        self.assertEqual(
            outcome(lambda: soap._source_encoding(b"<a/>", "text/xml; charset=x-unknown")),
            (415, "character encoding not supported"),
        )


# --- _check_limits: the two XPaths it used before, verbatim.


def reference_check_limits(root: etree._Element, max_depth: int, max_elements: int) -> None:
    if etree.XPath("count(//*)")(root) > max_elements:
        raise soap.SoapError(400, "too many elements")
    if etree.XPath("boolean(/*" + "/*" * max_depth + ")")(root):
        raise soap.SoapError(400, "XML nested too deeply")


class LimitTests(SynchronousTestCase):
    @given(
        depth=st.integers(1, 40),
        width=st.integers(0, 30),
        max_depth=st.integers(1, 36),
        max_elements=st.integers(1, 80),
    )
    def test_same_as_before(
        self, depth: int, width: int, max_depth: int, max_elements: int
    ) -> None:
        document = "<a>" * depth + "<b/>" * width + "</a>" * depth
        root = etree.fromstring(document.encode(), soap.PARSER)
        self.assertEqual(
            outcome(lambda: soap._check_limits(root, max_depth, max_elements)),
            outcome(lambda: reference_check_limits(root, max_depth, max_elements)),
        )
