"""CPE→ACS envelopes, as a well-behaved test CPE would send them.

Built with lxml and independently of cwmpgw.cwmp.soap, so a bug in the codec cannot hide
behind a matching bug here. Every builder's default output validates against the BBF
schema (tests/integration/test_soap.py checks it); quirky variants are written by hand in the tests.

The default ConnectionRequestURL points at 127.0.0.1, so a test that follows it never
sends traffic off the machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from lxml import etree

from cwmpgw.cwmp.messages import DeviceId

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_PARAMETERS",
    "Array",
    "Typed",
    "autonomous_transfer_complete",
    "cpe_fault",
    "get_rpc_methods",
    "inform",
    "response",
    "rpc_response",
    "transfer_complete",
    "typical_response",
    "unknown_request",
]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENC = "http://schemas.xmlsoap.org/soap/encoding/"
XSD = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CWMP_1_2 = "urn:dslforum-org:cwmp-1-2"

#: A TP-Link EC220 as in PROTOCOL.md 9.1; its device id is 9CA2F4-EC220_G5_V3-22275K2000315.
DEFAULT_DEVICE = DeviceId(
    manufacturer="TP-Link",
    oui="9CA2F4",
    product_class="EC220_G5_V3",
    serial_number="22275K2000315",
)

#: The forced-inform parameters of a Device:2 CPE: (name, value, xsi:type).
DEFAULT_PARAMETERS: tuple[tuple[str, str, str], ...] = (
    ("Device.DeviceInfo.HardwareVersion", "EC220-G5 v3.0", "xsd:string"),
    ("Device.DeviceInfo.SoftwareVersion", "1.0.4 Build 220623", "xsd:string"),
    ("Device.DeviceInfo.ProvisioningCode", "", "xsd:string"),
    ("Device.ManagementServer.ParameterKey", "", "xsd:string"),
    ("Device.ManagementServer.ConnectionRequestURL", "http://127.0.0.1:7547/TR069", "xsd:string"),
)

_TIME = "2025-05-25T22:24:29Z"


def _envelope(
    namespace: str,
    request_id: str | None,
    body: etree._Element,
    headers: Sequence[tuple[str, str, str]] = (),
) -> bytes:
    """headers: (local name, text, mustUnderstand) after cwmp:ID."""
    nsmap = {"soap-env": SOAP_ENV, "soap-enc": SOAP_ENC, "xsd": XSD, "xsi": XSI, "cwmp": namespace}
    root = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap=nsmap)
    header = etree.SubElement(root, f"{{{SOAP_ENV}}}Header")
    if request_id is not None:
        item = etree.SubElement(header, f"{{{namespace}}}ID")
        item.set(f"{{{SOAP_ENV}}}mustUnderstand", "1")
        item.text = request_id
    for name, text, must in headers:
        item = etree.SubElement(header, f"{{{namespace}}}{name}")
        item.set(f"{{{SOAP_ENV}}}mustUnderstand", must)
        item.text = text
    if len(header) == 0:
        root.remove(header)
    etree.SubElement(root, f"{{{SOAP_ENV}}}Body").append(body)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _rpc(namespace: str, name: str) -> etree._Element:
    nsmap = {"soap-env": SOAP_ENV, "soap-enc": SOAP_ENC, "xsd": XSD, "xsi": XSI, "cwmp": namespace}
    return etree.Element(f"{{{namespace}}}{name}", nsmap=nsmap)


def _leaf(parent: etree._Element, name: str, text: str) -> etree._Element:
    el = etree.SubElement(parent, name)
    el.text = text
    return el


def _parameter_list(
    parent: etree._Element, parameters: Sequence[tuple[str, str, str]]
) -> etree._Element:
    plist = etree.SubElement(parent, "ParameterList")
    plist.set(f"{{{SOAP_ENC}}}arrayType", f"cwmp:ParameterValueStruct[{len(parameters)}]")
    for name, value, type_ in parameters:
        pvs = etree.SubElement(plist, "ParameterValueStruct")
        _leaf(pvs, "Name", name)
        _leaf(pvs, "Value", value).set(f"{{{XSI}}}type", type_)
    return plist


def _fault_struct(parent: etree._Element, code: int, string: str) -> None:
    struct = etree.SubElement(parent, "FaultStruct")
    _leaf(struct, "FaultCode", str(code))
    _leaf(struct, "FaultString", string)


def inform(
    *,
    namespace: str = CWMP_1_2,
    request_id: str | None = "1",
    device: DeviceId = DEFAULT_DEVICE,
    events: Sequence[tuple[str, str]] = (("1 BOOT", ""),),
    parameters: Sequence[tuple[str, str, str]] = DEFAULT_PARAMETERS,
    retry_count: int = 0,
    session_timeout: int | None = None,
    supported_versions: str | None = None,
    current_time: str = _TIME,
    max_envelopes: int = 1,
) -> bytes:
    """An Inform; SessionTimeout/SupportedCWMPVersions headers only when given (1.3/1.4)."""
    rpc = _rpc(namespace, "Inform")
    dev = etree.SubElement(rpc, "DeviceId")
    _leaf(dev, "Manufacturer", device.manufacturer)
    _leaf(dev, "OUI", device.oui)
    _leaf(dev, "ProductClass", device.product_class)
    _leaf(dev, "SerialNumber", device.serial_number)
    event = etree.SubElement(rpc, "Event")
    event.set(f"{{{SOAP_ENC}}}arrayType", f"cwmp:EventStruct[{len(events)}]")
    for code, command_key in events:
        struct = etree.SubElement(event, "EventStruct")
        _leaf(struct, "EventCode", code)
        _leaf(struct, "CommandKey", command_key)
    _leaf(rpc, "MaxEnvelopes", str(max_envelopes))
    _leaf(rpc, "CurrentTime", current_time)
    _leaf(rpc, "RetryCount", str(retry_count))
    _parameter_list(rpc, parameters)
    headers: list[tuple[str, str, str]] = []
    if session_timeout is not None:
        headers.append(("SessionTimeout", str(session_timeout), "0"))
    if supported_versions is not None:
        headers.append(("SupportedCWMPVersions", supported_versions, "0"))
    return _envelope(namespace, request_id, rpc, headers)


def transfer_complete(
    *,
    namespace: str = CWMP_1_2,
    request_id: str | None = "1",
    command_key: str = "fw-42",
    fault_code: int = 0,
    fault_string: str = "",
    start_time: str = "2025-05-25T22:30:01Z",
    complete_time: str = "2025-05-25T22:31:47Z",
) -> bytes:
    """TransferComplete after an ACS-requested Download (PROTOCOL.md 9.6)."""
    rpc = _rpc(namespace, "TransferComplete")
    _leaf(rpc, "CommandKey", command_key)
    _fault_struct(rpc, fault_code, fault_string)
    _leaf(rpc, "StartTime", start_time)
    _leaf(rpc, "CompleteTime", complete_time)
    return _envelope(namespace, request_id, rpc)


def autonomous_transfer_complete(
    *,
    namespace: str = CWMP_1_2,
    request_id: str | None = "1",
    announce_url: str = "",
    transfer_url: str = "http://127.0.0.1:8080/fw.bin",
    is_download: bool = True,
    file_type: str = "1 Firmware Upgrade Image",
    file_size: int = 8388608,
    target_file_name: str = "fw.bin",
    fault_code: int = 0,
    fault_string: str = "",
    start_time: str = "2025-05-25T22:30:01Z",
    complete_time: str = "2025-05-25T22:31:47Z",
) -> bytes:
    """AutonomousTransferComplete (CWMP 1.1 and later)."""
    rpc = _rpc(namespace, "AutonomousTransferComplete")
    _leaf(rpc, "AnnounceURL", announce_url)
    _leaf(rpc, "TransferURL", transfer_url)
    _leaf(rpc, "IsDownload", "true" if is_download else "false")
    _leaf(rpc, "FileType", file_type)
    _leaf(rpc, "FileSize", str(file_size))
    _leaf(rpc, "TargetFileName", target_file_name)
    _fault_struct(rpc, fault_code, fault_string)
    _leaf(rpc, "StartTime", start_time)
    _leaf(rpc, "CompleteTime", complete_time)
    return _envelope(namespace, request_id, rpc)


def get_rpc_methods(*, namespace: str = CWMP_1_2, request_id: str | None = "1") -> bytes:
    """The CPE asks which methods the ACS supports."""
    return _envelope(namespace, request_id, _rpc(namespace, "GetRPCMethods"))


def du_state_change_complete(
    results: Sequence[Mapping[str, Any]] = ({},),
    *,
    command_key: str = "du-7",
    autonomous: bool = False,
    namespace: str = CWMP_1_2,
    request_id: str | None = "1",
) -> bytes:
    """(Autonomous)DUStateChangeComplete: one ``Results`` element per operation (schema
    order); each result's fields default to a successful install."""
    rpc = _rpc(namespace, ("Autonomous" if autonomous else "") + "DUStateChangeComplete")
    for n, given in enumerate(results):
        r = {
            "uuid": f"6f0c1f1a-0000-4000-8000-00000000000{n}",
            "ref": f"Device.SoftwareModules.DeploymentUnit.{n + 1}",
            "version": "1.0",
            "state": "Installed",
            "resolved": "1",
            "units": f"Device.SoftwareModules.ExecutionUnit.{n + 1}",
            "fault_code": 0,
            "fault_string": "",
            "operation": "Install",
            **given,
        }
        el = etree.SubElement(rpc, "Results")
        _leaf(el, "UUID", str(r["uuid"]))
        _leaf(el, "DeploymentUnitRef", str(r["ref"]))
        _leaf(el, "Version", str(r["version"]))
        _leaf(el, "CurrentState", str(r["state"]))
        _leaf(el, "Resolved", str(r["resolved"]))
        _leaf(el, "ExecutionUnitRefList", str(r["units"]))
        _leaf(el, "StartTime", "2025-05-25T22:30:01Z")
        _leaf(el, "CompleteTime", "2025-05-25T22:31:47Z")
        fault = etree.SubElement(el, "Fault")
        _leaf(fault, "FaultCode", str(r["fault_code"]))
        _leaf(fault, "FaultString", str(r["fault_string"]))
        if autonomous:
            _leaf(el, "OperationPerformed", str(r["operation"]))
    if not autonomous:
        _leaf(rpc, "CommandKey", command_key)
    return _envelope(namespace, request_id, rpc)


