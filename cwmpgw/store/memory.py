"""In-memory stores: the reference behaviour for unit tests, same contract as Redis."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from cwmpgw.store.interfaces import (
    ConnReqCredential,
    IConnReqCredentialStore,
    ICredentialStore,
    IDeviceStore,
    InformRecord,
    StoredCredential,
)

__all__ = ["MemoryConnReqCredentialStore", "MemoryCredentialStore", "MemoryDeviceStore"]


def device_fields(record: InformRecord) -> dict[str, str]:
    """The device-hash fields one Inform sets (shared by both providers)."""
    d = record.device
    return {
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


@implementer(IDeviceStore)
class MemoryDeviceStore:
    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.transfers: dict[tuple[str, str], dict[str, Any]] = {}
        self.published: set[tuple[str, str]] = set()

    takes_session = False  # the engine takes its own lock

    def record_inform(self, record: InformRecord) -> Deferred[bool]:
        new = record.device_id not in self.devices
        dev = self.devices.setdefault(
            record.device_id,
            {"first_seen": repr(record.ts), "inform_count": 0, "parameters": {}},
        )
        dev.update(device_fields(record))
        dev["inform_count"] += 1
        for p in record.parameters:
            dev["parameters"][p.name] = {"value": p.value, "type": p.type}
        return succeed(new)

    def record_transfer(self, device_id: str, key: str, data: dict[str, Any]) -> Deferred[bool]:
        self.transfers[(device_id, key)] = data
        return succeed((device_id, key) not in self.published)

    def transfer_published(self, device_id: str, key: str) -> Deferred[None]:
        self.published.add((device_id, key))
        return succeed(None)

    def get_device(
        self, device_id: str, parameters: Sequence[str] | None = None
    ) -> Deferred[dict[str, Any] | None]:
        dev = self.devices.get(device_id)
        if dev is None:
            return succeed(None)
        out = dict(dev)
        out["inform_count"] = str(dev["inform_count"])
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
        out = []
        for d in rows[offset : offset + count]:
            record = {k: v for k, v in d.items() if k != "parameters"}
            record["inform_count"] = str(d["inform_count"])
            out.append(record)
        return succeed(out)

    def delete_device(self, device_id: str) -> Deferred[bool]:
        existed = self.devices.pop(device_id, None) is not None
        for key in [k for k in self.transfers if k[0] == device_id]:
            del self.transfers[key]
        self.published = {k for k in self.published if k[0] != device_id}
        return succeed(existed)


@implementer(ICredentialStore)
class MemoryCredentialStore:
    def __init__(self) -> None:
        self.by_username: dict[str, StoredCredential] = {}
        self.by_device: dict[str, str] = {}
        self.pending: dict[str, StoredCredential] = {}

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
        self.pending[username] = StoredCredential(username, device_id, dict(ha1))
        return succeed(None)

    def get_pending(self, username: str) -> Deferred[StoredCredential | None]:
        return succeed(self.pending.get(username))

    def promote(self, username: str) -> Deferred[bool]:
        pending = self.pending.pop(username, None)
        if pending is None:
            return succeed(False)
        return self.set(pending.device_id, username, pending.ha1).addCallback(lambda _: True)

    def drop_pending(self, device_id: str) -> Deferred[bool]:
        for username, cred in list(self.pending.items()):
            if cred.device_id == device_id:
                del self.pending[username]
                return succeed(True)
        return succeed(False)


@implementer(IConnReqCredentialStore)
class MemoryConnReqCredentialStore:
    def __init__(self) -> None:
        self.credentials: dict[str, ConnReqCredential] = {}
        self.pending: dict[str, ConnReqCredential] = {}

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
        return succeed(self.credentials.pop(device_id, None) is not None)
