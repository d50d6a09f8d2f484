"""Tasks: what a back-office system asked a device to do, and what became of it.

A task lives in Redis from ``queued`` to a final status; every change is an event
(``task.<status>``) carrying the whole task, so a caller can correlate on ``id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

__all__ = [
    "FINAL_STATUSES",
    "IDEMPOTENCY_TTL",
    "STATUSES",
    "DataModelRefusal",
    "ITaskService",
    "IdempotencyConflict",
    "Task",
    "TaskError",
    "UnknownDevice",
    "replayed",
]

STATUSES = ("queued", "running", "done", "failed", "expired", "cancelled")
FINAL_STATUSES = frozenset({"done", "failed", "expired", "cancelled"})


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    device_id: str
    type: str  # a CWMP method name ("SetParameterValues", …) or "refresh"
    args: dict[str, Any]
    created: float  # Unix seconds
    expires: float  # Unix seconds; a task still queued then becomes "expired"
    status: str = "queued"
    attempts: int = 0  # sessions in which it was started
    updated: float = 0.0
    result: dict[str, Any] | None = None
    fault: dict[str, Any] | None = None  # {"code", "string", "parameters"?} or {"reason"}
    # Download, ScheduleDownload, Upload: the CommandKey whose TransferComplete ends it.
    command_key: str = ""
    bulk: str = ""  # the bulk task it is part of, if any (cwmpgw.fleet.bulk)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The task as JSON-ready data (without ``extra``). Shallow: ``args``, ``result``
        and ``fault`` are the task's own (never changed in place; ``evolve`` replaces
        them). ``dataclasses.asdict`` deep-copied them, a measurable cost per transition."""
        return {name: getattr(self, name) for name in _FIELDS}

    def evolve(self, **changes: Any) -> Task:
        return replace(self, **changes)


_FIELDS = tuple(f.name for f in fields(Task) if f.name != "extra")


class TaskError(ValueError):
    """A task the caller got wrong (4xx): unknown type, bad arguments, bad expiry."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DataModelRefusal(TaskError):
    """A SetParameterValues the data model says is wrong (422): an unknown parameter of a
    fully known object, a read-only parameter, a wrong type or value for it."""


class IdempotencyConflict(TaskError):
    """The idempotency key was used for a different request (422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, path="idempotency_key")


#: How long an idempotency key keeps answering with its task.
IDEMPOTENCY_TTL = 86400


def replayed(task: Task) -> bool:
    """Whether ``submit`` answered with an earlier task of the same idempotency key."""
    return bool(task.extra.get("replayed"))


class UnknownDevice(LookupError):
    """No such device in the registry (404)."""


class ITaskService(Interface):
    """The task queue as the API, the command stream and the session engine see it."""

    def submit(
        device_id: str,
        type: str,
        args: dict[str, Any],
        *,
        expires_in: float | None = None,
        idempotency_key: str | None = None,
        bulk: str = "",
    ) -> Deferred[Task]:
        """Validate, store and queue a task; fires with it (status ``queued``).

        With ``bulk`` (a bulk id) the task is counted in that bulk's progress: queued when
        stored, then under its final status, in the same step as each change.

        With an ``idempotency_key`` already used for the same request in the last
        ``IDEMPOTENCY_TTL`` seconds, nothing is queued: it fires with that earlier task as
        it is now, marked :func:`replayed`. Raises TaskError for bad input (and
        IdempotencyConflict for a key used for another request) and UnknownDevice for a
        device never seen.
        """

    def get(task_id: str) -> Deferred[Task | None]:
        """The task, whatever its status, or None."""

    def list_for_device(device_id: str) -> Deferred[list[Task]]:
        """The device's tasks, oldest first: queued and running ones, then recent final ones."""

    def cancel(task_id: str) -> Deferred[Task | None]:
        """Cancel a queued task; a running or final one is returned unchanged."""

    def wait(task_id: str, timeout: float) -> Deferred[Task | None]:
        """Fires with the task once it is final, or with its current state at the timeout.

        Works whichever gateway node runs the session: completion travels through Redis.
        """
