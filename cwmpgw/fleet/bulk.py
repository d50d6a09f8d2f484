"""Bulk tasks: one task for every device a selector (or an id list) names, fanned out as
ordinary queued tasks, paced, counted, cancellable, idempotent, and safe on several nodes.

Key layout (under the prefix):

- ``bulk:<id>`` hash: the request (``selector`` or ``ids``, ``task``,
  ``connection_request``, ``rate``), ``status`` (``running``, ``cancelling``,
  ``complete``, ``cancelled``), ``created``, ``updated``, the fan-out ``cursor`` and
  ``fanned`` (1 once every device has its task), and the counts ``queued`` (tasks
  created), ``done``, ``failed``, ``expired``, ``cancelled`` — kept by the task scripts
  themselves (:mod:`cwmpgw.tasks.redis`), in the same step as each task's change — and
  ``skipped`` (devices unknown by the time their turn came)
- ``bulk:<id>:ids`` list: the explicit device ids, when given
- ``bulk:<id>:tasks`` set: the ids of its tasks (for cancelling)
- ``bulk:<id>:lease`` string: the node fanning it out now (expires)
- ``bulks`` sorted set: bulk ids by creation time; ``bulks:active`` set: those not over
- ``bulk-idem:<key>``: the bulk an idempotency key created, and its request's digest

Every node runs a :class:`BulkRunner`; each tick it takes the lease of each active bulk
it can and fans out one page: at most ``rate * tick`` devices (and, with connection
requests, ``connreq.rate * tick``, the waker's own limiter spacing them). Each device's
task is submitted with an idempotency key made of the bulk id and the device id, so a
page redone after a crash or a lost lease queues nothing twice; the cursor is saved after
each page. A bulk is ``complete`` once fanned out and every task is final.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Final

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from cwmpgw.bus.events import Event, IEventSink
from cwmpgw.fleet.inventory import IInventory
from cwmpgw.fleet.selector import Selector, SelectorError, parse_selector
from cwmpgw.tasks.model import (
    IDEMPOTENCY_TTL,
    ITaskService,
    TaskError,
    UnknownDevice,
    replayed,
)
from cwmpgw.tasks.rules import build_task, new_task_id

__all__ = [
    "COUNTS",
    "BulkConflict",
    "BulkError",
    "BulkRequest",
    "BulkRunner",
    "IBulkService",
    "MemoryBulkService",
    "RedisBulkService",
    "parse_bulk_request",
]

#: The counts a bulk reports.
COUNTS: Final = ("queued", "done", "failed", "expired", "cancelled", "skipped")
FINAL: Final = frozenset({"complete", "cancelled"})
MAX_IDS: Final = 100_000
_PAGE_CAP: Final = 1000
_CANCEL_BATCH: Final = 500


class BulkError(ValueError):
    """A bulk request the caller got wrong; ``path`` names the culprit."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class BulkConflict(BulkError):
    """The idempotency key was used for another bulk request."""


