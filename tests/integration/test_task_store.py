"""One contract for the task queue, run on memory and on a real Redis; then what only Redis does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.internet.testing import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cwmpgw.bus.events import Event, IEventSink, IStoredEvents
from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.tasks.memory import MemoryTaskService
from cwmpgw.tasks.model import (
    IDEMPOTENCY_TTL,
    IdempotencyConflict,
    ITaskService,
    Task,
    TaskError,
    UnknownDevice,
    replayed,
)
from tests.support.redis_server import connect, unique_prefix

DEV = "9CA2F4-EC220_G5_V3-22275K2000315"
OTHER = "9CA2F4-EC220_G5_V3-OTHER"
T0 = 1_700_000_000.0
GPV = {"parameter_names": ["Device.DeviceInfo."]}
SPV = {"parameters": [{"name": "Device.ManagementServer.PeriodicInformInterval", "value": "60"}]}
DOWNLOAD = {"file_type": "1 Firmware Upgrade Image", "url": "http://files.example/fw.bin"}


@implementer(IEventSink, IStoredEvents)
class RecordingBus:
    """Keeps every event and forwards it (to Redis, when two nodes must hear each other).

    The Redis provider stores task events itself, in the script that changes the task, and
    only tells the sink (``stored``); they are kept here all the same, so one contract
    checks both providers' events. ``published`` are those the sink was asked to publish.
    """

    def __init__(self, inner: Any = None) -> None:
        self.events: list[Event] = []
        self.published: list[Event] = []
        self._inner = inner

    def stored(self, event: Event) -> None:
        self.events.append(event)

    def publish(self, event: Event) -> Deferred[None]:
        self.events.append(event)
        self.published.append(event)
        if self._inner is not None:
            d: Deferred[None] = self._inner.publish(event)
            return d
        return MemoryEventBus().publish(event)

    def of(self, task_id: str) -> list[str]:
        return [e.type for e in self.events if e.data["id"] == task_id]


class TaskContract:
    """Mixed into a trial TestCase whose setUp sets clock, bus and service."""

    clock: Clock
    bus: RecordingBus
    service: Any

    def make(self, **kw: Any) -> Any:
        raise NotImplementedError

    async def settle(self) -> None:
        """Let work that the provider does on I/O finish (nothing to do in memory)."""

    async def drive(self, d: Deferred[Any], step: float = 0.5, limit: int = 200) -> Any:
        """Advance the fake clock step by step until ``d`` fires."""
        for _ in range(limit):
            await self.settle()
            if d.called:
                break
            self.clock.advance(step)
        return await d

    # -- submit --------------------------------------------------------------------------

    async def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(ITaskService, self.service))  # type: ignore[attr-defined]

    async def test_submit_queues_and_announces(self) -> None:
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        self.assertEqual(len(task.id), 26)  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            (task.status, task.device_id, task.created, task.expires, task.attempts),
            ("queued", DEV, T0, T0 + 604800, 0),
        )
        self.assertEqual(task.args, GPV)  # type: ignore[attr-defined]
        self.assertEqual(await self.service.get(task.id), task)  # type: ignore[attr-defined]
        [event] = self.bus.events
        self.assertEqual(
            (event.type, event.data, event.device["id"]), ("task.queued", task.to_dict(), DEV)
        )  # type: ignore[attr-defined,index]

    async def test_idempotency_key_queues_once(self) -> None:
        first = await self.service.submit(DEV, "Reboot", {}, idempotency_key="bo-42")
        self.assertFalse(replayed(first))  # type: ignore[attr-defined]
        again = await self.service.submit(DEV, "Reboot", {}, idempotency_key="bo-42")
        self.assertTrue(replayed(again))  # type: ignore[attr-defined]
        self.assertEqual(again.id, first.id)  # type: ignore[attr-defined]
        self.assertEqual(again.to_dict(), first.to_dict())  # type: ignore[attr-defined]
        queued = [t.id for t in await self.service.list_for_device(DEV)]
        self.assertEqual(queued, [first.id])  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(first.id), ["task.queued"])  # type: ignore[attr-defined]
        # Another key, or none, is another task.
        other = await self.service.submit(DEV, "Reboot", {}, idempotency_key="bo-43")
        plain = await self.service.submit(DEV, "Reboot", {})
        self.assertEqual(len({first.id, other.id, plain.id}), 3)  # type: ignore[attr-defined]

    async def test_idempotency_key_answers_with_the_task_as_it_is_now(self) -> None:
        first = await self.service.submit(DEV, "Reboot", {}, idempotency_key="k")
        await self.service.cancel(first.id)
        again = await self.service.submit(DEV, "Reboot", {}, idempotency_key="k")
        self.assertEqual((again.id, again.status), (first.id, "cancelled"))  # type: ignore[attr-defined]

    async def test_idempotency_key_of_another_request_is_a_conflict(self) -> None:
        await self.service.submit(DEV, "Reboot", {}, idempotency_key="k")
        for device, type_, args, expires in (
            (OTHER, "Reboot", {}, None),
            (DEV, "FactoryReset", {}, None),
            (DEV, "Reboot", {"command_key": "x"}, None),
            (DEV, "Reboot", {}, 60.0),
        ):
            with self.assertRaises(IdempotencyConflict) as cm:  # type: ignore[attr-defined]
                await self.service.submit(
                    device, type_, args, expires_in=expires, idempotency_key="k"
                )
            self.assertEqual(cm.exception.path, "idempotency_key")  # type: ignore[attr-defined]
        self.assertEqual(len(await self.service.list_for_device(OTHER)), 0)  # type: ignore[attr-defined]
        self.assertEqual(len(await self.service.list_for_device(DEV)), 1)  # type: ignore[attr-defined]

    async def test_unusable_idempotency_keys(self) -> None:
        for key in ("", "has space", "x" * 129, "é"):
            with self.assertRaises(TaskError) as cm:  # type: ignore[attr-defined]
                await self.service.submit(DEV, "Reboot", {}, idempotency_key=key)
            self.assertEqual(cm.exception.path, "idempotency_key")  # type: ignore[attr-defined]
        self.assertEqual(self.bus.events, [])  # type: ignore[attr-defined]

    async def test_ids_time_ordered_and_unique(self) -> None:
        ids = []
        for _ in range(5):
            ids.append((await self.service.submit(DEV, "GetParameterValues", GPV)).id)
            self.clock.advance(0.002)
        self.assertEqual(ids, sorted(ids))  # type: ignore[attr-defined]
        self.assertEqual(len(set(ids)), 5)  # type: ignore[attr-defined]

    async def test_unknown_type_refused(self) -> None:
        with self.assertRaises(TaskError) as cm:  # type: ignore[attr-defined]
            await self.service.submit(DEV, "FormatHardDisk", {})
        self.assertEqual(cm.exception.path, "type")  # type: ignore[attr-defined]
        self.assertEqual(self.bus.events, [])  # type: ignore[attr-defined]

    async def test_bad_argument_path(self) -> None:
        with self.assertRaises(TaskError) as cm:  # type: ignore[attr-defined]
            await self.service.submit(
                DEV, "SetParameterValues", {"parameters": [{"name": "Device.", "value": "1"}]}
            )
        self.assertEqual(cm.exception.path, "parameters[0].name")  # type: ignore[attr-defined]
        self.assertEqual(await self.service.list_for_device(DEV), [])  # type: ignore[attr-defined]

    async def test_args_must_be_json(self) -> None:
        with self.assertRaises(TaskError) as cm:  # type: ignore[attr-defined]
            await self.service.submit(DEV, "GetParameterValues", {"parameter_names": {1, 2}})
        self.assertEqual(cm.exception.path, "args")  # type: ignore[attr-defined]

    async def test_unknown_device(self) -> None:
        with self.assertRaises(UnknownDevice):  # type: ignore[attr-defined]
            await self.service.submit("no-such-device", "GetParameterValues", GPV)
        self.assertEqual(self.bus.events, [])  # type: ignore[attr-defined]
        self.assertEqual(await self.service.list_for_device("no-such-device"), [])  # type: ignore[attr-defined]

    async def test_bad_expiry(self) -> None:
        for bad in (0, -5, 365 * 86400 + 1, math.nan, math.inf, True, "60"):
            with self.assertRaises(TaskError) as cm:  # type: ignore[attr-defined]
                await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=bad)
            self.assertEqual(cm.exception.path, "expires_in")  # type: ignore[attr-defined]
        task = await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=10)
        self.assertEqual(task.expires, T0 + 10)  # type: ignore[attr-defined]

    async def test_command_keys_unique_and_short(self) -> None:
        a = await self.service.submit(DEV, "Reboot", {})
        b = await self.service.submit(DEV, "Download", DOWNLOAD)
        for task in (a, b):
            self.assertTrue(0 < len(task.command_key) <= 32)  # type: ignore[attr-defined]
            self.assertEqual(task.args["command_key"], task.command_key)  # type: ignore[attr-defined]
        self.assertNotEqual(a.command_key, b.command_key)  # type: ignore[attr-defined]
        given = await self.service.submit(DEV, "Reboot", {"command_key": "mine"})
        self.assertEqual(given.command_key, "mine")  # type: ignore[attr-defined]
        with self.assertRaises(TaskError) as cm:  # type: ignore[attr-defined]
            await self.service.submit(DEV, "Reboot", {"command_key": "k" * 33})
        self.assertEqual(cm.exception.path, "command_key")  # type: ignore[attr-defined]

    async def test_parameter_keys_unique_and_short(self) -> None:
        a = await self.service.submit(DEV, "SetParameterValues", SPV)
        b = await self.service.submit(DEV, "SetParameterValues", SPV)
        keys = [a.args["parameter_key"], b.args["parameter_key"]]
        self.assertNotEqual(keys[0], keys[1])  # type: ignore[attr-defined]
        self.assertTrue(all(0 < len(k) <= 32 for k in keys))  # type: ignore[attr-defined]
        self.assertEqual((a.command_key, "parameter_key" in SPV), ("", False))  # type: ignore[attr-defined]
        given = await self.service.submit(DEV, "SetParameterValues", {**SPV, "parameter_key": "v7"})
        self.assertEqual(given.args["parameter_key"], "v7")  # type: ignore[attr-defined]

    # -- running -------------------------------------------------------------------------

    async def test_next_runs_in_submission_order(self) -> None:
        ids = [(await self.service.submit(DEV, "GetParameterValues", GPV)).id for _ in range(3)]
        other = await self.service.submit(OTHER, "GetParameterValues", GPV)
        self.assertEqual([t.id for t in await self.service.list_for_device(DEV)], ids)  # type: ignore[attr-defined]
        task = await self.service.next_for_device(DEV)
        self.assertEqual((task.id, task.status, task.attempts), (ids[0], "running", 1))  # type: ignore[attr-defined]
        self.assertEqual((await self.service.get(ids[0])).status, "running")  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(ids[0]), ["task.queued"])  # type: ignore[attr-defined]
        await self.service.complete(task, {"parameters": {}})
        self.assertEqual((await self.service.next_for_device(DEV)).id, ids[1])  # type: ignore[attr-defined]
        self.assertEqual((await self.service.get(other.id)).status, "queued")  # type: ignore[attr-defined]

    async def test_empty_queue(self) -> None:
        self.assertIsNone(await self.service.next_for_device(DEV))  # type: ignore[attr-defined]

    async def test_interrupted_task_runs_again(self) -> None:
        first = await self.service.submit(DEV, "GetParameterValues", GPV)
        await self.service.submit(DEV, "GetParameterValues", GPV)
        await self.service.next_for_device(DEV)
        # The session died without a word: the next one finds it still running.
        again = await self.service.next_for_device(DEV)
        self.assertEqual((again.id, again.status, again.attempts), (first.id, "running", 2))  # type: ignore[attr-defined]

    async def test_too_many_attempts(self) -> None:
        self.service = self.make(max_attempts=2)
        first = await self.service.submit(DEV, "GetParameterValues", GPV)
        second = await self.service.submit(DEV, "GetParameterValues", GPV)
        await self.service.next_for_device(DEV)
        await self.service.next_for_device(DEV)
        task = await self.service.next_for_device(DEV)
        self.assertEqual((task.id, task.attempts), (second.id, 1))  # type: ignore[attr-defined]
        dead = await self.service.get(first.id)
        self.assertEqual(
            (dead.status, dead.attempts, dead.fault), ("failed", 2, {"reason": "too many attempts"})
        )  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(first.id), ["task.queued", "task.failed"])  # type: ignore[attr-defined]
        self.assertEqual(self.bus.events[-1].data, dead.to_dict())  # type: ignore[attr-defined]

    async def test_expired_tasks_dropped_when_reached(self) -> None:
        short = await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=10)
        long = await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=100)
        self.clock.advance(10)
        task = await self.service.next_for_device(DEV)
        self.assertEqual(task.id, long.id)  # type: ignore[attr-defined]
        self.assertEqual((await self.service.get(short.id)).status, "expired")  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(short.id), ["task.queued", "task.expired"])  # type: ignore[attr-defined]

    async def test_expire_due(self) -> None:
        a = await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=10)
        b = await self.service.submit(OTHER, "GetParameterValues", GPV, expires_in=20)
        c = await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=30)
        self.clock.advance(20)
        self.assertEqual(await self.service.expire_due(), 2)  # type: ignore[attr-defined]
        self.assertEqual(await self.service.expire_due(), 0)  # type: ignore[attr-defined]
        statuses = [(await self.service.get(t.id)).status for t in (a, b, c)]
        self.assertEqual(statuses, ["expired", "expired", "queued"])  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(b.id), ["task.queued", "task.expired"])  # type: ignore[attr-defined]
        self.assertEqual([t.id for t in await self.service.list_for_device(DEV)], [c.id, a.id])  # type: ignore[attr-defined]

    async def test_running_task_does_not_expire(self) -> None:
        a = await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=10)
        await self.service.next_for_device(DEV)
        self.clock.advance(20)
        self.assertEqual(await self.service.expire_due(), 0)  # type: ignore[attr-defined]
        self.assertEqual((await self.service.get(a.id)).status, "running")  # type: ignore[attr-defined]

    async def test_cancel(self) -> None:
        a = await self.service.submit(DEV, "GetParameterValues", GPV)
        b = await self.service.submit(DEV, "GetParameterValues", GPV)
        cancelled = await self.service.cancel(b.id)
        self.assertEqual(cancelled.status, "cancelled")  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(b.id), ["task.queued", "task.cancelled"])  # type: ignore[attr-defined]
        self.assertEqual(await self.service.cancel(b.id), cancelled)  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(b.id), ["task.queued", "task.cancelled"])  # type: ignore[attr-defined]
        running = await self.service.next_for_device(DEV)
        self.assertEqual(await self.service.cancel(a.id), running)  # type: ignore[attr-defined]
        self.assertIsNone(await self.service.cancel("01h000000000000000000nope0"))  # type: ignore[attr-defined]
        await self.service.complete(running, {})
        self.assertIsNone(await self.service.next_for_device(DEV))  # type: ignore[attr-defined]

    async def test_complete(self) -> None:
        await self.service.submit(DEV, "GetParameterValues", GPV)
        task = await self.service.next_for_device(DEV)
        self.clock.advance(3)
        done = await self.service.complete(task, {"parameters": {"Device.X": "1"}})
        self.assertEqual(  # type: ignore[attr-defined]
            (done.status, done.result, done.updated),
            ("done", {"parameters": {"Device.X": "1"}}, T0 + 3),
        )
        self.assertEqual(await self.service.get(task.id), done)  # type: ignore[attr-defined]
        self.assertEqual(self.bus.events[-1].type, "task.done")  # type: ignore[attr-defined]
        self.assertEqual(self.bus.events[-1].data, done.to_dict())  # type: ignore[attr-defined]
        self.assertEqual(await self.service.list_for_device(DEV), [done])  # type: ignore[attr-defined]
        # A second word on the same task changes nothing.
        self.assertEqual(await self.service.fail(task, {"reason": "late"}), done)  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(task.id), ["task.queued", "task.done"])  # type: ignore[attr-defined]

    async def test_fail(self) -> None:
        await self.service.submit(DEV, "SetParameterValues", SPV)
        task = await self.service.next_for_device(DEV)
        fault = {"code": 9007, "string": "Invalid parameter value"}
        failed = await self.service.fail(task, fault)
        self.assertEqual((failed.status, failed.fault), ("failed", fault))  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(task.id), ["task.queued", "task.failed"])  # type: ignore[attr-defined]
        self.assertIsNone(await self.service.next_for_device(DEV))  # type: ignore[attr-defined]

    async def test_requeue_keeps_place_and_attempts(self) -> None:
        first = await self.service.submit(DEV, "GetParameterValues", GPV)
        await self.service.submit(DEV, "GetParameterValues", GPV)
        task = await self.service.next_for_device(DEV)
        back = await self.service.requeue(task)
        self.assertEqual((back.status, back.attempts), ("queued", 1))  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(first.id), ["task.queued"])  # type: ignore[attr-defined]
        again = await self.service.next_for_device(DEV)
        self.assertEqual((again.id, again.attempts), (first.id, 2))  # type: ignore[attr-defined]

    async def test_stale_holder_cannot_move_task(self) -> None:
        """A session that lost its task (it was restarted elsewhere) cannot finish it."""
        await self.service.submit(DEV, "GetParameterValues", GPV)
        old = await self.service.next_for_device(DEV)
        new = await self.service.next_for_device(DEV)
        self.assertEqual(await self.service.complete(old, {}), new)  # type: ignore[attr-defined]
        self.assertEqual(await self.service.requeue(old), new)  # type: ignore[attr-defined]
        self.assertEqual(self.bus.of(old.id), ["task.queued"])  # type: ignore[attr-defined]

    # -- transfers -----------------------------------------------------------------------

    async def test_transfer_wait_then_complete(self) -> None:
        download = await self.service.submit(DEV, "Download", DOWNLOAD)
        later = await self.service.submit(DEV, "GetParameterValues", GPV)
        task = await self.service.next_for_device(DEV)
        waiting = await self.service.wait_for_transfer(task)
        self.assertEqual(waiting.status, "running")  # type: ignore[attr-defined]
        self.assertEqual((await self.service.next_for_device(DEV)).id, later.id)  # type: ignore[attr-defined]
        self.assertIsNone(  # type: ignore[attr-defined]
            await self.service.transfer_complete(DEV, "unknown-key", 0, "", "a", "b")
        )
        self.assertIsNone(  # type: ignore[attr-defined]
            await self.service.transfer_complete(OTHER, task.command_key, 0, "", "a", "b")
        )
        done = await self.service.transfer_complete(
            DEV, download.command_key, 0, "", "2024-01-01T00:00:00Z", "2024-01-01T00:05:00Z"
        )
        self.assertEqual((done.id, done.status), (download.id, "done"))  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            done.result,
            {"start_time": "2024-01-01T00:00:00Z", "complete_time": "2024-01-01T00:05:00Z"},
        )
        self.assertEqual(self.bus.of(download.id), ["task.queued", "task.done"])  # type: ignore[attr-defined]
        # The CPE repeats TransferComplete until acknowledged: the repeat finds nothing.
        self.assertIsNone(  # type: ignore[attr-defined]
            await self.service.transfer_complete(DEV, download.command_key, 0, "", "a", "b")
        )

    async def test_a_report_that_never_comes_fails_the_task_at_its_deadline(self) -> None:
        download = await self.service.submit(DEV, "Download", DOWNLOAD)
        self.clock.advance(10)
        waiting = await self.service.wait_for_transfer(await self.service.next_for_device(DEV))
        self.assertEqual(waiting.expires, T0 + 10 + 7 * 86400)  # type: ignore[attr-defined]
        self.clock.advance(7 * 86400 - 1)
        self.assertEqual(await self.service.expire_due(), 0)  # type: ignore[attr-defined]
        self.assertEqual((await self.service.get(download.id)).status, "running")  # type: ignore[attr-defined]
        self.clock.advance(1)
        self.assertEqual(await self.service.expire_due(), 1)  # type: ignore[attr-defined]
        failed = await self.service.get(download.id)
        self.assertEqual(  # type: ignore[attr-defined]
            (failed.status, failed.fault),
            ("failed", {"reason": "no completion report from the CPE within 604800 s"}),
        )
        self.assertEqual(self.bus.of(download.id), ["task.queued", "task.failed"])  # type: ignore[attr-defined]
        # A report arriving after all finds nothing waiting; nothing moves twice.
        self.assertIsNone(  # type: ignore[attr-defined]
            await self.service.transfer_complete(DEV, download.command_key, 0, "", "a", "b")
        )
        self.assertEqual(await self.service.expire_due(), 0)  # type: ignore[attr-defined]

    async def test_a_report_in_time_leaves_nothing_to_expire(self) -> None:
        download = await self.service.submit(DEV, "Download", DOWNLOAD)
        await self.service.wait_for_transfer(await self.service.next_for_device(DEV))
        await self.service.transfer_complete(DEV, download.command_key, 0, "", "a", "b")
        self.clock.advance(8 * 86400)
        self.assertEqual(await self.service.expire_due(), 0)  # type: ignore[attr-defined]
        self.assertEqual((await self.service.get(download.id)).status, "done")  # type: ignore[attr-defined]

    async def test_transfer_fault(self) -> None:
        download = await self.service.submit(DEV, "Download", DOWNLOAD)
        await self.service.wait_for_transfer(await self.service.next_for_device(DEV))
        failed = await self.service.transfer_complete(
            DEV, download.command_key, 9010, "Download failure", "", ""
        )
        self.assertEqual(
            (failed.status, failed.fault), ("failed", {"code": 9010, "string": "Download failure"})
        )  # type: ignore[attr-defined]
        self.assertEqual(self.bus.events[-1].type, "task.failed")  # type: ignore[attr-defined]

    async def test_reused_command_key_fails_older_waiter(self) -> None:
        first = await self.service.submit(DEV, "Download", {**DOWNLOAD, "command_key": "fw"})
        second = await self.service.submit(DEV, "Download", {**DOWNLOAD, "command_key": "fw"})
        await self.service.wait_for_transfer(await self.service.next_for_device(DEV))
        await self.service.wait_for_transfer(await self.service.next_for_device(DEV))
        self.assertEqual((await self.service.get(first.id)).status, "failed")  # type: ignore[attr-defined]
        done = await self.service.transfer_complete(DEV, "fw", 0, "", "", "")
        self.assertEqual(done.id, second.id)  # type: ignore[attr-defined]

    # -- finished list -------------------------------------------------------------------

    async def test_finished_list_trimmed(self) -> None:
        self.service = self.make(keep_finished=2)
        ids = []
        for _ in range(3):
            task = await self.service.submit(DEV, "GetParameterValues", GPV)
            await self.service.cancel(task.id)
            ids.append(task.id)
        queued = await self.service.submit(DEV, "GetParameterValues", GPV)
        listed = [t.id for t in await self.service.list_for_device(DEV)]
        self.assertEqual(listed, [queued.id, ids[2], ids[1]])  # type: ignore[attr-defined]
        self.assertIsNone(await self.service.get(ids[0]))  # type: ignore[attr-defined]

    # -- wait ----------------------------------------------------------------------------

    async def test_wait_unknown(self) -> None:
        self.assertIsNone(await self.service.wait("01h000000000000000000nope0", 5))  # type: ignore[attr-defined]

    async def test_wait_final_at_once(self) -> None:
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        cancelled = await self.service.cancel(task.id)
        self.assertEqual(await self.service.wait(task.id, 5), cancelled)  # type: ignore[attr-defined]

    async def test_wait_timeout_gives_current(self) -> None:
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        got = await self.drive(self.service.wait(task.id, 5))
        self.assertEqual(got, task)  # type: ignore[attr-defined]
        self.assertGreaterEqual(self.clock.seconds(), T0 + 5)  # type: ignore[attr-defined]
        self.assertEqual(self.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]

    async def test_wait_until_done(self) -> None:
        await self.service.submit(DEV, "GetParameterValues", GPV)
        task = await self.service.next_for_device(DEV)
        waiting = self.service.wait(task.id, 60)
        await self.settle()
        self.assertFalse(waiting.called)  # type: ignore[attr-defined]
        done = await self.service.complete(task, {"x": 1})
        self.assertEqual(await self.drive(waiting), done)  # type: ignore[attr-defined]
        self.assertLess(self.clock.seconds(), T0 + 60)  # type: ignore[attr-defined]
        self.assertEqual(self.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]

    async def test_wait_cancelled_leaves_no_timer(self) -> None:
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        waiting = self.service.wait(task.id, 60)
        await self.settle()
        waiting.addErrback(lambda _: None)
        waiting.cancel()
        await self.settle()
        self.assertEqual(self.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]


class MemoryTaskTests(TaskContract, TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = RecordingBus()
        self.service = self.make()

    def make(self, **kw: Any) -> MemoryTaskService:
        service = MemoryTaskService(events=self.bus, clock=self.clock, node="n1", **kw)
        service.add_device(DEV)
        service.add_device(OTHER)
        return service

    def test_idempotency_key_forgotten_after_a_day(self) -> None:
        first = self.successResultOf(self.service.submit(DEV, "Reboot", {}, idempotency_key="k"))
        self.clock.advance(IDEMPOTENCY_TTL + 1)
        later = self.successResultOf(self.service.submit(DEV, "Reboot", {}, idempotency_key="k"))
        self.assertFalse(replayed(later))
        self.assertNotEqual(later.id, first.id)

    def test_devices_container(self) -> None:
        service = MemoryTaskService(events=self.bus, clock=self.clock, devices={"d1": {}})
        task = self.successResultOf(service.submit("d1", "GetParameterValues", GPV))
        self.assertEqual(task.device_id, "d1")
        self.failureResultOf(service.submit("d2", "GetParameterValues", GPV), UnknownDevice)


@pytest.mark.usefixtures("redis_for_class")
class RedisTaskTests(TaskContract, TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        self.redis = await connect(self, self.redis_server)
        self.prefix = unique_prefix()
        for device_id in (DEV, OTHER):
            await self.redis.execute_command(
                "HSET", f"{self.prefix}device:{device_id}", "id", device_id
            )
        self.clock = Clock()
        self.clock.advance(T0)
        self.bus = RecordingBus()
        self.service = self.make()
        self.addCleanup(self.every_event_is_in_the_stream_once)

    async def test_complete_caches_the_answers_values_in_the_same_script(self) -> None:
        """The last answer's values go to the parameter cache in the script that marks the
        task done (one round trip), as update_parameters writes them; also when the task
        is no longer running (they are what the CPE answered)."""
        params = f"{self.prefix}device:{DEV}:params"
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        running = await self.service.next_for_device(DEV)
        values = [("Device.DeviceInfo.SoftwareVersion", "1.2.3", "xsd:string")]
        done = await self.service.complete(running, {"parameters": {}}, values)
        self.assertEqual((done.id, done.status), (task.id, "done"))
        self.assertEqual(
            await self.redis.hgetall(params),
            {"Device.DeviceInfo.SoftwareVersion": '["1.2.3", "xsd:string"]'},
        )
        self.assertEqual(self.bus.of(task.id), ["task.queued", "task.done"])
        late = [("Device.DeviceInfo.UpTime", "42", "xsd:unsignedInt")]
        await self.service.complete(running, {"parameters": {}}, late)  # lost the race
        self.assertEqual(
            await self.redis.hget(params, "Device.DeviceInfo.UpTime"), '["42", "xsd:unsignedInt"]'
        )
        self.assertEqual(self.bus.of(task.id), ["task.queued", "task.done"])

    def count_queue_reads(self) -> list[int]:
        """Counts the task store's own reads of a queue (its _QUEUE script) from now on."""
        from cwmpgw.tasks import redis as tasks_redis

        reads = [0]
        real = self.redis.eval

        def counting(script: str, keys: Any = (), args: Any = ()) -> Any:
            if script is tasks_redis._QUEUE:
                reads[0] += 1
            return real(script, keys, args)

        self.patch(self.redis, "eval", counting)
        return reads

    async def test_a_tasks_end_reads_the_queue_for_the_sessions_next(self) -> None:
        """complete() and fail() read the queue and its owner in their script; the session's
        next next_for_device uses that read (one round trip less per task), and only it."""
        from cwmpgw.store.sessionlock import RedisSessionLock

        await RedisSessionLock(self.redis, self.prefix).take(DEV, "n1:s1", 60)
        first = await self.service.submit(DEV, "GetParameterValues", GPV)
        second = await self.service.submit(DEV, "Reboot", {})
        reads = self.count_queue_reads()
        running = await self.service.next_for_device(DEV, "n1:s1")
        self.assertEqual((running.id, reads[0]), (first.id, 1))
        await self.service.complete(running, {"parameters": {}})
        running = await self.service.next_for_device(DEV, "n1:s1")
        self.assertEqual((running.id, running.status, reads[0]), (second.id, "running", 1))
        await self.service.fail(running, {"code": 9002})
        self.assertIsNone(await self.service.next_for_device(DEV, "n1:s1"))
        self.assertEqual(reads[0], 1)
        self.assertIsNone(await self.service.next_for_device(DEV, "n1:s1"))  # used once
        self.assertEqual(reads[0], 2)
        self.assertEqual(self.bus.of(first.id), ["task.queued", "task.done"])
        self.assertEqual(self.bus.of(second.id), ["task.queued", "task.failed"])

    async def pending_inform(self) -> Any:
        return await self.redis.hget(f"{self.prefix}device:{DEV}", "pending_inform")

    async def test_the_queue_read_with_the_inform_starts_the_first_task(self) -> None:
        """prefetch() goes out with the Inform's write; the session's first turn starts its
        first task from it (checking the owner, and telling Redis the session went on:
        the Inform is no longer pending) without reading the queue again."""
        from cwmpgw.store.sessionlock import RedisSessionLock

        await RedisSessionLock(self.redis, self.prefix).take(DEV, "n1:s1", 60)
        await self.redis.hset(f"{self.prefix}device:{DEV}", "pending_inform", "f1")
        first = await self.service.submit(DEV, "GetParameterValues", GPV)
        reads = self.count_queue_reads()
        self.service.prefetch(DEV, "n1:s1")
        await self.redis.ping()  # answered after the read: it has arrived
        self.assertEqual((reads[0], await self.pending_inform()), (1, "f1"))
        later = await self.service.submit(DEV, "Reboot", {})  # queued after the read
        running = await self.service.next_for_device(DEV, "n1:s1")
        self.assertEqual((running.id, running.status, reads[0]), (first.id, "running", 1))
        self.assertIsNone(await self.pending_inform())
        await self.service.complete(running, {})
        self.assertEqual((await self.service.next_for_device(DEV, "n1:s1")).id, later.id)
        self.assertEqual(reads[0], 1)

    async def test_an_inform_read_that_starts_nothing_is_read_again(self) -> None:
        """Empty, or holding only tasks that are not started (expired), a read made with the
        Inform is not the turn's answer: a task may have come since, and the turn's read
        is what tells Redis the session went on."""
        from cwmpgw.store.sessionlock import RedisSessionLock

        await RedisSessionLock(self.redis, self.prefix).take(DEV, "n1:s1", 60)
        await self.redis.hset(f"{self.prefix}device:{DEV}", "pending_inform", "f1")
        reads = self.count_queue_reads()
        self.service.prefetch(DEV, "n1:s1")
        await self.redis.ping()
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        running = await self.service.next_for_device(DEV, "n1:s1")
        self.assertEqual((running.id, reads[0]), (task.id, 2))
        self.assertIsNone(await self.pending_inform())
        await self.service.complete(running, {})
        await self.redis.hset(f"{self.prefix}device:{DEV}", "pending_inform", "f2")
        old = await self.service.submit(DEV, "Reboot", {}, expires_in=5)
        self.service.prefetch(DEV, "n1:s1")
        await self.redis.ping()
        self.clock.advance(10)
        self.assertIsNone(await self.service.next_for_device(DEV, "n1:s1"))
        self.assertEqual((await self.service.get(old.id)).status, "expired")
        self.assertEqual(reads[0], 4)  # the read with the Inform, then the turn's
        self.assertIsNone(await self.pending_inform())

    async def test_a_prefetched_queue_is_never_stale(self) -> None:
        """What changes the device's tasks after the read drops it; a session that no longer
        owns the device, or another session, reads again (and is told it is superseded)."""
        from cwmpgw.store.sessionlock import RedisSessionLock, Superseded

        lock = RedisSessionLock(self.redis, self.prefix)
        await lock.take(DEV, "n1:s1", 60)
        tasks = [await self.service.submit(DEV, "GetParameterValues", GPV) for _ in range(3)]
        reads = self.count_queue_reads()
        await self.service.complete(await self.service.next_for_device(DEV, "n1:s1"), {})
        await self.service.requeue(await self.service.next_for_device(DEV, "n1:s1"))
        self.assertEqual(reads[0], 1)  # the second start used the read of the first's end
        requeued = await self.service.next_for_device(DEV, "n1:s1")
        self.assertEqual((requeued.attempts, reads[0]), (2, 2))  # requeue dropped the read
        await self.service.complete(requeued, {})
        await lock.take(DEV, "n2:s2", 60)  # a newer session elsewhere, after the read
        with self.assertRaises(Superseded):  # the start checks the owner the read saw
            await self.service.next_for_device(DEV, "n1:s1")
        third = await self.service.get(tasks[2].id)
        self.assertEqual((third.status, third.attempts, reads[0]), ("queued", 0, 2))
        await self.service.complete(await self.service.next_for_device(DEV, "n2:s2"), {})
        self.assertEqual(reads[0], 3)
        await lock.take(DEV, "n3:s3", 60)
        self.assertIsNone(await self.service.next_for_device(DEV, "n3:s3"))  # not its read
        self.assertEqual(reads[0], 4)
        self.assertEqual([(await self.service.get(t.id)).status for t in tasks], ["done"] * 3)

    async def stream(self) -> list[tuple[str, str]]:
        """(type, envelope JSON) of every entry of the event stream, oldest first."""
        entries = await self.redis.execute_command("XRANGE", self.prefix + "events", "-", "+")
        out = []
        for _, fields in entries:
            entry = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append((entry["type"], entry["event"]))
        return out

    async def every_event_is_in_the_stream_once(self) -> None:
        """After every test: the events the service reported are the stream, byte for byte
        and in order (no change without its event, no event twice), and none of them went
        through the sink's publish as well."""
        self.assertEqual(await self.stream(), [(e.type, e.to_json()) for e in self.bus.events])
        self.assertEqual(self.bus.published, [])

    def make(self, **kw: Any) -> Any:
        from cwmpgw.tasks.redis import RedisTaskService

        kw.setdefault("events", self.bus)
        kw.setdefault("clock", self.clock)
        return RedisTaskService(self.redis, self.prefix, node=kw.pop("node", "n1"), **kw)

    async def settle(self) -> None:
        # Replies come in order: once PING is answered, every earlier command has been.
        await self.redis.ping()

    async def test_each_change_stores_its_event_even_if_the_gateway_dies_after_it(self) -> None:
        """The event is written by the script that changes the task: a gateway that dies
        right after the change (here: a sink that drops everything, as a dead process
        would) still leaves every event in the stream, once, in the order of the changes,
        and heard on pub/sub."""
        from cwmpgw.bus.listener import EventListener
        from cwmpgw.tasks.redis import RedisTaskService

        prefix = unique_prefix()  # apart from the stream the cleanup compares with self.bus
        await self.redis.execute_command("HSET", f"{prefix}device:{DEV}", "id", DEV)
        endpoint = TCP4ClientEndpoint(reactor, self.redis_server.host, self.redis_server.port)
        listener = EventListener(endpoint.connect, prefix, clock=reactor)
        heard: list[dict[str, Any]] = []
        listener.subscribe(heard.append)
        listener.startService()
        self.addCleanup(listener.stopService)
        await listener.whenSubscribed().addTimeout(10, reactor)

        dead = RedisTaskService(
            self.redis, prefix, events=MemoryEventBus(), clock=self.clock, node="n1", max_attempts=1
        )
        changes: list[Task] = []

        async def change(d: Deferred[Task]) -> Task:
            task = await d
            changes.append(task)
            return task

        cancelled = await change(dead.submit(DEV, "Reboot", {}))
        await change(dead.cancel(cancelled.id))
        await change(dead.submit(DEV, "GetParameterValues", GPV))
        await change(dead.complete(await dead.next_for_device(DEV), {"parameters": {}}))
        await change(dead.submit(DEV, "Reboot", {}))
        await change(dead.fail(await dead.next_for_device(DEV), {"code": 9002}))
        download = await change(dead.submit(DEV, "Download", DOWNLOAD))
        await dead.wait_for_transfer(await dead.next_for_device(DEV))  # running: no event
        await change(dead.transfer_complete(DEV, download.command_key, 0, "", "s", "c"))
        worn = await change(dead.submit(DEV, "Reboot", {}))
        await dead.requeue(await dead.next_for_device(DEV))  # queued again: no event
        self.assertIsNone(await dead.next_for_device(DEV))  # its one attempt used: failed
        changes.append(await dead.get(worn.id))
        old = await change(dead.submit(DEV, "Reboot", {}, expires_in=5))
        self.clock.advance(5)
        self.assertEqual(await dead.expire_due(), 1)
        changes.append(await dead.get(old.id))

        entries = await self.redis.execute_command("XRANGE", prefix + "events", "-", "+")
        stream = [(fields[1], json.loads(fields[3])) for _, fields in entries]
        self.assertEqual(
            [(kind, envelope["type"], envelope["data"]) for kind, envelope in stream],
            [("task." + t.status, "task." + t.status, t.to_dict()) for t in changes],
        )
        self.assertEqual(
            [e["type"] for _, e in stream],
            [
                *("task.queued", "task.cancelled", "task.queued", "task.done", "task.queued"),
                *("task.failed", "task.queued", "task.done", "task.queued", "task.failed"),
                *("task.queued", "task.expired"),
            ],
        )
        for _, envelope in stream:  # the documented envelope, as every other event's
            self.assertEqual(list(envelope), ["v", "id", "type", "ts", "device", "node", "data"])
            self.assertEqual((envelope["v"], envelope["node"]), (1, "n1"))
            self.assertEqual(envelope["device"]["id"], DEV)
        self.assertEqual(len({e["id"] for _, e in stream}), len(stream))
        for _ in range(250):
            if len(heard) >= len(stream):
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(heard, [envelope for _, envelope in stream])

    async def test_metrics_count_each_task_event_once(self) -> None:
        from cwmpgw.metrics import MeteredEventSink, Metrics

        metrics = Metrics()
        self.service = self.make(events=MeteredEventSink(self.bus, metrics))
        task = await self.service.submit(DEV, "Reboot", {})
        await self.service.cancel(task.id)
        await self.service.cancel(task.id)  # already final: no change, no event
        for kind in ("task.queued", "task.cancelled"):
            count = metrics.registry.get_sample_value(
                "cwmpgw_events_published_total", {"type": kind}
            )
            self.assertEqual(count, 1.0)
        self.assertEqual(self.bus.of(task.id), ["task.queued", "task.cancelled"])

    async def test_idempotency_key_kept_a_day(self) -> None:
        task = await self.service.submit(DEV, "Reboot", {}, idempotency_key="bo-1")
        key = f"{self.prefix}idempotency:bo-1"
        stored = await self.redis.get(key)
        self.assertEqual(stored.split(" ")[0], task.id)
        ttl = int(await self.redis.execute_command("TTL", key))
        self.assertTrue(IDEMPOTENCY_TTL - 5 < ttl <= IDEMPOTENCY_TTL, ttl)

    async def test_key_layout(self) -> None:
        r, p = self.redis, self.prefix
        task = await self.service.submit(DEV, "Download", DOWNLOAD, expires_in=60)
        self.assertEqual(json.loads(await r.get(f"{p}task:{task.id}")), task.to_dict())
        self.assertEqual(await r.lrange(f"{p}device:{DEV}:queue", 0, -1), [task.id])
        self.assertEqual(float(await r.zscore(f"{p}tasks:expiry", task.id)), T0 + 60)
        running = await self.service.next_for_device(DEV)
        self.assertIsNone(await r.zscore(f"{p}tasks:expiry", task.id))
        await self.service.wait_for_transfer(running)
        self.assertEqual(await r.lrange(f"{p}device:{DEV}:queue", 0, -1), [])
        self.assertEqual(await r.get(f"{p}device:{DEV}:transfer:{task.command_key}"), task.id)
        await self.service.transfer_complete(DEV, task.command_key, 0, "", "", "")
        self.assertIsNone(await r.get(f"{p}device:{DEV}:transfer:{task.command_key}"))
        self.assertEqual(await r.lrange(f"{p}device:{DEV}:finished", 0, -1), [task.id])

    async def test_queue_read_checks_the_session_owner(self) -> None:
        from cwmpgw.store.sessionlock import RedisSessionLock, Superseded

        lock = RedisSessionLock(self.redis, self.prefix)
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        await lock.take(DEV, "n2:newer", 60)  # the device started a session elsewhere
        with self.assertRaises(Superseded):
            await self.service.next_for_device(DEV, "n1:older")
        stored = await self.service.get(task.id)
        self.assertEqual((stored.status, stored.attempts), ("queued", 0))  # nothing started
        with self.assertRaises(Superseded):  # the queue being empty changes nothing
            await self.service.next_for_device(OTHER, "n1:older")
        running = await self.service.next_for_device(DEV, "n2:newer")
        self.assertEqual((running.id, running.status, running.attempts), (task.id, "running", 1))
        await lock.take(OTHER, "n2:newer", 60)
        self.assertIsNone(await self.service.next_for_device(OTHER))  # no owner given: no check

    async def test_requeue_puts_back_into_expiry_index(self) -> None:
        task = await self.service.submit(DEV, "GetParameterValues", GPV, expires_in=10)
        await self.service.requeue(await self.service.next_for_device(DEV))
        self.clock.advance(10)
        self.assertEqual(await self.service.expire_due(), 1)
        self.assertEqual((await self.service.get(task.id)).status, "expired")

    async def test_transfer_survives_restart(self) -> None:
        download = await self.service.submit(DEV, "Download", DOWNLOAD)
        await self.service.wait_for_transfer(await self.service.next_for_device(DEV))
        restarted = self.make(node="n2")
        done = await restarted.transfer_complete(DEV, download.command_key, 0, "", "s", "c")
        self.assertEqual((done.id, done.status), (download.id, "done"))
        self.assertEqual(self.bus.events[-1].node, "n2")

    async def test_keep_finished_zero_deletes_at_once(self) -> None:
        self.service = self.make(keep_finished=0)
        task = await self.service.submit(DEV, "GetParameterValues", GPV)
        self.assertEqual((await self.service.cancel(task.id)).status, "cancelled")
        self.assertIsNone(await self.service.get(task.id))
        self.assertEqual(await self.redis.exists(f"{self.prefix}device:{DEV}:finished"), 0)


