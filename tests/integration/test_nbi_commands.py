"""The Redis command stream against a real redis-server: entries become tasks exactly once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.nbi.commands import CommandConsumer
from cwmpgw.tasks.memory import MemoryTaskService
from cwmpgw.tasks.model import Task
from tests.support.redis_server import unique_prefix

DEV = "9CA2F4-EC220_G5_V3-22275K2000315"
GROUP = "cwmpgw"


def memory_tasks() -> MemoryTaskService:
    """The contract-tested in-memory provider, knowing DEV; its task events go to a bus of
    their own (the tests look at the consumer's)."""
    tasks = MemoryTaskService(events=MemoryEventBus(), clock=reactor)  # type: ignore[arg-type]
    tasks.add_device(DEV)
    return tasks


def submitted(tasks: MemoryTaskService) -> list[Task]:
    return list(tasks.tasks.values())


def numbered(n: int) -> dict[str, Any]:
    """Reboot arguments that tell the entries apart."""
    return {"command_key": f"n{n}"}


def number(task: Task) -> int:
    return int(task.args["command_key"][1:])


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the reactor run until the condition holds (a deadline, not a timing assertion)."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"gave up waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


def command(**fields: Any) -> str:
    return json.dumps(fields)


@pytest.mark.usefixtures("redis_for_class")
class CommandStreamTests(TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        import txredisapi

        self.prefix = unique_prefix()
        self.key = self.prefix + "commands"
        self.redis = await self.connect()
        self.addCleanup(self.redis.disconnect)
        self.tasks = memory_tasks()
        self.bus = MemoryEventBus()
        self.txredisapi = txredisapi

    def connect(self) -> Deferred[Any]:
        import txredisapi

        d: Deferred[Any] = txredisapi.Connection(
            self.redis_server.host, self.redis_server.port, convertNumbers=False
        )
        return d

    def connect_lazily(self) -> Deferred[Any]:
        import txredisapi

        return succeed(
            txredisapi.lazyConnection(
                self.redis_server.host, self.redis_server.port, convertNumbers=False
            )
        )

    def consumer(
        self,
        node: str = "node-a",
        *,
        tasks: MemoryTaskService | None = None,
        clock: IReactorTime | None = None,
        **kwargs: Any,
    ) -> CommandConsumer:
        c = CommandConsumer(
            self.redis,
            self.prefix,
            connect=kwargs.pop("connect", self.connect),
            tasks=tasks or self.tasks,
            events=self.bus,
            clock=clock or reactor,  # type: ignore[arg-type]
            node=node,
            block_ms=kwargs.pop("block_ms", 200),
            **kwargs,
        )
        c.startService()
        self.addCleanup(lambda: c.stopService() if c.running else None)
        return c

    async def xadd(self, **fields: str) -> str:
        flat = [x for kv in fields.items() for x in kv]
        entry_id: str = await self.redis.execute_command("XADD", self.key, "*", *flat)
        return entry_id

    async def pending(self) -> int:
        summary = await self.redis.execute_command("XPENDING", self.key, GROUP)
        return int(summary[0])

    async def test_good_commands_become_tasks_and_are_acked(self) -> None:
        await self.xadd(task=command(device_id=DEV, type="Reboot", args={"command_key": "r1"}))
        await self.xadd(
            task=command(
                device_id=DEV,
                type="GetParameterValues",
                args={"parameter_names": ["Device."]},
                expires_in=60,
            )
        )
        c = self.consumer()
        await until(lambda: len(submitted(self.tasks)) == 2, "two tasks")
        first, second = submitted(self.tasks)
        self.assertEqual(
            (first.device_id, first.type, first.args), (DEV, "Reboot", {"command_key": "r1"})
        )
        self.assertEqual(
            (second.type, second.expires - second.created), ("GetParameterValues", 60.0)
        )
        await self.wait_for_pending(0)
        # Commands added while it runs are picked up too.
        await self.xadd(task=command(device_id=DEV, type="Reboot"))
        await until(lambda: len(submitted(self.tasks)) == 3, "a third task")
        await self.wait_for_pending(0)
        self.assertEqual(self.bus.events, [])
        await c.stopService()
        # Stopped: nothing more is read.
        await self.xadd(task=command(device_id=DEV, type="Reboot"))
        await deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(submitted(self.tasks)), 3)

    async def wait_for_pending(self, count: int) -> None:
        for _ in range(250):
            if await self.pending() == count:
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(await self.pending(), count)

    async def test_an_entry_added_twice_with_one_idempotency_key_queues_one_task(self) -> None:
        # A back office whose XADD answer was lost adds the entry again: with a key, the
        # second entry is acknowledged without queueing anything.
        from cwmpgw.tasks.memory import MemoryTaskService

        tasks = MemoryTaskService(events=self.bus, clock=reactor)  # type: ignore[arg-type]
        tasks.add_device(DEV)
        entry = command(device_id=DEV, type="Reboot", idempotency_key="bo-1")
        await self.xadd(task=entry)
        await self.xadd(task=entry)
        await self.xadd(task=command(device_id=DEV, type="FactoryReset", idempotency_key="bo-1"))
        c = self.consumer(tasks=tasks)  # type: ignore[arg-type]
        await until(lambda: bool(self.bus.of_type("command.rejected")), "the third entry")
        await self.wait_for_pending(0)
        await c.stopService()
        [queued] = [e.data for e in self.bus.of_type("task.queued")]
        self.assertEqual(queued["type"], "Reboot")
        self.assertEqual(len(tasks.tasks), 1)
        [rejected] = self.bus.of_type("command.rejected")
        self.assertEqual(
            rejected.data["reason"], "idempotency_key: already used for another request"
        )

    async def test_malformed_commands_are_rejected_and_acked(self) -> None:
        bad = [
            await self.xadd(other="x"),
            await self.xadd(task="{not json"),
            await self.xadd(task="[1, 2]"),
            await self.xadd(task=command(type="Reboot")),
            await self.xadd(task=command(device_id=DEV, type="Explode")),
            await self.xadd(task=command(device_id="nope", type="Reboot")),
            await self.xadd(task=command(device_id=DEV, type="Reboot", expires_in=-1)),
            await self.xadd(task=command(device_id=DEV, type="Reboot", colour="red")),
        ]
        await self.xadd(task=command(device_id=DEV, type="Reboot"))
        self.consumer()
        await until(lambda: len(submitted(self.tasks)) == 1, "the good command after the bad ones")
        await until(lambda: len(self.bus.events) == len(bad), "one rejection per bad command")
        await self.wait_for_pending(0)
        events = self.bus.of_type("command.rejected")
        self.assertEqual([e.data["entry_id"] for e in events], bad)
        reasons = [e.data["reason"] for e in events]
        self.assertEqual(reasons[0], "missing field 'task'")
        self.assertIn("not valid JSON", reasons[1])
        self.assertEqual(reasons[2], "the body must be a JSON object")
        self.assertEqual(reasons[3], "device_id: required")
        self.assertEqual(reasons[4], "type: unknown task type 'Explode'")
        self.assertEqual(reasons[5], "unknown device nope")
        self.assertIn("expires_in", reasons[6])
        self.assertIn("colour: unknown field", reasons[7])
        self.assertEqual(events[4].device, {**(events[4].device or {}), "id": DEV})
        self.assertIsNone(events[0].device)
        self.assertEqual({e.node for e in events}, {"node-a"})

    async def test_dead_consumers_entries_are_claimed_once(self) -> None:
        await self.redis.execute_command("XGROUP", "CREATE", self.key, GROUP, "0", "MKSTREAM")
        old = [
            await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(n)))
            for n in range(2)
        ]
        await self.redis.execute_command(
            "XREADGROUP", "GROUP", GROUP, "dead", "COUNT", "10", "STREAMS", self.key, ">"
        )
        # As if "dead" had taken them an hour ago and never come back.
        await self.redis.execute_command(
            "XCLAIM", self.key, GROUP, "dead", "0", *old, "IDLE", "3600000"
        )
        recent = await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(2)))
        await self.redis.execute_command(
            "XREADGROUP", "GROUP", GROUP, "busy", "COUNT", "10", "STREAMS", self.key, ">"
        )
        c = self.consumer()
        await until(lambda: len(submitted(self.tasks)) == 2, "the dead consumer's entries")
        await self.wait_for_pending(1)
        await c.stopService()
        self.assertEqual(sorted(number(t) for t in submitted(self.tasks)), [0, 1])
        # The entry of a consumer that is merely busy stays with it.
        details = await self.redis.execute_command("XPENDING", self.key, GROUP, "-", "+", "10")
        self.assertEqual([(d[0], d[1]) for d in details], [(recent, "busy")])
        # A restart processes nothing again.
        c2 = self.consumer()
        await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(3)))
        await until(lambda: len(submitted(self.tasks)) == 3, "the next command")
        await c2.stopService()
        self.assertEqual(sorted(number(t) for t in submitted(self.tasks)), [0, 1, 3])

    async def test_claimed_entries_deleted_from_the_stream_are_acked(self) -> None:
        clock = Clock()
        await self.redis.execute_command("XGROUP", "CREATE", self.key, GROUP, "0", "MKSTREAM")
        gone = await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(0)))
        await self.redis.execute_command(
            "XREADGROUP", "GROUP", GROUP, "dead", "COUNT", "10", "STREAMS", self.key, ">"
        )
        await self.redis.execute_command("XDEL", self.key, gone)
        c = self.consumer(clock=clock)
        await until(lambda: c._conn is not None and c._interruptible is not None, "a read")
        self.assertEqual(await self.pending(), 1)  # not idle for a minute yet at start
        await self.redis.execute_command(
            "XCLAIM", self.key, GROUP, "dead", "0", gone, "IDLE", "3600000"
        )
        # The next claim pass is due. A minute on this clock is also past the deadline of
        # the read under way, which is given up and made again after a back-off: let the
        # clock run on, a second at a time, until the claim happened.
        clock.advance(60)
        for _ in range(30):
            if await self.pending() == 0:
                break
            clock.advance(1)
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(await self.pending(), 0)
        await c.stopService()
        self.assertEqual(submitted(self.tasks), [])
        self.assertEqual(self.bus.events, [])

    async def test_own_pending_entries_are_recovered_at_start(self) -> None:
        await self.redis.execute_command("XGROUP", "CREATE", self.key, GROUP, "0", "MKSTREAM")
        await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(0)))
        # This node read it, then crashed before acknowledging.
        await self.redis.execute_command(
            "XREADGROUP", "GROUP", GROUP, "node-a", "COUNT", "10", "STREAMS", self.key, ">"
        )
        c = self.consumer("node-a")
        await until(lambda: len(submitted(self.tasks)) == 1, "the recovered entry")
        await self.wait_for_pending(0)
        await c.stopService()
        self.assertEqual(submitted(self.tasks)[0].args, numbered(0))

    async def test_two_consumers_never_process_an_entry_twice(self) -> None:
        count = 40
        for n in range(count):
            await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(n)))
        a = self.consumer("node-a", batch=3)
        b = self.consumer("node-b", batch=3, connect=self.connect_lazily)
        await until(lambda: len(submitted(self.tasks)) >= count, "every command")
        await self.wait_for_pending(0)
        await a.stopService()
        await b.stopService()
        numbers = [number(t) for t in submitted(self.tasks)]
        self.assertEqual(sorted(numbers), list(range(count)))  # each exactly once
        self.assertEqual(self.bus.events, [])

    async def test_redis_error_backs_off_and_retries_without_acking(self) -> None:
        clock = Clock()
        self.tasks.failures = [ConnectionRefusedError("redis went away")]
        await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(0)))
        c = self.consumer(clock=clock)
        await until(lambda: bool(clock.getDelayedCalls()), "the back-off")
        self.assertEqual(submitted(self.tasks), [])
        self.assertEqual(await self.pending(), 1)  # not acknowledged
        clock.advance(1)
        await until(lambda: len(submitted(self.tasks)) == 1, "the retry")
        await self.wait_for_pending(0)
        self.assertEqual(self.bus.events, [])  # a Redis error is no rejection
        await c.stopService()

    async def test_a_command_that_keeps_failing_is_rejected_in_the_end(self) -> None:
        clock = Clock()
        self.tasks.failures = [RuntimeError("bug"), RuntimeError("bug")]
        bad = await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(0)))
        await self.xadd(task=command(device_id=DEV, type="Reboot", args=numbered(1)))
        c = self.consumer(clock=clock, max_attempts=2)
        await until(lambda: bool(clock.getDelayedCalls()), "the back-off")
        clock.advance(1)
        await until(lambda: len(submitted(self.tasks)) == 1, "the next command")
        await self.wait_for_pending(0)
        (event,) = self.bus.of_type("command.rejected")
        self.assertEqual(
            event.data, {"entry_id": bad, "reason": "internal error while queueing the task"}
        )
        self.assertEqual(submitted(self.tasks)[0].args, numbered(1))
        await c.stopService()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    async def test_a_read_never_answered_gets_a_new_connection(self) -> None:
        # The first dedicated connection never answers (a hung Redis, or one txredisapi
        # stopped reconnecting): past its deadline it is closed and replaced.
        clock = Clock()
        hung: list[Any] = []

        class Hung:
            closed = False

            def execute_command(self, *args: Any) -> Deferred[Any]:
                # Nothing pending to recover; the blocking read then hangs.
                return Deferred() if "BLOCK" in args else succeed(None)

            def disconnect(self) -> Deferred[None]:
                self.closed = True
                return succeed(None)

        def connect() -> Deferred[Any]:
            if not hung:
                hung.append(Hung())
                return succeed(hung[0])
            return self.connect()

        await self.xadd(task=command(device_id=DEV, type="Reboot"))
        c = self.consumer(clock=clock, connect=connect)
        await until(lambda: c._interruptible is not None and c._conn is hung[0], "the read")
        clock.advance(10.2)  # _READ_MARGIN (10 s) past the BLOCK time: given up
        await until(lambda: bool(clock.getDelayedCalls()), "the back-off")
        self.assertTrue(hung[0].closed)
        self.assertEqual(submitted(self.tasks), [])
        clock.advance(1)
        await until(lambda: len(submitted(self.tasks)) == 1, "the entry, on a new connection")
        await self.wait_for_pending(0)
        await c.stopService()

    async def test_stop_interrupts_a_blocking_read(self) -> None:
        c = self.consumer(block_ms=60000)
        await until(lambda: c._interruptible is not None and c._conn is not None, "the read")
        stopped = c.stopService()
        await stopped.addTimeout(10, reactor)
        self.assertIsNone(c._conn)
        self.assertFalse(c.running)

    async def test_group_created_on_a_new_stream_and_existing_group_kept(self) -> None:
        c = self.consumer()
        await until(lambda: c._conn is not None, "the start")
        groups = await self.redis.execute_command("XINFO", "GROUPS", self.key)
        self.assertEqual(len(groups), 1)
        await c.stopService()
        c2 = self.consumer()  # BUSYGROUP is fine
        await self.xadd(task=command(device_id=DEV, type="Reboot"))
        await until(lambda: len(submitted(self.tasks)) == 1, "a task")
        await c2.stopService()

    async def test_stop_while_connecting_closes_a_late_connection(self) -> None:
        arriving: Deferred[Any] = Deferred()

        class Late:
            closed = False

            def disconnect(self) -> Deferred[None]:
                self.closed = True
                return succeed(None)

        c = self.consumer(connect=lambda: arriving)
        await until(lambda: c._interruptible is not None, "the connection attempt")
        await c.stopService().addTimeout(10, reactor)
        late = Late()
        arriving.callback(late)
        self.assertTrue(late.closed)
        self.assertIsNone(c._conn)
