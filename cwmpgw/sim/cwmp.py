"""The CPE side of CWMP for the simulator: envelopes a CPE sends, and reading the ACS's.

Kept apart from :mod:`cwmpgw.cwmp.soap`, which is the ACS's side: the simulator must be
able to disagree with the gateway's codec (it tests it). Everything here is built with
lxml, and every builder's output is schema-valid in the namespace it is written in
(tests/integration/test_sim.py checks each against the BBF schemas).

Reading is defensive like the gateway's: one hardened parser (no entities, no network,
no DTD), children matched by local name whatever their namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from lxml import etree  # type: ignore[import-untyped,unused-ignore]

from cwmpgw.cwmp import soap, values
from cwmpgw.cwmp.faults import cpe_fault_string
from cwmpgw.cwmp.messages import DeviceId
from cwmpgw.cwmp.soap import CWMP_NAMESPACES, SOAP_ENC, SOAP_ENV, XSD, XSI

__all__ = [
    "AcsMessage",
    "ProtocolError",
    "add_object_response",
    "all_queued_transfers_response",
    "cpe_fault",
    "elements",
    "empty_response",
    "fields",
    "get_options_response",
    "inform",
    "parameter_attributes_response",
    "parameter_names_response",
    "parameter_values_response",
    "parse_acs",
    "queued_transfers_response",
    "rpc_methods_response",
    "status_response",
    "text_of",
    "transfer_complete",
    "transfer_response",
]

# The one hardened parser of cwmpgw.cwmp.soap: the ACS's envelopes are input too.
_PARSER: Final = soap.PARSER
_ENVELOPE: Final = f"{{{SOAP_ENV}}}Envelope"
_HEADER: Final = f"{{{SOAP_ENV}}}Header"
_BODY: Final = f"{{{SOAP_ENV}}}Body"
_FAULT: Final = f"{{{SOAP_ENV}}}Fault"
_MUST_UNDERSTAND: Final = f"{{{SOAP_ENV}}}mustUnderstand"
_XSI_TYPE: Final = f"{{{XSI}}}type"
_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'

#: Faults that blame the request (faultcode Client); the rest blame the CPE (Server).
_CLIENT_FAULTS: Final = frozenset({9000, 9003, 9005, 9006, 9007, 9008, 9009, 9022})


class ProtocolError(Exception):
    """What the ACS sent is not a CWMP envelope the simulated CPE can read."""


def _local(tag: object) -> str:
    text = str(tag)
    return text[text.rfind("}") + 1 :]


def fields(element: etree._Element) -> dict[str, etree._Element]:
    """An element's children by local name (the first of each name wins)."""
    found: dict[str, etree._Element] = {}
    for child in element.iterchildren(etree.Element):
        found.setdefault(_local(child.tag), child)
    return found


def elements(element: etree._Element) -> list[etree._Element]:
    """An element's element children (comments and text skipped)."""
    return list(element.iterchildren(etree.Element))


def text_of(element: etree._Element | None) -> str | None:
    """An element's stripped text; None when there is no element."""
    if element is None:
        return None
    return "" if element.text is None else str(element.text).strip()


def _ns(tag: object) -> str:
    text = str(tag)
    return text[1 : text.find("}")] if text.startswith("{") else ""


@dataclass(frozen=True, slots=True)
class AcsMessage:
    """One envelope from the ACS.

    ``method`` is the body element's local name (``GetParameterValues``,
    ``InformResponse``...) or ``Fault``, with ``fault_code`` set.
    """

    namespace: str
    request_id: str | None
    method: str
    element: etree._Element
    hold_requests: bool = False
    fault_code: int | None = None

    def child(self, name: str) -> etree._Element | None:
        for item in self.element.iterchildren(etree.Element):
            if _local(item.tag) == name:
                return item
        return None

    def text(self, name: str, default: str | None = None) -> str | None:
        """A simple argument's text (stripped), ``default`` when absent."""
        item = self.child(name)
        if item is None:
            return default
        return "" if item.text is None else str(item.text).strip()

    def items(self, name: str) -> list[etree._Element]:
        """The elements of an array argument (arrayType ignored), [] when absent."""
        item = self.child(name)
        return [] if item is None else elements(item)


