"""Which devices a campaign targets: an explicit list, or a selector.

A campaign's selector is a fleet selector (:mod:`cwmpgw.fleet.selector`: OUI, product
class, software and hardware versions, tags, source network, last inform, online, cached
parameter values), checked when the campaign is created and answered from the indexed
inventory (:class:`InventorySelector`), once, when the campaign starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred

from cwmpgw.files.model import FileError
from cwmpgw.fleet.inventory import IInventory
from cwmpgw.fleet.selector import SelectorError, parse_selector

__all__ = [
    "SOFTWARE_VERSION",
    "IDeviceSelector",
    "InventorySelector",
    "check_selector",
    "software_version",
]

#: Where the version is, in a TR-181 and a TR-098 device.
SOFTWARE_VERSION: Final = (
    "Device.DeviceInfo.SoftwareVersion",
    "InternetGatewayDevice.DeviceInfo.SoftwareVersion",
)


def software_version(device: Mapping[str, Any] | None) -> str | None:
    """The SoftwareVersion the device last reported, if known."""
    params = (device or {}).get("parameters") or {}
    for name in SOFTWARE_VERSION:
        if name in params:
            return str(params[name]["value"])
    return None


def check_selector(obj: Any) -> dict[str, Any]:
    """A campaign's selector, checked; at least one term (a firmware campaign over every
    device the gateway knows is asked for by listing them, not by an empty selector)."""
    if not isinstance(obj, Mapping) or not obj:
        raise FileError("selector", "an object with at least one term (see GET /devices)")
    try:
        selector = parse_selector(obj)
    except SelectorError as e:
        raise FileError(e.path or "selector", e.reason) from None
    return selector.to_dict()


class IDeviceSelector(Protocol):
    def select(self, selector: Mapping[str, Any]) -> Deferred[list[str]]:
        """The ids of the devices ``selector`` matches, in a stable order."""


class InventorySelector:
    """Answers a selector from the inventory's indexes, a page at a time."""

    def __init__(self, inventory: IInventory, page: int = 1000) -> None:
        self._inventory = inventory
        self._page = page

    def select(self, selector: Mapping[str, Any]) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._select(parse_selector(selector)))

    async def _select(self, selector: Any) -> list[str]:
        found: list[str] = []
        cursor = ""
        while True:
            page, cursor = await self._inventory.query(
                selector, cursor=cursor, limit=self._page, records=False
            )
            found.extend(record["id"] for record in page)
            if not cursor:
                return found  # in id order already
