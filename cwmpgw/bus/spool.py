"""Events survive a Redis outage: a local append-only spool, replayed in order, once.

:class:`SpoolingEventSink` sits in front of the Redis bus. While Redis is available and
nothing is spooled, an event goes straight to Redis. When Redis is unavailable, or a
publish fails, the event's envelope is appended to ``<data_dir>/spool/events.jsonl``
(one JSON line, ``flush`` + ``fsync`` before the publish Deferred fires), so what the
gateway acknowledged to a CPE is on disk. Past ``max_bytes`` the spool refuses with
:class:`SpoolFull`; the caller answers 503 and the CPE retries later, as TR-069 lets it.

When Redis is back (and at start-up, for what a previous run left), the spool is replayed
in order by :class:`RedisSpoolWriter`: a Lua script per batch that XADDs and PUBLISHes
each event and records its id in a sorted set, atomically, skipping ids already recorded.
A crash in the middle of a replay therefore repeats nothing: the next replay starts from
the top and skips what is stored. An event whose live publish failed after it was sent
(a timeout, a lost connection) may be in the stream already; the script looks for its id
among the stream entries written around that time before adding it. The file is
truncated only once every line in it is stored. Events published while spooled events
wait go after them, in the file.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, FirstError, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from cwmpgw.availability import RedisAvailability, Unavailable
from cwmpgw.bus.events import Event, IEventSink
from cwmpgw.waiters import Waiters

__all__ = [
    "ISpoolWriter",
    "RedisSpoolWriter",
    "SpoolFull",
    "SpooledEvent",
    "SpoolingEventSink",
]

_SPOOL_VERSION = 1


class SpoolFull(Exception):
    """The spool reached its size limit: the event was not accepted."""


@dataclass(frozen=True, slots=True)
class SpooledEvent:
    """One line of the spool, ready to replay."""

    id: str
    type: str
    payload: str  # the envelope JSON, byte for byte what a live publish sends
    sent_at: float | None = None  # a live publish was tried then: it may be stored already


class ISpoolWriter(Interface):
    """Where a replay writes: Redis in production, a list in unit tests."""

    def store(events: Sequence[SpooledEvent]) -> Deferred[list[bool]]:
        """Store (stream) and publish each event, in order, each id once.

        Fires with one flag per event: True if written now, False if its id was stored
        before. Either all of the batch is applied or none of it.
        """


# KEYS: stream, replayed-ids sorted set
# ARGV: maxlen, now, forget-before, channel prefix, then 5 per event:
#       id, type, payload, lowest and highest stream id where a live publish of it may
#       have landed ('' when none was tried)
_STORE = """
local out = {}
for i = 5, #ARGV, 5 do
  local id, kind, payload, low, high = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local seen = redis.call('ZSCORE', KEYS[2], id)
  if not seen and low ~= '' then
    local prefix = '{"v":1,"id":"' .. id .. '"'
    local entries = redis.call('XRANGE', KEYS[1], low, high, 'COUNT', 10000)
    for _, entry in ipairs(entries) do
      local fields = entry[2]
      for j = 1, #fields, 2 do
        if fields[j] == 'event' and string.sub(fields[j + 1], 1, #prefix) == prefix then
          seen = true
        end
      end
      if seen then break end
    end
  end
  if seen then
    out[#out + 1] = 0
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', kind, 'event', payload)
    redis.call('PUBLISH', ARGV[4] .. kind, payload)
    out[#out + 1] = 1
  end
  redis.call('ZADD', KEYS[2], ARGV[2], id)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
return out
"""


@implementer(ISpoolWriter)
class RedisSpoolWriter:
    """Replays into the stream and channels :class:`~cwmpgw.bus.redis.RedisEventBus` uses.

    Replayed ids are kept in ``<prefix>spool:replayed`` (sorted by replay time) for
    ``keep`` seconds: longer than a spool can wait for a second replay of the same line.
    An event whose live publish failed after it was sent is looked for among the stream
    entries from ``skew`` seconds before that time (Redis' clock may be behind ours) to
    ``window`` seconds after, at most 10,000 entries: at very high event rates such an
    event can still be stored twice.
    """

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        clock: IReactorTime,
        stream_maxlen: int = 100_000,
        keep: float = 30 * 86400,
        skew: float = 5.0,
        window: float = 300.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock = clock
        self._maxlen = str(stream_maxlen)
        self._keep = keep
        self._skew = skew
        self._window = window
        self.replayed_key = prefix + "spool:replayed"

    def store(self, events: Sequence[SpooledEvent]) -> Deferred[list[bool]]:
        now = self._clock.seconds()
        args = [self._maxlen, repr(now), repr(now - self._keep), self._prefix + "events:"]
        for e in events:
            low = high = ""
            if e.sent_at is not None:
                low = str(max(0, int((e.sent_at - self._skew) * 1000)))
                high = str(int((e.sent_at + self._window) * 1000))
            args += [e.id, e.type, e.payload, low, high]
        d: Deferred[Any] = self._redis.eval(
            _STORE, [self._prefix + "events", self.replayed_key], args
        )
        return d.addCallback(lambda flags: [bool(int(f)) for f in flags])


class _Item:
    """One publish call on its way: sent live, or waiting to be spooled."""

    __slots__ = ("done", "event", "failed", "payload", "sent_at", "settled")

    def __init__(self, event: Event, payload: str) -> None:
        self.event = event
        self.payload = payload
        self.done: Deferred[None] = Deferred()
        self.settled = False
        self.failed = False
        self.sent_at: float | None = None


@implementer(IEventSink)
class SpoolingEventSink:
    """Live publish while Redis is up and the spool is empty; else append to the spool.

    ``start()`` opens the spool (repairing a line torn by a crash: it was never
    acknowledged) and replays what it holds; ``stop()`` waits for live publishes still
    under way (spooling those that fail) and for the replay batch being written.
    """

    _log = Logger()

    def __init__(
        self,
        live: IEventSink,
        writer: ISpoolWriter,
        path: str,
        *,
        availability: RedisAvailability,
        clock: IReactorTime,
        max_bytes: int = 256 * 1024 * 1024,
        batch: int = 100,
        retry_delay: float = 5.0,
    ) -> None:
        self._live = live
        self._writer = writer
        self.path = path
        self._availability = availability
        self._clock = clock
        self.max_bytes = max_bytes
        self._batch = batch
        self._retry_delay = retry_delay
        self._fd: int | None = None
        self._size = 0  # bytes in the file
        self._offset = 0  # bytes of it already replayed (stored in Redis)
        self._pending = 0  # lines not yet replayed
        self._inflight: deque[_Item] = deque()  # live publishes, in publish order
        self._held: list[_Item] = []  # to spool once the live ones before them settle
        self._failures = 0  # live publishes failed and not yet spooled
        self._replaying = False
        self._retry: IDelayedCall | None = None
        self._unsubscribe: Any = None
        self._stopping = False
        self._idle: Waiters[None] = Waiters()  # whenDrained()
        self._quiet: list[Deferred[None]] = []  # stop(): no live publish, no replay
        self.replayed = 0  # events written by replays of this run
        self.duplicates = 0  # spooled events a replay found stored already

    # -- IEventSink --------------------------------------------------------------------------

    def publish(self, event: Event) -> Deferred[None]:
        if self._fd is None:
            return _failed(RuntimeError("the event spool is not running"))
        item = _Item(event, event.to_json())
        if self._live_mode():
            self._send(item)
        elif self._inflight:
            self._held.append(item)  # after the live publishes before it, whatever they do
        else:
            self._spool([item])
        return item.done

    # -- state -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events in the spool not yet stored in Redis."""
        return self._pending + len(self._held) + self._failures

    def whenDrained(self) -> Deferred[None]:
        """Fires once nothing is spooled or waiting to be (at once if so now)."""
        if self._drained():
            return succeed(None)
        return self._idle.wait()

    def _drained(self) -> bool:
        return (
            self._size == self._offset
            and not self._held
            and not self._failures
            and not self._replaying
        )

    def _live_mode(self) -> bool:
        return self._drained() and not self._stopping and self._availability.available

    # -- service -----------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._size = _repair(fd)
            self._pending = _count_lines(self.path, self._size)
        except Exception:
            os.close(fd)
            raise
        self._fd = fd
        self._offset = 0
        self._stopping = False
        if self._pending:
            self._log.info(
                "{count} spooled event(s) in {path} to replay", count=self._pending, path=self.path
            )
        self._unsubscribe = self._availability.subscribe(self._availability_changed)
        self._kick()

    def stop(self) -> Deferred[None]:
        self._stopping = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        # Live publishes end within the guard's timeout, a replay after its batch.
        if self._inflight or self._replaying:
            quiet: Deferred[None] = Deferred()
            self._quiet.append(quiet)
            await quiet
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self._pending:
            self._log.info(
                "{count} event(s) left in the spool for the next start", count=self._pending
            )

    # -- live publishing ---------------------------------------------------------------------

    def _send(self, item: _Item) -> None:
        self._inflight.append(item)
        item.sent_at = self._clock.seconds()
        d = maybeDeferred(self._live.publish, item.event)
        d.addCallbacks(self._sent, self._send_failed, callbackArgs=(item,), errbackArgs=(item,))

    def _sent(self, _: object, item: _Item) -> None:
        item.settled = True
        item.done.callback(None)
        self._settle()

    def _send_failed(self, failure: Failure, item: _Item) -> None:
        item.settled = item.failed = True
        if isinstance(failure.value, FirstError):  # RedisEventBus gathers XADD and PUBLISH
            failure = failure.value.subFailure
        if failure.check(Unavailable):
            item.sent_at = None  # refused before sending: certainly not in Redis
        self._failures += 1
        self._log.warn(
            "could not publish {event_type} {event_id} ({error}); spooling it",
            event_type=item.event.type,
            event_id=item.event.id,
            error=failure.getErrorMessage(),
        )
        self._settle()

    def _settle(self) -> None:
        """Spool, in publish order, the failed live publishes that nothing before waits on."""
        failed: list[_Item] = []
        while self._inflight and self._inflight[0].settled:
            item = self._inflight.popleft()
            if item.failed:
                failed.append(item)
        if failed:
            self._failures -= len(failed)
            self._spool(failed)
        if not self._inflight and self._held:
            held, self._held = self._held, []
            self._spool(held)
        self._check_idle()

    # -- the spool file ----------------------------------------------------------------------

    def _spool(self, items: list[_Item]) -> None:
        """Append, fsync, then fire each item's Deferred; past ``max_bytes``, refuse it."""
        fd = self._fd
        accepted: list[_Item] = []
        lines: list[bytes] = []
        size = self._size
        if fd is None:
            for item in items:
                item.done.errback(RuntimeError("the event spool is not running"))
            return
        for item in items:
            line = _line(item).encode("utf-8", "surrogatepass")
            if size + len(line) > self.max_bytes:
                self._log.error(
                    "event spool {path} is full ({size} bytes): {event_type} {event_id} refused",
                    path=self.path,
                    size=size,
                    event_type=item.event.type,
                    event_id=item.event.id,
                )
                item.done.errback(SpoolFull(f"the event spool is full ({size} bytes)"))
                continue
            accepted.append(item)
            lines.append(line)
            size += len(line)
        if not accepted:
            return
        data = b"".join(lines)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as e:
            self._log.failure("could not write the event spool {path}", path=self.path)
            try:
                os.ftruncate(fd, self._size)  # drop a partial line: it was never acknowledged
            except OSError:
                self._log.failure("could not repair the event spool {path}", path=self.path)
            for item in accepted:
                item.done.errback(e)
            return
        self._size = size
        self._pending += len(accepted)
        for item in accepted:
            item.done.callback(None)
        self._kick()

    # -- replay ------------------------------------------------------------------------------

    def _availability_changed(self, available: bool) -> None:
        if available:
            if self._retry is not None and self._retry.active():
                self._retry.cancel()  # a replay that failed meanwhile need not wait
            self._retry = None
            self._kick()

    def _kick(self) -> None:
        """Start a replay if there is something to replay and Redis is there to take it."""
        if (
            self._fd is None
            or self._stopping
            or self._replaying
            or self._size == self._offset
            or not self._availability.available
            or (self._retry is not None and self._retry.active())
        ):
            return
        self._replaying = True  # before the coroutine: it may finish before returning
        Deferred.fromCoroutine(self._replay())

    async def _replay(self) -> None:
        try:
            while not self._stopping and self._size > self._offset:
                events, end, lines = self._read_batch()
                if events:
                    flags = await self._writer.store(events)
                    written = sum(flags)
                    self.replayed += written
                    self.duplicates += len(flags) - written
                self._offset = end
                self._pending -= lines
            if not self._stopping and self._fd is not None and self._size == self._offset:
                self._truncate()
        except Exception:
            self._log.failure("replaying the event spool {path} stopped", path=self.path)
            if not self._stopping:
                self._retry = self._clock.callLater(self._retry_delay, self._retried)
        finally:
            self._replaying = False
        self._check_idle()
        self._kick()  # lines appended while the last batch was written

    def _retried(self) -> None:
        self._retry = None
        self._kick()

    def _read_batch(self) -> tuple[list[SpooledEvent], int, int]:
        """Up to ``batch`` events from the replay offset; with the offset after them."""
        events: list[SpooledEvent] = []
        position, lines = self._offset, 0
        with open(self.path, "rb") as f:
            f.seek(position)
            while lines < self._batch and position < self._size:
                raw = f.readline()
                if not raw.endswith(b"\n"):
                    break
                position += len(raw)
                lines += 1
                try:
                    events.append(_parse(raw))
                except (ValueError, KeyError, TypeError) as e:
                    self._log.error(
                        "skipping an unreadable line of {path} at byte {offset}: {error}",
                        path=self.path,
                        offset=position - len(raw),
                        error=str(e),
                    )
        return events, position, lines

    def _truncate(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        if self._size:
            self._log.info(
                "event spool replayed: {replayed} written, {duplicates} already stored",
                replayed=self.replayed,
                duplicates=self.duplicates,
            )
        self._size = self._offset = self._pending = 0

    def _check_idle(self) -> None:
        if self._quiet and not self._inflight and not self._replaying:
            quiet, self._quiet = self._quiet, []
            for d in quiet:
                d.callback(None)
        if self._idle and self._drained():
            self._idle.fire(None)


def _line(item: _Item) -> str:
    """``{"v":1,"sent_at":…,"envelope":{…}}``: the envelope as published, readable with jq."""
    head = f'{{"v":{_SPOOL_VERSION},"sent_at":{json.dumps(item.sent_at)},"envelope":'
    return head + item.payload + "}\n"


def _parse(raw: bytes) -> SpooledEvent:
    line = json.loads(raw)
    if line.get("v") != _SPOOL_VERSION:
        raise ValueError(f"unknown spool line version {line.get('v')!r}")
    envelope = line["envelope"]
    sent_at = line.get("sent_at")
    return SpooledEvent(
        id=str(envelope["id"]),
        type=str(envelope["type"]),
        # The same bytes Event.to_json() produced: json keeps key order and round-trips.
        payload=json.dumps(envelope, separators=(",", ":"), ensure_ascii=False),
        sent_at=float(sent_at) if sent_at is not None else None,
    )


def _repair(fd: int) -> int:
    """Cut a last line left incomplete by a crash mid-write; the file's size after."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    if os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            end = start + at + 1
            break
        end = start
    os.ftruncate(fd, end)
    os.fsync(fd)
    return end


def _count_lines(path: str, size: int) -> int:
    count = 0
    with open(path, "rb") as f:
        remaining = size
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
            count += chunk.count(b"\n")
    return count


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _failed(error: Exception) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    d.errback(error)
    return d
