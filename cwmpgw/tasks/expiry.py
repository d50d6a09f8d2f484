"""Queued tasks past their expiry are marked expired (each says so in an event)."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from cwmpgw.availability import RedisAvailability

__all__ = ["INTERVAL", "expiry_service"]

# How often the expiry index is looked at; a task may outlive its expiry by this much.
INTERVAL = 10.0

_log = Logger()


def expiry_service(
    tasks: Any, availability: RedisAvailability, clock: Any, interval: float = INTERVAL
) -> TimerService:
    """A service that expires due tasks every ``interval`` seconds while Redis is up."""

    def expire() -> Deferred[Any]:
        if not availability.available:
            return succeed(None)  # nothing to do until Redis is back
        d: Deferred[Any] = tasks.expire_due()
        return d.addErrback(lambda f: _log.failure("could not expire tasks", f))

    service = TimerService(interval, expire)
    service.clock = clock
    service.setName("task-expiry")
    return service
