"""The inventory's index keys in Redis: written with the device record, read by queries.

All under the configured prefix; every index of ids is a sorted set whose members all
have the score 0, so that it is ordered by id (``ZRANGEBYLEX``) and pages stay stable
while devices inform:

- ``idx:all``: every device id
- ``idx:<field>:<value>`` for ``oui``, ``product_class``, ``software_version``,
  ``hardware_version``: the devices whose record has that value
- ``idx:tag:<tag>``: the devices with that tag; ``device:<id>:tags`` (set) the tags of
  one device; ``tags`` (hash) tag → how many devices have it
- ``idx:src4``, ``idx:src6``: device ids scored by the address of their last Inform (the
  IPv4 address as an integer; the first 52 bits of an IPv6 address), so a network is a
  score range
- ``devices`` (already there): device ids scored by their last Inform

The record and its indexes are written by the same Lua script (``record_inform``,
``change_tags``, ``delete_device`` in :mod:`cwmpgw.store.redis`), so they never drift.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = [
    "INDEXED_FIELDS",
    "IPV6_SHIFT",
    "all_key",
    "field_key",
    "source_key",
    "source_score",
    "tag_counts_key",
    "tag_key",
]

#: The record fields with an equality index.
INDEXED_FIELDS: Final = ("oui", "product_class", "software_version", "hardware_version")
#: IPv6 addresses are indexed by their first 52 bits (a double holds 53 exactly).
IPV6_SHIFT: Final = 128 - 52


def all_key(prefix: str) -> str:
    return prefix + "idx:all"


def field_key(prefix: str, field: str, value: str) -> str:
    return f"{prefix}idx:{field}:{value}"


def tag_key(prefix: str, tag: str) -> str:
    return f"{prefix}idx:tag:{tag}"


def tag_counts_key(prefix: str) -> str:
    return prefix + "tags"


def source_key(prefix: str, version: int) -> str:
    return f"{prefix}idx:src{version}"


def source_score(address: str) -> tuple[int, int] | None:
    """(IP version, score) of an Inform's source address, or None if it is not one."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return 4, int(ip)
    return 6, int(ip) >> IPV6_SHIFT
