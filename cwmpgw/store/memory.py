"""In-memory stores: the reference behaviour for unit tests, same contract as Redis."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from cwmpgw.bus.events import Event
from cwmpgw.store.interfaces import (
    DEVICE_FIELDS,
    MAX_TAGS,
    NAME_PRESENT,
    BootstrapUse,
    ConnReqCredential,
    IConnReqCredentialStore,
    ICredentialStore,
    IDeviceStore,
    InformRecord,
    StoredCredential,
)

__all__ = [
    "VERSION_PARAMETERS",
    "MemoryConnReqCredentialStore",
    "MemoryCredentialStore",
    "MemoryDeviceStore",
    "device_fields",
    "device_view",
]


#: Inform parameters (by suffix) copied into the record, for the inventory's indexes.
VERSION_PARAMETERS: Final = {
    ".DeviceInfo.SoftwareVersion": "software_version",
    ".DeviceInfo.HardwareVersion": "hardware_version",
}


def device_fields(record: InformRecord) -> dict[str, str]:
    """The device-hash fields one Inform sets (shared by both providers); the versions
    only when the Inform carries them."""
    d = record.device
    versions: dict[str, str] = {}
    for p in record.parameters:
        for suffix, name in VERSION_PARAMETERS.items():
            if p.name.endswith(suffix) and p.name.count(".") == 2:
                versions[name] = p.value
    return {
        **versions,
        "id": record.device_id,
        "manufacturer": d.manufacturer,
        "oui": d.oui,
        "product_class": d.product_class,
        "serial_number": d.serial_number,
        "last_inform": repr(record.ts),
        "last_source": record.source,
        "cwmp_version": record.cwmp_version,
        "cwmp_namespace": record.namespace,
        "connection_request_url": record.connection_request_url,
        "last_events": json.dumps([[e.code, e.command_key] for e in record.events]),
    }


def _number(text: Any) -> float:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _integer(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


def _events(text: Any) -> list[dict[str, str]]:
    try:
        pairs = json.loads(text)
    except (TypeError, ValueError):
        return []
    if not isinstance(pairs, list):
        return []
    return [
        {"code": str(p[0]), "command_key": str(p[1])}
        for p in pairs
        if isinstance(p, list) and len(p) == 2
    ]


def _tag_list(text: Any) -> list[str]:
    try:
        tags = json.loads(text)
    except (TypeError, ValueError):
        return []
    return sorted(str(t) for t in tags) if isinstance(tags, list) else []


_DECODERS: Final[Mapping[str, Callable[[Any], Any]]] = {
    "string": str,
    "number": _number,
    "integer": _integer,
    "array": _events,
}
_FIELD_DECODERS: Final[Mapping[str, Callable[[Any], Any]]] = {"tags": _tag_list}


def device_view(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored device hash (text, as :func:`device_fields` wrote it) typed as
    :data:`~cwmpgw.store.interfaces.DEVICE_FIELDS` says (shared by both providers).

    Every field is there: one missing or unreadable (a record written by an older
    version, or by hand) gets its type's zero value rather than failing the read.
    """
    return {
        name: _FIELD_DECODERS.get(name, _DECODERS[schema["type"]])(stored.get(name, ""))
        for name, schema in DEVICE_FIELDS.items()
    }


