"""The versioned JSON envelope every ACS event travels in.

One shape for every event type, so a back-office consumer can route on ``type`` and
correlate on ``id`` and ``device.id`` without knowing every type in advance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from cwmpgw.jsontext import compact

__all__ = [
    "ENVELOPE_VERSION",
    "EVENT_TYPES",
    "Event",
    "IEventSink",
    "IStoredEvents",
    "device_ref",
    "format_ts",
    "new_event_id",
]

ENVELOPE_VERSION = 1

# Every type the gateway publishes today; documented one by one in the README.
EVENT_TYPES = frozenset(
    {
        "device.registered",
        "inform",
        "transfer.complete",
        "du.complete",
        "session.closed",
        "auth.failed",
        "auth.blocked",
        "envelope.repaired",
        "credentials.changed",
        "credentials.stuck",
        "presets.partial",
        "presets.failed",
        "task.queued",
        "task.done",
        "task.failed",
        "task.expired",
        "task.cancelled",
        "command.rejected",
        "connreq.sent",
        "connreq.succeeded",
        "connreq.failed",
        "connreq.refused",
        "tags.changed",
        "bulk.progress",
        "profile.applied",
        "profile.failed",
        "profile.changed",
        "file.created",
        "file.uploaded",
        "file.deleted",
        "campaign.created",
        "campaign.wave",
        "campaign.device",
        "campaign.paused",
        "campaign.resumed",
        "campaign.stopped",
        "campaign.aborted",
        "campaign.completed",
    }
)


def new_event_id(now: float) -> str:
    """A unique, roughly time-ordered id: 12 hex digits of milliseconds + 16 random.

    Time-ordered so ids sort like the stream; random so several nodes never collide.
    """
    return f"{int(now * 1000):012x}{os.urandom(8).hex()}"


_second: list[Any] = [None, ""]  # the last second formatted, and its text


def format_ts(now: float) -> str:
    """RFC 3339 UTC with milliseconds, the form every event carries in ``ts``.

    The seconds come from the same truncated millisecond count as the fraction (never
    ``…:01.999`` rounded up to ``…:02.999``), and are formatted once per second.
    """
    millis = int(now * 1000)
    second, fraction = divmod(millis, 1000)
    if _second[0] != second:
        _second[0] = second
        _second[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{_second[1]}{fraction:03d}Z"


def device_ref(
    device_id: str,
    oui: str = "",
    product_class: str = "",
    serial_number: str = "",
    manufacturer: str = "",
) -> dict[str, str]:
    """The ``device`` object of an envelope."""
    return {
        "id": device_id,
        "oui": oui,
        "product_class": product_class,
        "serial_number": serial_number,
        "manufacturer": manufacturer,
    }


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    ts: float
    node: str
    data: dict[str, Any]
    device: dict[str, str] | None = None
    id: str = field(default="")
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")
        if not self.id:
            object.__setattr__(self, "id", new_event_id(self.ts))

    def to_dict(self) -> dict[str, Any]:
        envelope = self._head()
        envelope["data"] = self.data
        return envelope

    def _head(self) -> dict[str, Any]:
        """The envelope without ``data``, which comes last."""
        return {
            "v": ENVELOPE_VERSION,
            "id": self.id,
            "type": self.type,
            "ts": format_ts(self.ts),
            "device": self.device,
            "node": self.node,
        }

    def to_json(self) -> str:
        """Encoded once: the spool and the Redis bus both need it (an event is not changed
        after it is published)."""
        if self._json is None:
            text = compact(self.to_dict())
            object.__setattr__(self, "_json", text)
            return text
        return self._json

    def encode_with(self, data_json: str) -> Event:
        """Encode the event now around ``data_json``, the text of its ``data`` that the
        caller encoded already (a task's, stored with it): its text is the same as
        :meth:`to_json` would make, without encoding the data a second time."""
        if self._json is None:
            text = compact(self._head())[:-1] + ',"data":' + data_json + "}"
            object.__setattr__(self, "_json", text)
        return self


class IEventSink(Interface):
    """Where events go: Redis pub/sub + stream in production, a list in unit tests."""

    def publish(event: Event) -> Deferred[None]:
        """Deliver one event; fires once it is stored (stream) and published."""


class IStoredEvents(Interface):
    """A sink that wants to hear of events it did not publish: those a state-changing Redis
    script stored itself, together with the change (see ``cwmpgw.bus.redis.EMIT_LUA``)."""

    def stored(event: Event) -> None:
        """``event`` is in the stream and was published; take note (count it), never
        publish it again."""
