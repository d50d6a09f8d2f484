"""The device directory the northbound API reads and edits, over the stores.

Listing is the inventory's query (:mod:`cwmpgw.fleet.inventory`): indexed, in device-id
order, the cursor being the last id a page examined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from cwmpgw.fleet.inventory import IInventory
from cwmpgw.fleet.selector import Selector
from cwmpgw.nbi.interfaces import IDeviceDirectory
from cwmpgw.store.interfaces import (
    ConnReqCredential,
    IConnReqCredentialStore,
    ICredentialStore,
    IDeviceStore,
)
from cwmpgw.tasks.model import ITaskService
from cwmpgw.web.digest import ha1

__all__ = ["DeviceDirectory"]


@implementer(IDeviceDirectory)
class DeviceDirectory:
    def __init__(
        self,
        devices: IDeviceStore,
        credentials: ICredentialStore,
        connreq_credentials: IConnReqCredentialStore,
        *,
        realm: str,
        inventory: IInventory,
        tasks: ITaskService | None = None,
        rotations: Any = None,
    ) -> None:
        self._devices = devices
        self._credentials = credentials
        self._connreq = connreq_credentials
        self._realm = realm
        self._inventory = inventory
        self._tasks = tasks
        self._rotations = rotations

    def list_devices(
        self, selector: Selector, *, cursor: str, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], str]]:
        return self._inventory.query(selector, cursor=cursor, limit=limit)

    def change_tags(
        self, device_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Deferred[list[str] | None]:
        return self._devices.change_tags(device_id, add, remove)

    def tag_counts(self) -> Deferred[dict[str, int]]:
        return self._inventory.tag_counts()

    def get_device(
        self, device_id: str, parameters: Sequence[str] | None = None
    ) -> Deferred[dict[str, Any] | None]:
        return self._devices.get_device(device_id, parameters)

    def delete_device(self, device_id: str) -> Deferred[bool]:
        async def delete() -> bool:
            existed = await self._devices.delete_device(device_id)
            await self._credentials.delete(device_id)
            # A credential being given is forgotten too (and with it the count of sessions
            # opened with the bootstrap credential since): the device may enrol afresh.
            await self._credentials.drop_pending(device_id)
            await self._connreq.delete(device_id)
            if self._tasks is not None:
                # Its queued tasks must not run if a device with this id comes back.
                for task in await self._tasks.list_for_device(device_id):
                    if task.status == "queued":
                        await self._tasks.cancel(task.id)
            return existed

        return Deferred.fromCoroutine(delete())

    def set_credentials(
        self,
        device_id: str,
        username: str,
        password: str,
        connection_request: tuple[str, str] | None = None,
    ) -> Deferred[None]:
        async def store() -> None:
            hashes = {a: ha1(a, username, self._realm, password) for a in ("MD5", "SHA-256")}
            await self._credentials.set(device_id, username, hashes)
            if connection_request is not None:
                await self._connreq.set(device_id, ConnReqCredential(*connection_request))

        return Deferred.fromCoroutine(store())

    def rotate_credentials(self, device_id: str) -> Deferred[None]:
        """New unique credentials for the device in its next session (see provision/)."""
        if self._rotations is None:
            raise RuntimeError("credential rotation is not configured")
        d: Deferred[None] = self._rotations.request(device_id)
        return d
