"""What the northbound API needs from the rest of the gateway."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = ["DeviceFilter", "IDeviceDirectory", "IHealth"]


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    id_prefix: str = ""
    oui: str = ""
    product_class: str = ""
    informed_after: float | None = None  # Unix seconds, inclusive
    informed_before: float | None = None


class IDeviceDirectory(Interface):
    def list_devices(
        filter: DeviceFilter, *, cursor: str, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], str]]:
        """A page of device records (without parameters) and the next cursor ("" = end)."""

    def get_device(
        device_id: str, parameters: Sequence[str] | None = None
    ) -> Deferred[dict[str, Any] | None]:
        """The record with its cached ``parameters`` (only those named, if named), or None."""

    def delete_device(device_id: str) -> Deferred[bool]:
        """Forget the device (record, parameters, credentials, tasks); True if it existed."""

    def set_credentials(
        device_id: str,
        username: str,
        password: str,
        connection_request: tuple[str, str] | None = None,
    ) -> Deferred[None]:
        """Set the device's ACS credential (stored as HA1 only) and, optionally, its
        connection-request username and password (stored encrypted)."""

    def rotate_credentials(device_id: str) -> Deferred[None]:
        """Give the device new unique credentials in its next session; the old ones keep
        working until the device has used the new ones."""


class IHealth(Interface):
    def check() -> Deferred[dict[str, Any]]:
        """{"ok": bool, "redis": bool, "node": str, ...}: what /healthz reports."""
