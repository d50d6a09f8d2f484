"""The event listener: callbacks and waits on a fake clock, then a real Redis (and losing it)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.internet.testing import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.bus.events import Event
from cwmpgw.bus.listener import EventListener
from tests.support.redis_server import connect, unique_prefix


def _not_connected(factory: Any) -> Deferred[Any]:
    raise AssertionError("these tests never start the service")


def envelope(event_type: str = "inform", **data: Any) -> str:
    return Event(type=event_type, ts=1.0, node="n", data=data).to_json()


class CallbackTests(SynchronousTestCase):
    """Dispatch and waits, fed by hand: no Redis, no reactor."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.listener = EventListener(_not_connected, "p:", clock=self.clock)
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_subscribe_and_unsubscribe(self) -> None:
        seen: list[dict[str, Any]] = []
        unsubscribe = self.listener.subscribe(seen.append)
        self.listener._message("p:events:inform", envelope(x=1))
        unsubscribe()
        self.listener._message("p:events:inform", envelope(x=2))
        self.assertEqual([e["data"] for e in seen], [{"x": 1}])

    def test_raising_callback_is_logged_and_others_still_run(self) -> None:
        seen: list[dict[str, Any]] = []

        def broken(_: dict[str, Any]) -> None:
            raise RuntimeError("boom")

        self.listener.subscribe(broken)
        self.listener.subscribe(seen.append)
        self.listener._message("p:events:inform", envelope(x=1))
        self.listener._message("p:events:inform", envelope(x=2))
        self.assertEqual(len(seen), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_garbage_ignored(self) -> None:
        seen: list[dict[str, Any]] = []
        self.listener.subscribe(seen.append)
        self.listener._message("p:events:x", "not json")
        self.listener._message("p:events:x", "[1, 2]")
        self.assertEqual(seen, [])
        self.assertEqual(
            len([e for e in self.logged if e.get("log_level").name == "warn"]),  # type: ignore[union-attr]
            2,
        )

    def test_wait_for_first_match(self) -> None:
        d = self.listener.wait_for(lambda e: e["data"].get("x") == 2, 10)
        self.listener._message("c", envelope(x=1))
        self.assertNoResult(d)
        self.listener._message("c", envelope(x=2))
        self.assertEqual(self.successResultOf(d)["data"], {"x": 2})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.listener._message("c", envelope(x=2))  # a second match changes nothing
        self.assertEqual(self.listener._callbacks, {})

    def test_wait_for_timeout(self) -> None:
        d = self.listener.wait_for(lambda e: True, 10)
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.listener._callbacks, {})

    def test_stopping_ends_every_wait_at_once(self) -> None:
        # A wake-up in flight when the gateway stops: its wait ends now, with "nothing
        # came", and leaves no timer behind on the reactor.
        d = self.listener.wait_for(lambda e: True, 60, device="dev-1")
        self.listener.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wait_for_cancel_cleans_up(self) -> None:
        d = self.listener.wait_for(lambda e: True, 10)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.listener._callbacks, {})

    def test_wait_for_one_device_sees_only_its_events(self) -> None:
        asked: list[str] = []

        def predicate(e: dict[str, Any]) -> bool:
            asked.append(e["device"]["id"])
            return e["type"] == "inform"

        d = self.listener.wait_for(predicate, 10, device="dev-b")

        def of(device: str, x: int) -> str:
            return Event(
                type="inform", ts=1.0, node="n", data={"x": x}, device={"id": device}
            ).to_json()

        for device in ("dev-a", "dev-c", "dev-a"):
            self.listener._message("c", of(device, 1))
        self.listener._message("c", envelope(x=1))  # no device at all
        self.assertEqual(asked, [])  # other devices' events never meet this waiter
        self.assertNoResult(d)
        self.listener._message("c", of("dev-b", 2))
        self.assertEqual(self.successResultOf(d)["data"], {"x": 2})
        self.assertEqual(asked, ["dev-b"])
        self.assertEqual((self.listener._by_device, self.clock.getDelayedCalls()), ({}, []))

    def test_predicate_raising_is_contained(self) -> None:
        d = self.listener.wait_for(lambda e: e["data"]["missing"], 10)
        self.listener._message("c", envelope(x=1))
        self.assertNoResult(d)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.clock.advance(10)
        self.assertIsNone(self.successResultOf(d))

    def test_not_subscribed_before_start(self) -> None:
        self.assertFalse(self.listener.subscribed)
        self.assertNoResult(self.listener.whenSubscribed())


