"""The task queue on plain dicts: the reference behaviour, same contract as Redis.

The rules both providers share are in :mod:`cwmpgw.tasks.rules`; this one only stores,
in memory, for the unit tests of the session engine and the API.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cwmpgw.bus.events import IEventSink
from cwmpgw.cwmp.diagnostics import KINDS as DIAGNOSTIC_KINDS
from cwmpgw.tasks.model import (
    IDEMPOTENCY_TTL,
    IdempotencyConflict,
    ITaskService,
    Task,
    TaskError,
    UnknownDevice,
)
from cwmpgw.tasks.rules import (
    DEFAULTS,
    build_task,
    idempotency_fingerprint,
    publish_task_event,
    replay_of,
    resumed,
    start_decision,
    transfer_outcome,
    wait_fault,
    wait_slot,
    waiting,
)

__all__ = ["MemoryTaskService"]


@implementer(ITaskService)
class MemoryTaskService:
    """Single-process queue for unit tests of the session engine and the API.

    Devices exist when listed in ``devices`` (e.g. ``MemoryDeviceStore().devices``) or
    added with ``add_device``.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        events: IEventSink,
        clock: IReactorTime,
        node: str = "memory",
        devices: Container[str] | None = None,
        default_expiry: float = DEFAULTS.default_expiry,
        max_attempts: int = DEFAULTS.max_attempts,
        keep_finished: int = DEFAULTS.keep_finished,
        gpv_batch: int = DEFAULTS.gpv_batch,
        report_timeout: float = DEFAULTS.report_timeout,
    ) -> None:
        self._events = events
        self._clock = clock
        self._node = node
        self._devices = devices
        self._report_timeout = report_timeout
        self._known: set[str] = set()
        self._default_expiry = default_expiry
        self._max_attempts = max_attempts
        self._keep_finished = keep_finished
        self._gpv_batch = gpv_batch
        self.tasks: dict[str, Task] = {}  # in the order they were submitted
        # The fault hook for tests: the next submits fail with these, in order, as the
        # Redis provider's would with Redis down (ConnectionError) or a bug.
        self.failures: list[Exception] = []
        self._queues: dict[str, list[str]] = {}
        # idempotency key -> (task id, request fingerprint, remembered until)
        self._idempotency: dict[str, tuple[str, str, float]] = {}
        self._finished: dict[str, list[str]] = {}
        self._transfers: dict[tuple[str, str], str] = {}
        self._waiters: dict[str, list[tuple[Deferred[Task | None], IDelayedCall]]] = {}

    def add_device(self, device_id: str) -> None:
        self._known.add(device_id)

    def _exists(self, device_id: str) -> bool:
        return device_id in self._known or (
            self._devices is not None and device_id in self._devices
        )

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
        if self.failures:
            return fail(self.failures.pop(0))
        now = self._clock.seconds()
        try:
            task = build_task(
                device_id,
                type,
                args,
                now=now,
                expires_in=expires_in,
                default_expiry=self._default_expiry,
                gpv_batch=self._gpv_batch,
                bulk=bulk,
            )
            fingerprint = (
                idempotency_fingerprint(idempotency_key, device_id, type, args, expires_in)
                if idempotency_key is not None
                else None
            )
        except TaskError as e:
            return fail(e)
        if not self._exists(device_id):
            return fail(UnknownDevice(device_id))
        if idempotency_key is not None:
            prior = self._idempotency.get(idempotency_key)
            if prior is not None and prior[2] > now:
                earlier = self.tasks.get(prior[0])
                if prior[1] != fingerprint:
                    return fail(IdempotencyConflict("already used for another request"))
                if earlier is None:
                    return fail(IdempotencyConflict("its task is no longer kept"))
                return succeed(replay_of(earlier))
            assert fingerprint is not None
            self._idempotency[idempotency_key] = (task.id, fingerprint, now + IDEMPOTENCY_TTL)
        self.tasks[task.id] = task
        self._queues.setdefault(device_id, []).append(task.id)
        return self._published(task)

    def get(self, task_id: str) -> Deferred[Task | None]:
        return succeed(self.tasks.get(task_id))

    def list_for_device(self, device_id: str) -> Deferred[list[Task]]:
        ids = self._queues.get(device_id, []) + self._finished.get(device_id, [])
        return succeed([self.tasks[i] for i in ids if i in self.tasks])

    def cancel(self, task_id: str) -> Deferred[Task | None]:
        task = self.tasks.get(task_id)
        if task is None or task.status != "queued":
            return succeed(task)
        new = self._finish(task.evolve(status="cancelled", updated=self._now()))
        return Deferred.fromCoroutine(self._publish_optional(new))

    def wait(self, task_id: str, timeout: float) -> Deferred[Task | None]:
        task = self.tasks.get(task_id)
        if task is None or task.final or timeout <= 0:
            return succeed(task)
        last = task

        def cancel(d: Deferred[Task | None]) -> None:
            forget()

        def forget() -> None:
            waiters = self._waiters.get(task_id, [])
            waiters[:] = [(w, c) for w, c in waiters if w is not d]
            if not waiters:
                self._waiters.pop(task_id, None)
            if call.active():
                call.cancel()

        def timed_out() -> None:
            forget()
            d.callback(self.tasks.get(task_id, last))

        d: Deferred[Task | None] = Deferred(cancel)
        call = self._clock.callLater(timeout, timed_out)
        self._waiters.setdefault(task_id, []).append((d, call))
        return d

    # -- the session engine's side -----------------------------------------------------

    checks_owner = False  # a single process: no session lock to consult

    def next_for_device(self, device_id: str, owner: str | None = None) -> Deferred[Task | None]:
        """The first task that may run now, marked running; drops expired and worn-out ones.

        ``owner`` is not checked (``checks_owner``): the engine asks its lock instead.
        """

        async def run() -> Task | None:
            queue = self._queues.get(device_id, [])
            while queue:
                task = self.tasks.get(queue[0])
                if task is None or task.final:
                    queue.pop(0)
                    continue
                new = start_decision(task, self._now(), self._max_attempts)
                if new.status == "running":
                    self.tasks[new.id] = new
                    return new
                await self._published(self._finish(new))
            return None

        return Deferred.fromCoroutine(run())

    def complete(self, task: Task, result: dict[str, Any]) -> Deferred[Task]:
        return self._end(task, status="done", result=result)

    def fail(self, task: Task, fault: dict[str, Any]) -> Deferred[Task]:
        return self._end(task, status="failed", fault=fault)

    def requeue(self, task: Task) -> Deferred[Task]:
        """The session ended before the CPE answered: run it again in the next one."""
        current = self._running(task)
        if current is None:
            return succeed(self.tasks.get(task.id, task))
        new = current.evolve(status="queued", updated=self._now())
        self.tasks[new.id] = new
        self._drop_transfer(new)
        queue = self._queues.setdefault(new.device_id, [])
        if new.id not in queue:
            queue.insert(0, new.id)
        return succeed(new)

    def wait_for_transfer(self, task: Task) -> Deferred[Task]:
        """Leave the queue (later tasks may run) but stay running until its report: the
        TransferComplete of its CommandKey, or a diagnostic's 8 DIAGNOSTICS COMPLETE."""
        if not wait_slot(task):
            return fail(ValueError("only a task with a command key waits for a transfer"))

        async def run() -> Task:
            key = (task.device_id, wait_slot(task))
            other = self.tasks.get(self._transfers.get(key, ""))
            if other is not None and other.id != task.id and other.status == "running":
                await self._end(other, status="failed", fault=_reused(task))
            current = self._running(task)
            if current is None:
                return self.tasks.get(task.id, task)
            new = waiting(current, self._now(), self._report_timeout)
            self.tasks[new.id] = new
            queue = self._queues.get(new.device_id, [])
            if new.id in queue:
                queue.remove(new.id)
            self._transfers[key] = new.id
            return new

        return Deferred.fromCoroutine(run())

    def diagnostics_complete(self, device_id: str) -> Deferred[list[Task]]:
        """The device informed with 8 DIAGNOSTICS COMPLETE: its waiting diagnostics go back
        to the front of its queue, to read their results."""
        out = []
        for kind in DIAGNOSTIC_KINDS:
            key = (device_id, "diagnostic:" + kind)
            task = self.tasks.get(self._transfers.pop(key, ""))
            if task is None or task.status != "running":
                continue
            new = resumed(task, self._now())
            self.tasks[new.id] = new
            queue = self._queues.setdefault(device_id, [])
            if new.id not in queue:
                queue.insert(0, new.id)
            out.append(new)
        return succeed(out)

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
        key = (device_id, "transfer:" + command_key)
        task = self.tasks.get(self._transfers.get(key, ""))
        if task is None or task.status != "running":
            self._transfers.pop(key, None)
            return succeed(None)
        new = transfer_outcome(
            task, fault_code, fault_string, start_time, complete_time, self._now(), details
        )
        return Deferred.fromCoroutine(self._publish_optional(self._finish(new)))

    def expire_due(self) -> Deferred[int]:
        """Expire queued tasks past their expiry, and fail those whose completion report
        is overdue; the gateway calls it on a timer."""

        async def run() -> int:
            now = self._now()
            due = [t for t in self.tasks.values() if t.status == "queued" and now >= t.expires]
            for task in due:
                await self._published(self._finish(task.evolve(status="expired", updated=now)))
            waiting = set(self._transfers.values())
            overdue = [
                t
                for t in self.tasks.values()
                if t.status == "running" and t.id in waiting and now >= t.expires
            ]
            for task in overdue:
                await self._end(task, status="failed", fault=wait_fault(task, self._report_timeout))
            return len(due) + len(overdue)

        return Deferred.fromCoroutine(run())

    # -- internals ---------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    def _running(self, task: Task) -> Task | None:
        """The stored task if it is still the running one the caller holds (the CAS)."""
        current = self.tasks.get(task.id)
        if current is None or current.status != "running" or current.attempts != task.attempts:
            return None
        return current

    def _end(self, task: Task, **changes: Any) -> Deferred[Task]:
        current = self._running(task)
        if current is None:
            return succeed(self.tasks.get(task.id, task))
        return self._published(self._finish(current.evolve(updated=self._now(), **changes)))

    def _drop_transfer(self, task: Task) -> None:
        key = (task.device_id, wait_slot(task))
        if key[1] and self._transfers.get(key) == task.id:
            del self._transfers[key]

    def _finish(self, task: Task) -> Task:
        """Store a final task: out of the queue, onto the finished list, waiters told."""
        self.tasks[task.id] = task
        queue = self._queues.get(task.device_id, [])
        if task.id in queue:
            queue.remove(task.id)
        self._drop_transfer(task)
        finished = self._finished.setdefault(task.device_id, [])
        finished.insert(0, task.id)
        for old in finished[self._keep_finished :]:
            self.tasks.pop(old, None)
        del finished[self._keep_finished :]
        for d, call in self._waiters.pop(task.id, []):
            if call.active():
                call.cancel()
            d.callback(task)
        return task

    def _published(self, task: Task) -> Deferred[Task]:
        return Deferred.fromCoroutine(publish_task_event(self._events, self._node, task))

    async def _publish_optional(self, task: Task) -> Task | None:
        return await publish_task_event(self._events, self._node, task)


def _reused(task: Task) -> dict[str, Any]:
    if task.type == "diagnostic":
        return {"reason": f"diagnostic requested again by task {task.id}"}
    return {"reason": f"command key reused by task {task.id}"}
