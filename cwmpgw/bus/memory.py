"""An in-memory event sink for unit tests and for code paths that run without Redis."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink

__all__ = ["MemoryEventBus"]


@implementer(IEventSink)
class MemoryEventBus:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> Deferred[None]:
        self.events.append(event)
        return succeed(None)

    def of_type(self, event_type: str) -> list[Event]:
        return [e for e in self.events if e.type == event_type]