def unknown_request(
    method: str = "Kicked",
    *,
    namespace: str = CWMP_1_2,
    request_id: str | None = "1",
) -> bytes:
    """A CPE request the gateway does not implement.

    Kicked and RequestDownload get their schema arguments and validate; any other name is
    sent as an empty element (which the schema does not know).
    """
    rpc = _rpc(namespace, method)
    if method == "Kicked":
        _leaf(rpc, "Command", "reset")
        _leaf(rpc, "Referer", "http://127.0.0.1/")
        _leaf(rpc, "Arg", "")
        _leaf(rpc, "Next", "http://127.0.0.1/next")
    elif method == "RequestDownload":
        _leaf(rpc, "FileType", "1 Firmware Upgrade Image")
        etree.SubElement(rpc, "FileTypeArg").set(f"{{{SOAP_ENC}}}arrayType", "cwmp:ArgStruct[0]")
    return _envelope(namespace, request_id, rpc)


def rpc_response(
    method: str,
    request_id: str,
    *,
    namespace: str = CWMP_1_2,
    parameters: Sequence[tuple[str, str, str]] | None = None,
    fields: Sequence[tuple[str, str]] = (),
) -> bytes:
    """``<method>Response`` to an ACS request; ``method`` with or without the suffix.

    ``fields`` become leaf children in order (e.g. ``(("Status", "0"),)`` for
    SetParameterValues); ``parameters`` a ParameterList of ParameterValueStructs, given by
    default for GetParameterValues (the forced-inform values).
    """
    name = method if method.endswith("Response") else method + "Response"
    rpc = _rpc(namespace, name)
    if parameters is None and name == "GetParameterValuesResponse":
        parameters = DEFAULT_PARAMETERS
    if parameters is not None:
        _parameter_list(rpc, parameters)
    for field_name, text in fields:
        _leaf(rpc, field_name, text)
    return _envelope(namespace, request_id, rpc)


