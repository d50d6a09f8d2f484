"""The auth throttle contract, run on the memory twin and on a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from cwmpgw.acs.throttle import AuthThrottle, Block, IAuthThrottle, MemoryAuthThrottle
from tests.support.redis_server import connect, unique_prefix

T0 = 1_700_000_000.0
DEV = "9CA2F4-EC220_G5_V3-22275K2000315"
ATTACKER = "198.51.100.66"
GOOD = "192.0.2.10"


class ThrottleContract:
    """Mixed into a trial TestCase whose setUp sets self.clock and defines make()."""

    clock: Clock

    def make(self, **kw: Any) -> Any:
        raise NotImplementedError

    def setUpThrottle(self) -> None:
        self.throttle = self.make(max_failures_per_source=5, max_failures_per_device=3)

    async def fail_n(self, n: int, source: str, claimed: Any) -> list[Block]:
        started: list[Block] = []
        for _ in range(n):
            started += await self.throttle.failed(source, claimed)
        return started

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthThrottle, self.throttle))  # type: ignore[attr-defined]

    async def test_source_blocked_at_limit_and_reported_once(self) -> None:
        # Each failure claims a different device, so only the source count reaches its limit.
        for i in range(4):
            self.assertEqual(await self.throttle.failed(ATTACKER, f"dev-{i}"), [])  # type: ignore[attr-defined]
        self.assertIsNone(await self.throttle.blocked(ATTACKER, None))  # type: ignore[attr-defined]
        started = await self.throttle.failed(ATTACKER, "dev-4")
        self.assertEqual(started, [Block("source", ATTACKER, T0 + 900, 5)])  # type: ignore[attr-defined]
        self.assertEqual(await self.throttle.blocked(ATTACKER, None), 900)  # type: ignore[attr-defined]
        for i in range(5, 8):
            self.assertEqual(await self.throttle.failed(ATTACKER, f"dev-{i}"), [])  # type: ignore[attr-defined]
        self.assertIsNone(await self.throttle.blocked(GOOD, None))  # type: ignore[attr-defined]

    async def test_device_blocked_across_sources(self) -> None:
        started: list[Block] = []
        for i in range(3):
            started += await self.throttle.failed(f"203.0.113.{i}", DEV)
        self.assertEqual(started, [Block("device", DEV, T0 + 900, 3)])  # type: ignore[attr-defined]
        # No source is blocked: the device key applies only where the caller asks for it.
        self.assertIsNone(await self.throttle.blocked(GOOD, None))  # type: ignore[attr-defined]
        self.assertIsNone(await self.throttle.blocked("203.0.113.0", None))  # type: ignore[attr-defined]
        self.assertEqual(await self.throttle.blocked(GOOD, DEV), 900)  # type: ignore[attr-defined]
        self.assertIsNone(await self.throttle.blocked(GOOD, "another-device"))  # type: ignore[attr-defined]

    async def test_username_and_device_id_both_counted(self) -> None:
        started = await self.fail_n(3, ATTACKER, ["user-x", DEV])
        self.assertEqual(  # type: ignore[attr-defined]
            sorted((b.kind, b.key) for b in started), [("device", DEV), ("device", "user-x")]
        )
        self.assertEqual(await self.throttle.blocked(GOOD, "user-x"), 900)  # type: ignore[attr-defined]

    async def test_same_username_and_device_id_count_once(self) -> None:
        self.assertEqual(await self.fail_n(2, ATTACKER, [DEV, DEV]), [])  # type: ignore[attr-defined]
        self.assertEqual(len(await self.throttle.failed(ATTACKER, (DEV, DEV))), 1)  # type: ignore[attr-defined]

    async def test_window_expires_on_the_clock(self) -> None:
        await self.fail_n(2, ATTACKER, DEV)
        self.clock.advance(299)
        self.assertEqual(len(await self.throttle.failed(GOOD, DEV)), 1)  # type: ignore[attr-defined]
        # A fresh window: the count starts again from the first failure after expiry.
        await self.fail_n(2, ATTACKER, "other")
        self.clock.advance(300)
        self.assertEqual(await self.fail_n(2, ATTACKER, "other"), [])  # type: ignore[attr-defined]

    async def test_block_ends_then_a_new_block_is_reported(self) -> None:
        await self.fail_n(3, ATTACKER, DEV)
        self.clock.advance(600)
        self.assertEqual(await self.throttle.blocked(GOOD, DEV), 300)  # type: ignore[attr-defined]
        # Failures during the block do not extend it and report nothing.
        self.assertEqual(await self.fail_n(3, GOOD, DEV), [])  # type: ignore[attr-defined]
        self.clock.advance(300)
        self.assertIsNone(await self.throttle.blocked(GOOD, DEV))  # type: ignore[attr-defined]
        started = await self.fail_n(3, "203.0.113.9", DEV)
        self.assertEqual(started, [Block("device", DEV, T0 + 1800, 3)])  # type: ignore[attr-defined]

    async def test_success_clears_device_count_but_not_source_count(self) -> None:
        await self.fail_n(2, ATTACKER, DEV)
        await self.fail_n(2, ATTACKER, "other")
        await self.throttle.succeeded(ATTACKER, DEV)
        self.assertEqual(await self.fail_n(2, GOOD, DEV), [])  # type: ignore[attr-defined]
        # The source already had 4 failures; the success did not launder them.
        started = await self.throttle.failed(ATTACKER, "third")
        self.assertEqual([b.kind for b in started], ["source"])  # type: ignore[attr-defined]

    async def test_success_does_not_lift_a_block(self) -> None:
        await self.fail_n(3, ATTACKER, DEV)
        await self.throttle.succeeded(GOOD, DEV)
        self.assertEqual(await self.throttle.blocked(ATTACKER, DEV), 900)  # type: ignore[attr-defined]

    async def test_long_claims_are_shortened(self) -> None:
        long_name = "x" * 5000
        started = await self.fail_n(3, ATTACKER, long_name)
        self.assertEqual(len(started), 1)  # type: ignore[attr-defined]
        self.assertLess(len(started[0].key), 200)  # type: ignore[attr-defined]
        self.assertEqual(await self.throttle.blocked(GOOD, long_name), 900)  # type: ignore[attr-defined]
        self.assertIsNone(await self.throttle.blocked(GOOD, "x" * 4999 + "y"))  # type: ignore[attr-defined]

    async def test_no_claims(self) -> None:
        self.assertEqual(await self.fail_n(4, ATTACKER, None), [])  # type: ignore[attr-defined]
        self.assertEqual(len(await self.throttle.failed(ATTACKER, [])), 1)  # type: ignore[attr-defined]
        await self.throttle.succeeded(ATTACKER, None)
        self.assertEqual(await self.throttle.blocked(ATTACKER, None), 900)  # type: ignore[attr-defined]


class MemoryThrottleTests(ThrottleContract, TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.setUpThrottle()

    def make(self, **kw: Any) -> MemoryAuthThrottle:
        return MemoryAuthThrottle(clock=self.clock, **kw)

    def test_memory_forgets_expired_entries(self) -> None:
        for i in range(50):
            self.successResultOf(self.throttle.failed(f"203.0.113.{i}", f"dev-{i}"))
        self.clock.advance(1000)
        self.successResultOf(self.throttle.failed(ATTACKER, DEV))
        self.assertEqual(len(self.throttle._counts), 2)
        self.assertEqual(self.throttle._blocks, {})


@pytest.mark.usefixtures("redis_for_class")
class RedisThrottleTests(ThrottleContract, TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        self.redis = await connect(self, self.redis_server)
        self.prefix = unique_prefix()
        self.clock = Clock()
        self.clock.advance(T0)
        self.setUpThrottle()

    def make(self, **kw: Any) -> AuthThrottle:
        return AuthThrottle(self.redis, self.prefix, clock=self.clock, **kw)

    async def test_key_layout_and_shared_between_nodes(self) -> None:
        await self.fail_n(3, ATTACKER, DEV)
        p = self.prefix
        self.assertEqual(await self.redis.hget(f"{p}authfail:dev:{DEV}", "n"), "3")
        self.assertEqual(await self.redis.hget(f"{p}authfail:src:{ATTACKER}", "n"), "3")
        self.assertEqual(float(await self.redis.get(f"{p}authblock:dev:{DEV}")), T0 + 900)
        ttl = await self.redis.execute_command("PTTL", f"{p}authblock:dev:{DEV}")
        self.assertGreater(int(ttl), 900_000)
        other_node = self.make(max_failures_per_source=5, max_failures_per_device=3)
        self.assertEqual(await other_node.blocked(GOOD, DEV), 900)
        started = await other_node.failed(ATTACKER, "x")
        started += await other_node.failed(ATTACKER, "y")
        self.assertEqual([b.kind for b in started], ["source"])

    async def test_blocks_cached_for_a_short_time(self) -> None:
        await self.fail_n(5, ATTACKER, None)
        await self.redis.delete(f"{self.prefix}authblock:src:{ATTACKER}")
        # A flood from a blocked address is answered locally for a few seconds...
        self.assertEqual(await self.throttle.blocked(ATTACKER, None), 900)
        self.clock.advance(5)
        # ...then Redis decides again: an operator can lift a block.
        self.assertIsNone(await self.throttle.blocked(ATTACKER, None))


class ValidationTests(SynchronousTestCase):
    def test_bad_settings_refused(self) -> None:
        clock = Clock()
        with self.assertRaises(ValueError):
            MemoryAuthThrottle(clock=clock, max_failures_per_source=0)
        with self.assertRaises(ValueError):
            AuthThrottle(None, "p:", clock=clock, window=0)
