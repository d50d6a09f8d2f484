"""The rules both task providers share (the in-memory one of the tests, the Redis one of
the gateway): how a task is built and identified, when it may start, how a transfer's
report ends it, its defaults, its event, and its JSON form. A provider only stores."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from cwmpgw.bus.events import Event, IEventSink, device_ref
from cwmpgw.cwmp.datamodel import DataModel, DataModelError, standard_model
from cwmpgw.cwmp.rpc import ArgumentError
from cwmpgw.jsontext import compact
from cwmpgw.tasks.model import DataModelRefusal, Task, TaskError
from cwmpgw.tasks.plans import TASK_TYPES, plan_for

__all__ = [
    "COMMAND_KEY_TYPES",
    "DEFAULTS",
    "MAX_EXPIRY",
    "PARAMETER_KEY_TYPES",
    "REPORT_TIMEOUT",
    "TaskDefaults",
    "build_task",
    "check_data_model",
    "idempotency_fingerprint",
    "ignore_cancel",
    "is_reported",
    "new_task_id",
    "no_report",
    "publish_task_event",
    "replay_of",
    "resumed",
    "start_decision",
    "task_event",
    "task_from_dict",
    "task_from_json",
    "task_to_json",
    "transfer_outcome",
    "wait_fault",
    "wait_slot",
    "waiting",
]

_log = Logger()

# Methods whose completion the CPE reports later under the CommandKey (an M event or a
# TransferComplete): a key unique per task maps that report back to the task.
COMMAND_KEY_TYPES = frozenset(
    {"Download", "ScheduleDownload", "Upload", "Reboot", "ScheduleInform", "ChangeDUState"}
)
# Methods that set ManagementServer.ParameterKey: a unique one shows which change landed.
PARAMETER_KEY_TYPES = frozenset({"SetParameterValues", "AddObject", "DeleteObject", "diagnostic"})
MAX_EXPIRY = 365 * 86400
MAX_KEY_LENGTH = 32  # CommandKey and ParameterKey are string(32) in TR-069
TOO_MANY_ATTEMPTS = {"reason": "too many attempts"}
#: How long a task waits for its TransferComplete (DUStateChangeComplete) by default.
REPORT_TIMEOUT = 7 * 86400


@dataclass(frozen=True, slots=True)
class TaskDefaults:
    """The task settings' defaults, for both providers and the runner (``[tasks]`` in the
    configuration sets them for the gateway; a test keeps the two equal)."""

    default_expiry: float = 604800
    max_attempts: int = 3
    keep_finished: int = 100
    gpv_batch: int = 100
    report_timeout: float = REPORT_TIMEOUT


DEFAULTS = TaskDefaults()


def no_report(timeout: float) -> dict[str, Any]:
    """The fault of a task whose completion report did not come in time."""
    return {"reason": f"no completion report from the CPE within {timeout:g} s"}


def wait_slot(task: Task) -> str:
    """What a task waiting for a report waits under, per device: ``transfer:<CommandKey>``
    for a transfer (its TransferComplete names the key), ``diagnostic:<kind>`` for a
    diagnostic (8 DIAGNOSTICS COMPLETE names nothing; one test of a kind runs at a time,
    as a CPE restarts a diagnostic requested again). Empty for a task that cannot wait."""
    if task.type == "diagnostic":
        return "diagnostic:" + str(task.args.get("kind", ""))
    return "transfer:" + task.command_key if task.command_key else ""


def waiting(task: Task, now: float, report_timeout: float) -> Task:
    """The running task once it waits for its report: due by the report timeout (a
    diagnostic's own ``timeout``), a diagnostic's ``result`` saying it was requested."""
    if task.type == "diagnostic":
        timeout = float(task.args.get("timeout") or report_timeout)
        return task.evolve(updated=now, expires=now + timeout, result={"phase": "requested"})
    return task.evolve(updated=now, expires=now + report_timeout)


def resumed(task: Task, now: float) -> Task:
    """A waiting diagnostic the CPE reported complete: queued again (first), to read its
    results in the same session; its deadline stays."""
    return task.evolve(status="queued", updated=now, result={"phase": "reported"})


def is_reported(task: Task) -> bool:
    """Whether a diagnostic task's next run reads the results (see :func:`resumed`)."""
    return task.type == "diagnostic" and (task.result or {}).get("phase") == "reported"


def wait_fault(task: Task, report_timeout: float) -> dict[str, Any]:
    """The fault of a waiting task whose report did not come in time."""
    if task.type == "diagnostic":
        timeout = float(task.args.get("timeout") or report_timeout)
        return {"reason": f"no 8 DIAGNOSTICS COMPLETE from the CPE within {timeout:g} s"}
    return no_report(report_timeout)


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_TASK_FIELDS = frozenset(f.name for f in fields(Task)) - {"extra"}


def new_task_id(now: float) -> str:
    """26 characters (ULID layout, lower case): 48 bits of milliseconds, 80 random bits.

    Sorts by creation time to the millisecond; random enough that nodes never collide.
    """
    n = ((int(now * 1000) & ((1 << 48) - 1)) << 80) | int.from_bytes(os.urandom(10), "big")
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[n & 31])
        n >>= 5
    return "".join(reversed(out))