class BulkRequest:
    """A checked bulk request."""

    def __init__(
        self,
        *,
        selector: Selector | None,
        ids: list[str] | None,
        task: dict[str, Any],
        connection_request: bool,
        rate: float | None,
        idempotency_key: str | None,
    ) -> None:
        self.selector = selector
        self.ids = ids
        self.task = task
        self.connection_request = connection_request
        self.rate = rate
        self.idempotency_key = idempotency_key

    def fingerprint(self) -> str:
        body = [
            self.selector.to_dict() if self.selector is not None else None,
            self.ids,
            self.task,
            self.connection_request,
            self.rate,
        ]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def parse_bulk_request(
    obj: Any, *, default_expiry: float = 604800, gpv_batch: int = 100
) -> BulkRequest:
    """Check a bulk request (the API's body, a command entry); raises BulkError."""
    if not isinstance(obj, Mapping):
        raise BulkError("expected a JSON object")
    allowed = ("selector", "device_ids", "task", "connection_request", "rate", "idempotency_key")
    for key in obj:
        if key not in allowed:
            raise BulkError(f"unknown field (allowed: {', '.join(allowed)})", str(key)[:64])
    if ("selector" in obj) == ("device_ids" in obj):
        raise BulkError("give either selector or device_ids", "selector")
    selector: Selector | None = None
    ids: list[str] | None = None
    if "selector" in obj:
        try:
            selector = parse_selector(obj["selector"])
        except SelectorError as e:
            raise BulkError(e.reason, e.path) from None
    else:
        raw = obj["device_ids"]
        if not isinstance(raw, list) or not raw:
            raise BulkError("a non-empty list of device ids", "device_ids")
        if len(raw) > MAX_IDS:
            raise BulkError(f"at most {MAX_IDS} device ids", "device_ids")
        seen: set[str] = set()
        ids = []
        for i, d in enumerate(raw):
            if not isinstance(d, str) or not d or len(d) > 1024:
                raise BulkError("a device id", f"device_ids[{i}]")
            if d not in seen:
                seen.add(d)
                ids.append(d)
    task = obj.get("task")
    if not isinstance(task, Mapping):
        raise BulkError("required: {type, args, expires_in}", "task")
    for key in task:
        if key not in ("type", "args", "expires_in"):
            raise BulkError("unknown field (allowed: type, args, expires_in)", f"task.{key}")
    if not isinstance(task.get("type"), str):
        raise BulkError("required", "task.type")
    args = task.get("args") or {}
    expires_in = task.get("expires_in")
    try:
        build_task(
            "bulk-check",
            task["type"],
            args,
            now=0.0,
            expires_in=expires_in,
            default_expiry=default_expiry,
            gpv_batch=gpv_batch,
        )
    except TaskError as e:
        path = "task." + e.path if e.path else "task"
        message = str(e)
        raise BulkError(message, path) from None
    connection_request = obj.get("connection_request", False)
    if not isinstance(connection_request, bool):
        raise BulkError("true or false", "connection_request")
    rate = obj.get("rate")
    if rate is not None and (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not math.isfinite(rate)
        or rate <= 0
    ):
        raise BulkError("a positive number of devices per second", "rate")
    key = obj.get("idempotency_key")
    if key is not None and (
        not isinstance(key, str)
        or not 1 <= len(key) <= 128
        or not key.isascii()
        or not key.isprintable()
        or " " in key
    ):
        raise BulkError("1 to 128 printable ASCII characters", "idempotency_key")
    clean = {"type": task["type"], "args": dict(args)}
    if expires_in is not None:
        clean["expires_in"] = expires_in
    return BulkRequest(
        selector=selector,
        ids=ids,
        task=clean,
        connection_request=connection_request,
        rate=float(rate) if rate is not None else None,
        idempotency_key=key,
    )


class IBulkService(Interface):
    def create(request: BulkRequest) -> Deferred[tuple[dict[str, Any], bool]]:
        """Store a bulk (or find the one its idempotency key made): (the bulk, replayed).
        Raises BulkConflict for a key used for another request."""

    def create_from_json(obj: Any) -> Deferred[dict[str, Any]]:
        """Check and create (the command stream); raises BulkError (a ValueError)."""

    def get(bulk_id: str) -> Deferred[dict[str, Any] | None]:
        """The bulk and its counts, or None."""

    def recent(limit: int) -> Deferred[list[dict[str, Any]]]:
        """The most recent bulks, newest first."""

    def cancel(bulk_id: str) -> Deferred[dict[str, Any] | None]:
        """Stop the fan-out and cancel its queued tasks (done by the runner); None if
        unknown. A bulk already over is returned as it is."""


