"""What the ACS needs from storage, as interfaces with a Redis and an in-memory provider.

Both providers run through one contract test (tests/integration/test_store_contract.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from cwmpgw.bus.events import Event
from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue

__all__ = [
    "DEVICE_FIELDS",
    "MAX_TAGS",
    "NAME_ABSENT",
    "NAME_LISTED",
    "NAME_PRESENT",
    "NAME_READ_ONLY",
    "NAME_UNLISTED",
    "NAME_WRITABLE",
    "BootstrapUse",
    "ConnReqCredential",
    "IConnReqCredentialStore",
    "ICredentialStore",
    "IDeviceStore",
    "InformRecord",
    "StoredCredential",
]


_TEXT: Final = {"type": "string"}

#: How many tags one device may carry.
MAX_TAGS: Final = 64
_UNIX_SECONDS: Final = {"type": "number", "description": "Unix seconds."}

#: A device record as ``get_device`` and ``list_devices`` return it (``parameters`` aside):
#: each field and the JSON Schema of its value. Both providers store text and decode it
#: into these types (:func:`cwmpgw.store.memory.device_view`); the API's OpenAPI document
#: is built from this table, so what is returned and what is documented are one thing.
#: A field the stores hold but this table does not name is not returned.
DEVICE_FIELDS: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "id": {"type": "string", "description": "OUI-ProductClass-SerialNumber, escaped."},
        "manufacturer": _TEXT,
        "oui": _TEXT,
        "product_class": _TEXT,
        "serial_number": _TEXT,
        "first_seen": {**_UNIX_SECONDS, "description": "Unix seconds of the first Inform."},
        "last_inform": {**_UNIX_SECONDS, "description": "Unix seconds of the last Inform."},
        "inform_count": {"type": "integer", "minimum": 0, "description": "Informs received."},
        "last_source": {"type": "string", "description": "The address the last Inform came from."},
        "cwmp_version": {"type": "string", "description": "The CWMP version it speaks: 1.0-1.4."},
        "cwmp_namespace": {
            "type": "string",
            "description": "The cwmp namespace of its last Inform.",
        },
        "connection_request_url": {
            "type": "string",
            "description": "From the last Inform; empty if it sent none.",
        },
        "software_version": {
            "type": "string",
            "description": "DeviceInfo.SoftwareVersion, from the last Inform that carried it.",
        },
        "hardware_version": {
            "type": "string",
            "description": "DeviceInfo.HardwareVersion, from the last Inform that carried it.",
        },
        "tags": {
            "type": "array",
            "description": "The operator's tags on the device, sorted.",
            "items": {"type": "string"},
        },
        "last_events": {
            "type": "array",
            "description": "The events of the last Inform.",
            "items": {
                "type": "object",
                "required": ["code", "command_key"],
                "additionalProperties": False,
                "properties": {"code": {"type": "string"}, "command_key": {"type": "string"}},
            },
        },
    }
)


#: What is known of a parameter name on a device (:meth:`IDeviceStore.parameter_names`).
NAME_PRESENT: Final = "present"  # it reported a value (Inform, GetParameterValues)
NAME_WRITABLE: Final = "writable"  # GetParameterNames says so
NAME_READ_ONLY: Final = "read-only"  # GetParameterNames says so, or a set faulted 9008
NAME_ABSENT: Final = "absent"  # a set faulted 9005: the data model has no such name
NAME_LISTED: Final = "listed"  # an object path whose children GetParameterNames listed
NAME_UNLISTED: Final = "unlisted"  # an object path GetParameterNames could not list


@dataclass(frozen=True, slots=True)
class InformRecord:
    """Everything one Inform tells us about a device, ready to store."""

    device_id: str
    device: DeviceId
    ts: float
    source: str
    cwmp_version: str
    namespace: str
    events: tuple[EventStruct, ...]
    parameters: tuple[ParameterValue, ...]
    # The session taking the device over (cwmpgw.store.sessionlock) and for how long: a
    # store whose ``takes_session`` is true takes the lock in the same step as the write.
    session_owner: str | None = None
    session_ttl: float = 0.0

    @property
    def connection_request_url(self) -> str:
        for p in self.parameters:
            if p.name.endswith(".ManagementServer.ConnectionRequestURL"):
                return p.value
        return ""


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """A device's ACS credential as kept at rest: only the Digest HA1 values."""

    username: str
    device_id: str
    ha1: dict[str, str] = field(repr=False)  # algorithm ("MD5", "SHA-256") -> hex HA1


