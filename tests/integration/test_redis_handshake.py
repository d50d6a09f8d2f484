"""A connection dropped during its AUTH or SELECT does not end reconnection for good.

txredisapi 1.6.0 stops reconnecting every connection of a pool (or a subscriber) when the
handshake of one reconnecting connection fails: a Redis that dies again as it comes back,
or a TCP proxy that accepts and drops while its Redis is down. Here redis-server (with a
password) is killed, a listener that accepts and drops every connection takes its port
until txredisapi has given up, then Redis comes back on the port: the gateway's pool and
its event listener must come back on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw import redisclient
from cwmpgw.availability import RedisAvailability
from cwmpgw.bus.listener import EventListener
from tests.support.outage import KillableRedis
from tests.support.redis_server import unique_prefix

PASSWORD = "handshake-test-password"


class _DropsEverything(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # the AUTH (or SELECT) gets no answer


def _fast_backoff(factory: Any) -> None:
    factory.initialDelay, factory.maxDelay = 0.05, 0.2


class HandshakeFailureTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.redis = KillableRedis(password=PASSWORD)
        self.addCleanup(self.redis.stop)
        return deferToThread(self.redis.start)

    async def until(self, predicate: Callable[[], bool], what: str, bound: float = 30) -> None:
        deadline = reactor.seconds() + bound
        while not predicate():
            if reactor.seconds() > deadline:
                self.fail(f"still waiting for {what} after {bound}s")
            await deferLater(reactor, 0.05, lambda: None)

    async def make_txredisapi_give_up(self, factory: Any) -> None:
        """Kill Redis; drop every connection on its port until the factory stops trying."""
        self.redis.kill()
        port = reactor.listenTCP(
            self.redis.port, Factory.forProtocol(_DropsEverything), interface="127.0.0.1"
        )
        try:
            await self.until(lambda: factory.stopped, "txredisapi to stop reconnecting")
        finally:
            await port.stopListening()
        await deferToThread(self.redis.start)  # same port, same data

    async def test_the_pool_reconnects_after_a_failed_handshake(self) -> None:
        # The pool the gateway builds (its lean protocol), through AUTH and SELECT.
        pool = await redisclient.pool(
            reactor, host="127.0.0.1", port=self.redis.port, dbid=1, poolsize=2, password=PASSWORD
        )
        self.addCleanup(pool.disconnect)
        _fast_backoff(pool._factory)
        availability = RedisAvailability.for_txredisapi(pool, clock=reactor, interval=0.1)
        availability.start()
        self.addCleanup(availability.stop)
        await pool.set("kept", "yes")

        await self.make_txredisapi_give_up(pool._factory)
        await availability.whenAvailable().addTimeout(30, reactor)
        self.assertFalse(pool._factory.stopped)
        self.assertEqual(await pool.get("kept"), "yes")  # the AOF, through db 1 again
        self.assertEqual(pool._factory.size, 2)  # every connection of the pool is back

    async def test_the_event_listener_subscribes_again_after_a_failed_handshake(self) -> None:
        prefix = unique_prefix()

        def connect(factory: Any) -> Deferred[Any]:
            from twisted.internet.endpoints import TCP4ClientEndpoint

            d: Deferred[Any] = TCP4ClientEndpoint(reactor, "127.0.0.1", self.redis.port).connect(
                factory
            )
            return d

        listener = EventListener(
            connect, prefix, clock=reactor, password=PASSWORD, revive_interval=0.1
        )
        listener.startService()
        self.addCleanup(listener.stopService)
        _fast_backoff(listener._factory)
        await listener.whenSubscribed().addTimeout(30, reactor)

        await self.make_txredisapi_give_up(listener._factory)
        await listener.whenSubscribed().addTimeout(30, reactor)
        heard = listener.wait_for(lambda e: e.get("id") == "after", 30)
        publisher = await txredisapi.Connection(
            "127.0.0.1", self.redis.port, password=PASSWORD, reconnect=False
        )
        self.addCleanup(publisher.disconnect)
        await publisher.publish(prefix + "events:test", '{"id": "after", "type": "test"}')
        envelope = await heard
        self.assertEqual(envelope, {"id": "after", "type": "test"})

    async def test_a_pool_closed_on_purpose_stays_closed(self) -> None:
        from twisted.logger import Logger

        from cwmpgw.availability import revive_stopped_factory

        pool = await redisclient.pool(
            reactor, host="127.0.0.1", port=self.redis.port, poolsize=2, password=PASSWORD
        )
        await pool.disconnect()
        self.assertFalse(revive_stopped_factory(pool._factory, Logger()))
        self.assertEqual([slot.service.running for slot in pool._factory.slots], [0, 0])
        self.assertEqual(pool._factory.size, 0)
