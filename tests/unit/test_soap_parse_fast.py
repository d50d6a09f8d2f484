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