def cpe_fault(
    request_id: str,
    code: int,
    string: str,
    spv_faults: Sequence[tuple[str, int, str]] = (),
    *,
    namespace: str = CWMP_1_2,
) -> bytes:
    """A CPE's SOAP Fault; spv_faults are (ParameterName, FaultCode, FaultString)."""
    nsmap = {"soap-env": SOAP_ENV, "cwmp": namespace}
    fault = etree.Element(f"{{{SOAP_ENV}}}Fault", nsmap=nsmap)
    _leaf(fault, "faultcode", "Client")
    _leaf(fault, "faultstring", "CWMP fault")
    detail = etree.SubElement(etree.SubElement(fault, "detail"), f"{{{namespace}}}Fault")
    _leaf(detail, "FaultCode", str(code))
    _leaf(detail, "FaultString", string)
    for parameter, item_code, item_string in spv_faults:
        item = etree.SubElement(detail, "SetParameterValuesFault")
        _leaf(item, "ParameterName", parameter)
        _leaf(item, "FaultCode", str(item_code))
        _leaf(item, "FaultString", item_string)
    return _envelope(namespace, request_id, fault)


# --- generic responses to every ACS request ---------------------------------------------


@dataclass(frozen=True)
class Array:
    """A SOAP array: ``item_type`` is e.g. ``xsd:string`` or ``cwmp:OptionStruct``; the
    items are written as elements named by its local part, arrayType counts them."""

    item_type: str
    items: Sequence[Any] = ()


