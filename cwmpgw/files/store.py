"""File records in Redis (or memory, for tests) and file bytes on disk.

The bytes are written first (renamed into place once complete and synced), the record
after: a record always names a complete file. A crash between the two leaves an orphan
file, never a record without bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink, device_ref
from cwmpgw.bus.redis import EMIT_LUA, EventStream
from cwmpgw.files.model import FileInfo, IFileIndex, UploadSlot, new_file_id
from cwmpgw.web.bodies import DiskBody

__all__ = ["FileStore", "MemoryFileIndex", "RedisFileIndex"]

# KEYS: record, index, stream; ARGV: json, score, id, then the four of emit.
_ADD = (
    EMIT_LUA
    + """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
emit(KEYS[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
"""
)
# KEYS: record, index, stream; ARGV: id, then the four of emit.
_DELETE = (
    EMIT_LUA
    + """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
emit(KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return 1
"""
)


@implementer(IFileIndex)
class RedisFileIndex:
    """``<prefix>file:<id>`` (JSON), ``<prefix>files`` (ids by creation time),
    ``<prefix>upload-slot:<task id>`` (JSON, expiring)."""

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        stream_maxlen: int = 100_000,
        on_stored: Callable[[Event], None] | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._stream = EventStream(prefix, stream_maxlen)
        self._on_stored = on_stored

    def _key(self, file_id: str) -> str:
        return f"{self._prefix}file:{file_id}"

    def _stored(self, _: object, event: Event) -> None:
        if self._on_stored is not None:
            self._on_stored(event)

    def add(self, info: FileInfo, event: Event) -> Deferred[None]:
        d: Deferred[Any] = self._redis.eval(
            _ADD,
            [self._key(info.id), self._prefix + "files", self._stream.key],
            [json.dumps(info.to_dict()), repr(info.created), info.id, *self._stream.args(event)],
        )
        return d.addCallback(self._stored, event)

    def get(self, file_id: str) -> Deferred[FileInfo | None]:
        d: Deferred[Any] = self._redis.get(self._key(file_id))
        return d.addCallback(lambda raw: FileInfo.from_dict(json.loads(raw)) if raw else None)

    def list(self, offset: int, count: int, origin: str | None) -> Deferred[list[FileInfo]]:
        async def run() -> list[FileInfo]:
            out: list[FileInfo] = []
            start = offset
            while len(out) < count:
                ids = await self._redis.execute_command(
                    "ZRANGE", self._prefix + "files", start, start + count - 1
                )
                if not ids:
                    break
                start += len(ids)
                raws = await self._redis.mget([self._key(i) for i in ids])
                for raw in raws:
                    if raw:
                        info = FileInfo.from_dict(json.loads(raw))
                        if origin is None or info.origin == origin:
                            out.append(info)
            return out[:count]

        return Deferred.fromCoroutine(run())

    def delete(self, file_id: str, event: Event) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _DELETE,
            [self._key(file_id), self._prefix + "files", self._stream.key],
            [file_id, *self._stream.args(event)],
        )

        def done(n: Any) -> bool:
            if n:
                self._stored(None, event)
            return bool(n)

        return d.addCallback(done)

    def add_slot(self, slot: UploadSlot) -> Deferred[None]:
        d: Deferred[Any] = self._redis.execute_command(
            "SET",
            f"{self._prefix}upload-slot:{slot.task_id}",
            json.dumps(slot.to_dict()),
            "PXAT",
            str(int(slot.expires * 1000)),
        )
        return d.addCallback(lambda _: None)

    def get_slot(self, task_id: str) -> Deferred[UploadSlot | None]:
        d: Deferred[Any] = self._redis.get(f"{self._prefix}upload-slot:{task_id}")
        return d.addCallback(lambda raw: UploadSlot(**json.loads(raw)) if raw else None)


@implementer(IFileIndex)
class MemoryFileIndex:
    """The same in memory; events go to a sink (unit tests)."""

    def __init__(self, events: IEventSink | None = None, clock: IReactorTime | None = None):
        self.files: dict[str, FileInfo] = {}
        self.slots: dict[str, UploadSlot] = {}
        self._events = events
        self._clock = clock

    def _emit(self, event: Event) -> None:
        if self._events is not None:
            self._events.publish(event)

    def add(self, info: FileInfo, event: Event) -> Deferred[None]:
        self.files[info.id] = info
        self._emit(event)
        return succeed(None)

    def get(self, file_id: str) -> Deferred[FileInfo | None]:
        return succeed(self.files.get(file_id))

    def list(self, offset: int, count: int, origin: str | None) -> Deferred[list[FileInfo]]:
        ordered = sorted(self.files.values(), key=lambda i: (i.created, i.id))
        chosen = [i for i in ordered if origin is None or i.origin == origin]
        return succeed(chosen[offset : offset + count])

    def delete(self, file_id: str, event: Event) -> Deferred[bool]:
        if self.files.pop(file_id, None) is None:
            return succeed(False)
        self._emit(event)
        return succeed(True)

    def add_slot(self, slot: UploadSlot) -> Deferred[None]:
        self.slots[slot.task_id] = slot
        return succeed(None)

    def get_slot(self, task_id: str) -> Deferred[UploadSlot | None]:
        slot = self.slots.get(task_id)
        now = self._clock.seconds() if self._clock is not None else 0.0
        return succeed(slot if slot is not None and slot.expires > now else None)


class FileStore:
    """Files on disk under ``directory`` with their records in an :class:`IFileIndex`."""

    def __init__(self, directory: str, index: IFileIndex, *, clock: IReactorTime, node: str):
        self.directory = os.path.abspath(directory)
        self.index = index
        self._clock = clock
        self._node = node

    def start(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def incoming(self) -> DiskBody:
        """A body to stream a new file into (in the same directory: kept by a rename)."""
        return DiskBody(self.directory)

    def path(self, file_id: str) -> str:
        return os.path.join(self.directory, file_id)

    async def add(
        self,
        body: DiskBody,
        *,
        name: str,
        file_type: str,
        origin: str = "api",
        software_version: str = "",
        description: str = "",
        device_id: str = "",
        task_id: str = "",
    ) -> FileInfo:
        """Keep ``body`` as a new file and record it (``file.created`` or ``file.uploaded``)."""
        now = self._clock.seconds()
        info = FileInfo(
            id=new_file_id(now),
            name=name,
            file_type=file_type,
            size=body.size,
            sha256=body.sha256,
            created=now,
            origin=origin,
            software_version=software_version,
            description=description,
            device_id=device_id,
            task_id=task_id,
        )
        body.keep(self.path(info.id))
        kind = "file.uploaded" if origin == "cpe" else "file.created"
        device = device_ref(device_id) if device_id else None
        try:
            await self.index.add(info, Event(kind, now, self._node, info.to_dict(), device))
        except BaseException:
            os.unlink(self.path(info.id))
            raise
        return info

    def get(self, file_id: str) -> Deferred[FileInfo | None]:
        return self.index.get(file_id)

    def list(
        self, offset: int = 0, count: int = 100, origin: str | None = None
    ) -> Deferred[list[FileInfo]]:
        return self.index.list(offset, count, origin)

    async def delete(self, file_id: str) -> bool:
        info = await self.index.get(file_id)
        if info is None:
            return False
        now = self._clock.seconds()
        device = device_ref(info.device_id) if info.device_id else None
        event = Event("file.deleted", now, self._node, {"id": file_id, "name": info.name}, device)
        if not await self.index.delete(file_id, event):
            return False
        try:
            os.unlink(self.path(file_id))
        except FileNotFoundError:
            pass
        return True
