"""One session per device across nodes: a newer session elsewhere stops the older one."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.store.memory import MemoryCredentialStore, MemoryDeviceStore
from cwmpgw.store.sessionlock import MemorySessionLock
from tests.support import cpe_envelopes as cpe
from tests.support.memhttp import DEVICE_ID, PASSWORD, USER, MemoryAcs, OneRequest, digest_post
from tests.support.redis_server import unique_prefix


class LockContract:
    lock: Any

    async def test_take_owns(self) -> None:
        await self.lock.take("dev", "a:1", 60)
        self.assertTrue(await self.lock.owns("dev", "a:1"))  # type: ignore[attr-defined]
        await self.lock.take("dev", "b:2", 60)  # a newer session takes over
        self.assertFalse(await self.lock.owns("dev", "a:1"))  # type: ignore[attr-defined]
        self.assertTrue(await self.lock.owns("dev", "b:2"))  # type: ignore[attr-defined]
        self.assertFalse(await self.lock.owns("other", "b:2"))  # type: ignore[attr-defined]


class MemoryLockTests(LockContract, TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lock = MemorySessionLock(self.clock)

    def test_expires(self) -> None:
        self.lock.take("dev", "a:1", 10)
        self.clock.advance(11)
        self.assertFalse(self.successResultOf(self.lock.owns("dev", "a:1")))


@pytest.mark.usefixtures("redis_for_class")
class RedisLockTests(LockContract, TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        import txredisapi

        from cwmpgw.store.sessionlock import RedisSessionLock

        redis = await txredisapi.Connection(
            self.redis_server.host, self.redis_server.port, convertNumbers=False
        )
        self.addCleanup(redis.disconnect)
        self.lock = RedisSessionLock(redis, unique_prefix())


class TwoNodesTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock, devices, creds, bus = (
            Clock(),
            MemoryDeviceStore(),
            MemoryCredentialStore(),
            MemoryEventBus(),
        )
        lock = MemorySessionLock(clock)
        self.sources = {"a": OneRequest(), "b": OneRequest()}
        self.nodes = {
            name: MemoryAcs(
                clock=clock,
                devices=devices,
                credentials=creds,
                bus=bus,
                lock=lock,
                node=name,
                requests=self.sources[name],
            )
            for name in ("a", "b")
        }
        self.nodes["a"].add_device(DEVICE_ID, USER, PASSWORD)
        self.bus = bus

    def test_newer_session_on_another_node_supersedes(self) -> None:
        on_a = self.nodes["a"].connect()
        self.assertEqual(digest_post(on_a, cpe.inform(), USER, PASSWORD).status, 200)
        # The CPE starts over on node B (a new Inform starts a new session, anywhere).
        on_b = self.nodes["b"].connect(peer="192.0.2.10")
        self.assertEqual(digest_post(on_b, cpe.inform(), USER, PASSWORD).status, 200)
        # Node A's session must send nothing more.
        stale = on_a.post(b"")
        self.assertEqual((stale.status, stale.body), (204, b""))
        closed = [e for e in self.bus.events if e.type == "session.closed"]
        self.assertEqual([(e.node, e.data["outcome"]) for e in closed], [("a", "superseded")])
        # Node B runs the device's work.
        request = on_b.post(b"")
        self.assertEqual(request.status, 200)
        self.assertIn(b"GetParameterValues", request.body)


class ConcurrentInformsTests(SynchronousTestCase):
    """Two Informs of one device in flight at once on one node, their device writes
    answering in the other order than the Informs came in (and the lock was taken)."""

    def test_the_later_inform_runs_the_work_whatever_order_the_writes_answer(self) -> None:
        from twisted.internet.defer import Deferred

        from cwmpgw.tasks.memory import MemoryTaskService
        from cwmpgw.tasks.runner import TaskRunner
        from tests.support import digest_client
        from tests.support.memhttp import parse_responses

        clock = Clock()
        tasks = MemoryTaskService(events=MemoryEventBus(), clock=clock)
        acs = MemoryAcs(clock=clock, lock=MemorySessionLock(clock))
        acs.engine._requests = TaskRunner(tasks, acs.devices)
        acs.add_device(DEVICE_ID, USER, PASSWORD)
        tasks.add_device(DEVICE_ID)
        task = self.successResultOf(tasks.submit(DEVICE_ID, "Reboot", {"command_key": "r"}))
        real = acs.devices.record_inform
        held: list[tuple[Deferred[bool], Any]] = []

        def delayed(record: Any) -> Deferred[bool]:
            d: Deferred[bool] = Deferred()
            held.append((d, record))
            return d

        acs.devices.record_inform = delayed  # type: ignore[method-assign]
        first, second = acs.connect(peer="192.0.2.1"), acs.connect(peer="192.0.2.2")
        for conn in (first, second):
            challenge = digest_client.pick(conn.post(cpe.inform()).headers["www-authenticate"])
            auth = digest_client.authorization(challenge, USER, PASSWORD)
            body = cpe.inform()
            conn.transport.clear()
            conn.protocol.dataReceived(
                b"POST / HTTP/1.1\r\nHost: acs.test\r\nContent-Type: text/xml\r\n"
                + f"Authorization: {auth}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        self.assertEqual(len(held), 2)  # both in flight; the second Inform took the lock last
        for conn, (d, record) in ((second, held[1]), (first, held[0])):  # stored in reverse
            d.callback(self.successResultOf(real(record)))
            (response,) = parse_responses(conn.transport.value())
            self.assertEqual(response.status, 200)  # each Inform stored and acknowledged
            conn.cookie = (response.header("set-cookie") or "").split(";")[0]
        # The first Inform's session was superseded as it registered: its POST is refused.
        self.assertEqual(first.post(b"").status, 400)
        request = second.post(b"")
        self.assertEqual(request.status, 200)
        self.assertIn(b"Reboot", request.body)
        stored = self.successResultOf(tasks.get(task.id))
        self.assertEqual((stored.status, stored.attempts), ("running", 1))  # sent once
        closed = [e.data["outcome"] for e in acs.bus.events if e.type == "session.closed"]
        self.assertEqual(closed, ["superseded"])
