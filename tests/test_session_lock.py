"""One session per device across nodes: a newer session elsewhere stops the older one."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.store.memory import MemoryCredentialStore, MemoryDeviceStore
from cwmpgw.store.sessionlock import MemorySessionLock
from tests import cpe_envelopes as cpe
from tests.memhttp import MemoryAcs, digest_post
from tests.redis_server import unique_prefix
from tests.test_acs_http import DEVICE_ID, PASSWORD, USER, OneRequest


class LockContract:
    lock: Any

    async def test_take_owns_release(self) -> None:
        await self.lock.take("dev", "a:1", 60)
        self.assertTrue(await self.lock.owns("dev", "a:1"))  # type: ignore[attr-defined]
        await self.lock.take("dev", "b:2", 60)  # a newer session takes over
        self.assertFalse(await self.lock.owns("dev", "a:1"))  # type: ignore[attr-defined]
        await self.lock.release("dev", "a:1")  # the loser's release changes nothing
        self.assertTrue(await self.lock.owns("dev", "b:2"))  # type: ignore[attr-defined]
        await self.lock.release("dev", "b:2")
        self.assertFalse(await self.lock.owns("dev", "b:2"))  # type: ignore[attr-defined]


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