@implementer(IDeviceStore)
class MemoryDeviceStore:
    """Device records kept as text, like the Redis hashes, and read through
    :func:`device_view` like them."""

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.transfers: dict[tuple[str, str], dict[str, Any]] = {}
        self.names: dict[str, dict[str, str]] = {}

    takes_session = False  # the engine takes its own lock

    stores_events = False  # the engine publishes them

    def record_inform(
        self, record: InformRecord, if_new: Event | None = None, if_known: Event | None = None
    ) -> Deferred[bool]:
        new = record.device_id not in self.devices
        dev = self.devices.setdefault(
            record.device_id,
            {"first_seen": repr(record.ts), "inform_count": "0", "parameters": {}},
        )
        dev.update(device_fields(record))
        dev["inform_count"] = str(int(dev["inform_count"]) + 1)
        for p in record.parameters:
            dev["parameters"][p.name] = {"value": p.value, "type": p.type}
        return succeed(new)

    def record_session_inform(
        self,
        record: InformRecord,
        if_new: Event | None,
        if_known: Event | None,
        inform: Event,
        retry_count: int,
    ) -> Deferred[tuple[bool, bool | None]]:
        return self.record_inform(record).addCallback(lambda new: (new, None))

    def record_transfer(
        self, device_id: str, key: str, data: dict[str, Any], event: Event | None = None
    ) -> Deferred[bool]:
        first = (device_id, key) not in self.transfers
        self.transfers[(device_id, key)] = data
        return succeed(first)

    def get_device(
        self, device_id: str, parameters: Sequence[str] | None = None
    ) -> Deferred[dict[str, Any] | None]:
        dev = self.devices.get(device_id)
        if dev is None:
            return succeed(None)
        out = device_view(dev)
        cached = dev["parameters"]
        names = cached if parameters is None else [n for n in parameters if n in cached]
        out["parameters"] = {k: dict(cached[k]) for k in names}
        return succeed(out)

    def update_parameters(
        self, device_id: str, values: list[tuple[str, str, str]]
    ) -> Deferred[None]:
        dev = self.devices.get(device_id)
        if dev is not None:
            for name, value, type_ in values:
                dev["parameters"][name] = {"value": value, "type": type_}
        return succeed(None)

    def parameter_names(self, device_id: str, names: Sequence[str]) -> Deferred[dict[str, str]]:
        noted = self.names.get(device_id, {})
        cached = self.devices.get(device_id, {}).get("parameters", {})
        out: dict[str, str] = {}
        for name in names:
            if name in noted:
                out[name] = noted[name]
            elif name in cached:
                out[name] = NAME_PRESENT
        return succeed(out)

    def note_parameter_names(self, device_id: str, names: Mapping[str, str]) -> Deferred[None]:
        self.names.setdefault(device_id, {}).update(names)
        return succeed(None)

    def list_devices(
        self, *, after: float | None, before: float | None, offset: int, count: int
    ) -> Deferred[list[dict[str, Any]]]:
        rows = sorted(self.devices.values(), key=lambda d: (float(d["last_inform"]), d["id"]))
        rows = [
            d
            for d in rows
            if (after is None or float(d["last_inform"]) >= after)
            and (before is None or float(d["last_inform"]) <= before)
        ]
        return succeed([device_view(d) for d in rows[offset : offset + count]])

    def delete_device(self, device_id: str) -> Deferred[bool]:
        existed = self.devices.pop(device_id, None) is not None
        self.names.pop(device_id, None)
        for key in [k for k in self.transfers if k[0] == device_id]:
            del self.transfers[key]
        return succeed(existed)

    def change_tags(
        self, device_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Deferred[list[str] | None]:
        dev = self.devices.get(device_id)
        if dev is None:
            return succeed(None)
        tags = set(_tag_list(dev.get("tags", "[]"))) - set(remove)
        tags |= set(add)
        if len(tags) > MAX_TAGS:
            return fail(ValueError(f"a device has at most {MAX_TAGS} tags"))
        dev["tags"] = json.dumps(sorted(tags))
        return succeed(sorted(tags))

    def tags_of(self, device_id: str) -> list[str]:
        return _tag_list(self.devices.get(device_id, {}).get("tags", "[]"))


@implementer(ICredentialStore)
class MemoryCredentialStore:
    def __init__(self) -> None:
        self.by_username: dict[str, StoredCredential] = {}
        self.by_device: dict[str, str] = {}
        self.pending: dict[str, StoredCredential] = {}
        self.bootstrap_uses: dict[str, dict[str, float]] = {}

    def get(self, username: str) -> Deferred[StoredCredential | None]:
        return succeed(self.by_username.get(username))

    def username_for(self, device_id: str) -> Deferred[str | None]:
        return succeed(self.by_device.get(device_id))

    def set(self, device_id: str, username: str, ha1: dict[str, str]) -> Deferred[None]:
        taken = self.by_username.get(username)
        if taken is not None and taken.device_id != device_id:
            return fail(ValueError(f"username {username!r} belongs to another device"))
        old = self.by_device.get(device_id)
        if old is not None:
            del self.by_username[old]
        self.by_username[username] = StoredCredential(username, device_id, dict(ha1))
        self.by_device[device_id] = username
        return succeed(None)

    def delete(self, device_id: str) -> Deferred[bool]:
        username = self.by_device.pop(device_id, None)
        if username is None:
            return succeed(False)
        del self.by_username[username]
        return succeed(True)

    def set_pending(self, device_id: str, username: str, ha1: dict[str, str]) -> Deferred[None]:
        taken = self.by_username.get(username)
        if taken is not None and taken.device_id != device_id:
            return fail(ValueError(f"username {username!r} belongs to another device"))
        self.drop_pending(device_id)
        self.bootstrap_uses.pop(device_id, None)
        self.pending[username] = StoredCredential(username, device_id, dict(ha1))
        return succeed(None)

    def get_pending(self, username: str) -> Deferred[StoredCredential | None]:
        return succeed(self.pending.get(username))

    def promote(self, username: str) -> Deferred[bool]:
        pending = self.pending.pop(username, None)
        if pending is None:
            return succeed(False)
        self.bootstrap_uses.pop(pending.device_id, None)
        return self.set(pending.device_id, username, pending.ha1).addCallback(lambda _: True)

    def drop_pending(self, device_id: str) -> Deferred[bool]:
        for username, cred in list(self.pending.items()):
            if cred.device_id == device_id:
                del self.pending[username]
                self.bootstrap_uses.pop(device_id, None)
                return succeed(True)
        return succeed(False)

    def confirm_pending(self, device_id: str, at: float) -> Deferred[bool]:
        if not any(c.device_id == device_id for c in self.pending.values()):
            return succeed(False)
        self.bootstrap_uses[device_id] = {"confirmed_at": at, "sessions": 0, "reported": 0}
        return succeed(True)

    def bootstrap_used(self, device_id: str, report_after: int) -> Deferred[BootstrapUse | None]:
        use = self.bootstrap_uses.get(device_id)
        if use is None:
            return succeed(None)
        use["sessions"] += 1
        report = 0 < report_after <= use["sessions"] and not use["reported"]
        if report:
            use["reported"] = 1
        return succeed(BootstrapUse(int(use["sessions"]), use["confirmed_at"], report))


@implementer(IConnReqCredentialStore)
class MemoryConnReqCredentialStore:
    def __init__(self) -> None:
        self.credentials: dict[str, ConnReqCredential] = {}
        self.pending: dict[str, ConnReqCredential] = {}
        self.stun: dict[str, str] = {}
        self.stun_pending: dict[str, str] = {}

    def set_pending(self, device_id: str, credential: ConnReqCredential) -> Deferred[None]:
        self.pending[device_id] = credential
        return succeed(None)

    def promote(self, device_id: str) -> Deferred[bool]:
        credential = self.pending.pop(device_id, None)
        if credential is None:
            return succeed(False)
        self.credentials[device_id] = credential
        return succeed(True)

    def get(self, device_id: str) -> Deferred[ConnReqCredential | None]:
        return succeed(self.credentials.get(device_id))

    def set(self, device_id: str, credential: ConnReqCredential) -> Deferred[None]:
        self.credentials[device_id] = credential
        return succeed(None)

    def delete(self, device_id: str) -> Deferred[bool]:
        self.pending.pop(device_id, None)
        self.stun.pop(device_id, None)
        self.stun_pending.pop(device_id, None)
        return succeed(self.credentials.pop(device_id, None) is not None)

    def stun_passwords(self, device_id: str) -> Deferred[tuple[str, ...]]:
        found = (self.stun.get(device_id), self.stun_pending.get(device_id))
        return succeed(tuple(p for p in found if p is not None))

    def set_stun_pending(self, device_id: str, password: str) -> Deferred[None]:
        self.stun_pending[device_id] = password
        return succeed(None)

    def promote_stun(self, device_id: str) -> Deferred[bool]:
        password = self.stun_pending.pop(device_id, None)
        if password is None:
            return succeed(False)
        self.stun[device_id] = password
        return succeed(True)

    def drop_stun_pending(self, device_id: str) -> Deferred[bool]:
        return succeed(self.stun_pending.pop(device_id, None) is not None)
