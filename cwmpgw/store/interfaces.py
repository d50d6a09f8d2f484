"""What the ACS needs from storage, as interfaces with a Redis and an in-memory provider.

Both providers run through one contract test (tests/test_store_contract.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue

__all__ = [
    "ConnReqCredential",
    "IConnReqCredentialStore",
    "ICredentialStore",
    "IDeviceStore",
    "InformRecord",
    "StoredCredential",
]


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

    def record_inform(record: InformRecord) -> Deferred[bool]:
        """Create or update the device; fires True if the device was not known before."""

    def record_transfer(device_id: str, key: str, data: dict[str, Any]) -> Deferred[bool]:
        """Record a (possibly re-delivered) transfer result; True until :meth:`transfer_published`
        was called for ``key`` (a write whose answer was lost may have stored it unseen)."""

    def transfer_published(device_id: str, key: str) -> Deferred[None]:
        """The event of the transfer result ``key`` is out: re-deliveries are only stored."""

    def get_device(
        device_id: str, parameters: Sequence[str] | None = None
    ) -> Deferred[dict[str, Any] | None]:
        """The device record with its ``parameters`` ({name: {"value", "type"}}), or None.

        ``parameters`` names the cached parameters wanted (those not cached are left out);
        None means all of them, which may be thousands.
        """

    def update_parameters(device_id: str, values: list[tuple[str, str, str]]) -> Deferred[None]:
        """Write (name, value, xsi type) into the device's parameter cache."""

    def list_devices(
        *, after: float | None, before: float | None, offset: int, count: int
    ) -> Deferred[list[dict[str, Any]]]:
        """Device records (no parameters) by last inform time, oldest first, for paging."""

    def delete_device(device_id: str) -> Deferred[bool]:
        """Forget the record, its parameters and its transfers; True if it existed."""


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
