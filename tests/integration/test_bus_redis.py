"""Events reach a real Redis: a subscriber gets the JSON envelope, the stream keeps it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.bus.events import Event, format_ts, new_event_id
from tests.support.redis_server import unique_prefix


class EnvelopeTests(SynchronousTestCase):
    def test_envelope_shape(self) -> None:
        e = Event(type="inform", ts=1_700_000_000.5, node="n1", data={"x": 1}, device={"id": "d"})
        d = json.loads(e.to_json())
        self.assertEqual(d["v"], 1)
        self.assertEqual(d["ts"], "2023-11-14T22:13:20.500Z")
        self.assertEqual(
            (d["type"], d["node"], d["data"], d["device"]), ("inform", "n1", {"x": 1}, {"id": "d"})
        )
        self.assertEqual(len(d["id"]), 28)

    def test_unknown_type_refused(self) -> None:
        self.assertRaises(ValueError, Event, type="nope", ts=1.0, node="n", data={})

    def test_ids_unique_and_time_ordered(self) -> None:
        ids = [new_event_id(1000.0 + i / 1000) for i in range(50)]
        self.assertEqual(len(set(ids)), 50)
        self.assertEqual(ids, sorted(ids))

    def test_format_ts_milliseconds(self) -> None:
        self.assertEqual(format_ts(0.007), "1970-01-01T00:00:00.007Z")
        # Seconds and fraction from the same truncated count: never rounded up a second.
        self.assertEqual(format_ts(1.9999996), "1970-01-01T00:00:01.999Z")
        # The per-second cache follows the clock both ways.
        self.assertEqual(format_ts(1795626617.8777), "2026-11-25T17:10:17.877Z")
        self.assertEqual(format_ts(1795626618.0), "2026-11-25T17:10:18.000Z")
        self.assertEqual(format_ts(1795626617.5), "2026-11-25T17:10:17.500Z")


@pytest.mark.usefixtures("redis_for_class")
class RedisBusTests(TestCase):
    redis_server: Any

    async def subscribe(self, pattern: str, heard: Callable[[str, str], None]) -> None:
        """``heard(channel, message)`` for every message published on ``pattern``."""
        import txredisapi
        from twisted.internet.endpoints import TCP4ClientEndpoint

        class Sub(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def messageReceived(self, pattern: str, channel: str, message: str) -> None:
                heard(channel, message)

        factory = txredisapi.SubscriberFactory()
        factory.protocol = Sub
        factory.continueTrying = False
        sub = await TCP4ClientEndpoint(
            reactor, self.redis_server.host, self.redis_server.port
        ).connect(factory)
        self.addCleanup(sub.transport.loseConnection)
        await sub.psubscribe(pattern)

    async def test_publish_reaches_subscriber_and_stream(self) -> None:
        import txredisapi

        from cwmpgw.bus.redis import RedisEventBus

        prefix = unique_prefix()
        received: defer.Deferred[tuple[str, str]] = defer.Deferred()

        def heard(channel: str, message: str) -> None:
            if not received.called:
                received.callback((channel, message))

        await self.subscribe(prefix + "events:*", heard)

        redis = await txredisapi.Connection(
            self.redis_server.host, self.redis_server.port, convertNumbers=False
        )
        self.addCleanup(redis.disconnect)
        bus = RedisEventBus(redis, prefix, stream_maxlen=1000)
        event = Event(
            type="session.closed", ts=1_700_000_000.0, node="n1", data={"outcome": "completed"}
        )
        await bus.publish(event)

        channel, message = await received.addTimeout(10, reactor)
        self.assertEqual(channel, prefix + "events:session.closed")
        self.assertEqual(json.loads(message)["id"], event.id)
        entries = await redis.execute_command("XRANGE", prefix + "events", "-", "+")
        self.assertEqual(len(entries), 1)
        fields = entries[0][1]
        as_dict = dict(zip(fields[::2], fields[1::2], strict=True))
        self.assertEqual(as_dict["type"], "session.closed")
        self.assertEqual(json.loads(as_dict["event"]), event.to_dict())

    async def test_a_riding_event_leaves_with_the_next_command(self) -> None:
        """session.closed (nobody waits for it) is not a write of its own: it is sent just
        before the next command anybody sends through the guard, in the same write; with
        none coming, after max_ride seconds. Other events go at once."""
        import txredisapi
        from twisted.internet.testing import Clock

        from cwmpgw.availability import GuardedRedis, RedisAvailability
        from cwmpgw.bus.redis import RedisEventBus

        prefix = unique_prefix()
        raw = await txredisapi.Connection(
            self.redis_server.host, self.redis_server.port, convertNumbers=False
        )
        self.addCleanup(raw.disconnect)
        clock = Clock()
        guarded = GuardedRedis(raw, RedisAvailability.for_txredisapi(raw, clock=clock))
        bus = RedisEventBus(
            guarded, prefix, riding=frozenset({"session.closed"}), clock=clock, max_ride=0.05
        )

        def event(kind: str) -> Event:
            return Event(type=kind, ts=1_700_000_000.0, node="n1", data={})

        async def stored() -> list[str]:
            entries = await raw.execute_command("XRANGE", prefix + "events", "-", "+")
            return [dict(zip(f[::2], f[1::2], strict=True))["type"] for _, f in entries]

        closed = [bus.publish(event("session.closed")) for _ in range(2)]
        await raw.ping()  # not through the guard: nothing rides with it
        self.assertEqual((await stored(), [d.called for d in closed]), ([], [False, False]))
        await guarded.get(prefix + "anything")  # the next command: both go before it
        self.assertEqual(await stored(), ["session.closed", "session.closed"])
        await defer.gatherResults(closed)
        await bus.publish(event("inform"))  # not riding: at once
        self.assertEqual(len(await stored()), 3)
        late = bus.publish(event("session.closed"))
        clock.advance(0.05)  # nothing else came: sent on its own
        await late
        self.assertEqual(len(await stored()), 4)
        self.assertEqual(clock.getDelayedCalls(), [])
        later = [bus.publish(event("session.closed")) for _ in range(3)]
        self.assertEqual(len(guarded.availability._riders), 1)  # one ride for them all
        clock.advance(0.05)
        await defer.gatherResults(later)
        self.assertEqual(guarded.availability._riders, [])  # the timer's send took it

    async def test_riding_events_waiting_leave_in_one_command(self) -> None:
        """The riding events waiting go in one script, before the command that takes the
        ride: each stored (stream) and published (pub/sub), in publish order, and each
        publish fires once that one command is answered."""
        import txredisapi
        from twisted.internet.testing import Clock

        from cwmpgw.availability import GuardedRedis, RedisAvailability
        from cwmpgw.bus.redis import RedisEventBus

        prefix = unique_prefix()
        kinds = ["connreq.succeeded", "session.closed", "connreq.failed", "connreq.refused"]
        heard: list[tuple[str, str]] = []
        all_heard: defer.Deferred[None] = defer.Deferred()

        def hear(channel: str, message: str) -> None:
            heard.append((channel, json.loads(message)["id"]))
            if len(heard) == len(kinds):
                all_heard.callback(None)

        await self.subscribe(prefix + "events:*", hear)

        raw = await txredisapi.Connection(
            self.redis_server.host, self.redis_server.port, convertNumbers=False
        )
        self.addCleanup(raw.disconnect)
        log: list[str] = []  # commands sent through the guard, and answers, in order

        class Counting:
            """The pool the bus and the test's own commands go through."""

            def __getattr__(self, name: str) -> Any:
                def command(*args: Any) -> Any:
                    log.append(name)
                    d = getattr(raw, name)(*args)
                    return d.addCallback(lambda reply: log.append(name + " answered") or reply)

                return command

        clock = Clock()
        guarded = GuardedRedis(Counting(), RedisAvailability.for_txredisapi(raw, clock=clock))
        bus = RedisEventBus(guarded, prefix, riding=frozenset(kinds), clock=clock)
        events = [Event(type=kind, ts=1_700_000_000.0, node="n1", data={}) for kind in kinds]
        published = [bus.publish(e) for e in events]
        for i, d in enumerate(published):
            d.addCallback(lambda _, i=i: log.append(f"fired {i}"))
        self.assertEqual(log, [])  # nothing sent yet
        await guarded.get(prefix + "anything")  # the next command takes the ride
        await defer.gatherResults(published)
        self.assertEqual(
            log,
            ["eval", "get", "eval answered", *(f"fired {i}" for i in range(4)), "get answered"],
        )
        entries = await raw.execute_command("XRANGE", prefix + "events", "-", "+")
        stored = [dict(zip(f[::2], f[1::2], strict=True)) for _, f in entries]
        self.assertEqual([f["type"] for f in stored], kinds)
        self.assertEqual([f["event"] for f in stored], [e.to_json() for e in events])
        await all_heard.addTimeout(10, reactor)
        self.assertEqual(heard, [(prefix + "events:" + e.type, e.id) for e in events])
        self.assertEqual(clock.getDelayedCalls(), [])  # the timer went with the ride


