"""The CWMP SOAP codec: bytes from a CPE in, typed messages out; replies built with lxml.

This is the only module that touches XML. It is sans-IO (no reactor, no HTTP), so the
session machine and the tests can drive it with plain bytes.

Input comes from untrusted devices, so parsing is defensive: one hardened parser that never
resolves entities or touches the network, any DOCTYPE rejected, depth and element-count
limits. Real CPEs are sloppy, so the mapping is tolerant: children are matched by local
name whatever their namespace, whitespace from pretty-printing is ignored, arrayType counts
are ignored and ``xsi:type`` is normalised to the ``xsd:`` prefix.

Errors come in two kinds. :class:`SoapError` means the input cannot be answered with a
CWMP fault (HTTP 400/413, or 415 for a character encoding no CPE uses).
:class:`InvalidMessage` means a well-formed CWMP envelope whose request is invalid: the
caller answers it with ACS fault 8003 in the CPE's namespace.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, cast

from lxml import etree  # type: ignore[import-untyped,unused-ignore]

from cwmpgw.cwmp.faults import acs_fault_string, cpe_fault_string
from cwmpgw.cwmp.messages import (
    AutonomousTransferComplete,
    CpeFault,
    CpeMessage,
    DeploymentUnitResult,
    DeviceId,
    DUStateChangeComplete,
    Envelope,
    EventStruct,
    GetRPCMethods,
    Inform,
    ParameterValue,
    Repair,
    RepairedValue,
    RpcResponse,
    SetParameterValuesFault,
    TransferComplete,
    UnknownRequest,
)

__all__ = [
    "CWMP_1_0",
    "CWMP_1_1",
    "CWMP_1_2",
    "CWMP_1_3",
    "CWMP_NAMESPACES",
    "PARSER",
    "SOAP_ENC",
    "SOAP_ENV",
    "XSD",
    "XSD_1999",
    "XSI",
    "XSI_1999",
    "InvalidMessage",
    "SoapError",
    "acs_fault",
    "array",
    "autonomous_transfer_complete_response",
    "envelope",
    "get_parameter_values",
    "get_rpc_methods_response",
    "inform_response",
    "leaf",
    "parse_envelope",
    "rpc_element",
    "transfer_complete_response",
]

SOAP_ENV: Final = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENC: Final = "http://schemas.xmlsoap.org/soap/encoding/"
XSD: Final = "http://www.w3.org/2001/XMLSchema"
XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
XSD_1999: Final = "http://www.w3.org/1999/XMLSchema"
XSI_1999: Final = "http://www.w3.org/1999/XMLSchema-instance"

CWMP_1_0: Final = "urn:dslforum-org:cwmp-1-0"
CWMP_1_1: Final = "urn:dslforum-org:cwmp-1-1"
CWMP_1_2: Final = "urn:dslforum-org:cwmp-1-2"
#: Not official (1.3 and 1.4 kept the cwmp-1-2 namespace) but sent by some devices.
CWMP_1_3: Final = "urn:dslforum-org:cwmp-1-3"
CWMP_NAMESPACES: Final = frozenset({CWMP_1_0, CWMP_1_1, CWMP_1_2, CWMP_1_3})
#: Namespaces whose schema has the CWMP 1.4 version-negotiation headers.
_NEGOTIATING_NAMESPACES: Final = frozenset({CWMP_1_2, CWMP_1_3})

_CWMP_NS_RE: Final = re.compile(r"urn:dslforum-org:cwmp-\d+-\d+", re.ASCII)

# ---------------------------------------------------------------------------------------
# Errors


class SoapError(Exception):
    """Input that cannot be answered with a CWMP fault: the caller answers ``status``.

    ``reason`` is a fixed short text, never a piece of the input, so it is safe to log and
    to send back to the client.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class InvalidMessage(Exception):
    """A well-formed CWMP envelope carrying an invalid request (answered with fault 8003).

    ``namespace`` and ``request_id`` are what the fault must be written in and echo.
    """

    def __init__(self, namespace: str, request_id: str | None, reason: str) -> None:
        super().__init__(reason)
        self.namespace = namespace
        self.request_id = request_id
        self.reason = reason


# ---------------------------------------------------------------------------------------
# Parsing

# One parser for the whole process: building one costs more than parsing a small
# envelope, and the reactor is single-threaded. Entities are never substituted, no DTD is
# loaded, nothing is fetched; libxml2's own limits (huge_tree=False) stay on.
_HARDENED: Final[dict[str, bool]] = {
    "resolve_entities": False,
    "no_network": True,
    "huge_tree": False,
    "load_dtd": False,
    "dtd_validation": False,
    "remove_comments": True,
    "remove_pis": True,
}
PARSER: Final = etree.XMLParser(**_HARDENED)

_ENVELOPE_TAG: Final = f"{{{SOAP_ENV}}}Envelope"
_HEADER_TAG: Final = f"{{{SOAP_ENV}}}Header"
_BODY_TAG: Final = f"{{{SOAP_ENV}}}Body"
_FAULT_TAG: Final = f"{{{SOAP_ENV}}}Fault"
_XSI_TYPE: Final = f"{{{XSI}}}type"
_XSI_1999_TYPE: Final = f"{{{XSI_1999}}}type"

_CHARSET_RE: Final = re.compile(r"""charset\s*=\s*["']?([^"';,\s]*)""", re.IGNORECASE)
# The XML declaration and the encoding it names (EncName of XML 1.0 §4.3.3); a declaration
# longer than _MAX_DECL is not one a CPE writes.
_DECL_RE: Final = re.compile(rb"<\?xml\s[^>]*?\?>", re.ASCII)
_DECL_ENCODING_RE: Final = re.compile(rb"""\sencoding\s*=\s*(["'])([^"']*)\1""", re.ASCII)
_MAX_DECL: Final = 1024
#: The encodings CPEs use, by the names they go by (IANA names and aliases, lower case),
#: each to the Python codec that decodes it. Python's other codecs include quadratic ones
#: (punycode: seconds for 256 KiB) and libxml2 (by way of iconv) knows hundreds more:
#: neither ever sees a CPE's body. UTF-16 is left out: no CPE was found that sends it.
_ENCODINGS: Final = MappingProxyType(
    {
        **dict.fromkeys(("utf-8", "utf8"), "utf-8"),
        **dict.fromkeys(
            ("us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us", "csascii"), "ascii"
        ),
        **dict.fromkeys(
            (
                "iso-8859-1",
                "iso8859-1",
                "iso_8859-1",
                "latin1",
                "latin-1",
                "l1",
                "ibm819",
                "cp819",
                "iso-ir-100",
                "csisolatin1",
            ),
            "latin-1",
        ),
    }
)
# How a document in an encoding that is not ASCII-compatible starts (XML 1.0 Appendix F):
# byte-order marks of UTF-16/32, "<" as UTF-16 or UCS-4 without one, "<?xm" in EBCDIC.
_NOT_ASCII_COMPATIBLE: Final = (
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
    b"\x00",
    b"<\x00",
    b"\x4c\x6f\xa7\x94",
)
# At most 20 significant digits (xsd:unsignedLong): a longer number is invalid anyway, and
# int() of a huge digit string raises ValueError (CPython's 4300-digit limit) or costs
# quadratic time.
_UINT_RE: Final = re.compile(r"\+?0*([0-9]{1,20})", re.ASCII)


