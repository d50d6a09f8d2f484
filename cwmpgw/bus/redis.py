"""Publish events to Redis: PUBLISH for live subscribers, XADD for those who must not miss any."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cwmpgw.availability import GuardedRedis
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

# The riding events waiting, in one command (RedisEventBus._flush): _PUBLISH for each, in
# order. KEYS: stream; ARGV: stream MAXLEN, then channel, type, payload per event.
# Returns the entry ids.
_PUBLISH_MANY = """
local ids = {}
for i = 2, #ARGV, 3 do
  ids[#ids + 1] = redis.call(
    'XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[i + 1], 'event', ARGV[i + 2])
  redis.call('PUBLISH', ARGV[i], ARGV[i + 2])
end
return ids
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

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        stream_maxlen: int = 100_000,
        riding: frozenset[str] = frozenset(),
        clock: IReactorTime | None = None,
        max_ride: float = 0.05,
    ) -> None:
        self._redis = redis
        self._stream = EventStream(prefix, stream_maxlen)
        # Events of the ``riding`` types are sent with the next command that goes to Redis
        # (RedisAvailability.ride), or after ``max_ride`` seconds if none comes first.
        self._riding = riding if clock is not None and isinstance(redis, GuardedRedis) else None
        self._clock = clock
        self._max_ride = max_ride
        self._waiting: list[tuple[Event, Deferred[None]]] = []
        self._ride_timer: IDelayedCall | None = None
        self._aboard = False  # a ride is booked (RedisAvailability.ride) and not yet taken

    def channel(self, event_type: str) -> str:
        return self._stream.channel(event_type)

    def publish(self, event: Event) -> Deferred[None]:
        if self._riding is not None and event.type in self._riding:
            return self._ride(event)
        return self._send(event)

    def _send(self, event: Event) -> Deferred[None]:
        d: Deferred[Any] = self._redis.eval(_PUBLISH, [self._stream.key], self._stream.args(event))
        return d.addCallback(lambda _: None)

    def _ride(self, event: Event) -> Deferred[None]:
        """Publish ``event`` (one whose publisher can wait ``max_ride`` longer, e.g.
        session.closed) with the next command anybody sends: a session's last event
        otherwise costs a write and a read of its own; the events waiting go in one
        command. Fires once it is stored, as ``publish`` does."""
        d: Deferred[None] = Deferred()
        if not self._waiting:
            assert self._clock is not None
            if not self._aboard:  # one ride at a time, however long Redis is away
                self._aboard = True
                self._redis.availability.ride(self._board)
            self._ride_timer = self._clock.callLater(self._max_ride, self._flush)
        self._waiting.append((event, d))
        return d

    def _board(self) -> None:
        self._aboard = False
        self._flush()

    def _flush(self) -> None:
        if self._ride_timer is not None and self._ride_timer.active():
            self._ride_timer.cancel()
        self._ride_timer = None
        waiting, self._waiting = self._waiting, []
        if not waiting:  # the ride came once the timer had sent them (with its command)
            return
        # One script for all of them (a command's client-side cost is what counts, see
        # the class): stored in order, each Deferred fired from its result.
        # A failure fails them all alike (Unavailable: none was sent; else any may be
        # stored), which the spool handles as it does one event's.
        stream = self._stream
        args = [str(stream.maxlen)]
        for event, _ in waiting:
            args += [stream.channel(event.type), event.type, event.to_json()]
        sent: Deferred[Any] = self._redis.eval(_PUBLISH_MANY, [stream.key], args)

        def stored(_: object) -> None:
            for _event, d in waiting:
                d.callback(None)

        def failed(failure: Failure) -> None:
            for _event, d in waiting:
                d.errback(failure)

        sent.addCallbacks(stored, failed)