@dataclass(frozen=True)
class Typed:
    """A leaf with an xsi:type (ParameterValueStruct/Value)."""

    text: str
    xsi_type: str = "xsd:string"


#: A subtree: text, a typed leaf, an array, or (name, subtree) children in order.
Tree: TypeAlias = "str | Typed | Array | Sequence[tuple[str, Tree]]"


def _fill(el: etree._Element, tree: Tree) -> None:
    if isinstance(tree, str):
        el.text = tree
    elif isinstance(tree, Typed):
        el.text = tree.text
        el.set(f"{{{XSI}}}type", tree.xsi_type)
    elif isinstance(tree, Array):
        el.set(f"{{{SOAP_ENC}}}arrayType", f"{tree.item_type}[{len(tree.items)}]")
        item_name = tree.item_type.partition(":")[2]
        for item in tree.items:
            _fill(etree.SubElement(el, item_name), item)
    else:
        for name, subtree in tree:
            _fill(etree.SubElement(el, name), subtree)


def response(
    method: str,
    request_id: str,
    children: Sequence[tuple[str, Tree]] = (),
    *,
    namespace: str = CWMP_1_2,
) -> bytes:
    """``<method>Response`` with the given children, e.g.
    ``response("GetRPCMethods", "a1", [("MethodList", Array("xsd:string", ["Reboot"]))])``.
    """
    name = method if method.endswith("Response") else method + "Response"
    rpc = _rpc(namespace, name)
    _fill(rpc, children)
    return _envelope(namespace, request_id, rpc)


def _pvs(parameters: Sequence[tuple[str, str, str]]) -> Array:
    return Array(
        "cwmp:ParameterValueStruct",
        [[("Name", n), ("Value", Typed(v, t))] for n, v, t in parameters],
    )