@lru_cache(maxsize=8)
def _limits(max_depth: int) -> Callable[[object], object]:
    """A compiled XPath giving twice the number of elements, plus one when some element
    is nested deeper than allowed: both limits in one evaluation (each costs little on a
    small envelope, the evaluation itself does)."""
    return etree.XPath(  # type: ignore[no-any-return]
        "count(//*) * 2 + number(boolean(/*" + "/*" * max_depth + "))"
    )


def _local(tag: str) -> str:
    return tag[tag.rfind("}") + 1 :]


def _namespace(tag: str) -> str:
    return tag[1 : tag.find("}")] if tag.startswith("{") else ""


def _children(el: etree._Element) -> list[etree._Element]:
    # Only elements: whitespace, comments (removed anyway) and entities are skipped.
    return list(el.iterchildren(etree.Element))


def _child_map(el: etree._Element) -> dict[str, etree._Element]:
    """Children by local name, first occurrence wins, namespace ignored."""
    found: dict[str, etree._Element] = {}
    for child in el:
        tag = child.tag
        if type(tag) is not str:
            continue
        local = tag[tag.rfind("}") + 1 :]  # inlined _local: this is the hot loop
        if local not in found:
            found[local] = child
    return found


def _text(el: etree._Element | None) -> str:
    """Stripped text of a scalar element: pretty-printing whitespace is not data."""
    if el is None or el.text is None:
        return ""
    return str(el.text).strip()


def _codec(name: bytes | str) -> str:
    """The Python codec of an encoding name a CPE may use; anything else is refused (415)."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    codec = _ENCODINGS.get(name.strip().lower())
    if codec is None:
        raise SoapError(415, "character encoding not supported")
    return codec


# The codecs of the Content-Type values seen (a handful in practice, from the CPE models
# of a deployment); only those that name an encoding we take, and not too many.
_CONTENT_TYPE_CODECS: Final[dict[str, str]] = {}
_MAX_CONTENT_TYPES: Final = 64
# Declarations nearly every CPE writes: each is what _DECL_RE matches at the start of a
# document that starts with it, naming UTF-8.
_COMMON_DECLARATIONS: Final = tuple(
    f"<?xml version={q}1.0{q} encoding={q}{name}{q}?>".encode("ascii")
    for q in "\"'"
    for name in ("UTF-8", "utf-8")
)


def _content_type_codec(content_type: str) -> str:
    """The codec Content-Type's charset names (UTF-8 if none); 415 as :func:`_codec`."""
    codec = _CONTENT_TYPE_CODECS.get(content_type)
    if codec is None:
        match = _CHARSET_RE.search(content_type)
        codec = "utf-8" if match is None else _codec(match.group(1))
        if len(_CONTENT_TYPE_CODECS) < _MAX_CONTENT_TYPES and len(content_type) <= 256:
            _CONTENT_TYPE_CODECS[content_type] = codec
    return codec


def _source_encoding(data: bytes, content_type: str | None) -> tuple[str, bool]:
    """(the Python codec of ``data``, whether the document names it itself).

    Only names are looked at, and only the encodings in ``_ENCODINGS`` pass (else
    :class:`SoapError` 415): nothing is decoded here, and nothing else is ever decoded.
    The XML declaration wins over Content-Type's charset (XML 1.0 Appendix F, as lxml
    does); both must name an encoding we accept. Without either, UTF-8.
    """
    codec = _content_type_codec(content_type) if content_type else "utf-8"
    if data.startswith(_COMMON_DECLARATIONS):
        return "utf-8", True  # what the general code below finds in these, sooner
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        codec = "utf-8"  # the BOM says so (a contradicting declaration: lxml refuses it)
    elif data.startswith(_NOT_ASCII_COMPATIBLE):
        raise SoapError(415, "character encoding not supported")
    if not data.startswith(b"<?xml"):
        return codec, False
    decl = _DECL_RE.match(data, 0, _MAX_DECL)
    if decl is None:
        raise SoapError(400, "malformed XML")  # an XML declaration that does not end
    encoding = _DECL_ENCODING_RE.search(decl.group())
    if encoding is None:
        return codec, False
    return _codec(encoding.group(2)), True


def _parse_xml(body: bytes, content_type: str | None) -> etree._Element:
    data = body.lstrip(b" \t\r\n")  # some CPEs send a newline first
    codec, declared = _source_encoding(data, content_type)
    source: bytes | str = data
    if codec != "utf-8" and not declared:
        # The document does not name its encoding, so the HTTP header does (ISO-8859-1
        # from some CPEs); lxml then gets text with no encoding declaration to contradict.
        try:
            source = data.decode(codec)
        except UnicodeError:
            raise SoapError(400, "malformed XML") from None
    try:
        return etree.fromstring(source, PARSER)
    except (etree.LxmlError, ValueError):
        raise SoapError(400, "malformed XML") from None


# What XML 1.0 forbids that CPEs send: C0 controls (an SSID with U+0002), raw or as
# character references, which libxml2 refuses as well. The references are matched whatever
# their value and checked one by one (leading zeros are not digits of value).
_FORBIDDEN_RE: Final = re.compile(
    # C0 controls, U+FFFE/U+FFFF, references to any of them; and the lone surrogates that
    # stand for bytes that are not UTF-8 (decoded with surrogateescape: a Latin-1 SSID in
    # a document that says UTF-8).
    "[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\udc80-\udcff]|&#(x[0-9A-Fa-f]+|[0-9]+);"
)
# The DeviceId parts the device id is made of, in any namespace: a repair that lands in
# one is refused (the Manufacturer, only reported, may be repaired).
_DEVICE_ID_PARTS: Final = tuple(f"{{*}}{part}" for part in ("OUI", "ProductClass", "SerialNumber"))
_DECL_TEXT_RE: Final = re.compile(r"<\?xml\s[^>]*?\?>")
# While repairing, the n-th replaced character becomes U+F0000 + n (Supplementary Private
# Use Area-A, valid in XML), so that the parsed tree says where each one was; U+FFFD
# replaces them all once that is known.
_SENTINEL_BASE: Final = 0xF0000
_SENTINELS: Final = 0xFFFE
_SENTINEL_RE: Final = re.compile("[\U000f0000-\U000ffffd]")
_REPLACEMENT: Final = "\ufffd"


