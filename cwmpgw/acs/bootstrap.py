"""The bootstrap credential after a device confirmed its own: noticed, reported, refused.

A CPE enrolled with the shared bootstrap credential is given its own credential
(:mod:`cwmpgw.provision.provisioner`) and confirms the SetParameterValues; the first time
it authenticates with the new one, that one is promoted and the bootstrap credential no
longer speaks for the device (:meth:`CpeAuthenticator.authorize`). Some firmware computes
its Authorization once and keeps sending the bootstrap credential: its own credential is
then never used, and the shared one would stay valid for that device for ever, silently.

Such sessions are counted per device in the credential store (shared by all nodes) from
the confirmation until the new credential is used, replaced or dropped. After
``stuck_after`` of them ``credentials.stuck`` is published once; with ``refuse``, the
bootstrap credential is refused for that device ``grace`` seconds after it confirmed,
while devices that never had a credential of their own can still enrol with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from cwmpgw.store.interfaces import BootstrapUse, ICredentialStore

__all__ = ["BootstrapPolicy", "BootstrapVerdict", "BootstrapWatch"]


@dataclass(frozen=True, slots=True)
class BootstrapPolicy:
    """What ``auth.bootstrap_stuck_after``, ``bootstrap_after_confirm`` and
    ``bootstrap_grace`` configure."""

    stuck_after: int = 3  # sessions before credentials.stuck; 0: never reported
    refuse: bool = False  # "refuse": the bootstrap credential is refused after the grace
    grace: float = 604800.0  # seconds after the confirmation


@dataclass(frozen=True, slots=True)
class BootstrapVerdict:
    use: BootstrapUse | None  # None: the device has not confirmed a credential of its own
    refused: bool


class BootstrapWatch:
    """Counts a session opened with the bootstrap credential and says whether it may go on."""

    def __init__(
        self, store: ICredentialStore, clock: IReactorTime, policy: BootstrapPolicy
    ) -> None:
        self._store = store
        self._clock = clock
        self.policy = policy

    async def session(self, device_id: str) -> BootstrapVerdict:
        use = await self._store.bootstrap_used(device_id, self.policy.stuck_after)
        refused = (
            use is not None
            and self.policy.refuse
            and self._clock.seconds() >= use.confirmed_at + self.policy.grace
        )
        return BootstrapVerdict(use, refused)
