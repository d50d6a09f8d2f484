"""One CWMP session per device across all gateway nodes.

A new Inform always starts a new session (TR-069), wherever it lands: the node that
receives it takes ownership of the device (``take``). Before the ACS sends anything in its
turn, a node checks it still owns the device; a node that lost ownership ends its session
as superseded instead of sending requests the CPE is no longer listening to. The check is
``owns``, or — on the hot path — part of the task store's queue read (one round trip
instead of two; the store raises :class:`Superseded`). Ownership expires on its own, so a
crashed node never blocks a device; it is not released when a session ends, because
nothing ever waits for it to be free: taking it always overwrites (a release was one
Redis round trip per session for nothing).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

__all__ = ["PENDING_INFORM", "MemorySessionLock", "RedisSessionLock", "Superseded", "owner_key"]

#: The field of a device's hash holding the fingerprint of the Inform that opened its
#: latest session while that session has not gone on past it (the device store sets it
#: with the Inform's write, the task store's first read of the session deletes it): a
#: retry of that Inform, its answer lost, is not announced twice.
PENDING_INFORM = "pending_inform"


class Superseded(Exception):
    """The device started a newer session (on this node or another): send it nothing more."""


def owner_key(prefix: str, device_id: str) -> str:
    """The Redis key naming the session that owns ``device_id`` (shared with the task store)."""
    return f"{prefix}session-owner:{device_id}"


class RedisSessionLock:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, device_id: str) -> str:
        return owner_key(self._prefix, device_id)

    def take(self, device_id: str, owner: str, ttl: float) -> Deferred[None]:
        d: Deferred[Any] = self._redis.execute_command(
            "SET", self._key(device_id), owner, "PX", int(ttl * 1000)
        )
        return d.addCallback(lambda _: None)

    def owns(self, device_id: str, owner: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.get(self._key(device_id))
        return d.addCallback(lambda value: value == owner)


class MemorySessionLock:
    """The same contract on a dict: several engines sharing one act as several nodes."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.owners: dict[str, tuple[str, float]] = {}

    def take(self, device_id: str, owner: str, ttl: float) -> Deferred[None]:
        self.owners[device_id] = (owner, self._clock.seconds() + ttl)
        return succeed(None)

    def owns(self, device_id: str, owner: str) -> Deferred[bool]:
        current = self.owners.get(device_id)
        return succeed(
            current is not None and current[0] == owner and current[1] > self._clock.seconds()
        )
