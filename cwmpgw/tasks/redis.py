"""The durable task queue in Redis, shared by every gateway node.

Key layout (under the configured prefix):

- ``task:<id>`` string: JSON of ``Task.to_dict()``
- ``device:<id>:queue`` list: ids of queued and running tasks, in submission order
- ``device:<id>:finished`` list: ids of final tasks, newest first, trimmed to
  ``keep_finished`` (the ``task:<id>`` keys of trimmed ones are deleted)
- ``device:<id>:transfer:<command_key>`` string: id of the task waiting for that
  TransferComplete
- ``device:<id>:diagnostic:<kind>`` string: id of the diagnostic task of that kind waiting
  for 8 DIAGNOSTICS COMPLETE
- ``tasks:expiry`` sorted set: id of each queued task scored by its expiry

Python decides what a task becomes (the same rules as the memory provider); one Lua script
applies each change to every key at once, and only if the stored task still has the status
and attempt count the decision was based on. Two nodes can therefore never both move a task:
the loser sees the winner's version and acts on that.

The same script stores the change's event (``task.queued``, ``task.done``…): XADD to the
event stream and PUBLISH, built in Python beforehand as every other envelope. A change and
its event are stored together or not at all, so a gateway that dies right after a change
cannot lose its event, and the event sink never sees task events (it is only told of them,
to count them: :class:`~cwmpgw.bus.events.IStoredEvents`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink, IStoredEvents
from cwmpgw.bus.listener import EventListener
from cwmpgw.bus.redis import EMIT_LUA, EventStream
from cwmpgw.cwmp.diagnostics import KINDS as DIAGNOSTIC_KINDS
from cwmpgw.jsontext import value_pair
from cwmpgw.store.sessionlock import PENDING_INFORM, Superseded, owner_key
from cwmpgw.tasks.model import (
    FINAL_STATUSES,
    IDEMPOTENCY_TTL,
    IdempotencyConflict,
    ITaskService,
    Task,
    UnknownDevice,
)
from cwmpgw.tasks.rules import (
    DEFAULTS,
    build_task,
    idempotency_fingerprint,
    ignore_cancel,
    replay_of,
    resumed,
    start_decision,
    task_event,
    task_from_dict,
    task_from_json,
    task_to_json,
    transfer_outcome,
    wait_fault,
    wait_slot,
    waiting,
)

__all__ = ["RedisTaskService"]

# KEYS: device hash, task, queue, expiry zset, event stream, idempotency key (or ''),
#       bulk hash (or ''), bulk task set (or '')
# ARGV: task JSON, id, expires, request fingerprint ('' without a key), key's lifetime (s),
#       6-9 the task.queued event (EventStream.args)
# Returns 0 for an unknown device, 1 when queued, else "<task id> <fingerprint>" of the
# request that used the idempotency key first.
_SUBMIT = (
    EMIT_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[4] ~= '' then
  local prior = redis.call('GET', KEYS[6])
  if prior then return prior end
  redis.call('SET', KEYS[6], ARGV[2] .. ' ' .. ARGV[4], 'EX', ARGV[5])
end
if KEYS[7] ~= '' then
  redis.call('HINCRBY', KEYS[7], 'queued', 1)
  redis.call('SADD', KEYS[8], ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
emit(KEYS[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return 1
"""
)