def _xml_char(code: int) -> bool:
    """Whether XML 1.0 allows this code point (its production ``Char``)."""
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def _replace_forbidden(text: str, marked: bool) -> tuple[str, list[str]] | None:
    """``text`` with every forbidden character (or reference to one) replaced, and those,
    in order; None if ``marked`` and the text has characters that look like our marks."""
    replaced: list[str] = []
    conflict = False

    def replace(match: re.Match[str]) -> str:
        nonlocal conflict
        ref = match.group(1)
        if ref is not None:
            digits, base = (ref[1:], 16) if ref[0] == "x" else (ref, 10)
            digits = digits.lstrip("0") or "0"
            code = int(digits, base) if len(digits) <= 8 else -1
            if _xml_char(code):
                conflict = conflict or _SENTINEL_BASE <= code < _SENTINEL_BASE + _SENTINELS
                return match.group()
        replaced.append(match.group())
        n = len(replaced) - 1
        return chr(_SENTINEL_BASE + n) if marked and n < _SENTINELS else _REPLACEMENT

    if marked and _SENTINEL_RE.search(text) is not None:
        return None
    fixed = _FORBIDDEN_RE.sub(replace, text)
    return None if marked and conflict else (fixed, replaced)


def _unmark(text: str) -> str:
    return _SENTINEL_RE.sub(_REPLACEMENT, text)


def _restore(root: etree._Element, replaced: list[str]) -> tuple[RepairedValue, ...]:
    """Put U+FFFD where the marks are; the ParameterValueStruct Values that had some."""
    values: list[RepairedValue] = []

    def raw(match: re.Match[str]) -> str:
        return replaced[ord(match.group()) - _SENTINEL_BASE]

    for el in root.iter(etree.Element):
        text = el.text
        if text is not None and _SENTINEL_RE.search(text) is not None:
            parent = el.getparent()
            if (
                _local(el.tag) == "Value"
                and parent is not None
                and _local(parent.tag) == "ParameterValueStruct"
            ):
                name = _unmark(_text(_child_map(parent).get("Name")))
                values.append(RepairedValue(name, _SENTINEL_RE.sub(raw, text)))
            el.text = _unmark(text)
        tail = el.tail
        if tail is not None and _SENTINEL_RE.search(tail) is not None:
            el.tail = _unmark(tail)
        for key, value in el.attrib.items():
            if _SENTINEL_RE.search(value) is not None:
                el.set(key, _unmark(value))
    return tuple(values)


def _parse_repaired(body: bytes, content_type: str | None) -> tuple[etree._Element, Repair] | None:
    """Parse a document the strict parse refused, with what XML 1.0 forbids, and bytes
    that are not in the document's encoding, replaced by U+FFFD (issue 13: one control
    character, or one Latin-1 byte, in an SSID must not lock a device out for ever). None
    if it has nothing to replace or is still unreadable. Only ever called after the strict
    parse failed, so well-formed input pays nothing for it."""
    data = body.lstrip(b" \t\r\n")
    codec, _ = _source_encoding(data, content_type)
    try:
        # Bytes that are not UTF-8 become lone surrogates, replaced below like a control.
        text = data.decode("utf-8-sig" if codec == "utf-8" else codec, "surrogateescape")
    except UnicodeError:
        return None
    decl = _DECL_TEXT_RE.match(text)
    if decl is not None:  # lxml refuses text that names an encoding; it is decoded now
        text = text[decl.end() :]
    marked = True
    result = _replace_forbidden(text, marked)
    if result is None:  # our marks would be ambiguous: U+FFFD, without the values
        marked = False
        result = _replace_forbidden(text, marked)
        assert result is not None
    fixed, replaced = result
    if not replaced:
        return None
    try:
        root = etree.fromstring(fixed, PARSER)
    except (etree.LxmlError, ValueError):
        return None
    values = _restore(root, replaced) if marked else ()
    if any(_REPLACEMENT in (el.text or "") for el in root.iter(_DEVICE_ID_PARTS)):
        return None  # an identity is never guessed: a device id with U+FFFD is not the CPE's
    return root, Repair(len(replaced), values)


def _check_limits(root: etree._Element, max_depth: int, max_elements: int) -> None:
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise SoapError(400, "DTD not allowed")
    count, too_deep = divmod(int(cast(float, _limits(max_depth)(root))), 2)
    if count > max_elements:
        raise SoapError(400, "too many elements")
    if too_deep:
        raise SoapError(400, "XML nested too deeply")


#: Bodies larger than this are parsed incrementally (see :func:`_parse_streaming`).
STREAM_ABOVE: Final = 262_144
_STREAM_CHUNK: Final = 65_536
_LIST_ITEM_DEPTH: Final = 5  # Envelope / Body / <Method>Response / ParameterList / item


class _Streamed:
    """What the incremental parse already mapped: per ParameterList of a response, its
    parameters and its body-tree items (the elements themselves are gone)."""

    __slots__ = ("error", "items", "parameters")

    def __init__(self) -> None:
        self.parameters: list[ParameterValue] = []
        self.items: list[Any] = []
        self.error: _Invalid | None = None


def _stream_item(lists: dict[etree._Element, _Streamed], item: etree._Element) -> None:
    """Map a finished ParameterList item of a response, then drop the finished elements."""
    container = item.getparent()
    streamed = lists.get(container)
    if streamed is None:
        streamed = lists[container] = _Streamed()
    tag = item.tag
    kind = tag[tag.rfind("}") + 1 :]
    if streamed.error is None:
        try:
            parameter = _parameter_struct(item, kind)
        except _Invalid as e:
            streamed.error = e
        else:
            if parameter is not None:
                streamed.parameters.append(parameter)
            # The items of _value_list_tree / _tree, without building the generic tree.
            if kind == "ParameterValueStruct" and parameter is not None:
                streamed.items.append({"Name": parameter.name, "Value": parameter.value})
            elif kind == "ParameterInfoStruct" and parameter is not None:
                streamed.items.append({"Name": parameter.name, "Writable": parameter.value})
            elif (
                len(item)
                or kind in _ARRAY_CONTAINERS
                or item.get(_ARRAY_TYPE) is not None
                or item.get("arrayType") is not None
            ):
                streamed.items.append(_tree(item, kind))
            else:
                streamed.items.append(_text(item))
    # The usual iterparse clean-up: this item's subtree and the earlier (empty) siblings.
    item.clear()
    while item.getprevious() is not None:
        del container[0]