class IDeviceStore(Interface):
    takes_session = Attribute(
        "True if record_inform also takes the session lock named by the record's"
        " session_owner (one round trip instead of two); else the engine takes it."
    )

    stores_events = Attribute(
        "True if record_inform and record_transfer store the events given to them (stream"
        " and pub/sub) in the same step as the write; else they ignore them and the engine"
        " publishes them."
    )

    def record_inform(
        record: InformRecord, if_new: Event | None = None, if_known: Event | None = None
    ) -> Deferred[bool]:
        """Create or update the device; fires True if the device was not known before.

        A store that ``stores_events`` stores ``if_new`` with the write when the device
        was not known, else ``if_known`` (device.registered)."""

    def record_session_inform(
        record: InformRecord,
        if_new: Event | None,
        if_known: Event | None,
        inform: Event,
        retry_count: int,
    ) -> Deferred[tuple[bool, bool | None]]:
        """``record_inform`` for the Inform that opens a session, with its ``inform`` event:
        fires (new, announced).

        ``announced`` is None when the store does not store events (the engine publishes
        ``inform``). A store that does stores it with the write, once per Inform: not again
        for a retry (``retry_count`` > 0) of an Inform with the same events whose session
        never went on (its answer was lost: the CPE never came back after it); then False.
        The first request source's read after the Inform marks it as gone on."""

    def record_transfer(
        device_id: str, key: str, data: dict[str, Any], event: Event | None = None
    ) -> Deferred[bool]:
        """Record a (possibly re-delivered) transfer result; True the first time for ``key``.

        A store that ``stores_events`` stores ``event`` with it, the first time only."""

    def get_device(
        device_id: str, parameters: Sequence[str] | None = None
    ) -> Deferred[dict[str, Any] | None]:
        """The device record with its ``parameters`` ({name: {"value", "type"}}), or None.

        The record has every field of :data:`DEVICE_FIELDS`, typed as it says.

        ``parameters`` names the cached parameters wanted (those not cached are left out);
        None means all of them, which may be thousands.
        """

    def update_parameters(device_id: str, values: list[tuple[str, str, str]]) -> Deferred[None]:
        """Write (name, value, xsi type) into the device's parameter cache."""

    def parameter_names(device_id: str, names: Sequence[str]) -> Deferred[dict[str, str]]:
        """What is known of these names on the device, one of the ``NAME_*`` values each:
        what :meth:`note_parameter_names` remembered, else ``present`` for a cached value.
        A name nothing is known of is left out."""

    def note_parameter_names(device_id: str, names: Mapping[str, str]) -> Deferred[None]:
        """Remember what was learnt of the device's data model (name -> a ``NAME_*``)."""

    def list_devices(
        *, after: float | None, before: float | None, offset: int, count: int
    ) -> Deferred[list[dict[str, Any]]]:
        """Device records (no parameters, typed as :data:`DEVICE_FIELDS` says) by last
        inform time, oldest first, for paging."""

    def delete_device(device_id: str) -> Deferred[bool]:
        """Forget the record, its parameters, transfers and tags, and what is known of its
        parameter names; True if it existed."""

    def change_tags(
        device_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Deferred[list[str] | None]:
        """Add and remove tags (removals first); fires with the device's tags, sorted, or
        None for an unknown device. Raises ValueError past :data:`MAX_TAGS` tags."""


@dataclass(frozen=True, slots=True)
class BootstrapUse:
    """Sessions a device authenticated with the bootstrap credential after it confirmed
    its own (see :meth:`ICredentialStore.bootstrap_used`)."""

    sessions: int
    confirmed_at: float  # Unix seconds
    report: bool  # this session is the one that reached the reporting threshold


class ICredentialStore(Interface):
    def get(username: str) -> Deferred[StoredCredential | None]:
        """The credential for this HTTP username, or None."""

    def username_for(device_id: str) -> Deferred[str | None]:
        """The username a device authenticates with, or None if it has no credential."""

    def set(device_id: str, username: str, ha1: dict[str, str]) -> Deferred[None]:
        """Give a device its (only) credential, replacing any previous one."""

    def delete(device_id: str) -> Deferred[bool]:
        """Remove a device's credential; True if it had one."""

    def set_pending(device_id: str, username: str, ha1: dict[str, str]) -> Deferred[None]:
        """A new credential being given to the device: accepted beside the current one
        until the device first authenticates with it (then it replaces the current one)."""

    def get_pending(username: str) -> Deferred[StoredCredential | None]:
        """The pending credential with this username, or None."""

    def promote(username: str) -> Deferred[bool]:
        """Make the pending credential the device's only one; False if none was pending."""

    def drop_pending(device_id: str) -> Deferred[bool]:
        """Forget the device's pending credential (the change failed); True if there was one."""

    def confirm_pending(device_id: str, at: float) -> Deferred[bool]:
        """The CPE confirmed it applied its pending credential, at ``at`` (Unix seconds):
        from now until the pending credential is promoted, replaced or dropped, sessions
        authenticated with the bootstrap credential are counted. False if none is pending."""

    def bootstrap_used(device_id: str, report_after: int) -> Deferred[BootstrapUse | None]:
        """A session of the device authenticated with the bootstrap credential: None if it
        has not confirmed a pending credential, else the count (this one included), and
        ``report`` true for the one call that reaches ``report_after`` (0: never)."""


@dataclass(frozen=True, slots=True)
class ConnReqCredential:
    """What the gateway answers a CPE's connection-request challenge with."""

    username: str
    password: str = field(repr=False)
    allow_basic: bool = False  # Basic only where the operator allowed it for this device


class IConnReqCredentialStore(Interface):
    def get(device_id: str) -> Deferred[ConnReqCredential | None]:
        """The device's connection-request credential, decrypted, or None."""

    def set(device_id: str, credential: ConnReqCredential) -> Deferred[None]:
        """Store it, the password encrypted at rest."""

    def delete(device_id: str) -> Deferred[bool]:
        """Remove it; True if there was one."""

    def set_pending(device_id: str, credential: ConnReqCredential) -> Deferred[None]:
        """The credential being set on the CPE; used once the CPE confirmed the change."""

    def promote(device_id: str) -> Deferred[bool]:
        """The CPE confirmed: the pending credential becomes the one used."""

    def stun_passwords(device_id: str) -> Deferred[tuple[str, ...]]:
        """The device's STUN passwords (TR-069 Annex G ``STUNPassword``), decrypted:
        the current one, then the one being set, each only if there is one."""

    def set_stun_pending(device_id: str, password: str) -> Deferred[None]:
        """The STUN password being set on the CPE; accepted beside the current one."""

    def promote_stun(device_id: str) -> Deferred[bool]:
        """The CPE confirmed: the pending STUN password replaces the current one."""

    def drop_stun_pending(device_id: str) -> Deferred[bool]:
        """The CPE refused: forget the pending STUN password; True if there was one."""
