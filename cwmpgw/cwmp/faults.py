"""CWMP fault code tables (TR-069 A.5, cwmp-1-2/1-4 schemas).

Kept apart from the codec so that the session machine, the event bus and the NBI can
turn a numeric code into its standard text without touching XML.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

__all__ = [
    "ACS_FAULTS",
    "CPE_FAULTS",
    "acs_fault_string",
    "cpe_fault_string",
]

#: Faults the ACS sends to the CPE (8000-8006; 8006 is CWMP 1.4).
ACS_FAULTS: Final = MappingProxyType(
    {
        8000: "Method not supported",
        8001: "Request denied (no reason specified)",
        8002: "Internal error",
        8003: "Invalid arguments",
        8004: "Resources exceeded",
        8005: "Retry request",
        8006: "ACS version incompatible with CPE",
    }
)

#: Faults a CPE reports to the ACS (9000-9032), with the schema's wording.
CPE_FAULTS: Final = MappingProxyType(
    {
        9000: "Method not supported",
        9001: "Request denied (no reason specified)",
        9002: "Internal error",
        9003: "Invalid arguments",
        9004: "Resources exceeded",
        9005: "Invalid parameter name",
        9006: "Invalid parameter type",
        9007: "Invalid parameter value",
        9008: "Attempt to set a non-writable parameter",
        9009: "Notification request rejected",
        9010: "File transfer failure",
        9011: "Upload failure",
        9012: "File transfer server authentication failure",
        9013: "Unsupported protocol for file transfer",
        9014: "File transfer failure: unable to join multicast group",
        9015: "File transfer failure: unable to contact file server",
        9016: "File transfer failure: unable to access file",
        9017: "File transfer failure: unable to complete download",
        9018: "File transfer failure: file corrupted",
        9019: "File transfer failure: file authentication failure",
        9020: "File transfer failure: unable to complete download within specified time windows",
        9021: "Cancelation of file transfer not permitted in current transfer state",
        9022: "Invalid UUID Format",
        9023: "Unknown Execution Environment",
        9024: "Disabled Execution Environment",
        9025: "Deployment Unit to Execution Environment Mismatch",
        9026: "Duplicate Deployment Unit",
        9027: "System Resources Exceeded",
        9028: "Unknown Deployment Unit",
        9029: "Invalid Deployment Unit State",
        9030: "Invalid Deployment Unit Update - Downgrade not permitted",
        9031: "Invalid Deployment Unit Update - Version not specified",
        9032: "Invalid Deployment Unit Update - Version already exists",
    }
)


def cpe_fault_string(code: int) -> str:
    """Standard text of a CPE fault code, for events and logs when the CPE sent none."""
    text = CPE_FAULTS.get(code)
    if text is not None:
        return text
    if 9800 <= code <= 9899:
        return "Vendor-specific fault"
    return "Unknown fault"


def acs_fault_string(code: int) -> str:
    """Standard text of an ACS fault code, used as the default FaultString we send."""
    text = ACS_FAULTS.get(code)
    if text is not None:
        return text
    if 8800 <= code <= 8899:
        return "Vendor-specific fault"
    return "Unknown fault"