def parse_acs(body: bytes) -> AcsMessage:
    """Read one envelope from the ACS; ProtocolError when it is not one."""
    try:
        root = etree.fromstring(body.lstrip(), _PARSER)
    except (etree.LxmlError, ValueError):
        raise ProtocolError("malformed XML") from None
    if root.getroottree().docinfo.doctype:
        raise ProtocolError("DTD in an envelope")
    if root.tag != _ENVELOPE:
        raise ProtocolError("not a SOAP envelope")
    request_id: str | None = None
    hold = False
    body_el = None
    for part in root.iterchildren(etree.Element):
        if part.tag == _HEADER:
            for item in part.iterchildren(etree.Element):
                name = _local(item.tag)
                if name == "ID":
                    request_id = "" if item.text is None else str(item.text)
                elif name == "HoldRequests":
                    hold = str(item.text or "").strip() in ("1", "true")
        elif part.tag == _BODY:
            body_el = part
    if body_el is None:
        raise ProtocolError("no SOAP Body")
    payload = list(body_el.iterchildren(etree.Element))
    if len(payload) != 1:
        raise ProtocolError("the SOAP Body must hold one element")
    element = payload[0]
    if element.tag == _FAULT:
        detail = next(
            (
                f
                for d in element.iterchildren(etree.Element)
                if _local(d.tag) == "detail"
                for f in d.iterchildren(etree.Element)
                if _local(f.tag) == "Fault"
            ),
            None,
        )
        code = 0
        namespace = ""
        if detail is not None:
            namespace = _ns(detail.tag)
            for item in detail.iterchildren(etree.Element):
                if _local(item.tag) == "FaultCode" and str(item.text or "").strip().isdigit():
                    code = int(str(item.text).strip())
        return AcsMessage(namespace, request_id, "Fault", element, hold, code)
    namespace = _ns(element.tag)
    if namespace not in CWMP_NAMESPACES:
        raise ProtocolError("unknown CWMP namespace")
    return AcsMessage(namespace, request_id, _local(element.tag), element, hold)


# ---------------------------------------------------------------------------------------
# Building


def _nsmap(namespace: str) -> dict[str, str]:
    return {"soap-env": SOAP_ENV, "soap-enc": SOAP_ENC, "xsd": XSD, "xsi": XSI, "cwmp": namespace}


def _envelope(
    namespace: str,
    request_id: str | None,
    body: etree._Element,
    headers: Sequence[tuple[str, str, str]] = (),
) -> bytes:
    """Wrap ``body``; ``headers`` are (local name, text, mustUnderstand) after cwmp:ID."""
    root = etree.Element(_ENVELOPE, nsmap=_nsmap(namespace))
    if request_id is not None or headers:
        header = etree.SubElement(root, _HEADER)
        if request_id is not None:
            item = etree.SubElement(header, f"{{{namespace}}}ID")
            item.set(_MUST_UNDERSTAND, "1")
            item.text = request_id
        for name, text, must in headers:
            item = etree.SubElement(header, f"{{{namespace}}}{name}")
            item.set(_MUST_UNDERSTAND, must)
            item.text = text
    etree.SubElement(root, _BODY).append(body)
    return _DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)  # type: ignore[no-any-return]


def _rpc(namespace: str, name: str) -> etree._Element:
    return etree.Element(f"{{{namespace}}}{name}", nsmap=_nsmap(namespace))


_leaf = soap.leaf
_array = soap.array


def _xsi_type(type_: str) -> str:
    try:
        return values.xsi_type(type_)
    except ValueError:
        return "xsd:string"


def _value_list(
    parent: etree._Element, parameters: Sequence[tuple[str, str, str]]
) -> etree._Element:
    plist = _array(parent, "ParameterList", "cwmp:ParameterValueStruct", len(parameters))
    for name, value, type_ in parameters:
        pvs = etree.SubElement(plist, "ParameterValueStruct")
        _leaf(pvs, "Name", name)
        _leaf(pvs, "Value", value).set(_XSI_TYPE, _xsi_type(type_))
    return plist


def inform(
    namespace: str,
    request_id: str,
    device: DeviceId,
    events: Sequence[tuple[str, str]],
    *,
    current_time: str,
    retry_count: int,
    parameters: Sequence[tuple[str, str, str]],
    supported_versions: str | None = None,
) -> bytes:
    """The Inform that opens every session; parameters are (name, value, type)."""
    rpc = _rpc(namespace, "Inform")
    dev = etree.SubElement(rpc, "DeviceId")
    _leaf(dev, "Manufacturer", device.manufacturer)
    _leaf(dev, "OUI", device.oui)
    _leaf(dev, "ProductClass", device.product_class)
    _leaf(dev, "SerialNumber", device.serial_number)
    event = _array(rpc, "Event", "cwmp:EventStruct", len(events))
    for code, key in events:
        struct = etree.SubElement(event, "EventStruct")
        _leaf(struct, "EventCode", code)
        _leaf(struct, "CommandKey", key)
    _leaf(rpc, "MaxEnvelopes", "1")
    _leaf(rpc, "CurrentTime", current_time)
    _leaf(rpc, "RetryCount", str(retry_count))
    _value_list(rpc, parameters)
    headers = []
    if supported_versions is not None:
        headers.append(("SupportedCWMPVersions", supported_versions, "0"))
    return _envelope(namespace, request_id, rpc, headers)