def _parse_streaming(
    body: bytes, max_depth: int, max_elements: int
) -> tuple[etree._Element, dict[etree._Element, _Streamed]] | None:
    """Parse a large body incrementally, with the limits checked as elements arrive.

    The answer to a discovery (GetParameterValues/Names of a whole tree) is megabytes and
    hundreds of thousands of elements: parsed whole, libxml2's tree alone is about five
    times the body. Here each item of a response's ParameterList is mapped when its end
    tag arrives and then dropped, so the tree never holds more than one item; the DTD,
    element-count and depth limits stop the parse as soon as they are broken, before the
    rest is read. Same hardened parser settings as :data:`PARSER`.

    Returns None for input this path does not take (a body that names a non-UTF-8 charset
    or is malformed): the caller parses it whole, with the usual repairs.
    """
    parser = etree.XMLPullParser(events=("start", "end"), **_HARDENED)
    lists: dict[etree._Element, _Streamed] = {}
    data = memoryview(body.lstrip(b" \t\r\n"))
    depth = count = 0
    # Local names along the open path: a ParameterList item of a *Response is streamed.
    path: list[str] = []
    try:
        for offset in range(0, len(data), _STREAM_CHUNK):
            parser.feed(bytes(data[offset : offset + _STREAM_CHUNK]))
            for event, element in parser.read_events():
                tag = element.tag
                if event == "start":
                    if count == 0:
                        _refuse_dtd(element)
                    count += 1
                    depth += 1
                    if count > max_elements:
                        raise SoapError(400, "too many elements")
                    if depth > max_depth:
                        raise SoapError(400, "XML nested too deeply")
                    path.append(tag[tag.rfind("}") + 1 :] if type(tag) is str else "")
                    continue
                if (
                    depth == _LIST_ITEM_DEPTH
                    and path[3] == "ParameterList"
                    and path[2].endswith("Response")
                    and path[1] == "Body"
                ):
                    _stream_item(lists, element)
                depth -= 1
                path.pop()
        root = parser.close()
    except etree.LxmlError:
        return None
    _refuse_dtd(root)
    return root, lists


def _refuse_dtd(element: etree._Element) -> None:
    docinfo = element.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise SoapError(400, "DTD not allowed")


def _cwmp_namespace(ns: str | None) -> str | None:
    return ns if ns is not None and _CWMP_NS_RE.fullmatch(ns) else None


def parse_envelope(
    body: bytes,
    *,
    content_type: str | None = None,
    max_depth: int = 32,
    max_elements: int = 20000,
) -> Envelope:
    """Parse one CPE envelope (the caller has already checked the body size).

    Raises :class:`SoapError` for input that is not a usable SOAP/CWMP envelope and
    :class:`InvalidMessage` for a CWMP request with invalid content.
    """
    repair: Repair | None = None
    streamed: dict[etree._Element, _Streamed] = {}
    parsed = None
    if len(body) > STREAM_ABOVE:
        # Names only (415 for an encoding we do not take), nothing decoded: a UTF-8 body
        # streams, anything else is parsed whole below.
        codec, _ = _source_encoding(body.lstrip(b" \t\r\n"), content_type)
        if codec == "utf-8":
            parsed = _parse_streaming(body, max_depth, max_elements)
    if parsed is not None:
        root, streamed = parsed
    else:
        try:
            root = _parse_xml(body, content_type)
        except SoapError as e:
            repaired = _parse_repaired(body, content_type) if e.status == 400 else None
            if repaired is None:
                raise
            root, repair = repaired
        _check_limits(root, max_depth, max_elements)
    if root.tag != _ENVELOPE_TAG:
        raise SoapError(400, "not a SOAP 1.1 envelope")
    headers: list[etree._Element] = []
    bodies: list[etree._Element] = []
    for part in root.iterchildren(etree.Element):
        if part.tag == _BODY_TAG:
            bodies.append(part)
        elif part.tag == _HEADER_TAG:
            headers.append(part)
    if len(bodies) != 1:
        raise SoapError(400, "no SOAP Body" if not bodies else "more than one SOAP Body")
    payload = _children(bodies[0])
    if len(payload) != 1:
        raise SoapError(400, "SOAP Body must hold exactly one element")
    element = payload[0]

    request_id: str | None = None
    id_namespace: str | None = None
    session_timeout: int | None = None
    supported_versions: tuple[str, ...] | None = None
    for header in headers:
        for item in header.iterchildren(etree.Element):
            name = _local(item.tag)
            if name == "ID":
                request_id = "" if item.text is None else str(item.text)
                id_namespace = _cwmp_namespace(_namespace(item.tag))
            elif name == "SessionTimeout":
                session_timeout = _parse_uint(_text(item))
            elif name == "SupportedCWMPVersions":
                versions = tuple(v.strip() for v in _text(item).split(",") if v.strip())
                supported_versions = versions or None

    namespace: str | None
    if element.tag == _FAULT_TAG:
        detail_fault = _detail_fault(element)
        namespace = None
        if detail_fault is not None:
            namespace = _cwmp_namespace(_namespace(detail_fault.tag))
        namespace = namespace or id_namespace
    else:
        namespace = _cwmp_namespace(_namespace(element.tag))
    if namespace is None or namespace not in CWMP_NAMESPACES:
        raise SoapError(400, "unknown CWMP namespace")

    message = _map_body(element, namespace, request_id, streamed)
    return Envelope(
        namespace=namespace,
        request_id=request_id,
        message=message,
        session_timeout=session_timeout,
        supported_versions=supported_versions,
        repaired=repair,
    )


# --- mapping of the Body element --------------------------------------------------------


class _Invalid(Exception):
    """Raised deep in the mapping; turned into InvalidMessage with the envelope's context."""


def _uint(el: etree._Element | None, what: str, default: int | None = None) -> int:
    if el is None:
        if default is None:
            raise _Invalid(f"missing {what}")
        return default
    number = _parse_uint(_text(el))
    if number is None:
        raise _Invalid(f"{what} is not an unsigned integer")
    return number


def _parse_uint(text: str) -> int | None:
    """An unsigned integer of at most 20 digits (leading zeros aside), else None."""
    match = _UINT_RE.fullmatch(text)
    return int(match.group(1)) if match is not None else None


def _boolean(el: etree._Element | None, what: str) -> bool:
    text = _text(el)
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise _Invalid(f"{what} is not a boolean")


def _value_type(value: etree._Element) -> str:
    """The Value's xsi:type as ``xsd:<local>``, whichever prefix the CPE bound."""
    raw = value.get(_XSI_TYPE)
    if raw is None:
        raw = value.get(_XSI_1999_TYPE)
    if raw is None:
        return "xsd:string"
    raw = raw.strip()
    prefix, _, local = raw.rpartition(":")
    if not local:
        return "xsd:string"
    if local == "base64Binary":
        return "xsd:base64"
    if local == "timeInstant" and value.nsmap.get(prefix or None) == XSD_1999:
        return "xsd:dateTime"  # the 1999 schema's name for dateTime
    return f"xsd:{local}"