class RideTests(SynchronousTestCase):
    def test_one_ride_booked_however_long_redis_is_away(self) -> None:
        """With Redis away no command goes out to take a booked ride: the riding events are
        sent (and fail, for the spool) by their timer, and the ride is booked once."""
        from twisted.internet.defer import succeed
        from twisted.internet.testing import Clock

        from cwmpgw.availability import GuardedRedis, RedisAvailability, Unavailable
        from cwmpgw.bus.redis import RedisEventBus

        class Pool:
            def eval(self, script: str, keys: Any = (), args: Any = ()) -> Any:
                return succeed("1-0")

        clock = Clock()
        connections = [0]
        availability = RedisAvailability(
            lambda: defer.Deferred(), lambda: connections[0], clock=clock
        )
        availability._up = False  # as after a failed check: Redis is away
        bus = RedisEventBus(
            GuardedRedis(Pool(), availability),
            "p:",
            riding=frozenset({"session.closed"}),
            clock=clock,
            max_ride=0.05,
        )
        for _ in range(20):
            d = bus.publish(Event(type="session.closed", ts=1.0, node="n", data={}))
            clock.advance(0.05)
            self.failureResultOf(d, Unavailable)
        self.assertEqual(len(availability._riders), 1)

    def test_the_events_waiting_share_the_fate_of_their_one_command(self) -> None:
        """However many events wait, one command is sent for them; they are stored and fire
        together, or fail together with its error."""
        from twisted.internet.error import ConnectionLost
        from twisted.internet.testing import Clock

        from cwmpgw.availability import GuardedRedis, RedisAvailability
        from cwmpgw.bus.redis import RedisEventBus

        calls: list[tuple[list[str], defer.Deferred[Any]]] = []

        class Pool:
            def eval(self, script: str, keys: Any = (), args: Any = ()) -> Any:
                d: defer.Deferred[Any] = defer.Deferred()
                calls.append((list(args), d))
                return d

        clock = Clock()
        availability = RedisAvailability(lambda: defer.Deferred(), lambda: 1, clock=clock)
        bus = RedisEventBus(
            GuardedRedis(Pool(), availability),
            "p:",
            riding=frozenset({"session.closed", "connreq.succeeded"}),
            clock=clock,
            max_ride=0.05,
        )
        kinds = ["connreq.succeeded", "session.closed", "connreq.succeeded"]
        events = [Event(type=kind, ts=1.0, node="n", data={}) for kind in kinds]
        first = [bus.publish(e) for e in events]
        clock.advance(0.05)
        # The timer's command took the ride booked for them, which found nothing left to
        # send: one command.
        ((args, sent),) = calls
        self.assertEqual(
            args,
            [
                "100000",
                *(x for e in events for x in ("p:events:" + e.type, e.type, e.to_json())),
            ],
        )
        for d in first:
            self.assertNoResult(d)  # not before their command is answered
        sent.callback(["1-0", "2-0", "3-0"])
        for d in first:
            self.assertIsNone(self.successResultOf(d))

        second = [bus.publish(e) for e in events[:2]]
        clock.advance(0.05)
        self.assertEqual(len(calls), 2)
        calls[1][1].errback(ConnectionLost("gone"))
        for d in second:
            self.failureResultOf(d, ConnectionLost)
        self.assertEqual((availability._riders, clock.getDelayedCalls()), ([], []))
