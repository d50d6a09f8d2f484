"""Which devices a campaign targets: an explicit list, or a selector.

:class:`IDeviceSelector` is the seam the fleet-operations selector (device queries) will
plug into; :class:`StoreSelector` is a simple one over the device store: equality on
``oui``, ``product_class`` and ``software_version``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred

from cwmpgw.files.model import FileError
from cwmpgw.store.interfaces import IDeviceStore

__all__ = ["SOFTWARE_VERSION", "IDeviceSelector", "StoreSelector", "software_version"]

#: Where the version is, in a TR-181 and a TR-098 device.
SOFTWARE_VERSION: Final = (
    "Device.DeviceInfo.SoftwareVersion",
    "InternetGatewayDevice.DeviceInfo.SoftwareVersion",
)
SELECTOR_KEYS: Final = ("oui", "product_class", "software_version")


def software_version(device: Mapping[str, Any] | None) -> str | None:
    """The SoftwareVersion the device last reported, if known."""
    params = (device or {}).get("parameters") or {}
    for name in SOFTWARE_VERSION:
        if name in params:
            return str(params[name]["value"])
    return None


class IDeviceSelector(Protocol):
    def select(self, selector: Mapping[str, Any]) -> Deferred[list[str]]:
        """The ids of the devices ``selector`` matches, in a stable order."""


class StoreSelector:
    """Walks the device store; fine for a few hundred thousand devices once per campaign."""

    def __init__(self, devices: IDeviceStore, page: int = 1000) -> None:
        self._devices = devices
        self._page = page

    @staticmethod
    def check(selector: Any) -> dict[str, str]:
        if not isinstance(selector, dict) or not selector:
            raise FileError(
                "selector", "an object with at least one of " + ", ".join(SELECTOR_KEYS)
            )
        for key, value in selector.items():
            if key not in SELECTOR_KEYS:
                raise FileError(
                    f"selector.{key}", "unknown (allowed: " + ", ".join(SELECTOR_KEYS) + ")"
                )
            if not isinstance(value, str) or not value or len(value) > 256:
                raise FileError(f"selector.{key}", "a non-empty string")
        return dict(selector)

    def select(self, selector: Mapping[str, Any]) -> Deferred[list[str]]:
        return Deferred.fromCoroutine(self._select(dict(selector)))

    async def _select(self, selector: dict[str, str]) -> list[str]:
        version = selector.get("software_version")
        found: list[str] = []
        offset = 0
        while True:
            page = await self._devices.list_devices(
                after=None, before=None, offset=offset, count=self._page
            )
            offset += len(page)
            for record in page:
                if any(record.get(k) != v for k, v in selector.items() if k != "software_version"):
                    continue
                if version is not None:
                    device = await self._devices.get_device(record["id"], SOFTWARE_VERSION)
                    if software_version(device) != version:
                        continue
                found.append(record["id"])
            if len(page) < self._page:
                return sorted(set(found))
