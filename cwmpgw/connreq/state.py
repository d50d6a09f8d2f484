"""Connection-request state shared by every node: STUN bindings and the per-device interval.

STUN bindings are learnt by whichever node's STUN server the CPE talks to, and used by
whichever node wakes the device; the minimum interval between two wake-ups of a device
must hold across nodes too. Both live in Redis (with an in-memory twin for unit tests).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from cwmpgw.connreq.stun import Binding

__all__ = ["MemoryConnreqState", "RedisConnreqState"]

# A CPE refreshes its binding at least every STUNMaximumKeepAlivePeriod; an hour-old one
# is not worth trying.
BINDING_TTL = 3600


class RedisConnreqState:
    def __init__(self, redis: Any, prefix: str, *, ttl: int = BINDING_TTL) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def record_binding(self, binding: Binding) -> Deferred[None]:
        if not binding.username:
            return succeed(None)
        value = json.dumps({"host": binding.host, "port": binding.port, "ts": binding.ts})
        d: Deferred[Any] = self._redis.execute_command(
            "SET", f"{self._prefix}stun:{binding.username}", value, "EX", self._ttl
        )
        return d.addCallback(lambda _: None)

    def binding(self, username: str) -> Deferred[tuple[str, int] | None]:
        def parse(raw: str | None) -> tuple[str, int] | None:
            if not raw:
                return None
            data = json.loads(raw)
            return str(data["host"]), int(data["port"])

        d: Deferred[Any] = self._redis.get(f"{self._prefix}stun:{username}")
        return d.addCallback(parse)

    def claim_interval(self, device_id: str, seconds: float) -> Deferred[bool]:
        """True if no wake-up of this device started in the last ``seconds`` (and claim it)."""
        if seconds <= 0:
            return succeed(True)
        d: Deferred[Any] = self._redis.execute_command(
            "SET", f"{self._prefix}connreq:recent:{device_id}", "1", "PX", int(seconds * 1000), "NX"
        )
        return d.addCallback(lambda reply: reply is not None)


class MemoryConnreqState:
    def __init__(self, clock: IReactorTime, *, ttl: int = BINDING_TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self.bindings: dict[str, tuple[str, int, float]] = {}
        self._recent: dict[str, float] = {}

    def record_binding(self, binding: Binding) -> Deferred[None]:
        if binding.username:
            self.bindings[binding.username] = (binding.host, binding.port, self._clock.seconds())
        return succeed(None)

    def binding(self, username: str) -> Deferred[tuple[str, int] | None]:
        found = self.bindings.get(username)
        if found is None or self._clock.seconds() - found[2] > self._ttl:
            return succeed(None)
        return succeed((found[0], found[1]))

    def claim_interval(self, device_id: str, seconds: float) -> Deferred[bool]:
        now = self._clock.seconds()
        if now < self._recent.get(device_id, float("-inf")):
            return succeed(False)
        self._recent[device_id] = now + seconds
        return succeed(True)