# KEYS: task, queue, finished, expiry zset, transfer key, event stream, bulk hash (or ''),
#       device params (or ''), session owner key (or ''), device hash (or '')
# ARGV: 1 expected status, 2 expected attempts, 3 new JSON, 4 id,
#       5 queue: keep | remove | front (back in, first, if it is not there),
#       6 finished: 1 to push onto the finished list, 7 keep_finished, 8 task key prefix,
#       9 expiry: keep | remove | add, 10 expires, 11 transfer: keep | set | remove,
#       12-15 the event announcing the change, if any (EventStream.args), 16 new status,
#       17 the session that must own the device (KEYS[9]) for the change ('' any; it went
#          on past its Inform: KEYS[10]'s pending Inform is cleared),
#       18 '1' to read the queue and its owner after the change,
#       then parameter name/value pairs for the parameter cache (KEYS[8]), written whatever
#       the outcome: they are what the CPE answered
# Returns 1 when applied, 0 when the task is gone, -1 when another session owns the
# device (ARGV[17]), else the stored JSON (it moved on). With ARGV[18], an applied change
# returns {1, owner, id, task JSON (nil when gone), id…}: the queue after the change, and
# who owns the device, read in the same script.
_TRANSITION = (
    EMIT_LUA
    + """
if KEYS[8] ~= '' then
  local i = 19
  while i <= #ARGV do
    local last = math.min(i + 399, #ARGV)
    redis.call('HSET', KEYS[8], unpack(ARGV, i, last))
    i = last + 1
  end
end
if ARGV[17] ~= '' then
  if redis.call('GET', KEYS[9]) ~= ARGV[17] then return -1 end
  redis.call('HDEL', KEYS[10], '"""
    + PENDING_INFORM
    + """')
end
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local t = cjson.decode(cur)
if t.status ~= ARGV[1] or t.attempts ~= tonumber(ARGV[2]) then return cur end
redis.call('SET', KEYS[1], ARGV[3])
if ARGV[5] == 'remove' or ARGV[6] == '1' then
  redis.call('LREM', KEYS[2], 0, ARGV[4])
elseif ARGV[5] == 'front' and not redis.call('LPOS', KEYS[2], ARGV[4]) then
  redis.call('LPUSH', KEYS[2], ARGV[4])
end
if ARGV[6] == '1' and KEYS[7] ~= '' then
  redis.call('HINCRBY', KEYS[7], ARGV[16], 1)
end
if ARGV[6] == '1' then
  local keep = tonumber(ARGV[7])
  redis.call('LPUSH', KEYS[3], ARGV[4])
  for _, old in ipairs(redis.call('LRANGE', KEYS[3], keep, -1)) do
    redis.call('DEL', ARGV[8] .. old)
  end
  if keep == 0 then redis.call('DEL', KEYS[3]) else redis.call('LTRIM', KEYS[3], 0, keep - 1) end
end
if ARGV[9] == 'remove' then
  redis.call('ZREM', KEYS[4], ARGV[4])
elseif ARGV[9] == 'add' then
  redis.call('ZADD', KEYS[4], ARGV[10], ARGV[4])
end
if ARGV[11] == 'set' then
  redis.call('SET', KEYS[5], ARGV[4])
elseif ARGV[11] == 'remove' and redis.call('GET', KEYS[5]) == ARGV[4] then
  redis.call('DEL', KEYS[5])
end
emit(KEYS[6], ARGV[12], ARGV[13], ARGV[14], ARGV[15])
if ARGV[18] ~= '1' then return 1 end
local out = {1, redis.call('GET', KEYS[9]) or ''}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('GET', ARGV[8] .. id)
end
return out
"""
)

# KEYS: queue, device hash[, session owner]; ARGV: owner, task key prefix, '1' when the
# session asks in its turn (it went on past its Inform: that Inform is no longer pending;
# '0' for the read sent with the Inform's write). 0 when the owner key names another
# session; else the queue as id, task JSON (nil when gone), id, JSON...
_QUEUE = (
    """
if KEYS[3] and redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then redis.call('HDEL', KEYS[2], '"""
    + PENDING_INFORM
    + """') end
local out = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('GET', ARGV[2] .. id)
end
return out
"""
)

