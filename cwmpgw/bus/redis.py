"""Publish events to Redis: PUBLISH for live subscribers, XADD for those who must not miss any."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink

__all__ = ["RedisEventBus"]


@implementer(IEventSink)
class RedisEventBus:
    """Each event goes to channel ``<prefix>events:<type>`` and stream ``<prefix>events``.

    The stream write comes first in the pipeline so that a subscriber who reacts to the
    pub/sub message can already find the entry in the stream.
    """

    _log = Logger()

    def __init__(self, redis: Any, prefix: str, *, stream_maxlen: int = 100_000) -> None:
        self._redis = redis
        self._prefix = prefix
        self._stream = f"{prefix}events"
        self._maxlen = str(stream_maxlen)

    def channel(self, event_type: str) -> str:
        return f"{self._prefix}events:{event_type}"

    def publish(self, event: Event) -> Deferred[None]:
        payload = event.to_json()
        stored = self._redis.execute_command(
            "XADD",
            self._stream,
            "MAXLEN",
            "~",
            self._maxlen,
            "*",
            "type",
            event.type,
            "event",
            payload,
        )
        published = self._redis.publish(self.channel(event.type), payload)
        d: Deferred[Any] = gatherResults([stored, published], consumeErrors=True)
        return d.addCallback(lambda _: None)
