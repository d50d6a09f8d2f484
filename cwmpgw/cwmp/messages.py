"""Typed CWMP messages: what the SOAP codec produces from a CPE's envelope.

Plain frozen dataclasses, so the session machine, the store and the tests can build
and compare them without XML. Field names follow the schema (snake_case).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AutonomousTransferComplete",
    "CompletionReport",
    "CpeFault",
    "CpeMessage",
    "DUStateChangeComplete",
    "DeploymentUnitResult",
    "DeviceId",
    "Envelope",
    "EventStruct",
    "GetRPCMethods",
    "Inform",
    "ParameterValue",
    "Repair",
    "RepairedValue",
    "RpcResponse",
    "SetParameterValuesFault",
    "TransferComplete",
    "UnknownRequest",
]


@dataclass(frozen=True, slots=True)
class DeviceId:
    manufacturer: str
    oui: str
    product_class: str
    serial_number: str


@dataclass(frozen=True, slots=True)
class EventStruct:
    code: str  # e.g. "0 BOOTSTRAP", "M Download"
    command_key: str = ""


@dataclass(frozen=True, slots=True)
class ParameterValue:
    name: str
    value: str  # the text as sent; typing is the reader's business
    type: str = "xsd:string"  # the xsi:type as sent, normalised to the "xsd:" prefix


@dataclass(frozen=True, slots=True)
class Inform:
    device_id: DeviceId
    events: tuple[EventStruct, ...]
    max_envelopes: int
    current_time: str
    retry_count: int
    parameters: tuple[ParameterValue, ...]


@dataclass(frozen=True, slots=True)
class TransferComplete:
    command_key: str
    fault_code: int
    fault_string: str
    start_time: str
    complete_time: str


@dataclass(frozen=True, slots=True)
class AutonomousTransferComplete:
    announce_url: str
    transfer_url: str
    is_download: bool
    file_type: str
    file_size: int
    target_file_name: str
    fault_code: int
    fault_string: str
    start_time: str
    complete_time: str


@dataclass(frozen=True, slots=True)
class DeploymentUnitResult:
    """One operation's outcome in a DUStateChangeComplete (OpResultStruct)."""

    uuid: str
    deployment_unit_ref: str
    version: str
    current_state: str  # Installed | Uninstalled | Failed
    resolved: bool
    execution_unit_ref_list: str
    start_time: str
    complete_time: str
    fault_code: int  # 0: success
    fault_string: str
    operation_performed: str = ""  # autonomous only: Install | Update | Uninstall


@dataclass(frozen=True, slots=True)
class DUStateChangeComplete:
    """The CPE finished a ChangeDUState (CWMP 1.2), or changed deployment units on its own
    (``autonomous``: AutonomousDUStateChangeComplete, no CommandKey). One result per
    operation, in the order of the request's operations."""

    command_key: str
    results: tuple[DeploymentUnitResult, ...]
    autonomous: bool = False


@dataclass(frozen=True, slots=True)
class GetRPCMethods:
    """The CPE asks which methods the ACS supports."""


@dataclass(frozen=True, slots=True)
class UnknownRequest:
    """A CPE-originated request this ACS does not implement (answered with fault 8000)."""

    method: str


@dataclass(frozen=True, slots=True)
class RpcResponse:
    """The CPE's answer to an ACS request (``<Method>Response``).

    ``fields`` holds the response's simple children by local name; the task layer
    that sent the request owns the detailed parsing of its own response type
    (:mod:`cwmpgw.cwmp.rpc`), from ``parameters`` and the generic ``body`` tree.

    ``body`` is the whole response element as JSON-like data, so every response type is
    readable without its own dataclass: an element with element children is a dict by
    local name (a name repeated among other names maps to a list); an array
    (soap-enc:arrayType, or a known container such as ParameterList even without it) or
    an element whose children all share one name is a list; a leaf is its stripped text.
    The response element itself is always a dict (empty for an empty response).
    """

    method: str  # e.g. "GetParameterValues" (without the "Response" suffix)
    fields: dict[str, str] = field(default_factory=dict, compare=False)
    parameters: tuple[ParameterValue, ...] = ()
    body: Any = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class SetParameterValuesFault:
    parameter_name: str
    fault_code: int
    fault_string: str


@dataclass(frozen=True, slots=True)
class CpeFault:
    """A SOAP Fault sent by the CPE in answer to an ACS request."""

    fault_code: int
    fault_string: str
    set_parameter_values_faults: tuple[SetParameterValuesFault, ...] = ()


@dataclass(frozen=True, slots=True)
class RepairedValue:
    """A ParameterValueStruct whose Value held characters XML 1.0 forbids."""

    name: str
    raw: str  # the Value as sent: the forbidden characters, or their references (&#2;)


@dataclass(frozen=True, slots=True)
class Repair:
    """An envelope that was only readable once the characters XML 1.0 forbids (C0
    controls other than tab, CR and LF, raw or as character references) were replaced by
    U+FFFD. ``values`` are the ParameterValueStruct Values among the places repaired; the
    others (a DeviceId field, a FaultString…) are only counted in ``characters``."""

    characters: int
    values: tuple[RepairedValue, ...] = ()


CpeMessage = (
    Inform
    | TransferComplete
    | AutonomousTransferComplete
    | DUStateChangeComplete
    | GetRPCMethods
    | UnknownRequest
    | RpcResponse
    | CpeFault
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One parsed SOAP envelope from a CPE.

    ``namespace`` is the CPE's cwmp namespace URI: every reply is written in it.
    """

    namespace: str
    request_id: str | None  # the cwmp:ID header, echoed in our answer
    message: CpeMessage
    session_timeout: int | None = None  # cwmp:SessionTimeout (CWMP 1.3+), Inform only
    supported_versions: tuple[str, ...] | None = None  # cwmp:SupportedCWMPVersions (1.4)
    repaired: Repair | None = None  # readable only once forbidden characters were replaced


#: What a CPE sends to report the end of work an ACS (or the CPE itself) started earlier.
CompletionReport = TransferComplete | AutonomousTransferComplete | DUStateChangeComplete