def transfer_complete(
    namespace: str,
    request_id: str,
    *,
    command_key: str,
    fault_code: int,
    fault_string: str,
    start_time: str,
    complete_time: str,
) -> bytes:
    """TransferComplete for an ACS-requested Download/Upload/ScheduleDownload."""
    rpc = _rpc(namespace, "TransferComplete")
    _leaf(rpc, "CommandKey", command_key)
    struct = etree.SubElement(rpc, "FaultStruct")
    _leaf(struct, "FaultCode", str(fault_code))
    _leaf(struct, "FaultString", fault_string)
    _leaf(rpc, "StartTime", start_time)
    _leaf(rpc, "CompleteTime", complete_time)
    return _envelope(namespace, request_id, rpc)


def du_operations(message: AcsMessage) -> list[tuple[str, str]]:
    """A ChangeDUState's operations, in order: (xsi:type without prefix, e.g.
    ``InstallOpStruct``, and the UUID given, or "")."""
    out: list[tuple[str, str]] = []
    for op in message.element.iterchildren(etree.Element):
        if _local(op.tag) != "Operations":
            continue
        kind = str(op.get(_XSI_TYPE, "")).rpartition(":")[2]
        uuid = next(
            (
                str(c.text or "").strip()
                for c in op.iterchildren(etree.Element)
                if _local(c.tag) == "UUID"
            ),
            "",
        )
        out.append((kind, uuid))
    return out


def du_state_change_complete(
    namespace: str,
    request_id: str,
    *,
    command_key: str,
    results: Sequence[tuple[str, str, str]],
    start_time: str,
    complete_time: str,
) -> bytes:
    """DUStateChangeComplete after a ChangeDUState: one ``Results`` per operation, each
    (UUID, deployment unit path, CurrentState), all successful."""
    rpc = _rpc(namespace, "DUStateChangeComplete")
    for n, (uuid, ref, state) in enumerate(results, start=1):
        result = etree.SubElement(rpc, "Results")
        _leaf(result, "UUID", uuid)
        _leaf(result, "DeploymentUnitRef", ref)
        _leaf(result, "Version", "1.0")
        _leaf(result, "CurrentState", state)
        _leaf(result, "Resolved", "1")
        _leaf(result, "ExecutionUnitRefList", f"Device.SoftwareModules.ExecutionUnit.{n}")
        _leaf(result, "StartTime", start_time)
        _leaf(result, "CompleteTime", complete_time)
        fault = etree.SubElement(result, "Fault")
        _leaf(fault, "FaultCode", "0")
        _leaf(fault, "FaultString", "")
    _leaf(rpc, "CommandKey", command_key)
    return _envelope(namespace, request_id, rpc)


def cpe_fault(
    namespace: str,
    request_id: str | None,
    code: int,
    string: str | None = None,
    spv_faults: Iterable[tuple[str, int]] = (),
) -> bytes:
    """A CPE fault answering an ACS request; spv_faults are (ParameterName, FaultCode)."""
    fault = etree.Element(_FAULT, nsmap=_nsmap(namespace))
    _leaf(fault, "faultcode", "Client" if code in _CLIENT_FAULTS else "Server")
    _leaf(fault, "faultstring", "CWMP fault")
    detail = etree.SubElement(etree.SubElement(fault, "detail"), f"{{{namespace}}}Fault")
    _leaf(detail, "FaultCode", str(code))
    _leaf(detail, "FaultString", string or cpe_fault_string(code))
    for name, item_code in spv_faults:
        item = etree.SubElement(detail, "SetParameterValuesFault")
        _leaf(item, "ParameterName", name)
        _leaf(item, "FaultCode", str(item_code))
        _leaf(item, "FaultString", cpe_fault_string(item_code))
    return _envelope(namespace, request_id, fault)


def empty_response(namespace: str, request_id: str | None, method: str) -> bytes:
    """``<method>Response`` without children (Reboot, ScheduleInform, ...)."""
    return _envelope(namespace, request_id, _rpc(namespace, method + "Response"))


def status_response(namespace: str, request_id: str | None, method: str, status: int) -> bytes:
    """SetParameterValuesResponse or DeleteObjectResponse."""
    rpc = _rpc(namespace, method + "Response")
    _leaf(rpc, "Status", str(status))
    return _envelope(namespace, request_id, rpc)


