"""The Redis command stream: back-office systems XADD tasks to ``<prefix>commands``.

Each entry's ``task`` field holds the API's task body plus ``device_id``. Every gateway node
reads the stream in one consumer group (its node name is its consumer name), so each entry
is handled by one node. An entry is acknowledged only once it became a task, or once it was
rejected with a ``command.rejected`` event: a bad command never blocks the stream, and a
Redis failure leaves the entry pending, to be retried. Delivery is at least once: a node
that dies between storing the task and XACK leaves an entry that is processed again.

Pending entries are recovered two ways: at start (and after any error) the consumer re-reads
its own pending entries, and it periodically XAUTOCLAIMs entries that another consumer left
idle for ``claim_idle_ms`` (a node that died or was renamed).

The blocking XREADGROUP runs on a dedicated connection from ``connect()``: parked on a
shared pool it would hold one of its connections for ``block_ms`` at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.availability import is_backend_failure
from cwmpgw.bus.events import Event, IEventSink, device_ref
from cwmpgw.fleet.profiles import ProfileError, parse_profile
from cwmpgw.nbi.api import (
    ApiError,
    parse_json,
    parse_tag_change,
    parse_task_request,
    task_error_message,
)
from cwmpgw.tasks.model import ITaskService, TaskError, UnknownDevice, replayed

__all__ = ["MAX_COMMAND_BYTES", "CommandConsumer"]

MAX_COMMAND_BYTES: Final = 1_048_576
_MAX_BACKOFF: Final = 30.0
_FIRST_BACKOFF: Final = 0.5
# A read on the dedicated connection that is not answered this long after its BLOCK time
# is given up and the connection replaced: a hung Redis, or a connection txredisapi will
# never make (it stops reconnecting for good after a failed AUTH/SELECT).
_READ_MARGIN: Final = 10.0


class _Rejected(Exception):
    def __init__(self, reason: str, device_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.device_id = device_id


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


class CommandConsumer(Service):
    """Turns entries of ``<prefix>commands`` into tasks, one consumer of the group per node."""

    _log = Logger()

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        connect: Callable[[], Deferred[Any]],
        tasks: ITaskService,
        events: IEventSink,
        clock: IReactorTime,
        node: str,
        group: str = "cwmpgw",
        block_ms: int = 2000,
        batch: int = 50,
        claim_idle_ms: int = 60000,
        max_attempts: int = 5,
        stop_grace: float = 10.0,
        tagger: Any = None,
        bulks: Any = None,
        profiles: Any = None,
    ) -> None:
        """``redis`` (the shared pool) carries XGROUP, XAUTOCLAIM and XACK; ``connect()``
        fires with the dedicated connection for XREADGROUP, closed again on stop. A lazy
        one (``succeed(txredisapi.lazyConnection(...))``) suits best: stopping while Redis
        is down then also stops its reconnection attempts.

        An entry whose processing fails ``max_attempts`` times for a reason other than
        Redis (a bug) is rejected, so it cannot block the stream forever.
        """
        self._redis = redis
        self.key = f"{prefix}commands"
        self._connect = connect
        self._tasks = tasks
        self._tagger = tagger  # change_tags(device_id, add, remove), for ``tags`` entries
        self._bulks = bulks  # an IBulkService, for ``bulk`` entries
        self._profiles = profiles  # an IProfileStore, for ``profile`` entries
        self._events = events
        self._clock = clock
        self._node = node
        self._group = group
        self._block_ms = block_ms
        self._batch = batch
        self._claim_idle_ms = claim_idle_ms
        self._claim_every = max(claim_idle_ms / 1000.0, 1.0)
        self._max_attempts = max_attempts
        self._stop_grace = stop_grace
        self._conn: Any = None
        self._loop: Deferred[None] | None = None
        self._interruptible: Deferred[Any] | None = None
        self._stopping = False
        self._group_ready = False
        self._recover = True
        self._claims = True
        self._next_claim = 0.0
        self._errors = 0
        self._attempts: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._stopping = False
        self._recover = True
        self._next_claim = 0.0
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: self._log.failure("the command stream consumer stopped", f))

    def stopService(self) -> Deferred[None]:
        """Interrupt the blocking read or the back-off at once; let an entry being
        processed finish (at most ``stop_grace`` seconds); fire once the loop is over and
        the dedicated connection closed."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        if self._interruptible is not None:
            self._interruptible.cancel()
        loop, self._loop = self._loop, None
        if loop is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        timer = self._clock.callLater(self._stop_grace, loop.cancel)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            done.callback(None)

        loop.addBoth(finished)
        return done

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    await self._step()
                    self._errors = 0
                except CancelledError:
                    if self._stopping:
                        break
                    await self._failed(None)
                except Exception as e:
                    if self._stopping:
                        break
                    await self._failed(e)
        except CancelledError:
            pass  # stop_grace ran out during a back-off or an entry
        finally:
            await self._close()

    async def _failed(self, e: Exception | None) -> None:
        self._errors += 1
        self._recover = True  # what we were given is pending: read it again
        if e is not None and "NOGROUP" in str(e):
            self._group_ready = False
        delay = min(_FIRST_BACKOFF * 2 ** (self._errors - 1), _MAX_BACKOFF)
        if self._errors == 1 and e is not None and not is_backend_failure(e):
            self._log.failure(
                "command stream {key}: retrying in {delay}s",
                Failure(e),
                key=self.key,
                delay=delay,
            )
        else:
            self._log.warn(
                "command stream {key}: {error!r}; retrying in {delay}s",
                key=self.key,
                error=e,
                delay=delay,
            )
        if self._conn is not None and e is not None and is_backend_failure(e):
            await self._close()  # a fresh dedicated connection after a Redis failure
        await self._wait_for(deferLater(self._clock, delay, lambda: None))

    async def _wait_for(self, d: Deferred[Any]) -> Any:
        """Await something stopService may interrupt."""
        self._interruptible = d
        try:
            return await d
        finally:
            self._interruptible = None

    def _connect_abandonable(self) -> Deferred[Any]:
        """``connect()``, such that a stop may give up on it: a connection that arrives
        after that is closed instead of leaking."""
        attempt = self._connect()
        result: Deferred[Any] = Deferred()

        def arrived(outcome: Any) -> None:
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(outcome)
            elif not isinstance(outcome, Failure):
                outcome.disconnect()

        attempt.addBoth(arrived)
        return result

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.disconnect()
            except Exception:
                self._log.failure("closing the command stream connection")

    async def _step(self) -> None:
        if not self._group_ready:
            await self._create_group()
        if self._conn is None:
            self._conn = await self._wait_for(self._connect_abandonable())
        if self._claims and self._clock.seconds() >= self._next_claim:
            await self._claim()
            self._next_claim = self._clock.seconds() + self._claim_every
        if self._recover:
            await self._recover_own()
        reply = await self._wait_for(
            self._conn.execute_command(
                "XREADGROUP",
                "GROUP",
                self._group,
                self._node,
                "COUNT",
                str(self._batch),
                "BLOCK",
                str(self._block_ms),
                "STREAMS",
                self.key,
                ">",
            ).addTimeout(self._block_ms / 1000 + _READ_MARGIN, self._clock)
        )
        await self._process_all(_stream_entries(reply))

    async def _create_group(self) -> None:
        try:
            await self._redis.execute_command(
                "XGROUP", "CREATE", self.key, self._group, "0", "MKSTREAM"
            )
            self._log.info(
                "created consumer group {group} on {key}", group=self._group, key=self.key
            )
        except Exception as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    async def _recover_own(self) -> None:
        """Entries delivered to this consumer earlier and never acknowledged."""
        cursor = "0"
        while not self._stopping:
            reply = await self._wait_for(
                self._conn.execute_command(
                    "XREADGROUP",
                    "GROUP",
                    self._group,
                    self._node,
                    "COUNT",
                    str(self._batch),
                    "STREAMS",
                    self.key,
                    cursor,
                ).addTimeout(_READ_MARGIN, self._clock)
            )
            entries = _stream_entries(reply)
            if not entries:
                break
            await self._process_all(entries)
            cursor = entries[-1][0]
        self._recover = False

    async def _claim(self) -> None:
        """Take over entries other consumers left idle for ``claim_idle_ms``."""
        cursor = "0-0"
        while not self._stopping:
            try:
                reply = await self._redis.execute_command(
                    "XAUTOCLAIM",
                    self.key,
                    self._group,
                    self._node,
                    str(self._claim_idle_ms),
                    cursor,
                    "COUNT",
                    str(self._batch),
                )
            except Exception as e:
                if "unknown command" in str(e).lower():
                    self._claims = False
                    self._log.warn(
                        "this Redis has no XAUTOCLAIM (6.2+): entries of dead consumers "
                        "stay pending"
                    )
                    return
                raise
            if not isinstance(reply, list) or len(reply) < 2:
                raise ValueError(f"unexpected XAUTOCLAIM reply {reply!r:.200}")
            entries = _entries(reply[1])
            if any(item is None for item in reply[1] or ()):
                # Redis 6.2 claims entries deleted from the stream as nil, without their
                # id: the own-pending pass sees them with their id and acknowledges them.
                self._recover = True
            if entries:
                self._log.info(
                    "claimed {count} idle command(s) from {key}", count=len(entries), key=self.key
                )
                await self._process_all(entries)
            cursor = _text(reply[0])
            if cursor == "0-0":
                break

    async def _process_all(self, entries: list[tuple[str, dict[str, str] | None]]) -> None:
        for entry_id, fields in entries:
            if self._stopping:
                return  # left pending: this node's next start or another node takes it
            await self._process(entry_id, fields)

    # -- one entry ---------------------------------------------------------------------------

    async def _process(self, entry_id: str, fields: dict[str, str] | None) -> None:
        if fields is None:  # deleted from the stream while pending: nothing to do
            await self._ack(entry_id)
            return
        if "tags" in fields or "bulk" in fields or "profile" in fields:
            await self._process_fleet(entry_id, fields)
            return
        device_id: str | None = None
        try:
            device_id, req = _parse(fields)
            task = await self._tasks.submit(
                req.device_id,
                req.type,
                req.args,
                expires_in=req.expires_in,
                idempotency_key=req.idempotency_key,
            )
        except _Rejected as r:
            await self._reject(entry_id, r.reason, r.device_id)
        except TaskError as e:
            await self._reject(entry_id, task_error_message(e), device_id)
        except UnknownDevice:
            await self._reject(entry_id, f"unknown device {device_id}", device_id)
        except CancelledError:
            raise
        except Exception as e:
            attempts = self._attempts.get(entry_id, 0) + 1
            if is_backend_failure(e) or attempts < self._max_attempts:
                if not is_backend_failure(e):
                    self._attempts[entry_id] = attempts
                raise
            self._log.failure(
                "command {entry_id} failed {attempts} times; rejecting it",
                entry_id=entry_id,
                attempts=attempts,
            )
            await self._reject(entry_id, "internal error while queueing the task", device_id)
        else:
            self._log.info(
                "command {entry_id} repeats task {task_id} ({task_type}) for {device_id}: "
                "same idempotency key, nothing queued"
                if replayed(task)
                else "command {entry_id} queued task {task_id} ({task_type}) for {device_id}",
                entry_id=entry_id,
                task_id=task.id,
                task_type=task.type,
                device_id=task.device_id,
            )
        await self._ack(entry_id)
        self._attempts.pop(entry_id, None)

    async def _process_fleet(self, entry_id: str, fields: dict[str, str]) -> None:
        """A ``tags`` entry (add/remove a device's tags), a ``bulk`` entry (a bulk task) or a
        ``profile`` entry (create, replace or delete a profile)."""
        kind = "tags" if "tags" in fields else "profile" if "profile" in fields else "bulk"
        device_id: str | None = None
        try:
            body = _field_json(fields, kind)
            if kind == "tags":
                device_id = _device_of(body)
                await self._tag(entry_id, body)
            elif kind == "profile":
                await self._profile(entry_id, body)
            else:
                await self._bulk(entry_id, body)
        except _Rejected as r:
            await self._reject(entry_id, r.reason, r.device_id or device_id)
        except CancelledError:
            raise
        except Exception as e:
            attempts = self._attempts.get(entry_id, 0) + 1
            if is_backend_failure(e) or attempts < self._max_attempts:
                if not is_backend_failure(e):
                    self._attempts[entry_id] = attempts
                raise
            self._log.failure("command {entry_id} failed; rejecting it", entry_id=entry_id)
            await self._reject(entry_id, f"internal error while processing {kind}", device_id)
        await self._ack(entry_id)
        self._attempts.pop(entry_id, None)

    async def _tag(self, entry_id: str, body: Any) -> None:
        if self._tagger is None:
            raise _Rejected("tags are not handled by this gateway")
        device_id = _device_of(body)
        if device_id is None:
            raise _Rejected("device_id: required")
        try:
            add, remove = parse_tag_change(body)
        except ApiError as e:
            raise _Rejected(e.message, device_id) from None
        try:
            tags = await self._tagger.change_tags(device_id, add, remove)
        except ValueError as e:
            raise _Rejected(str(e), device_id) from None
        if tags is None:
            raise _Rejected(f"unknown device {device_id}", device_id)
        await self._events.publish(
            Event(
                type="tags.changed",
                ts=self._clock.seconds(),
                node=self._node,
                data={"entry_id": entry_id, "added": add, "removed": remove, "tags": tags},
                device=device_ref(device_id),
            )
        )

    async def _bulk(self, entry_id: str, body: Any) -> None:
        if self._bulks is None:
            raise _Rejected("bulk tasks are not handled by this gateway")
        try:
            bulk = await self._bulks.create_from_json(body)
        except ValueError as e:
            raise _Rejected(str(e)) from None
        self._log.info(
            "command {entry_id} started bulk {bulk_id}", entry_id=entry_id, bulk_id=bulk["id"]
        )

    async def _profile(self, entry_id: str, body: Any) -> None:
        """``{"name": …, "delete": true}``, or ``{"name": …}`` and the body of
        ``PUT /profiles/{name}``; answered by ``profile.changed``."""
        if self._profiles is None:
            raise _Rejected("profiles are not handled by this gateway")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise _Rejected("name: required")
        rest = {k: v for k, v in body.items() if k not in ("name", "delete")}
        name = body["name"]
        if body.get("delete") is True:
            if rest:
                raise _Rejected("a delete entry has only name and delete")
            existed = await self._profiles.delete(name)
            data: dict[str, Any] = {"entry_id": entry_id, "name": name, "deleted": existed}
            data["version"] = None
        else:
            try:
                profile = parse_profile(name, rest, now=self._clock.seconds())
            except ProfileError as e:
                raise _Rejected(str(e)) from None
            stored, new = await self._profiles.put(profile)
            data = {"entry_id": entry_id, "name": name, "deleted": False}
            data["version"] = stored.version
            data["created"] = new
        self._log.info(
            "command {entry_id} changed profile {profile}", entry_id=entry_id, profile=name
        )
        await self._events.publish(
            Event(type="profile.changed", ts=self._clock.seconds(), node=self._node, data=data)
        )

    async def _reject(self, entry_id: str, reason: str, device_id: str | None) -> None:
        self._log.warn("command {entry_id} rejected: {reason}", entry_id=entry_id, reason=reason)
        await self._events.publish(
            Event(
                type="command.rejected",
                ts=self._clock.seconds(),
                node=self._node,
                data={"entry_id": entry_id, "reason": reason},
                device=device_ref(device_id) if device_id else None,
            )
        )

    async def _ack(self, entry_id: str) -> None:
        await self._redis.execute_command("XACK", self.key, self._group, entry_id)


