"""The one way the rest of the gateway asks a CPE to open a session now."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = ["OUTCOMES", "IConnectionRequester", "WakeResult"]

# ok: the CPE accepted the request; unreachable: no answer at the network level;
# auth_failed: it refused our credentials; refused: the guard (or a missing URL or
# credential) stopped us before anything was sent; timeout: no answer in time;
# busy: the CPE answered 503 (rate limit or already in a session); error: anything else.
OUTCOMES = ("ok", "unreachable", "auth_failed", "refused", "timeout", "busy", "error")


@dataclass(frozen=True, slots=True)
class WakeResult:
    outcome: str
    session_started: bool = False  # an Inform with "6 CONNECTION REQUEST" followed in time
    method: str | None = None  # "xmpp", "http" or "udp": what reached the CPE
    detail: str = ""  # safe to log and publish: never a credential

    def to_dict(self) -> dict[str, object]:
        return {
            "outcome": self.outcome,
            "session_started": self.session_started,
            "method": self.method,
            "detail": self.detail,
        }


class IConnectionRequester(Interface):
    def wake(device_id: str) -> Deferred[WakeResult]:
        """Ask the device to open a session; fires once it did, or with why not."""