def _expiry(expires_in: float | None, default: float) -> float:
    if expires_in is None:
        return float(default)
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not math.isfinite(expires_in)
        or expires_in <= 0
        or expires_in > MAX_EXPIRY
    ):
        raise TaskError(
            f"expires_in must be more than 0 and at most {MAX_EXPIRY} seconds",
            path="expires_in",
        )
    return float(expires_in)


def build_task(
    device_id: str,
    type: str,
    args: Mapping[str, Any],
    *,
    now: float,
    expires_in: float | None,
    default_expiry: float,
    gpv_batch: int,
    bulk: str = "",
) -> Task:
    """Validate a submission and build the queued task (no I/O: the device check is apart)."""
    if not isinstance(args, Mapping):
        raise TaskError("args must be an object", path="args")
    try:
        # A deep copy the caller cannot mutate afterwards, and proof it can be stored.
        copy: dict[str, Any] = json.loads(json.dumps(dict(args), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise TaskError(f"args must be plain JSON: {e}", path="args") from e
    expires = now + _expiry(expires_in, default_expiry)
    task_id = new_task_id(now)
    if type in COMMAND_KEY_TYPES and not copy.get("command_key"):
        copy["command_key"] = ("t" + task_id)[:MAX_KEY_LENGTH]
    elif type in PARAMETER_KEY_TYPES and not copy.get("parameter_key"):
        copy["parameter_key"] = ("p" + task_id)[:MAX_KEY_LENGTH]
    if type == "SetParameterValues":
        check_data_model(device_id, copy)
    try:
        plan_for(type, copy, gpv_batch=gpv_batch)
    except ArgumentError as e:
        if type not in TASK_TYPES:  # the method itself is wrong: say so in the caller's words
            raise TaskError(f"unknown task type {type!r}", path="type") from e
        raise TaskError(getattr(e, "message", str(e)), path=e.path or "type") from e
    command_key = str(copy.get("command_key") or "") if type in COMMAND_KEY_TYPES else ""
    return Task(
        id=task_id,
        device_id=device_id,
        type=type,
        args=copy,
        created=now,
        expires=expires,
        updated=now,
        command_key=command_key,
        bulk=bulk,
    )


def check_data_model(device_id: str, args: dict[str, Any], model: DataModel | None = None) -> None:
    """Check a SetParameterValues' ``parameters`` against the data model, in place: a
    parameter given without a type gets the model's. Raises DataModelRefusal naming the
    entry; what the model cannot judge (vendor extensions, unknown subtrees) is logged and
    passes, and the argument check that follows still applies."""
    entries = args.get("parameters")
    if not isinstance(entries, list):
        return  # the argument check says what is wrong
    model = model if model is not None else standard_model()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            continue
        type_ = entry.get("type")
        if type_ is not None and not isinstance(type_, str):
            continue
        try:
            checked = model.check(entry["name"], entry.get("value"), type_)
        except DataModelError as e:
            raise DataModelRefusal(str(e), path=f"args.parameters[{i}]") from None
        except ValueError:
            continue  # a bad type or value whatever the model: the argument check says so
        if checked.unchecked:
            _log.info(
                "SetParameterValues for {device_id}: {name} not checked ({why})",
                device_id=device_id,
                name=entry["name"],
                why=checked.unchecked,
            )
        elif type_ is None:
            entry["type"] = checked.type


_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")


def idempotency_fingerprint(
    idempotency_key: str,
    device_id: str,
    type: str,
    args: Mapping[str, Any],
    expires_in: float | None,
) -> str:
    """What an idempotency key is remembered with: the request it was first used for.

    Raises TaskError for a key that is not 1 to 128 printable ASCII characters.
    """
    if not isinstance(idempotency_key, str) or not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise TaskError(
            "expected 1 to 128 printable ASCII characters, no spaces", path="idempotency_key"
        )
    request = json.dumps([device_id, type, args, expires_in], sort_keys=True, default=str)
    return hashlib.sha256(request.encode("utf-8")).hexdigest()


def replay_of(task: Task) -> Task:
    """``task`` as ``submit`` returns it for a repeated idempotency key."""
    return task.evolve(extra={**task.extra, "replayed": True})


def start_decision(task: Task, now: float, max_attempts: int) -> Task:
    """What a queued (or interrupted running) task becomes when a session reaches it."""
    if now >= task.expires:
        return task.evolve(status="expired", updated=now)
    if task.attempts + 1 > max_attempts:
        return task.evolve(status="failed", updated=now, fault=dict(TOO_MANY_ATTEMPTS))
    return task.evolve(status="running", attempts=task.attempts + 1, updated=now)


def transfer_outcome(
    task: Task,
    fault_code: int,
    fault_string: str,
    start_time: str,
    complete_time: str,
    now: float,
    details: Mapping[str, Any] | None = None,
) -> Task:
    """The task a completion report ends: ``details`` (a DUStateChangeComplete's
    ``results``) go into its result or fault."""
    extra = dict(details or {})
    if fault_code == 0:
        result = {"start_time": start_time, "complete_time": complete_time, **extra}
        return task.evolve(status="done", updated=now, result=result)
    return task.evolve(
        status="failed", updated=now, fault={"code": fault_code, "string": fault_string, **extra}
    )


def task_event(task: Task, node: str, task_json: str | None = None) -> Event:
    """The event of ``task``'s new status; ``task_json`` is :func:`task_to_json`'s text
    of it when the caller has it (then it is not encoded again for the event)."""
    event = Event(
        type="task." + task.status,
        ts=task.updated,
        node=node,
        data=task.to_dict(),
        device=device_ref(task.device_id),
    )
    return event if task_json is None else event.encode_with(task_json)


def task_from_dict(d: Mapping[str, Any]) -> Task:
    """Tolerates fields a newer gateway version added."""
    return Task(**{k: v for k, v in d.items() if k in _TASK_FIELDS})


def task_to_json(task: Task) -> str:
    return compact(task.to_dict())


def task_from_json(raw: str | bytes) -> Task:
    return task_from_dict(json.loads(raw))


async def publish_task_event(events: IEventSink, node: str, task: Task) -> Task:
    """Publish ``task.<status>``; a failure is logged, never undoes the stored change."""
    try:
        await events.publish(task_event(task, node))
    except Exception:
        _log.failure(
            "could not publish task.{status} for task {task_id} of {device_id}",
            status=task.status,
            task_id=task.id,
            device_id=task.device_id,
        )
    return task


def ignore_cancel(f: Any) -> None:
    """Errback for a Deferred we cancelled ourselves and nobody else awaits."""
    f.trap(CancelledError)