# KEYS: bulk hash, bulks zset, active set, ids list, idempotency key (or '')
# ARGV: id, created, fingerprint, key lifetime, then the hash's field/value pairs;
# the ids list follows after a '--' separator. Returns 1, or the prior "<id> <digest>".
_CREATE = """
if KEYS[5] ~= '' then
  local prior = redis.call('GET', KEYS[5])
  if prior then return prior end
  redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[3], 'EX', ARGV[4])
end
local i = 5
local fields = {}
while ARGV[i] ~= '--' do fields[#fields + 1] = ARGV[i]; i = i + 1 end
redis.call('HSET', KEYS[1], unpack(fields))
i = i + 1
while i <= #ARGV do
  local last = math.min(i + 999, #ARGV)
  redis.call('RPUSH', KEYS[4], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# KEYS: bulk hash; ARGV: updated. running -> cancelling; returns the status after.
_CANCEL = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return false end
if s == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'updated', ARGV[1])
  return 'cancelling'
end
return s
"""

# KEYS: lease; ARGV: owner, ttl ms. 1 if ours (taken or renewed).
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


def _view(bulk_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    counts = {name: int(raw.get(name) or 0) for name in COUNTS}
    final = sum(counts[n] for n in ("done", "failed", "expired", "cancelled"))
    counts["pending"] = max(counts["queued"] - final, 0)
    counts["matched"] = counts["queued"] + counts["skipped"]
    out: dict[str, Any] = {
        "id": bulk_id,
        "status": raw.get("status", ""),
        "created": float(raw.get("created") or 0),
        "updated": float(raw.get("updated") or 0),
        "task": json.loads(raw.get("task") or "{}"),
        "connection_request": raw.get("connection_request") == "1",
        "fanned_out": raw.get("fanned") == "1",
        "counts": counts,
    }
    if raw.get("selector"):
        out["selector"] = json.loads(raw["selector"])
    else:
        out["device_ids"] = int(raw.get("id_count") or 0)
    return out


@implementer(IBulkService)
class RedisBulkService:
    _log = Logger()

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        clock: IReactorTime,
        default_expiry: float = 604800,
        gpv_batch: int = 100,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock = clock
        self._default_expiry = default_expiry
        self._gpv_batch = gpv_batch

    def key(self, bulk_id: str, suffix: str = "") -> str:
        return f"{self._prefix}bulk:{bulk_id}{suffix}"

    @property
    def active_key(self) -> str:
        return self._prefix + "bulks:active"

    def create_from_json(self, obj: Any) -> Deferred[dict[str, Any]]:
        async def run() -> dict[str, Any]:
            request = parse_bulk_request(
                obj, default_expiry=self._default_expiry, gpv_batch=self._gpv_batch
            )
            bulk, _ = await self.create(request)
            return bulk

        return Deferred.fromCoroutine(run())

    def create(self, request: BulkRequest) -> Deferred[tuple[dict[str, Any], bool]]:
        async def run() -> tuple[dict[str, Any], bool]:
            now = self._clock.seconds()
            bulk_id = "b" + new_task_id(now)[1:]
            fingerprint = request.fingerprint()
            fields = {
                "status": "running",
                "created": repr(now),
                "updated": repr(now),
                "task": json.dumps(request.task),
                "connection_request": "1" if request.connection_request else "0",
                "rate": repr(request.rate) if request.rate else "",
                "cursor": "",
                "fanned": "0",
                **{name: "0" for name in COUNTS},
            }
            if request.selector is not None:
                fields["selector"] = json.dumps(request.selector.to_dict())
            else:
                fields["id_count"] = str(len(request.ids or []))
            idem = (
                f"{self._prefix}bulk-idem:{request.idempotency_key}"
                if request.idempotency_key
                else ""
            )
            flat = [x for pair in fields.items() for x in pair]
            reply = await self._redis.eval(
                _CREATE,
                [
                    self.key(bulk_id),
                    self._prefix + "bulks",
                    self.active_key,
                    self.key(bulk_id, ":ids"),
                    idem,
                ],
                [
                    bulk_id,
                    repr(now),
                    fingerprint,
                    str(IDEMPOTENCY_TTL),
                    *flat,
                    "--",
                    *(request.ids or []),
                ],
            )
            if reply in (1, "1"):
                bulk = await self.get(bulk_id)
                assert bulk is not None
                return bulk, False
            prior_id, _, prior_digest = str(reply).partition(" ")
            if prior_digest != fingerprint:
                raise BulkConflict("already used for another bulk request", "idempotency_key")
            prior = await self.get(prior_id)
            if prior is None:
                raise BulkConflict("its bulk is no longer kept", "idempotency_key")
            return prior, True

        return Deferred.fromCoroutine(run())

    def get(self, bulk_id: str) -> Deferred[dict[str, Any] | None]:
        d: Deferred[Any] = self._redis.hgetall(self.key(bulk_id))
        return d.addCallback(lambda raw: _view(bulk_id, raw) if raw else None)

    def recent(self, limit: int) -> Deferred[list[dict[str, Any]]]:
        async def run() -> list[dict[str, Any]]:
            ids = await self._redis.execute_command(
                "ZREVRANGE", self._prefix + "bulks", 0, limit - 1
            )
            out = []
            for bulk_id in ids:
                bulk = await self.get(str(bulk_id))
                if bulk is not None:
                    out.append(bulk)
            return out

        return Deferred.fromCoroutine(run())

    def cancel(self, bulk_id: str) -> Deferred[dict[str, Any] | None]:
        async def run() -> dict[str, Any] | None:
            status = await self._redis.eval(
                _CANCEL, [self.key(bulk_id)], [repr(self._clock.seconds())]
            )
            if status is None:
                return None
            return await self.get(bulk_id)

        return Deferred.fromCoroutine(run())

    # -- the runner's side -------------------------------------------------------------

    async def active(self) -> list[str]:
        return sorted(
            str(i) for i in await self._redis.execute_command("SMEMBERS", self.active_key)
        )

    async def lease(self, bulk_id: str, owner: str, ttl: float) -> bool:
        got = await self._redis.eval(
            _LEASE, [self.key(bulk_id, ":lease")], [owner, str(int(ttl * 1000))]
        )
        return got in (1, "1")

    async def raw(self, bulk_id: str) -> dict[str, str]:
        raw: dict[str, str] = await self._redis.hgetall(self.key(bulk_id))
        return raw

    async def set_fields(self, bulk_id: str, **fields: str) -> None:
        flat = [x for pair in fields.items() for x in pair]
        await self._redis.execute_command("HSET", self.key(bulk_id), *flat)

    async def incr(self, bulk_id: str, name: str, by: int) -> None:
        await self._redis.execute_command("HINCRBY", self.key(bulk_id), name, by)

    async def ids_page(self, bulk_id: str, start: int, count: int) -> list[str]:
        ids = await self._redis.execute_command(
            "LRANGE", self.key(bulk_id, ":ids"), start, start + count - 1
        )
        return [str(i) for i in ids]

    async def task_ids(self, bulk_id: str, cursor: str) -> tuple[list[str], str]:
        reply = await self._redis.execute_command(
            "SSCAN", self.key(bulk_id, ":tasks"), cursor or "0", "COUNT", _CANCEL_BATCH
        )
        next_cursor = str(reply[0])
        return [str(i) for i in reply[1]], "" if next_cursor == "0" else next_cursor

    async def finish(self, bulk_id: str, status: str) -> None:
        await self.set_fields(bulk_id, status=status, updated=repr(self._clock.seconds()))
        await self._redis.execute_command("SREM", self.active_key, bulk_id)
        await self._redis.execute_command("DEL", self.key(bulk_id, ":lease"))


def device_key(bulk_id: str, device_id: str) -> str:
    """The idempotency key of one device's task in a bulk (printable ASCII, bounded)."""
    return f"bulk:{bulk_id}:{hashlib.sha256(device_id.encode()).hexdigest()[:32]}"


class BulkRunner(TimerService):
    """Fans out the active bulks this node holds the lease of, a page per tick; cancels;
    announces progress (``bulk.progress``) when the counts change, and the end."""

    _log = Logger()

    def __init__(
        self,
        bulks: RedisBulkService,
        *,
        tasks: ITaskService,
        inventory: IInventory,
        events: IEventSink,
        clock: IReactorTime,
        node: str,
        rate: float,
        tick: float,
        waker: Any = None,
        wake_rate: float | None = None,
    ) -> None:
        super().__init__(tick, self._tick)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.name = "bulk"
        self._bulks = bulks
        self._tasks = tasks
        self._inventory = inventory
        self._events = events
        self._clock = clock
        self._node = node
        self._owner = f"{node}:{os.getpid()}:{os.urandom(4).hex()}"
        self._rate = rate
        self._tick_s = tick
        self._waker = waker
        self._wake_rate = wake_rate
        self._busy = False
        self._last: dict[str, str] = {}
        self._cancel_cursor: dict[str, str] = {}

    def _tick(self) -> Deferred[None] | None:
        if self._busy:
            return None
        self._busy = True

        def done(result: Any) -> None:
            self._busy = False

        d = Deferred.fromCoroutine(self.run_once())
        d.addErrback(lambda f: self._log.failure("bulk fan-out failed; retrying", f))
        d.addBoth(done)
        return d

    async def run_once(self) -> None:
        for bulk_id in await self._bulks.active():
            if not await self._bulks.lease(bulk_id, self._owner, self._tick_s * 5 + 5):
                continue
            await self._step(bulk_id)

    async def _step(self, bulk_id: str) -> None:
        raw = await self._bulks.raw(bulk_id)
        if not raw:
            await self._bulks.finish(bulk_id, "cancelled")
            return
        status = raw.get("status")
        if status == "running" and raw.get("fanned") != "1":
            await self._fan_out(bulk_id, raw)
        elif status == "cancelling":
            await self._cancel_some(bulk_id)
        raw = await self._bulks.raw(bulk_id)
        view = _view(bulk_id, raw)
        counts = view["counts"]
        if view["status"] == "running" and view["fanned_out"] and counts["pending"] == 0:
            await self._bulks.finish(bulk_id, "complete")
            view = _view(bulk_id, await self._bulks.raw(bulk_id))
        await self._announce(view)

    async def _fan_out(self, bulk_id: str, raw: Mapping[str, str]) -> None:
        rate = float(raw.get("rate") or 0) or self._rate
        rate = min(rate, self._rate)
        wake = raw.get("connection_request") == "1" and self._waker is not None
        if wake and self._wake_rate:
            rate = min(rate, self._wake_rate)
        count = max(1, min(_PAGE_CAP, int(rate * self._tick_s)))
        cursor = raw.get("cursor", "")
        task = json.loads(raw["task"])
        if raw.get("selector"):
            selector = parse_selector(json.loads(raw["selector"]))
            page, next_cursor = await self._inventory.query(
                selector, cursor=cursor, limit=count, records=False
            )
            ids = [d["id"] for d in page]
        else:
            start = int(cursor or 0)
            ids = await self._bulks.ids_page(bulk_id, start, count)
            next_cursor = str(start + len(ids)) if len(ids) == count else ""
        for device_id in ids:
            try:
                queued = await self._tasks.submit(
                    device_id,
                    task["type"],
                    task.get("args") or {},
                    expires_in=task.get("expires_in"),
                    idempotency_key=device_key(bulk_id, device_id),
                    bulk=bulk_id,
                )
            except (UnknownDevice, TaskError):
                await self._bulks.incr(bulk_id, "skipped", 1)
                continue
            if wake and not replayed(queued):
                self._waker.wake(device_id).addErrback(
                    lambda f: self._log.failure("bulk wake-up failed", f)
                )
        await self._bulks.set_fields(
            bulk_id,
            cursor=next_cursor,
            fanned="0" if next_cursor else "1",
            updated=repr(self._clock.seconds()),
        )

    async def _cancel_some(self, bulk_id: str) -> None:
        cursor = self._cancel_cursor.get(bulk_id, "")
        ids, next_cursor = await self._bulks.task_ids(bulk_id, cursor)
        for task_id in ids:
            await self._tasks.cancel(task_id)
        if next_cursor:
            self._cancel_cursor[bulk_id] = next_cursor
            return
        self._cancel_cursor.pop(bulk_id, None)
        await self._bulks.finish(bulk_id, "cancelled")

    async def _announce(self, view: dict[str, Any]) -> None:
        signature = json.dumps([view["status"], view["counts"]], sort_keys=True)
        if self._last.get(view["id"]) == signature:
            return
        self._last[view["id"]] = signature
        if view["status"] in FINAL:
            self._last.pop(view["id"], None)
        try:
            await self._events.publish(
                Event(
                    type="bulk.progress",
                    ts=self._clock.seconds(),
                    node=self._node,
                    data=view,
                    device=None,
                )
            )
        except Exception:
            self._log.failure("could not publish bulk.progress")


@implementer(IBulkService)
class MemoryBulkService:
    """Bulks kept in memory, not fanned out (the API's tests): same answers as Redis."""

    def __init__(self, clock: IReactorTime, *, default_expiry: float = 604800) -> None:
        self._clock = clock
        self._default_expiry = default_expiry
        self.raw: dict[str, dict[str, str]] = {}
        self._keys: dict[str, tuple[str, str]] = {}

    def create_from_json(self, obj: Any) -> Deferred[dict[str, Any]]:
        async def run() -> dict[str, Any]:
            bulk, _ = await self.create(parse_bulk_request(obj))
            return bulk

        return Deferred.fromCoroutine(run())

    def create(self, request: BulkRequest) -> Deferred[tuple[dict[str, Any], bool]]:
        async def run() -> tuple[dict[str, Any], bool]:
            digest = request.fingerprint()
            key = request.idempotency_key
            if key is not None and key in self._keys:
                prior_id, prior_digest = self._keys[key]
                if prior_digest != digest:
                    raise BulkConflict("already used for another bulk request", "idempotency_key")
                return _view(prior_id, self.raw[prior_id]), True
            now = self._clock.seconds()
            bulk_id = "b" + new_task_id(now)[1:]
            raw = {
                "status": "running",
                "created": repr(now),
                "updated": repr(now),
                "task": json.dumps(request.task),
                "connection_request": "1" if request.connection_request else "0",
                "fanned": "0",
            }
            if request.selector is not None:
                raw["selector"] = json.dumps(request.selector.to_dict())
            else:
                raw["id_count"] = str(len(request.ids or []))
            self.raw[bulk_id] = raw
            if key is not None:
                self._keys[key] = (bulk_id, digest)
            return _view(bulk_id, raw), False

        return Deferred.fromCoroutine(run())

    def get(self, bulk_id: str) -> Deferred[dict[str, Any] | None]:
        raw = self.raw.get(bulk_id)
        return succeed(_view(bulk_id, raw) if raw else None)

    def recent(self, limit: int) -> Deferred[list[dict[str, Any]]]:
        newest = sorted(self.raw, key=lambda b: float(self.raw[b]["created"]), reverse=True)
        return succeed([_view(b, self.raw[b]) for b in newest[:limit]])

    def cancel(self, bulk_id: str) -> Deferred[dict[str, Any] | None]:
        raw = self.raw.get(bulk_id)
        if raw is None:
            return succeed(None)
        if raw["status"] == "running":
            raw["status"] = "cancelling"
        return succeed(_view(bulk_id, raw))