def _typical_children(method: str, values: Mapping[str, Any]) -> list[tuple[str, Tree]]:
    unknown = "0001-01-01T00:00:00Z"
    if method == "GetRPCMethods":
        methods = values.get(
            "methods",
            (
                "GetRPCMethods",
                "SetParameterValues",
                "GetParameterValues",
                "GetParameterNames",
                "SetParameterAttributes",
                "GetParameterAttributes",
                "AddObject",
                "DeleteObject",
                "Download",
                "Reboot",
                "FactoryReset",
                "Upload",
                "ScheduleInform",
            ),
        )
        return [("MethodList", Array("xsd:string", list(methods)))]
    if method == "GetParameterValues":
        return [("ParameterList", _pvs(values.get("parameters", DEFAULT_PARAMETERS)))]
    if method == "GetParameterNames":
        infos = values.get(
            "parameters",
            (
                ("Device.WiFi.", False),
                ("Device.WiFi.SSID.", False),
                ("Device.WiFi.SSID.1.", False),
                ("Device.WiFi.SSID.1.Enable", True),
                ("Device.WiFi.SSID.1.SSID", True),
            ),
        )
        return [
            (
                "ParameterList",
                Array(
                    "cwmp:ParameterInfoStruct",
                    [[("Name", n), ("Writable", "1" if w else "0")] for n, w in infos],
                ),
            )
        ]
    if method == "GetParameterAttributes":
        attrs = values.get(
            "parameters",
            (
                ("Device.WiFi.SSID.1.SSID", 2, ("Subscriber",)),
                ("Device.DeviceInfo.SoftwareVersion", 0, ()),
            ),
        )
        return [
            (
                "ParameterList",
                Array(
                    "cwmp:ParameterAttributeStruct",
                    [
                        [
                            ("Name", n),
                            ("Notification", str(notification)),
                            ("AccessList", Array("xsd:string", list(access))),
                        ]
                        for n, notification, access in attrs
                    ],
                ),
            )
        ]
    if method in ("SetParameterValues", "DeleteObject"):
        return [("Status", str(values.get("status", 0)))]
    if method == "AddObject":
        return [
            ("InstanceNumber", str(values.get("instance_number", 3))),
            ("Status", str(values.get("status", 0))),
        ]
    if method in ("Download", "Upload"):
        status = values.get("status", 1)
        done = "2025-05-25T22:31:47Z" if status == 0 else unknown
        started = "2025-05-25T22:30:01Z" if status == 0 else unknown
        return [
            ("Status", str(status)),
            ("StartTime", values.get("start_time", started)),
            ("CompleteTime", values.get("complete_time", done)),
        ]
    if method == "GetQueuedTransfers":
        transfers = values.get("transfers", (("fw-42", 2), ("cfg-1", 1)))
        return [
            (
                "TransferList",
                Array(
                    "cwmp:QueuedTransferStruct",
                    [[("CommandKey", k), ("State", str(state))] for k, state in transfers],
                ),
            )
        ]
    if method == "GetAllQueuedTransfers":
        transfers = values.get(
            "transfers",
            (
                ("fw-42", 2, True, "1 Firmware Upgrade Image", 8388608, "fw.bin"),
                ("", 1, False, "4 Vendor Log File", 0, ""),
            ),
        )
        return [
            (
                "TransferList",
                Array(
                    "cwmp:AllQueuedTransferStruct",
                    [
                        [
                            ("CommandKey", k),
                            ("State", str(state)),
                            ("IsDownload", "true" if down else "false"),
                            ("FileType", ftype),
                            ("FileSize", str(size)),
                            ("TargetFileName", target),
                        ]
                        for k, state, down, ftype, size, target in transfers
                    ],
                ),
            )
        ]
    if method == "GetOptions":
        options = values.get(
            "options",
            (
                {
                    "OptionName": "X_VOIP",
                    "VoucherSN": "17",
                    "State": "1",
                    "Mode": "2",
                    "StartDate": "2025-01-01T00:00:00Z",
                    "ExpirationDate": "2026-01-01T00:00:00Z",
                    "IsTransferable": "0",
                },
                {
                    "OptionName": "X_IPTV",
                    "VoucherSN": "18",
                    "State": "0",
                    "Mode": "0",
                    "StartDate": "2025-01-01T00:00:00Z",
                    "IsTransferable": "1",
                },
            ),
        )
        return [
            (
                "OptionList",
                Array("cwmp:OptionStruct", [list(option.items()) for option in options]),
            )
        ]
    # SetParameterAttributes, Reboot, ScheduleInform, SetVouchers, FactoryReset,
    # ScheduleDownload, CancelTransfer, ChangeDUState: an empty response.
    return []


def typical_response(
    method: str, request_id: str, *, namespace: str = CWMP_1_2, **values: Any
) -> bytes:
    """A realistic, schema-valid response to any ACS request; ``values`` override the
    defaults: ``methods``, ``parameters`` ((name, value, type) for GetParameterValues,
    (name, writable) for GetParameterNames, (name, notification, access list) for
    GetParameterAttributes), ``status``, ``instance_number``, ``start_time``,
    ``complete_time``, ``transfers``, ``options``. Download and Upload answer status 1.
    """
    return response(method, request_id, _typical_children(method, values), namespace=namespace)