def _value_text(value: etree._Element | None, type_: str) -> str:
    if value is None or value.text is None:
        return ""
    text = str(value.text)
    if type_ != "xsd:string":
        # Every non-string XSD type collapses whitespace, so stripping loses nothing.
        return text.strip()
    if "\n" in text and not text.strip():
        return ""  # a pretty-printed empty element
    return text


def _parameter_list(container: etree._Element | None) -> tuple[ParameterValue, ...]:
    """ParameterValueStructs of a ParameterList (arrayType ignored: children counted).

    ParameterInfoStruct (GetParameterNamesResponse) maps to (Name, Writable,
    "xsd:boolean") and ParameterAttributeStruct (GetParameterAttributesResponse) to
    (Name, Notification, "xsd:int"), so those responses are usable without their own types.
    """
    if container is None:
        return ()
    common = _value_structs(container)
    if common is not None:
        return common
    result: list[ParameterValue] = []
    for item in container:
        tag = item.tag
        if type(tag) is not str:
            continue  # not an element (cannot happen with our parser; cheap to be sure)
        parameter = _parameter_struct(item, tag[tag.rfind("}") + 1 :])
        if parameter is not None:
            result.append(parameter)
    return tuple(result)


def _value_structs(container: etree._Element) -> tuple[ParameterValue, ...] | None:
    """The ParameterList of the shape nearly every CPE sends, or None for any other.

    That shape: only ParameterValueStructs, each of an unqualified Name then Value, both
    without children. Walked as one flat list (one lxml call, where iterating each item
    is one per item): document order is then item, Name, Value, item, ... and the checks
    below make sure of it. The result is :func:`_parameter_struct`'s, item by item.
    """
    nodes = list(container.iter())
    if (len(nodes) - 1) % 3 or (len(nodes) - 1) // 3 != len(container):
        return None
    result: list[ParameterValue] = []
    append = result.append
    for i in range(1, len(nodes), 3):
        item, name, value = nodes[i], nodes[i + 1], nodes[i + 2]
        if (
            item.tag != "ParameterValueStruct"
            or name.tag != "Name"
            or value.tag != "Value"
            or len(item) != 2
            or len(name)
            or len(value)
        ):
            return None
        raw_type = value.get(_XSI_TYPE)
        type_ = "xsd:string" if raw_type == "xsd:string" else _value_type(value)
        name_text = name.text
        append(
            ParameterValue(
                "" if name_text is None else str(name_text).strip(),
                _value_text(value, type_),
                type_,
            )
        )
    return tuple(result)


def _parameter_struct(item: etree._Element, kind: str) -> ParameterValue | None:
    """One item of a ParameterList (local name ``kind``); None for an unknown kind."""
    if kind == "ParameterValueStruct":
        # The hot path (thousands per discovery GetParameterValuesResponse): plain
        # iteration and inlined helpers, about three times faster than the generic code.
        name = value = None
        for part in item:
            tag = part.tag
            if type(tag) is not str:
                continue
            local = tag[tag.rfind("}") + 1 :]
            if local == "Name":
                if name is None:
                    name = part
            elif local == "Value" and value is None:
                value = part
        if name is None:
            raise _Invalid("ParameterValueStruct without Name")
        if value is None:
            type_ = "xsd:string"
        else:
            raw_type = value.get(_XSI_TYPE)
            type_ = "xsd:string" if raw_type == "xsd:string" else _value_type(value)
        name_text = name.text
        return ParameterValue(
            "" if name_text is None else str(name_text).strip(),
            _value_text(value, type_),
            type_,
        )
    if kind == "ParameterInfoStruct":
        fields = _child_map(item)
        name = fields.get("Name")
        if name is None:
            raise _Invalid("ParameterInfoStruct without Name")
        return ParameterValue(_text(name), _text(fields.get("Writable")), "xsd:boolean")
    if kind == "ParameterAttributeStruct":
        fields = _child_map(item)
        name = fields.get("Name")
        if name is None:
            raise _Invalid("ParameterAttributeStruct without Name")
        return ParameterValue(_text(name), _text(fields.get("Notification")), "xsd:int")
    return None


def _inform(el: etree._Element) -> Inform:
    fields = _child_map(el)
    device = fields.get("DeviceId")
    if device is None:
        raise _Invalid("missing DeviceId")
    ids = _child_map(device)
    oui = _text(ids.get("OUI"))
    serial = _text(ids.get("SerialNumber"))
    if not oui:
        raise _Invalid("missing OUI")
    if not serial:
        raise _Invalid("missing SerialNumber")
    device_id = DeviceId(
        manufacturer=_text(ids.get("Manufacturer")),
        oui=oui,
        product_class=_text(ids.get("ProductClass")),
        serial_number=serial,
    )
    events: list[EventStruct] = []
    event_list = fields.get("Event")
    if event_list is not None:
        for item in event_list.iterchildren(etree.Element):
            parts = _child_map(item)
            code = _text(parts.get("EventCode"))
            if not code:
                raise _Invalid("EventStruct without EventCode")
            events.append(EventStruct(code, _text(parts.get("CommandKey"))))
    return Inform(
        device_id=device_id,
        events=tuple(events),
        max_envelopes=_uint(fields.get("MaxEnvelopes"), "MaxEnvelopes", 1),
        current_time=_text(fields.get("CurrentTime")),
        retry_count=_uint(fields.get("RetryCount"), "RetryCount", 0),
        parameters=_parameter_list(fields.get("ParameterList")),
    )


def _fault_struct(fields: dict[str, etree._Element]) -> tuple[int, str]:
    struct = fields.get("FaultStruct")
    if struct is None:
        return 0, ""
    parts = _child_map(struct)
    return _uint(parts.get("FaultCode"), "FaultCode", 0), _text(parts.get("FaultString"))


def _transfer_complete(el: etree._Element) -> TransferComplete:
    fields = _child_map(el)
    code, string = _fault_struct(fields)
    return TransferComplete(
        command_key=_text(fields.get("CommandKey")),
        fault_code=code,
        fault_string=string,
        start_time=_text(fields.get("StartTime")),
        complete_time=_text(fields.get("CompleteTime")),
    )


def _autonomous_transfer_complete(el: etree._Element) -> AutonomousTransferComplete:
    fields = _child_map(el)
    code, string = _fault_struct(fields)
    return AutonomousTransferComplete(
        announce_url=_text(fields.get("AnnounceURL")),
        transfer_url=_text(fields.get("TransferURL")),
        is_download=_boolean(fields.get("IsDownload"), "IsDownload"),
        file_type=_text(fields.get("FileType")),
        file_size=_uint(fields.get("FileSize"), "FileSize", 0),
        target_file_name=_text(fields.get("TargetFileName")),
        fault_code=code,
        fault_string=string,
        start_time=_text(fields.get("StartTime")),
        complete_time=_text(fields.get("CompleteTime")),
    )