@pytest.mark.usefixtures("redis_for_class")
class TwoNodeTests(TestCase):
    """Two gateway nodes on one Redis: a wait on one ends when the other finishes the task."""

    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        from cwmpgw.bus.listener import EventListener
        from cwmpgw.bus.redis import RedisEventBus
        from cwmpgw.tasks.redis import RedisTaskService

        self.redis = await connect(self, self.redis_server)
        prefix = unique_prefix()
        await self.redis.execute_command("HSET", f"{prefix}device:{DEV}", "id", DEV)
        # Node B's timers run on a clock nobody advances: only the event can end its wait.
        self.clock = Clock()
        self.clock.advance(T0)
        endpoint = TCP4ClientEndpoint(reactor, self.redis_server.host, self.redis_server.port)
        self.listener = EventListener(endpoint.connect, prefix, clock=self.clock)
        self.listener.startService()
        self.addCleanup(self.listener.stopService)
        await self.listener.whenSubscribed().addTimeout(10, reactor)
        bus = RedisEventBus(self.redis, prefix)
        common = {"events": bus, "clock": self.clock}
        self.node_a = RedisTaskService(self.redis, prefix, node="a", **common)  # type: ignore[arg-type]
        self.node_b = RedisTaskService(
            self.redis,
            prefix,
            node="b",
            listener=self.listener,
            **common,  # type: ignore[arg-type]
        )

    def timers(self) -> list[Any]:
        """The clock's pending calls but the listener's own (it stops listening a while
        after the last wait)."""
        linger = self.listener._stop_listening
        return [c for c in self.clock.getDelayedCalls() if c.func != linger]

    async def test_wait_ends_on_other_nodes_completion(self) -> None:
        task = await self.node_b.submit(DEV, "GetParameterValues", GPV)
        waiting = self.node_b.wait(task.id, 30)
        running = await self.node_a.next_for_device(DEV)
        self.assertFalse(waiting.called)
        done = await self.node_a.complete(running, {"parameters": {"a": "1"}})
        got: Task = await waiting.addTimeout(10, reactor)
        self.assertEqual(got, done)
        self.assertEqual(self.timers(), [])

    async def test_wait_ends_on_cancel_and_times_out_with_current(self) -> None:
        task = await self.node_b.submit(DEV, "GetParameterValues", GPV)
        waiting = self.node_b.wait(task.id, 30)
        cancelled = await self.node_a.cancel(task.id)
        self.assertEqual(await waiting.addTimeout(10, reactor), cancelled)
        other = await self.node_b.submit(DEV, "GetParameterValues", GPV)
        waiting = self.node_b.wait(other.id, 30)
        await self.redis.ping()
        self.clock.advance(30)
        self.assertEqual(await waiting.addTimeout(10, reactor), other)
        self.assertEqual(self.timers(), [])


class HangingRedis:
    """A connection whose commands never get an answer (Redis unreachable)."""

    def execute_command(self, *args: Any) -> Deferred[Any]:
        return Deferred()


class EdgeTests(SynchronousTestCase):
    def test_wait_fails_instead_of_hanging_when_redis_is_silent(self) -> None:
        from cwmpgw.tasks.redis import RedisTaskService

        clock = Clock()
        service = RedisTaskService(
            HangingRedis(), "p:", events=MemoryEventBus(), clock=clock, node="n"
        )
        d = service.wait("01h000000000000000000abcde", 5)
        clock.advance(14.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.failureResultOf(d, DeferredTimeout)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_publish_failure_does_not_undo_the_task(self) -> None:
        @implementer(IEventSink)
        class BrokenBus:
            def publish(self, event: Event) -> Deferred[None]:
                return fail(ConnectionError("redis down"))

        clock = Clock()
        service = MemoryTaskService(events=BrokenBus(), clock=clock)
        service.add_device(DEV)
        task = self.successResultOf(service.submit(DEV, "GetParameterValues", GPV))
        self.assertEqual(self.successResultOf(service.get(task.id)), task)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