# A bound on how often one call re-reads after losing a race; each loss means another
# node made progress, so this is never reached in practice.
_MAX_RACES = 10
_EXPIRE_BATCH = 100
_POLL_INTERVAL = 0.5
_READ_GRACE = 10.0  # how long wait() gives Redis to answer beyond the caller's timeout
_LISTEN_WAIT = 5.0  # how long wait() gives the listener to start listening before it reads
_FINAL_EVENTS = frozenset("task." + s for s in FINAL_STATUSES)
# Queues read with a session's last task change, kept for its next read (see _prefetched).
_MAX_PREFETCHED = 4096


@implementer(ITaskService)
class RedisTaskService:
    """ITaskService plus the calls the session engine makes while it runs a device's tasks.

    The engine takes one task at a time: ``next_for_device``, then exactly one of
    ``complete``, ``fail``, ``requeue`` or ``wait_for_transfer`` before the next one (a
    running task left in the queue counts as interrupted and is started again).

    Task events go to the stream ``<prefix>events`` (``MAXLEN ~ stream_maxlen``) and its
    channels in the scripts that change the tasks; ``events`` is only told of them
    (:class:`~cwmpgw.bus.events.IStoredEvents`, for the metrics), never asked to publish.
    """

    _log = Logger()

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        events: IEventSink,
        clock: IReactorTime,
        node: str,
        listener: EventListener | None = None,
        default_expiry: float = DEFAULTS.default_expiry,
        max_attempts: int = DEFAULTS.max_attempts,
        keep_finished: int = DEFAULTS.keep_finished,
        gpv_batch: int = DEFAULTS.gpv_batch,
        report_timeout: float = DEFAULTS.report_timeout,
        stream_maxlen: int = 100_000,
    ) -> None:
        self._redis = redis
        self._stream = EventStream(prefix, stream_maxlen)
        self._report_timeout = report_timeout
        self._prefix = prefix
        self._events = events
        self._clock = clock
        self._node = node
        self._listener = listener
        self._default_expiry = default_expiry
        self._max_attempts = max_attempts
        self._keep_finished = keep_finished
        self._gpv_batch = gpv_batch
        self._expiry_key = prefix + "tasks:expiry"
        # device id → (owner, queue reply, current) read with a session's Inform or by the
        # script that ended the task it ran: its next ``next_for_device`` uses it instead
        # of reading again (see _prefetch).
        self._prefetched: dict[str, tuple[str, list[Any], bool]] = {}
        # device id → the read sent with its session's Inform, not yet answered
        self._prefetching: dict[str, object] = {}

    # -- keys ----------------------------------------------------------------------------

    def _task_key(self, task_id: str) -> str:
        return f"{self._prefix}task:{task_id}"

    def _device_key(self, device_id: str, suffix: str = "") -> str:
        return f"{self._prefix}device:{device_id}{suffix}"

    def _bulk_key(self, bulk_id: str) -> str:
        return f"{self._prefix}bulk:{bulk_id}"

    def _transfer_key(self, device_id: str, command_key: str) -> str:
        return self._device_key(device_id, ":transfer:" + command_key)

    def _wait_key(self, task: Task) -> str:
        """Where the id of ``task`` is kept while it waits (see ``rules.wait_slot``)."""
        return self._device_key(task.device_id, ":" + (wait_slot(task) or "transfer:"))

    # -- ITaskService ----------------------------------------------------------------

    def submit(
        self,
        device_id: str,
        type: str,
        args: dict[str, Any],
        *,
        expires_in: float | None = None,
        idempotency_key: str | None = None,
        bulk: str = "",
    ) -> Deferred[Task]:
        async def run() -> Task:
            task = build_task(
                device_id,
                type,
                args,
                now=self._clock.seconds(),
                expires_in=expires_in,
                default_expiry=self._default_expiry,
                gpv_batch=self._gpv_batch,
                bulk=bulk,
            )
            keys = [
                self._device_key(device_id),
                self._task_key(task.id),
                self._device_key(device_id, ":queue"),
                self._expiry_key,
                self._stream.key,
            ]
            fingerprint = ""
            if idempotency_key is not None:
                fingerprint = idempotency_fingerprint(
                    idempotency_key, device_id, type, args, expires_in
                )
                keys.append(f"{self._prefix}idempotency:{idempotency_key}")
            else:
                keys.append("")
            if bulk:
                keys += [self._bulk_key(bulk), self._bulk_key(bulk) + ":tasks"]
            else:
                keys += ["", ""]
            event = task_event(task, self._node)
            stored = await self._redis.eval(
                _SUBMIT,
                keys,
                [
                    task_to_json(task),
                    task.id,
                    repr(task.expires),
                    fingerprint,
                    str(IDEMPOTENCY_TTL),
                    *self._stream.args(event),
                ],
            )
            if stored in (0, "0"):
                raise UnknownDevice(device_id)
            if stored in (1, "1"):
                self._stored(event)
                return task
            prior_id, _, prior_fingerprint = str(stored).partition(" ")
            if prior_fingerprint != fingerprint:
                raise IdempotencyConflict("already used for another request")
            earlier = await self._get(prior_id)
            if earlier is None:
                raise IdempotencyConflict("its task is no longer kept")
            return replay_of(earlier)

        return Deferred.fromCoroutine(run())

    def get(self, task_id: str) -> Deferred[Task | None]:
        return Deferred.fromCoroutine(self._get(task_id))

    def list_for_device(self, device_id: str) -> Deferred[list[Task]]:
        async def run() -> list[Task]:
            queued = await self._ids(self._device_key(device_id, ":queue"))
            finished = await self._ids(self._device_key(device_id, ":finished"))
            return [t for _, t in await self._load(queued + finished) if t is not None]

        return Deferred.fromCoroutine(run())

    def cancel(self, task_id: str) -> Deferred[Task | None]:
        async def run() -> Task | None:
            task = await self._get(task_id)
            for _ in range(_MAX_RACES):
                if task is None or task.status != "queued":
                    return task
                new = task.evolve(status="cancelled", updated=self._clock.seconds())
                won, task = await self._final(task, new)
                if won:
                    return new
            return task

        return Deferred.fromCoroutine(run())

    def wait(self, task_id: str, timeout: float) -> Deferred[Task | None]:
        if self._listener is not None:
            d = Deferred.fromCoroutine(self._wait_for_event(self._listener, task_id, timeout))
        else:
            d = Deferred.fromCoroutine(self._wait_polling(task_id, timeout))
        # Redis unreachable (txredisapi queues commands meanwhile): fail instead of hanging.
        return d.addTimeout(max(timeout, 0) + _READ_GRACE, self._clock)

    async def _wait_for_event(
        self, listener: EventListener, task_id: str, timeout: float
    ) -> Task | None:
        def final_for_task(envelope: dict[str, Any]) -> bool:
            data = envelope.get("data")
            return (
                envelope.get("type") in _FINAL_EVENTS
                and isinstance(data, dict)
                and data.get("id") == task_id
            )

        if timeout <= 0:
            return await self._get(task_id)
        # Listen first, then read: a completion between the two cannot be missed. (The
        # listener hears events only while somebody waits: the first waiter's read waits
        # for that, briefly; a listener that cannot listen now is read again at the end.)
        matched = listener.wait_for(final_for_task, timeout)
        try:
            listening = listener.whenListening()
            if not listening.called:
                await listening.addTimeout(min(timeout, _LISTEN_WAIT), self._clock)
        except (DeferredTimeout, CancelledError):
            pass
        try:
            task = await self._get(task_id)
        except BaseException:
            matched.addErrback(ignore_cancel)
            matched.cancel()
            raise
        if task is None or task.final:
            matched.addErrback(ignore_cancel)
            matched.cancel()
            return task
        envelope = await matched
        if envelope is not None:
            return task_from_dict(envelope["data"])
        return await self._get(task_id) or task

    async def _wait_polling(self, task_id: str, timeout: float) -> Task | None:
        deadline = self._clock.seconds() + timeout
        task = await self._get(task_id)
        while task is not None and not task.final:
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                break
            await deferLater(self._clock, min(_POLL_INTERVAL, remaining), lambda: None)
            # Gone means trimmed from the finished list (keep_finished): keep the last seen.
            task = await self._get(task_id) or task
        return task

    # -- the session engine's side -----------------------------------------------------

    # next_for_device checks ``owner`` against the session lock (cwmpgw.store.sessionlock)
    # in the same script that reads the queue.
    checks_owner = True

    def next_for_device(self, device_id: str, owner: str | None = None) -> Deferred[Task | None]:
        """The first task that may run now, marked running; drops expired and worn-out ones.

        With ``owner``, fails with :class:`Superseded` (starting nothing) unless that session
        owns the device. No event for ``running``: only final states and ``queued`` are
        announced.
        """

        async def run() -> Task | None:
            queue_key = self._device_key(device_id, ":queue")
            keys = [queue_key, self._device_key(device_id)]
            if owner is not None:
                keys.append(owner_key(self._prefix, device_id))
            kept = self._prefetched_queue(device_id, owner)
            for _ in range(_MAX_RACES):
                raced = False
                # A queue read earlier (with the Inform, or with the end of the task
                # before): the start checks that this session still owns the device, as
                # the read would have, and tells Redis the session went on.
                reply: Any = kept[0] if kept is not None else None
                check = owner if kept is not None else None
                if reply is None:
                    reply = await self._redis.eval(
                        _QUEUE, keys, [owner or "", self._task_key(""), "1"]
                    )
                if reply == 0:
                    raise Superseded(device_id)
                queued = [
                    (str(reply[i]), None if reply[i + 1] is None else task_from_json(reply[i + 1]))
                    for i in range(0, len(reply), 2)
                ]
                for task_id, task in queued:
                    if task is None or task.final:
                        # Not ours to run: a task key that got lost, or a stray final id.
                        self._prefetched.pop(device_id, None)
                        await self._redis.execute_command("LREM", queue_key, 0, task_id)
                        continue
                    new = start_decision(task, self._clock.seconds(), self._max_attempts)
                    if new.status == "running":
                        won, _ = await self._transition(task, new, expiry="remove", owner=check)
                    else:
                        won, _ = await self._final(task, new)
                    if not won:
                        raced = True
                        break
                    if new.status == "running":
                        return new
                if kept is not None and not kept[1]:
                    kept = None  # read with the Inform and nothing started: read in the turn
                    continue
                if not raced:
                    return None
                kept = None
            return None

        return Deferred.fromCoroutine(run())

    # complete() also writes the parameter cache, in the same script (TaskRunner).
    caches_parameters = True

    def complete(
        self,
        task: Task,
        result: dict[str, Any],
        parameters: Sequence[tuple[str, str, str]] = (),
    ) -> Deferred[Task]:
        """running → done; ``parameters`` (name, value, type) go to the device's parameter
        cache in the same script (as ``IDeviceStore.update_parameters`` writes them). The
        script also reads the queue for the session's next ``next_for_device``."""
        return self._end(task, parameters, status="done", result=result, prefetch=True)

    def fail(self, task: Task, fault: dict[str, Any]) -> Deferred[Task]:
        return self._end(task, status="failed", fault=fault, prefetch=True)

    def requeue(self, task: Task) -> Deferred[Task]:
        """The session ended before the CPE answered: run it again in the next one."""

        async def run() -> Task:
            new = task.evolve(status="queued", updated=self._clock.seconds())
            won, current = await self._transition(
                task, new, expected="running", queue="front", expiry="add", transfer="remove"
            )
            return new if won else current or task

        return Deferred.fromCoroutine(run())

    def wait_for_transfer(self, task: Task) -> Deferred[Task]:
        """Leave the queue (later tasks may run) but stay running until its report: the
        TransferComplete of its CommandKey, or a diagnostic's 8 DIAGNOSTICS COMPLETE."""
        if not wait_slot(task):
            return fail(ValueError("only a task with a command key waits for a transfer"))

        async def run() -> Task:
            other_id = await self._redis.execute_command("GET", self._wait_key(task))
            if other_id is not None and str(other_id) != task.id:
                other = await self._get(str(other_id))
                if other is not None and other.status == "running":
                    what = (
                        "diagnostic requested again"
                        if task.type == "diagnostic"
                        else ("command key reused")
                    )
                    reason = {"reason": f"{what} by task {task.id}"}
                    await self._end(other, status="failed", fault=reason)
            # Out of the queue, into the expiry index until its report is due.
            new = waiting(task, self._clock.seconds(), self._report_timeout)
            won, current = await self._transition(
                task, new, expected="running", queue="remove", expiry="add", transfer="set"
            )
            return new if won else current or task

        return Deferred.fromCoroutine(run())

    def diagnostics_complete(self, device_id: str) -> Deferred[list[Task]]:
        """The device informed with 8 DIAGNOSTICS COMPLETE: its waiting diagnostics go back
        to the front of its queue, to read their results (those still running on the CPE
        wait again)."""

        async def run() -> list[Task]:
            keys = [self._device_key(device_id, ":diagnostic:" + kind) for kind in DIAGNOSTIC_KINDS]
            ids = await self._redis.execute_command("MGET", *keys)
            out = []
            for _, task in await self._load([str(i) for i in ids if i is not None]):
                if task is None or task.status != "running" or task.type != "diagnostic":
                    continue
                new = resumed(task, self._clock.seconds())
                won, _ = await self._transition(
                    task, new, expected="running", queue="front", expiry="keep", transfer="remove"
                )
                if won:
                    out.append(new)
            return out

        return Deferred.fromCoroutine(run())

    def transfer_complete(
        self,
        device_id: str,
        command_key: str,
        fault_code: int,
        fault_string: str,
        start_time: str,
        complete_time: str,
        details: Mapping[str, Any] | None = None,
    ) -> Deferred[Task | None]:
        """End the task waiting for this CommandKey; None when none waits (e.g. a repeat)."""

        async def run() -> Task | None:
            key = self._transfer_key(device_id, command_key)
            for _ in range(_MAX_RACES):
                task_id = await self._redis.execute_command("GET", key)
                task = await self._get(str(task_id)) if task_id is not None else None
                if task is None or task.status != "running":
                    return None
                new = transfer_outcome(
                    task,
                    fault_code,
                    fault_string,
                    start_time,
                    complete_time,
                    self._clock.seconds(),
                    details,
                )
                won, _ = await self._final(task, new)
                if won:
                    return new
            return None

        return Deferred.fromCoroutine(run())

    def expire_due(self) -> Deferred[int]:
        """Expire queued tasks past their expiry, and fail the tasks waiting for a
        completion report past its deadline; the gateway calls it on a timer."""

        async def run() -> int:
            count = 0
            while True:
                now = self._clock.seconds()
                ids = await self._redis.execute_command(
                    "ZRANGEBYSCORE", self._expiry_key, "-inf", repr(now), "LIMIT", 0, _EXPIRE_BATCH
                )
                progressed = False
                for task_id, task in await self._load([str(i) for i in ids]):
                    if task is not None and task.status == "running" and now >= task.expires:
                        if await self._waiting(task):
                            fault = wait_fault(task, self._report_timeout)
                            new = task.evolve(status="failed", updated=now, fault=fault)
                            won, _ = await self._final(task, new)
                            if won:
                                count += 1
                            progressed = True
                            continue
                    if task is None or task.status != "queued":
                        # Not (or no longer) queued or waiting: no business in the index.
                        await self._redis.execute_command("ZREM", self._expiry_key, task_id)
                        progressed = True
                    elif now >= task.expires:
                        new = task.evolve(status="expired", updated=now)
                        won, _ = await self._final(task, new)
                        progressed = True  # a lost race means another node moved it
                        if won:
                            count += 1
                if len(ids) < _EXPIRE_BATCH or not progressed:
                    return count

        return Deferred.fromCoroutine(run())

    # -- internals ---------------------------------------------------------------------

    async def _waiting(self, task: Task) -> bool:
        """Whether ``task`` waits for its TransferComplete (DUStateChangeComplete) or its
        8 DIAGNOSTICS COMPLETE."""
        if not wait_slot(task):
            return False
        return str(await self._redis.execute_command("GET", self._wait_key(task))) == task.id

    async def _get(self, task_id: str) -> Task | None:
        raw = await self._redis.execute_command("GET", self._task_key(task_id))
        return None if raw is None else task_from_json(raw)

    async def _ids(self, key: str) -> list[str]:
        return [str(i) for i in await self._redis.execute_command("LRANGE", key, 0, -1)]

    async def _load(self, ids: list[str]) -> list[tuple[str, Task | None]]:
        if not ids:
            return []
        raws = await self._redis.execute_command("MGET", *[self._task_key(i) for i in ids])
        return [
            (i, None if raw is None else task_from_json(raw))
            for i, raw in zip(ids, raws, strict=True)
        ]

    async def _transition(
        self,
        old: Task,
        new: Task,
        *,
        expected: str | None = None,
        queue: str = "keep",
        finished: bool = False,
        expiry: str = "keep",
        transfer: str = "keep",
        event: Event | None = None,
        parameters: Sequence[tuple[str, str, str]] = (),
        prefetch: bool = False,
        owner: str | None = None,
        new_json: str | None = None,
    ) -> tuple[bool, Task | None]:
        """Apply old → new if the stored task still is ``old``; else return what is stored.

        ``event`` is stored (XADD + PUBLISH) in the same script, only if the change is;
        ``parameters`` are cached whatever the outcome. With ``prefetch`` the script also
        reads the device's queue and owner after the change, for ``next_for_device``; with
        ``owner`` nothing changes (:class:`Superseded`) unless that session owns the device.
        """
        # Whatever changes this device's tasks makes a queue read before it stale.
        self._prefetched.pop(old.device_id, None)
        self._prefetching.pop(old.device_id, None)
        keys = [
            self._task_key(old.id),
            self._device_key(old.device_id, ":queue"),
            self._device_key(old.device_id, ":finished"),
            self._expiry_key,
            self._wait_key(old),
            self._stream.key,
            self._bulk_key(old.bulk) if old.bulk else "",
            self._device_key(old.device_id, ":params") if parameters else "",
            owner_key(self._prefix, old.device_id) if prefetch or owner else "",
            self._device_key(old.device_id) if owner else "",
        ]
        args = [
            expected or old.status,
            str(old.attempts),
            task_to_json(new) if new_json is None else new_json,
            old.id,
            queue,
            "1" if finished else "0",
            str(self._keep_finished),
            self._task_key(""),
            expiry,
            repr(new.expires),
            transfer,
            *self._stream.args(event),
            new.status,
            owner or "",
            "1" if prefetch else "0",
        ]
        for name, value, type_ in parameters:
            args += [name, value_pair(value, type_)]
        reply = await self._redis.eval(_TRANSITION, keys, args)
        if isinstance(reply, list) and reply and reply[0] == 1:
            self._prefetch(old.device_id, str(reply[1]), reply[2:], True)
            reply = 1
        if reply == -1:
            raise Superseded(old.device_id)
        if reply == 1:
            if event is not None:
                self._stored(event)
            return True, new
        if reply == 0 or reply is None:
            self._log.info(
                "task {task_id} of {device_id} vanished before it became {status}",
                task_id=old.id,
                device_id=old.device_id,
                status=new.status,
            )
            return False, None
        return False, task_from_json(reply)

    async def _final(
        self,
        old: Task,
        new: Task,
        *,
        expected: str | None = None,
        parameters: Sequence[tuple[str, str, str]] = (),
        prefetch: bool = False,
    ) -> tuple[bool, Task | None]:
        """old → a final status, announced by its event in the same script."""
        text = task_to_json(new)  # stored, and the event's data (encoded once)
        return await self._transition(
            old,
            new,
            expected=expected,
            queue="remove",
            finished=True,
            expiry="remove",
            transfer="remove",
            event=task_event(new, self._node, text),
            parameters=parameters,
            prefetch=prefetch,
            new_json=text,
        )

    def _end(
        self,
        task: Task,
        parameters: Sequence[tuple[str, str, str]] = (),
        *,
        prefetch: bool = False,
        **changes: Any,
    ) -> Deferred[Task]:
        """running → a final status, for the task the engine holds."""

        async def run() -> Task:
            new = task.evolve(updated=self._clock.seconds(), **changes)
            won, current = await self._final(
                task, new, expected="running", parameters=parameters, prefetch=prefetch
            )
            if won:
                return new
            self._log.warn(
                "task {task_id} of {device_id} was no longer running; it stays {status}",
                task_id=task.id,
                device_id=task.device_id,
                status=current.status if current else "deleted",
            )
            return current or task

        return Deferred.fromCoroutine(run())

    def prefetch(self, device_id: str, owner: str) -> None:
        """Read ``device_id``'s queue now, for ``owner``'s session that is being opened
        (sent in the same write as its Inform's; the session's first turn starts the first
        task without reading again). A failure is the first turn's to see: it reads."""
        token = self._prefetching[device_id] = object()
        keys = [
            self._device_key(device_id, ":queue"),
            self._device_key(device_id),
            owner_key(self._prefix, device_id),
        ]

        def read(reply: Any) -> None:
            if self._prefetching.get(device_id) is token:
                del self._prefetching[device_id]
                if isinstance(reply, list):
                    self._prefetch(device_id, owner, reply, False)

        def failed(_: Failure) -> None:
            if self._prefetching.get(device_id) is token:
                del self._prefetching[device_id]

        d: Deferred[Any] = self._redis.eval(_QUEUE, keys, [owner, self._task_key(""), "0"])
        d.addCallbacks(read, failed)

    def _prefetch(self, device_id: str, owner: str, queue: list[Any], current: bool) -> None:
        """Keep a queue read for the session's next ``next_for_device``.

        ``current``: read by a task's end; the engine asks for the next task in the same
        reactor turn as the end's answer, so this is the queue as a read then would find
        it (the owner included). Else read with the Inform: its first task is started from
        it (tasks queued since come after it), but an empty one is read again. Any other
        change of the device's tasks drops it, and a session that ends before asking
        leaves one entry, bounded here and never used by another session (its owner).
        """
        if len(self._prefetched) >= _MAX_PREFETCHED:
            self._prefetched.pop(next(iter(self._prefetched)))
        self._prefetched[device_id] = (owner, queue, current)

    def _prefetched_queue(self, device_id: str, owner: str | None) -> tuple[list[Any], bool] | None:
        """The queue prefetched for ``owner``'s session; None when there is none for it (a
        session that no longer owns the device reads, and learns it is superseded)."""
        kept = self._prefetched.pop(device_id, None)
        if kept is None or owner is None:
            return None
        current_owner, queue, current = kept
        if current_owner != owner or not (queue or current):
            # Read with the Inform and empty: read again in the turn, a task may have come
            # since (and that read tells Redis the session went on).
            return None
        return queue, current

    def _stored(self, event: Event) -> None:
        """Tell the sink (metrics) of an event a script stored; it does not publish it."""
        if IStoredEvents.providedBy(self._events):
            IStoredEvents(self._events).stored(event)