# A DUStateChangeComplete reports one result per operation of its ChangeDUState.
_MAX_DU_RESULTS = 256


def _du_result(el: etree._Element, autonomous: bool) -> DeploymentUnitResult:
    fields = _child_map(el)
    fault, resolved = fields.get("Fault"), fields.get("Resolved")
    parts = _child_map(fault) if fault is not None else {}
    return DeploymentUnitResult(
        uuid=_text(fields.get("UUID")),
        deployment_unit_ref=_text(fields.get("DeploymentUnitRef")),
        version=_text(fields.get("Version")),
        current_state=_text(fields.get("CurrentState")),
        resolved=_boolean(resolved, "Resolved") if resolved is not None else False,
        execution_unit_ref_list=_text(fields.get("ExecutionUnitRefList")),
        start_time=_text(fields.get("StartTime")),
        complete_time=_text(fields.get("CompleteTime")),
        fault_code=_uint(parts.get("FaultCode"), "FaultCode", 0),
        fault_string=_text(parts.get("FaultString")),
        operation_performed=_text(fields.get("OperationPerformed")) if autonomous else "",
    )


def _du_state_change_complete(el: etree._Element, autonomous: bool) -> DUStateChangeComplete:
    """``Results`` is repeated, one OpResultStruct each (the schema); a SOAP-encoded array
    of them inside one ``Results`` is read too."""
    results: list[DeploymentUnitResult] = []
    for child in el.iterchildren(etree.Element):
        if _local(child.tag) != "Results":
            continue
        structs = (
            [child] if "UUID" in _child_map(child) else list(child.iterchildren(etree.Element))
        )
        for struct in structs:
            if len(results) >= _MAX_DU_RESULTS:
                raise _Invalid(f"more than {_MAX_DU_RESULTS} Results")
            results.append(_du_result(struct, autonomous))
    if not results:
        raise _Invalid("missing Results")
    command_key = "" if autonomous else _text(_child_map(el).get("CommandKey"))
    return DUStateChangeComplete(command_key, tuple(results), autonomous)


def _detail_fault(fault: etree._Element) -> etree._Element | None:
    for part in fault.iterchildren(etree.Element):
        if _local(part.tag) == "detail":
            for item in part.iterchildren(etree.Element):
                if _local(item.tag) == "Fault":
                    return item
    return None


def _cpe_fault(el: etree._Element) -> CpeFault:
    detail = _detail_fault(el)
    if detail is None:
        raise _Invalid("SOAP Fault without a cwmp:Fault detail")
    fields = _child_map(detail)
    code = _uint(fields.get("FaultCode"), "FaultCode")
    spv: list[SetParameterValuesFault] = []
    for item in detail.iterchildren(etree.Element):
        if _local(item.tag) != "SetParameterValuesFault":
            continue
        parts = _child_map(item)
        item_code = _uint(parts.get("FaultCode"), "FaultCode")
        spv.append(
            SetParameterValuesFault(
                parameter_name=_text(parts.get("ParameterName")),
                fault_code=item_code,
                fault_string=_text(parts.get("FaultString")) or cpe_fault_string(item_code),
            )
        )
    return CpeFault(
        fault_code=code,
        fault_string=_text(fields.get("FaultString")) or cpe_fault_string(code),
        set_parameter_values_faults=tuple(spv),
    )


#: Array elements of the CWMP schemas, read as lists even when a CPE leaves out arrayType
#: (an empty ``<ParameterList/>`` is then still an empty list, not an empty string).
_ARRAY_CONTAINERS: Final = frozenset(
    {
        "AccessList",
        "Event",
        "FileTypeArg",
        "MethodList",
        "OptionList",
        "ParameterList",
        "ParameterNames",
        "TimeWindowList",
        "TransferList",
        "VoucherList",
    }
)


def _tree(el: etree._Element, local: str) -> Any:
    """``el`` (local name ``local``) as JSON-like data, as described on :class:`RpcResponse`.

    Runs once per element of every response (a discovery GetParameterValuesResponse has
    thousands), hence the inlined helpers. Depth is bounded by the parser's limits.
    """
    names: list[str] = []
    subtrees: list[Any] = []
    for child in el:
        tag = child.tag
        if type(tag) is not str:
            continue
        name = tag[tag.rfind("}") + 1 :]
        names.append(name)
        if (
            len(child)
            or name in _ARRAY_CONTAINERS
            or child.get(_ARRAY_TYPE) is not None
            or child.get("arrayType") is not None
        ):
            subtrees.append(_tree(child, name))
        else:  # a leaf, inlined: most elements are leaves
            text = child.text
            subtrees.append("" if text is None else str(text).strip())
    if (
        local in _ARRAY_CONTAINERS
        or el.get(_ARRAY_TYPE) is not None
        or el.get("arrayType") is not None
    ):
        return subtrees
    if not subtrees:
        text = el.text
        return "" if text is None else str(text).strip()
    if len(names) > 1 and names.count(names[0]) == len(names):
        return subtrees
    return _tree_dict(names, subtrees)


def _tree_dict(names: list[str], subtrees: list[Any]) -> dict[str, Any]:
    """Subtrees by local name; a name that repeats maps to the list of its subtrees."""
    result = dict(zip(names, subtrees, strict=True))
    if len(result) == len(names):
        return result
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    result = {}
    for name, subtree in zip(names, subtrees, strict=True):
        if counts[name] == 1:
            result[name] = subtree
        else:
            result.setdefault(name, []).append(subtree)
    return result


def _value_list_tree(container: etree._Element, parameters: tuple[ParameterValue, ...]) -> Any:
    """The body tree of a ParameterList, reusing the fast parse for ParameterValueStructs.

    A discovery GetParameterValuesResponse holds thousands of structs, and the generic
    tree would double its parse time. The items are then ``{"Name", "Value"}`` with the
    Value text as in ``parameters`` (string values keep their whitespace).
    """
    count = 0
    for item in container:
        tag = item.tag
        if type(tag) is not str:
            continue
        if tag[tag.rfind("}") + 1 :] != "ParameterValueStruct":
            return _tree(container, "ParameterList")
        count += 1
    if count != len(parameters):  # cannot happen: one ParameterValue per struct
        return _tree(container, "ParameterList")
    return [{"Name": p.name, "Value": p.value} for p in parameters]


