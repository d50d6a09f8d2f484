"""Device identifiers compatible with GenieACS's ``generateDeviceId``.

Keeping GenieACS's exact escaping lets a fleet move between the two ACSs (and their
CSV exports) without renaming devices, and yields ids that are safe in URLs, Redis keys
and TR-069 usernames.
"""

from __future__ import annotations

import re
from typing import Final

from cwmpgw.cwmp.messages import DeviceId

__all__ = ["device_id", "escape_id_part"]

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_]+")


def _percent(match: re.Match[str]) -> str:
    # surrogatepass: a lone surrogate still gets a distinct, reversible encoding.
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogatepass"))


def escape_id_part(s: str) -> str:
    """Percent-encode every UTF-8 byte of each character outside ``[A-Za-z0-9_]``.

    "-" is escaped too, which is what makes "-" a safe separator in :func:`device_id`.
    """
    if s.isascii() and s.replace("_", "").isalnum():
        return s  # nearly every OUI, product class and serial: nothing to escape
    return _UNSAFE.sub(_percent, s)


def device_id(d: DeviceId) -> str:
    """``OUI-ProductClass-SerialNumber`` (``OUI-SerialNumber`` when ProductClass is empty)."""
    if d.product_class:
        return (
            f"{escape_id_part(d.oui)}-{escape_id_part(d.product_class)}"
            f"-{escape_id_part(d.serial_number)}"
        )
    return f"{escape_id_part(d.oui)}-{escape_id_part(d.serial_number)}"