@pytest.mark.usefixtures("redis_for_class")
class RedisListenerTests(TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        from cwmpgw.bus.redis import RedisEventBus

        self.redis = await connect(self, self.redis_server)
        self.prefix = unique_prefix()
        self.bus = RedisEventBus(self.redis, self.prefix, stream_maxlen=100)
        self.subscriptions: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_format", "").startswith("listening for events on"):
                self.subscriptions.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        endpoint = TCP4ClientEndpoint(reactor, self.redis_server.host, self.redis_server.port)
        self.listener = EventListener(endpoint.connect, self.prefix, clock=reactor)
        self.listener.startService()
        self.addCleanup(self.listener.stopService)
        await self.listener.whenSubscribed().addTimeout(10, reactor)

    async def numpat(self) -> int:
        return int(await self.redis.execute_command("PUBSUB", "NUMPAT"))

    async def test_events_arrive(self) -> None:
        seen: list[dict[str, Any]] = []
        self.listener.subscribe(seen.append)
        event = Event(type="task.done", ts=1.0, node="n", data={"id": "t1"})
        arrived = self.listener.wait_for(lambda e: e["id"] == event.id, 10)
        await self.listener.whenListening().addTimeout(10, reactor)
        await self.bus.publish(event)
        self.assertEqual(await arrived, event.to_dict())
        self.assertEqual(seen, [event.to_dict()])

    async def test_other_prefix_not_heard(self) -> None:
        from cwmpgw.bus.redis import RedisEventBus

        other = RedisEventBus(self.redis, unique_prefix())
        arrived = self.listener.wait_for(lambda e: True, 0.2)
        await other.publish(Event(type="inform", ts=1.0, node="n", data={}))
        self.assertIsNone(await arrived)

    async def test_listens_only_while_somebody_waits(self) -> None:
        """Every node would otherwise receive every event of the fleet: the pattern is
        subscribed with the first waiter and dropped ``linger`` after the last (on the
        listener's clock; Redis's side is then read until the unsubscription is in)."""
        clock = Clock()
        endpoint = TCP4ClientEndpoint(reactor, self.redis_server.host, self.redis_server.port)
        listener = EventListener(endpoint.connect, self.prefix, clock=clock, linger=30.0)
        listener.startService()
        self.addCleanup(listener.stopService)
        await listener.whenSubscribed().addTimeout(10, reactor)
        self.assertEqual((listener.listening, await self.numpat()), (False, 0))
        unsubscribe = listener.subscribe(lambda e: None)
        waited = listener.wait_for(lambda e: False, 10)
        await listener.whenListening().addTimeout(10, reactor)
        self.assertEqual((listener.listening, await self.numpat()), (True, 1))
        unsubscribe()
        waited.addErrback(lambda f: f.trap(CancelledError))
        waited.cancel()
        clock.advance(29.9)
        self.assertTrue(listener.listening)  # for ``linger`` still
        clock.advance(0.1)
        self.assertFalse(listener.listening)
        for _ in range(100):  # the PUNSUBSCRIBE's way to Redis
            if await self.numpat() == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(await self.numpat(), 0)
        self.assertTrue(listener.subscribed)  # the connection stays, ready
        heard = listener.wait_for(lambda e: True, 10)  # listening again
        await listener.whenListening().addTimeout(10, reactor)
        event = Event(type="inform", ts=1.0, node="n", data={})
        await self.bus.publish(event)
        self.assertEqual((await heard)["id"], event.id)
        self.assertEqual(len(self.subscriptions), 2)

    async def test_resubscribes_after_connection_killed(self) -> None:
        self.listener.subscribe(lambda e: None)  # somebody waits, across the loss
        await self.listener.whenListening().addTimeout(10, reactor)
        self.assertEqual(len(self.subscriptions), 1)
        killed = await self.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        self.assertGreaterEqual(killed, 1)
        # Pub/sub drops what is published while nobody listens: keep publishing until heard.
        for attempt in range(30):
            event = Event(type="inform", ts=1.0, node="n", data={"attempt": attempt})
            arrived = self.listener.wait_for(lambda e, i=event.id: e["id"] == i, 0.5)
            await self.bus.publish(event)
            if await arrived is not None:
                break
        else:
            self.fail("no event heard after the subscriber connection was killed")
        self.assertEqual(len(self.subscriptions), 2)
        self.assertTrue(self.listener.subscribed)

    async def test_wait_for_timeout_leaves_no_timer(self) -> None:
        got = await self.listener.wait_for(lambda e: False, 0.05)
        self.assertIsNone(got)
        self.assertEqual(self.listener._callbacks, {})

    async def test_stop_closes_connection(self) -> None:
        await self.listener.stopService()
        self.assertFalse(self.listener.subscribed)
        # Stopped means stopped: no reconnect comes back to subscribe again.
        self.assertNoResult(self.listener.whenSubscribed())