def _rpc_response(
    el: etree._Element,
    method: str,
    streamed: dict[etree._Element, _Streamed] | None = None,
) -> RpcResponse:
    leaves: dict[str, str] = {}
    parameters: tuple[ParameterValue, ...] = ()
    names: list[str] = []
    subtrees: list[Any] = []
    for child in el.iterchildren(etree.Element):
        name = _local(child.tag)
        names.append(name)
        done = streamed.get(child) if streamed else None
        if done is not None:  # a ParameterList the incremental parse mapped already
            if done.error is not None:
                raise done.error
            if name == "ParameterList":
                parameters = tuple(done.parameters)
            subtrees.append(done.items)
            continue
        if name == "ParameterList":
            parameters = _parameter_list(child)
            subtrees.append(_value_list_tree(child, parameters))
            continue
        if next(child.iterchildren(etree.Element), None) is None:
            leaves.setdefault(name, _text(child))
        subtrees.append(_tree(child, name))
    return RpcResponse(
        method=method, fields=leaves, parameters=parameters, body=_tree_dict(names, subtrees)
    )


def _map_body(
    element: etree._Element,
    namespace: str,
    request_id: str | None,
    streamed: dict[etree._Element, _Streamed] | None = None,
) -> CpeMessage:
    name = _local(element.tag)
    try:
        if element.tag == _FAULT_TAG:
            return _cpe_fault(element)
        if name == "Inform":
            return _inform(element)
        if name == "TransferComplete":
            return _transfer_complete(element)
        if name == "AutonomousTransferComplete":
            return _autonomous_transfer_complete(element)
        if name in ("DUStateChangeComplete", "AutonomousDUStateChangeComplete"):
            return _du_state_change_complete(element, name.startswith("Autonomous"))
        if name == "GetRPCMethods":
            return GetRPCMethods()
        if name.endswith("Response") and len(name) > len("Response"):
            return _rpc_response(element, name[: -len("Response")], streamed)
        return UnknownRequest(method=name)
    except _Invalid as e:
        raise InvalidMessage(namespace, request_id, str(e)) from None


# ---------------------------------------------------------------------------------------
# Serialization


def _nsmap(namespace: str) -> dict[str, str]:
    return {
        "soap-env": SOAP_ENV,
        "soap-enc": SOAP_ENC,
        "xsd": XSD,
        "xsi": XSI,
        "cwmp": namespace,
    }


_MUST_UNDERSTAND: Final = f"{{{SOAP_ENV}}}mustUnderstand"
_ARRAY_TYPE: Final = f"{{{SOAP_ENC}}}arrayType"


def _header_item(header: etree._Element, namespace: str, name: str, text: str) -> None:
    item = etree.SubElement(header, f"{{{namespace}}}{name}")
    item.set(_MUST_UNDERSTAND, "1")
    item.text = text


_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def envelope(
    namespace: str,
    request_id: str | None,
    body: etree._Element,
    *,
    hold_requests: bool = False,
    use_cwmp_version: str | None = None,
) -> bytes:
    """Wrap ``body`` (an RPC element or soap-env:Fault) in an envelope, in ``namespace``.

    The Header is left out when it would be empty; UseCWMPVersion exists only in the
    cwmp-1-2 schema (and the cwmp-1-3 alias), so asking for it elsewhere is a bug.
    """
    if use_cwmp_version is not None and namespace not in _NEGOTIATING_NAMESPACES:
        raise ValueError("UseCWMPVersion does not exist in " + namespace)
    if _CWMP_NS_RE.fullmatch(namespace) is not None:
        inner = _body_xml(namespace, body)
        if inner is not None:
            fast = _envelope_xml(namespace, request_id, inner, hold_requests, use_cwmp_version)
            if fast is not None:
                return fast
    return _tree_envelope(namespace, request_id, body, hold_requests, use_cwmp_version)


def _tree_envelope(
    namespace: str,
    request_id: str | None,
    body: etree._Element,
    hold_requests: bool,
    use_cwmp_version: str | None,
) -> bytes:
    """:func:`envelope` built as one lxml tree: the reference the fast path must equal."""
    nsmap = _nsmap(namespace)
    root = etree.Element(_ENVELOPE_TAG, nsmap=nsmap)
    if request_id is not None or hold_requests or use_cwmp_version is not None:
        header = etree.SubElement(root, _HEADER_TAG)
        if request_id is not None:
            _header_item(header, namespace, "ID", request_id)
        if hold_requests:
            _header_item(header, namespace, "HoldRequests", "1")
        if use_cwmp_version is not None:
            _header_item(header, namespace, "UseCWMPVersion", use_cwmp_version)
    etree.SubElement(root, _BODY_TAG).append(body)
    # A fixed declaration in double quotes: lxml writes single quotes, which some
    # embedded CPE parsers mishandle.
    return _XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)  # type: ignore[no-any-return]


# The fast serialisation. Building the Envelope and Header as lxml elements, moving the body
# under them (lxml then strips the body's redundant namespace declarations) and
# serialising the lot cost more than the body itself: the envelope around the body is a
# fixed text per namespace, and the header items are short texts. What is written as is
# is exactly what libxml2 would write; anything else takes the tree path above (and
# tests/unit/test_soap_serialize.py checks the two agree).

#: Texts (request IDs, versions) libxml2 writes unchanged: printable ASCII but for the
#: three characters it escapes in text (& < >), plus tab and newline.
_PLAIN_TEXT_RE: Final = re.compile("[\t\n\x20-\x25\x27-\x3b\x3d\x3f-\x7e]*", re.ASCII)
_ENVELOPE_END: Final = b"</soap-env:Body></soap-env:Envelope>"


@lru_cache(maxsize=16)
def _declarations(namespace: str) -> bytes:
    """The namespace declarations of ``_nsmap(namespace)`` as libxml2 writes them."""
    empty = etree.tostring(etree.Element("x", nsmap=_nsmap(namespace)), encoding="UTF-8")
    assert empty.startswith(b"<x ") and empty.endswith(b"/>")
    return empty[2:-2]  # type: ignore[no-any-return]


@lru_cache(maxsize=16)
def _envelope_start(namespace: str) -> bytes:
    return _XML_DECLARATION + b"<soap-env:Envelope" + _declarations(namespace) + b">"


def _body_xml(namespace: str, body: etree._Element) -> bytes | None:
    """``body`` serialised as it is inside the envelope, or None if that is not certain.

    Alone, the element carries the declarations of ``_nsmap(namespace)`` it was made
    with (:func:`rpc_element`); inside the envelope they are redundant and left out. Only
    that exact shape is taken: no parent, those declarations first and nothing after them
    (no other declaration, no attribute) in the start tag.
    """
    if body.getparent() is not None:
        return None
    xml: bytes = etree.tostring(body, encoding="UTF-8", xml_declaration=False)
    declarations = _declarations(namespace)
    name_end = xml.find(b" ")
    end = name_end + len(declarations)
    if (
        name_end < 0
        or not xml.startswith(declarations, name_end)
        or xml[end : end + 1]
        not in (
            b">",
            b"/",
        )
    ):
        return None
    return xml[:name_end] + xml[end:]