def _field_json(fields: dict[str, str], name: str) -> Any:
    raw = fields[name]
    if len(raw) > MAX_COMMAND_BYTES:
        raise _Rejected(f"field {name!r} is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        return parse_json(raw)
    except ValueError as e:
        raise _Rejected(f"field {name!r} is not valid JSON: {e}") from None


def _device_of(body: Any) -> str | None:
    device_id = body.get("device_id") if isinstance(body, dict) else None
    return device_id if isinstance(device_id, str) and device_id else None


def _parse(fields: dict[str, str]) -> tuple[str | None, Any]:
    raw = fields.get("task")
    if raw is None:
        raise _Rejected("missing field 'task'")
    if len(raw) > MAX_COMMAND_BYTES:
        raise _Rejected(f"field 'task' is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        body = parse_json(raw)
    except ValueError as e:
        raise _Rejected(f"field 'task' is not valid JSON: {e}") from None
    device_id = body.get("device_id") if isinstance(body, dict) else None
    device_id = device_id if isinstance(device_id, str) and device_id else None
    try:
        return device_id, parse_task_request(body)
    except ApiError as e:
        raise _Rejected(e.message, device_id) from None


def _entries(raw: Any) -> list[tuple[str, dict[str, str] | None]]:
    """``[[id, [field, value, ...] | nil], ...]`` as (id, fields or None)."""
    out: list[tuple[str, dict[str, str] | None]] = []
    for item in raw or ():
        if not isinstance(item, list | tuple) or not item:
            continue
        entry_id = _text(item[0])
        flat = item[1] if len(item) > 1 else None
        if flat is None:
            out.append((entry_id, None))
            continue
        fields: dict[str, str] = {}
        try:
            for i in range(0, len(flat) - 1, 2):
                fields.setdefault(_text(flat[i]), _text(flat[i + 1]))
        except UnicodeDecodeError:
            fields = {"task": "\x00"}  # not UTF-8: rejected as invalid JSON
        out.append((entry_id, fields))
    return out


def _stream_entries(reply: Any) -> list[tuple[str, dict[str, str] | None]]:
    """XREADGROUP's ``[[key, entries]]`` (or nil on timeout) for our one stream."""
    if not reply:
        return []
    out: list[tuple[str, dict[str, str] | None]] = []
    for stream in reply:
        if isinstance(stream, list | tuple) and len(stream) == 2:
            out.extend(_entries(stream[1]))
    return out
