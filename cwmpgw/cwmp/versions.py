"""CWMP version detection and negotiation (TR-069 Amd 5/6, PROTOCOL.md §1).

The version decides which RPCs and headers the session may use; the namespace decides
what we write. Both come from the CPE's Inform.

Choice for the cwmp-1-0 and cwmp-1-1 namespaces: their schemas have no UseCWMPVersion
header, so we could not tell such a CPE what we chose. A CPE that sends
SupportedCWMPVersions in those namespaces is treated as speaking the version its namespace
names (1.0 or 1.1): the list is ignored, no UseCWMPVersion is sent and no 8006 fault is
raised, since the CPE evidently speaks that version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cwmpgw.cwmp.messages import Envelope
from cwmpgw.cwmp.soap import CWMP_1_0, CWMP_1_1, CWMP_1_2, CWMP_1_3

__all__ = ["SUPPORTED_VERSIONS", "Negotiated", "VersionMismatch", "negotiate"]

#: Versions this ACS speaks, lowest first.
SUPPORTED_VERSIONS: Final = ("1.0", "1.1", "1.2", "1.3", "1.4")


@dataclass(frozen=True)
class Negotiated:
    """The session's CWMP version, and the UseCWMPVersion header value to send (if any)."""

    version: str
    use_cwmp_version: str | None


class VersionMismatch(Exception):
    """The CPE offered no version we speak: the caller answers fault 8006."""

    def __init__(self, offered: tuple[str, ...]) -> None:
        super().__init__("no common CWMP version")
        self.offered = offered


def _key(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


def negotiate(envelope: Envelope) -> Negotiated:
    """Pick the session's version from the Inform's namespace and headers.

    Raises :class:`VersionMismatch` when the CPE lists SupportedCWMPVersions (in a
    namespace that can carry UseCWMPVersion) and none of them is ours.
    """
    namespace = envelope.namespace
    if namespace == CWMP_1_0:
        return Negotiated("1.0", None)
    if namespace == CWMP_1_1:
        return Negotiated("1.1", None)
    if namespace not in (CWMP_1_2, CWMP_1_3):
        # parse_envelope only accepts the four known namespaces; be explicit anyway.
        raise VersionMismatch(envelope.supported_versions or ())
    offered = envelope.supported_versions
    if offered:
        common = set(SUPPORTED_VERSIONS).intersection(v.strip() for v in offered)
        if not common:
            raise VersionMismatch(offered)
        best = max(common, key=_key)
        return Negotiated(best, best)
    if envelope.session_timeout is not None:
        return Negotiated("1.3", None)
    return Negotiated("1.2", None)
