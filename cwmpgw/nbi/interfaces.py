"""What the northbound API needs from the rest of the gateway."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from cwmpgw.fleet.selector import Selector

__all__ = ["IDeviceDirectory", "IHealth"]


class IDeviceDirectory(Interface):
    def list_devices(
        selector: Selector, *, cursor: str, limit: int
    ) -> Deferred[tuple[list[dict[str, Any]], str]]:
        """A page of the selected device records (without parameters), in id order, and
        the next cursor ("" = end)."""

    def change_tags(
        device_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Deferred[list[str] | None]:
        """Add and remove tags; the device's tags after, or None for an unknown device.
        Raises ValueError past the per-device limit."""

    def tag_counts() -> Deferred[dict[str, int]]:
        """Every tag in use and how many devices carry it."""

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
