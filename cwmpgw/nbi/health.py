"""What /healthz reports: whether this node can serve (Redis answers, events flow)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cwmpgw.nbi.interfaces import IHealth

__all__ = ["GatewayHealth"]

# A health check must answer fast even when Redis does not.
_PING_TIMEOUT = 2.0


@implementer(IHealth)
class GatewayHealth:
    """``availability`` (a RedisAvailability) answers "Redis is down" without a round trip;
    ``spool`` (the SpoolingEventSink) tells how many events wait on disk for Redis."""

    def __init__(
        self,
        redis: Any,
        *,
        clock: IReactorTime,
        node: str,
        listener: Any = None,
        availability: Any = None,
        spool: Any = None,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._node = node
        self._listener = listener
        self._availability = availability
        self._spool = spool

    def check(self) -> Deferred[dict[str, Any]]:
        async def check() -> dict[str, Any]:
            start = self._clock.seconds()
            redis_ok = False
            if self._availability is None or self._availability.available:
                try:
                    await self._redis.ping().addTimeout(_PING_TIMEOUT, self._clock)
                    redis_ok = True
                except Exception:
                    redis_ok = False
            subscribed = bool(getattr(self._listener, "subscribed", True))
            report = {
                "ok": redis_ok and subscribed,
                "node": self._node,
                "redis": redis_ok,
                "redis_latency_ms": round((self._clock.seconds() - start) * 1000, 2),
                "events_subscribed": subscribed,
            }
            if self._spool is not None:
                report["events_spooled"] = self._spool.pending
            return report

        return Deferred.fromCoroutine(check())