def rpc_methods_response(namespace: str, request_id: str | None, methods: Sequence[str]) -> bytes:
    rpc = _rpc(namespace, "GetRPCMethodsResponse")
    array = _array(rpc, "MethodList", "xsd:string", len(methods))
    for method in methods:
        _leaf(array, "string", method)
    return _envelope(namespace, request_id, rpc)


def parameter_values_response(
    namespace: str, request_id: str | None, parameters: Sequence[tuple[str, str, str]]
) -> bytes:
    rpc = _rpc(namespace, "GetParameterValuesResponse")
    _value_list(rpc, parameters)
    return _envelope(namespace, request_id, rpc)


def parameter_names_response(
    namespace: str, request_id: str | None, names: Sequence[tuple[str, bool]]
) -> bytes:
    rpc = _rpc(namespace, "GetParameterNamesResponse")
    plist = _array(rpc, "ParameterList", "cwmp:ParameterInfoStruct", len(names))
    for name, writable in names:
        info = etree.SubElement(plist, "ParameterInfoStruct")
        _leaf(info, "Name", name)
        _leaf(info, "Writable", "1" if writable else "0")
    return _envelope(namespace, request_id, rpc)


def parameter_attributes_response(
    namespace: str,
    request_id: str | None,
    attributes: Sequence[tuple[str, int, Sequence[str]]],
) -> bytes:
    rpc = _rpc(namespace, "GetParameterAttributesResponse")
    plist = _array(rpc, "ParameterList", "cwmp:ParameterAttributeStruct", len(attributes))
    for name, notification, access in attributes:
        struct = etree.SubElement(plist, "ParameterAttributeStruct")
        _leaf(struct, "Name", name)
        _leaf(struct, "Notification", str(notification))
        array = _array(struct, "AccessList", "xsd:string", len(access))
        for entry in access:
            _leaf(array, "string", entry)
    return _envelope(namespace, request_id, rpc)


def add_object_response(
    namespace: str, request_id: str | None, instance: int, status: int = 0
) -> bytes:
    rpc = _rpc(namespace, "AddObjectResponse")
    _leaf(rpc, "InstanceNumber", str(instance))
    _leaf(rpc, "Status", str(status))
    return _envelope(namespace, request_id, rpc)


def transfer_response(
    namespace: str,
    request_id: str | None,
    method: str,
    *,
    status: int,
    start_time: str = values.UNKNOWN_TIME,
    complete_time: str = values.UNKNOWN_TIME,
) -> bytes:
    """DownloadResponse / UploadResponse; times are the unknown time while status is 1."""
    rpc = _rpc(namespace, method + "Response")
    _leaf(rpc, "Status", str(status))
    _leaf(rpc, "StartTime", start_time)
    _leaf(rpc, "CompleteTime", complete_time)
    return _envelope(namespace, request_id, rpc)


def queued_transfers_response(
    namespace: str, request_id: str | None, transfers: Sequence[tuple[str, int]]
) -> bytes:
    """GetQueuedTransfersResponse; transfers are (CommandKey, State)."""
    rpc = _rpc(namespace, "GetQueuedTransfersResponse")
    array = _array(rpc, "TransferList", "cwmp:QueuedTransferStruct", len(transfers))
    for key, state in transfers:
        struct = etree.SubElement(array, "QueuedTransferStruct")
        _leaf(struct, "CommandKey", key)
        _leaf(struct, "State", str(state))
    return _envelope(namespace, request_id, rpc)


def all_queued_transfers_response(
    namespace: str,
    request_id: str | None,
    transfers: Sequence[tuple[str, int, bool, str, int, str]],
) -> bytes:
    """GetAllQueuedTransfersResponse; transfers are (CommandKey, State, IsDownload,
    FileType, FileSize, TargetFileName)."""
    rpc = _rpc(namespace, "GetAllQueuedTransfersResponse")
    array = _array(rpc, "TransferList", "cwmp:AllQueuedTransferStruct", len(transfers))
    for key, state, is_download, file_type, size, target in transfers:
        struct = etree.SubElement(array, "AllQueuedTransferStruct")
        _leaf(struct, "CommandKey", key)
        _leaf(struct, "State", str(state))
        _leaf(struct, "IsDownload", "1" if is_download else "0")
        _leaf(struct, "FileType", file_type)
        _leaf(struct, "FileSize", str(size))
        _leaf(struct, "TargetFileName", target)
    return _envelope(namespace, request_id, rpc)


def get_options_response(namespace: str, request_id: str | None) -> bytes:
    """No options installed: the voucher mechanism is not simulated."""
    rpc = _rpc(namespace, "GetOptionsResponse")
    _array(rpc, "OptionList", "cwmp:OptionStruct", 0)
    return _envelope(namespace, request_id, rpc)
