"""Runs queued tasks inside CWMP sessions: the task queue's side of IRequestSource.

In the ACS's turn the engine asks for the next request; the runner takes the device's
next task from the queue, turns it into a plan (one or more RPCs), and sends the plan's
calls one per HTTP response. Each answer goes back into the plan; results update the
device's parameter cache; a finished plan completes, fails or — for a transfer or a
deployment-unit change the CPE accepted but has not finished — waits for its
TransferComplete (DUStateChangeComplete), which may come in a later session on any node.

A task is marked done only on the CPE's answer. If the session ends while a request is
outstanding, the task goes back to the queue and the next session sends it again with
the same CommandKey/ParameterKey, so its effect happens once.

Some commands a CPE does not deduplicate by key: a second Reboot reboots again, a second
Download downloads again. When the CPE answered but the answer was lost (the gateway died,
Redis could not record it), the CPE still reports the command it carried out in its next
session: "M Reboot" or "M ScheduleInform" with the CommandKey in the Inform, a
TransferComplete with the CommandKey for a transfer. A task already started in an earlier
session whose CommandKey is reported so is ended by that report instead of being sent again.
A FactoryReset has no CommandKey: the "0 BOOTSTRAP" a reset CPE informs with reports it.

A diagnostic waits like a transfer, for an Inform with "8 DIAGNOSTICS COMPLETE": in such a
session the device's waiting diagnostics are queued again first, and read their results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from cwmpgw.availability import log_call_failure
from cwmpgw.cwmp import diagnostics, rpc
from cwmpgw.cwmp.messages import (
    CompletionReport,
    CpeFault,
    DeploymentUnitResult,
    DUStateChangeComplete,
    EventStruct,
    RpcResponse,
    TransferComplete,
)
from cwmpgw.cwmp.session import AcsRequest
from cwmpgw.logs import debug_wanted
from cwmpgw.sessions import IRequestSource, LiveSession, acs_request
from cwmpgw.store.interfaces import IDeviceStore
from cwmpgw.tasks.model import Task
from cwmpgw.tasks.plans import Plan, needs_link, plan_for
from cwmpgw.tasks.rules import is_reported, transfer_outcome
from cwmpgw.tasks.transfers import ITransferLinks, LinkError

__all__ = ["TaskRunner", "ThroughputUrl"]

#: Builds a signed URL of the gateway's throughput endpoint for a diagnostic task:
#: (``"download"`` or ``"upload"``, task id, bytes or None for the default, lifetime in
#: seconds) → URL.
ThroughputUrl = Callable[[str, str, int | None, float], str]

# How long a throughput URL outlives the task's wait for its report (clock skew, retries).
_URL_GRACE = 300.0

# The Inform event by which a CPE reports having carried out a command with a CommandKey.
_DONE_EVENTS = {"Reboot": "M Reboot", "ScheduleInform": "M ScheduleInform"}
# ... and without one: a CPE back from a factory reset informs with BOOTSTRAP.
_DONE_WITHOUT_KEY = {"FactoryReset": "0 BOOTSTRAP"}
# Transfers report their end with a TransferComplete carrying the CommandKey, a
# ChangeDUState with a DUStateChangeComplete.
_TRANSFERS = frozenset({"Download", "ScheduleDownload", "Upload", "ChangeDUState"})


@dataclass(frozen=True, slots=True)
class _Report:
    """A completion report for a task, whichever RPC carried it."""

    command_key: str
    fault_code: int
    fault_string: str
    start_time: str
    complete_time: str
    details: dict[str, Any] | None = None


def _report_of(message: CompletionReport) -> _Report | None:
    """What a report says of the task with its CommandKey; None if it names none.

    A DUStateChangeComplete's operations are one task: it failed with the first failed
    operation's fault, and ran from the first start to the last completion; every
    operation's result goes into the task's result (or fault) as ``results``.
    """
    if isinstance(message, TransferComplete) and message.command_key:
        return _Report(
            message.command_key,
            message.fault_code,
            message.fault_string,
            message.start_time,
            message.complete_time,
        )
    if isinstance(message, DUStateChangeComplete) and message.command_key:
        results = message.results
        failed = next((r for r in results if r.fault_code), None)
        return _Report(
            message.command_key,
            failed.fault_code if failed is not None else 0,
            failed.fault_string if failed is not None else "",
            min(r.start_time for r in results),
            max(r.complete_time for r in results),
            {"results": [_du_result(r) for r in results]},
        )
    return None


def _inform_report(task: Task, events: Sequence[EventStruct]) -> str | None:
    """The event code of this Inform that reports ``task`` carried out, if it has one."""
    code = _DONE_WITHOUT_KEY.get(task.type)
    if code is not None:
        return code if any(e.code == code for e in events) else None
    code = _DONE_EVENTS.get(task.type)
    if code is None or not task.command_key:
        return None
    reported = any(e.code == code and e.command_key == task.command_key for e in events)
    return code if reported else None


def _du_result(result: DeploymentUnitResult) -> dict[str, Any]:
    data = asdict(result)
    del data["operation_performed"]  # autonomous reports only
    return data


@dataclass(eq=False)
class _Running:
    task: Task
    plan: Plan
    calls: int = 0
    outstanding: bool = False


@implementer(IRequestSource)
class TaskRunner:
    _log = Logger()

    def __init__(
        self,
        tasks: Any,
        devices: IDeviceStore,
        *,
        gpv_batch: int = 100,
        throughput: ThroughputUrl | None = None,
        links: ITransferLinks | None = None,
    ) -> None:
        self._tasks = tasks
        self._links = links
        self._devices = devices
        self._gpv_batch = gpv_batch
        self._throughput = throughput
        self._resumed: set[str] = set()  # sessions whose 8 DIAGNOSTICS COMPLETE was handled
        self._running: dict[str, _Running] = {}  # session id → the task it runs now
        # session id → CommandKey → a completion report of that session no waiting task took
        self._unclaimed: dict[str, dict[str, _Report]] = {}

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        return Deferred.fromCoroutine(self._next(session))

    def session_starting(self, device_id: str, owner: str | None) -> None:
        # The queue, read in the same write as the Inform's: the first turn starts its
        # first task without reading it again (a provider that cannot, reads then).
        prefetch = getattr(self._tasks, "prefetch", None)
        if prefetch is not None and owner is not None:
            prefetch(device_id, owner)

    async def _next(self, session: LiveSession) -> AcsRequest | None:
        # Whether the session's ownership of the device was checked in this turn (by the
        # task store, with the queue read: then the engine need not ask the lock again).
        owner_checked = False
        if session.session_id not in self._resumed:
            self._resumed.add(session.session_id)
            events = session.machine.inform.events
            if any(e.code == diagnostics.DIAGNOSTICS_COMPLETE for e in events):
                for task in await self._tasks.diagnostics_complete(session.device_id):
                    self._log.info(
                        "diagnostic task {task_id} of {device_id}: reported complete",
                        task_id=task.id,
                        device_id=session.device_id,
                    )
        while True:
            state = self._running.get(session.session_id)
            if state is None:
                task = await self._tasks.next_for_device(session.device_id, session.owner)
                owner_checked = session.owner is not None and self._tasks.checks_owner
                if task is None:
                    return None
                if task.attempts > 1 and await self._reported(session, task):
                    continue
                args = task.args
                if needs_link(task.type, args):
                    try:
                        args = await self._link(task)
                    except LinkError as e:
                        await self._tasks.fail(task, {"reason": str(e)})
                        continue
                try:
                    plan = self._plan(session, task, args)
                except rpc.ArgumentError as e:
                    await self._tasks.fail(task, {"reason": f"invalid arguments: {e}"})
                    continue
                state = self._running[session.session_id] = _Running(task, plan)
            call = state.plan.next_call()
            if call is None:
                await self._finish(session, state)
                continue
            state.calls += 1
            request_id = f"{state.task.id[-12:]}.{state.calls}"
            try:
                request = acs_request(
                    session, call.method, request_id, call.args, state, owner_checked=owner_checked
                )
            except rpc.ArgumentError as e:
                # E.g. ScheduleDownload to a CWMP 1.0 device: the method is not in its schema.
                state.plan.on_fault({"reason": f"cannot send {call.method}: {e}"})
                await self._finish(session, state)
                continue
            state.outstanding = True
            if debug_wanted():
                self._log.debug(
                    "sending {cwmp_method} of task {task_id} to {device_id}",
                    cwmp_method=call.method,
                    task_id=state.task.id,
                    device_id=session.device_id,
                )
            return request

    def _plan(self, session: LiveSession, task: Task, args: dict[str, Any]) -> Plan:
        """The task's plan; ``args`` are its arguments as completed for this device (a
        file's signed link filled in)."""
        if task.type != "diagnostic":
            return plan_for(task.type, args, gpv_batch=self._gpv_batch)
        url = None
        kind = diagnostics.KINDS.get(task.args.get("kind", ""))
        if kind is not None and kind.url and self._throughput is not None:
            direction = "download" if kind.url == "DownloadURL" else "upload"
            size = task.args.get("throughput_bytes")
            if size is None and direction == "upload":
                size = int(task.args.get("parameters", {}).get("TestFileLength") or 0) or None
            lifetime = float(task.args.get("timeout") or 0) + _URL_GRACE
            url = self._throughput(direction, task.id, size, lifetime)
        return plan_for(
            task.type,
            task.args,
            gpv_batch=self._gpv_batch,
            root=_root_object(session),
            reported=is_reported(task),
            url=url,
        )

    async def _link(self, task: Task) -> dict[str, Any]:
        """The task's arguments completed by the file server for its device."""
        if self._links is None:
            raise LinkError("the file server is disabled (files.enabled)")
        args: dict[str, Any] = await self._links.resolve(task)
        return args

    def answered(
        self, session: LiveSession, request: AcsRequest, response: RpcResponse | CpeFault
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._answered(session, request, response))

    async def _answered(
        self, session: LiveSession, request: AcsRequest, response: RpcResponse | CpeFault
    ) -> None:
        state = request.ref
        assert isinstance(state, _Running)
        state.outstanding = False
        if isinstance(response, CpeFault):
            state.plan.on_fault(rpc.fault(response))
        else:
            try:
                state.plan.on_result(rpc.result(request.method, response))
            except rpc.ResponseError as e:
                state.plan.on_fault({"reason": f"malformed {request.method}Response: {e}"})
        updates = list(state.plan.parameter_updates)
        state.plan.parameter_updates.clear()
        if (
            updates
            and state.plan.outcome == "done"
            and getattr(self._tasks, "caches_parameters", False)
        ):
            # The last answer of a task: its values go to the cache in the script that
            # marks it done (one round trip, not two).
            await self._finish(session, state, updates)
            return
        if updates:
            await self._devices.update_parameters(session.device_id, updates)
        if state.plan.outcome != "running":
            await self._finish(session, state)

    def answer_unusable(
        self, session: LiveSession, request: AcsRequest, reason: str
    ) -> Deferred[None]:
        """The task fails, saying why: asked again, the CPE would most likely answer the same
        way (and carry the request out again)."""
        return Deferred.fromCoroutine(self._unusable(session, request, reason))

    async def _unusable(self, session: LiveSession, request: AcsRequest, reason: str) -> None:
        state = request.ref
        assert isinstance(state, _Running)
        state.outstanding = False
        self._log.warn(
            "task {task_id} ({task_type}) of {device_id} failed: {reason}",
            task_id=state.task.id,
            task_type=state.task.type,
            device_id=session.device_id,
            reason=reason,
        )
        state.plan.on_fault({"reason": reason})
        await self._finish(session, state)

    async def _finish(
        self,
        session: LiveSession,
        state: _Running,
        parameters: list[tuple[str, str, str]] | None = None,
    ) -> None:
        self._running.pop(session.session_id, None)
        plan, task = state.plan, state.task
        if parameters:
            await self._tasks.complete(task, plan.result or {}, parameters)
        elif plan.outcome == "done":
            await self._tasks.complete(task, plan.result or {})
        elif plan.outcome == "waiting_transfer":
            await self._tasks.wait_for_transfer(task)
        else:
            await self._tasks.fail(
                task, plan.fault or {"reason": "the plan ended without a result"}
            )

    async def _reported(self, session: LiveSession, task: Task) -> bool:
        """End ``task`` (started before, now again) if the CPE reported it carried it out."""
        if task.type in _TRANSFERS:
            if not task.command_key:
                return False
            report = self._unclaimed.get(session.session_id, {}).pop(task.command_key, None)
            if report is None:
                return False
            outcome = transfer_outcome(
                task,
                report.fault_code,
                report.fault_string,
                report.start_time,
                report.complete_time,
                task.updated,
                report.details,
            )
            if outcome.status == "done":
                await self._tasks.complete(task, outcome.result or {})
            else:
                await self._tasks.fail(task, outcome.fault or {})
        else:
            code = _inform_report(task, session.machine.inform.events)
            if code is None:
                return False
            await self._tasks.complete(task, {"confirmed_by": code})
        self._log.info(
            "task {task_id} ({task_type}) of {device_id}: its answer was lost, but the CPE "
            "reported it carried it out; not sent again",
            task_id=task.id,
            task_type=task.type,
            device_id=session.device_id,
        )
        return True

    def transfer_completed(self, session: LiveSession, message: CompletionReport) -> Deferred[None]:
        report = _report_of(message)
        if report is None:
            return Deferred.fromCoroutine(_nothing())
        d: Deferred[Any] = self._tasks.transfer_complete(
            session.device_id,
            report.command_key,
            report.fault_code,
            report.fault_string,
            report.start_time,
            report.complete_time,
            report.details,
        )

        def claimed(task: Task | None) -> None:
            if task is None:
                # No task waits for it: perhaps one whose answer was lost, queued to be
                # sent again. Kept for this session's ACS turn, which may end it instead.
                self._unclaimed.setdefault(session.session_id, {})[report.command_key] = report

        return d.addCallback(claimed)

    def session_ended(self, session: LiveSession) -> Deferred[None] | None:
        self._unclaimed.pop(session.session_id, None)
        self._resumed.discard(session.session_id)
        state = self._running.pop(session.session_id, None)
        if state is None:
            return None
        # Sent but not answered (or not sent yet): the next session runs it again, with
        # the same keys, so the CPE applies it once.
        d: Deferred[Any] = self._tasks.requeue(state.task)
        d.addCallbacks(
            lambda _: None,
            lambda f: log_call_failure(
                self._log, f, "could not requeue task {task_id}", task_id=state.task.id
            ),
        )
        return d


async def _nothing() -> None:
    return None


def _root_object(session: LiveSession) -> str:
    """``Device`` (TR-181) or ``InternetGatewayDevice`` (TR-098), from the Inform."""
    for p in session.machine.inform.parameters:
        root = p.name.split(".", 1)[0]
        if root in ("Device", "InternetGatewayDevice"):
            return root
    return "Device"