def _header_xml(name: str, text: str) -> str:
    return f'<cwmp:{name} soap-env:mustUnderstand="1">{text}</cwmp:{name}>'


def _envelope_xml(
    namespace: str,
    request_id: str | None,
    body: bytes,
    hold_requests: bool,
    use_cwmp_version: str | None,
) -> bytes | None:
    """The envelope around ``body`` (already serialised), or None for a header text that
    libxml2 would escape (the tree path writes those)."""
    if request_id is None and not hold_requests and use_cwmp_version is None:
        return _envelope_start(namespace) + b"<soap-env:Body>" + body + _ENVELOPE_END
    header = "<soap-env:Header>"
    if request_id is not None:
        if _PLAIN_TEXT_RE.fullmatch(request_id) is None:
            return None
        header += _header_xml("ID", request_id)
    if hold_requests:
        header += _header_xml("HoldRequests", "1")
    if use_cwmp_version is not None:
        if _PLAIN_TEXT_RE.fullmatch(use_cwmp_version) is None:
            return None
        header += _header_xml("UseCWMPVersion", use_cwmp_version)
    header += "</soap-env:Header><soap-env:Body>"
    return _envelope_start(namespace) + header.encode("ascii") + body + _ENVELOPE_END


def rpc_element(namespace: str, method: str) -> etree._Element:
    """An empty ``cwmp:<method>`` element; add unqualified children, then :func:`envelope`."""
    # A copy of a cached one: an element made with a namespace map costs several times
    # its copy (the same element, declarations included).
    return _rpc_prototype(namespace, method).__copy__()


@lru_cache(maxsize=256)
def _rpc_prototype(namespace: str, method: str) -> etree._Element:
    """Never handed out: only copied (a few namespaces times the methods)."""
    return etree.Element(f"{{{namespace}}}{method}", nsmap=_nsmap(namespace))


def leaf(parent: etree._Element, name: str, text: str) -> etree._Element:
    """An unqualified child with text: how every CWMP argument is written."""
    el = etree.SubElement(parent, name)
    el.text = text
    return el


def array(parent: etree._Element, name: str, item_type: str, count: int) -> etree._Element:
    """A SOAP-encoded array container with its ``soap-enc:arrayType``."""
    el = etree.SubElement(parent, name)
    el.set(_ARRAY_TYPE, f"{item_type}[{count}]")
    return el


def _string_array(parent: etree._Element, name: str, items: Sequence[str]) -> None:
    array = etree.SubElement(parent, name)
    array.set(_ARRAY_TYPE, f"xsd:string[{len(items)}]")
    for item in items:
        etree.SubElement(array, "string").text = item


def inform_response(
    namespace: str,
    request_id: str | None,
    *,
    use_cwmp_version: str | None = None,
    hold_requests: bool = False,
) -> bytes:
    """InformResponse with MaxEnvelopes 1 (the only value CWMP allows)."""
    if use_cwmp_version is not None and namespace not in _NEGOTIATING_NAMESPACES:
        raise ValueError("UseCWMPVersion does not exist in " + namespace)
    if _CWMP_NS_RE.fullmatch(namespace) is not None:
        # Once per session, always the same body: serialised once per namespace.
        fast = _envelope_xml(
            namespace,
            request_id,
            _inform_response_body(namespace),
            hold_requests,
            use_cwmp_version,
        )
        if fast is not None:
            return fast
    return _tree_envelope(
        namespace, request_id, _inform_response_rpc(namespace), hold_requests, use_cwmp_version
    )


def _inform_response_rpc(namespace: str) -> etree._Element:
    rpc = rpc_element(namespace, "InformResponse")
    etree.SubElement(rpc, "MaxEnvelopes").text = "1"
    return rpc


@lru_cache(maxsize=16)
def _inform_response_body(namespace: str) -> bytes:
    body = _body_xml(namespace, _inform_response_rpc(namespace))
    assert body is not None
    return body


def get_rpc_methods_response(
    namespace: str, request_id: str | None, methods: Sequence[str]
) -> bytes:
    """The methods this ACS supports (the schema needs at least one)."""
    rpc = rpc_element(namespace, "GetRPCMethodsResponse")
    _string_array(rpc, "MethodList", methods)
    return envelope(namespace, request_id, rpc)


def transfer_complete_response(namespace: str, request_id: str | None) -> bytes:
    """Acknowledges a TransferComplete, so the CPE can forget the transfer."""
    return envelope(namespace, request_id, rpc_element(namespace, "TransferCompleteResponse"))


def autonomous_transfer_complete_response(namespace: str, request_id: str | None) -> bytes:
    """Acknowledges an AutonomousTransferComplete (CWMP 1.1 and later)."""
    return envelope(
        namespace, request_id, rpc_element(namespace, "AutonomousTransferCompleteResponse")
    )


def du_state_change_complete_response(
    namespace: str, request_id: str | None, *, autonomous: bool
) -> bytes:
    """Acknowledges a (Autonomous)DUStateChangeComplete (CWMP 1.2 and later)."""
    name = ("Autonomous" if autonomous else "") + "DUStateChangeCompleteResponse"
    return envelope(namespace, request_id, rpc_element(namespace, name))


def acs_fault(
    namespace: str, request_id: str | None, code: int, string: str | None = None
) -> bytes:
    """An ACS fault (8000-8006) answering a CPE request; faultcode Client only for 8003."""
    return envelope(namespace, request_id, _acs_fault_element(namespace, code, string))


def _acs_fault_element(namespace: str, code: int, string: str | None) -> etree._Element:
    fault = etree.Element(_FAULT_TAG, nsmap=_nsmap(namespace))
    etree.SubElement(fault, "faultcode").text = "Client" if code == 8003 else "Server"
    etree.SubElement(fault, "faultstring").text = "CWMP fault"
    detail = etree.SubElement(etree.SubElement(fault, "detail"), f"{{{namespace}}}Fault")
    etree.SubElement(detail, "FaultCode").text = str(code)
    etree.SubElement(detail, "FaultString").text = (
        acs_fault_string(code) if string is None else string
    )
    return fault


def get_parameter_values(
    namespace: str,
    request_id: str | None,
    names: Sequence[str],
    *,
    hold_requests: bool = False,
) -> bytes:
    """A GetParameterValues request (names may be partial paths ending in ".")."""
    rpc = rpc_element(namespace, "GetParameterValues")
    _string_array(rpc, "ParameterNames", names)
    return envelope(namespace, request_id, rpc, hold_requests=hold_requests)
