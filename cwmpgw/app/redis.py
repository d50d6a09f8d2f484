"""The Redis part: the embedded redis-server (when no URL is configured), the shared
connection pool behind the availability guard, and connections of their own for the
parts that need one (the event listener, the command stream's blocking reads).

txredisapi is imported only when this part starts: importing it installs the global
reactor, which twistd must choose first.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.logger import Logger

from cwmpgw.app.tree import FunctionPart, Part
from cwmpgw.availability import GuardedRedis, RedisAvailability
from cwmpgw.bus.listener import EventListener
from cwmpgw.config import RedisConfig, RedisTarget
from cwmpgw.store.embedded import EmbeddedRedisService

__all__ = ["RedisPart"]

# How long the embedded redis-server may take to say it is ready (it restarts on its own
# meanwhile); past this the gateway stops with an error rather than wait forever.
START_TIMEOUT = 30.0


class RedisPart(Part):
    """Started: ``redis`` (every call guarded), ``availability`` and ``target`` are set."""

    _log = Logger()

    def __init__(self, config: RedisConfig, data_dir: str, reactor: Any) -> None:
        self.name = "redis"
        self._config = config
        self._data_dir = data_dir
        self._reactor = reactor
        self.embedded: EmbeddedRedisService | None = None
        self.target: RedisTarget | None = None
        self.availability: RedisAvailability | None = None
        self.redis: GuardedRedis | None = None

    async def start(self) -> None:
        target = self._config.target
        if target is None:
            self.embedded = embedded = EmbeddedRedisService(
                os.path.join(self._data_dir, "redis"), reactor=self._reactor
            )
            embedded.startService()
            await embedded.whenReady().addTimeout(START_TIMEOUT, self._reactor)
            target = RedisTarget(
                host=embedded.host,
                port=embedded.port,
                path=embedded.unix_path,
                db=0,
                password=embedded.password,
            )
            where = "embedded redis-server at " + (
                embedded.unix_path or f"{embedded.host}:{embedded.port}"
            )
        else:
            where = f"redis at {target.path or f'{target.host}:{target.port}'} db {target.db}"
        self.target = target
        pool = await self._pool(target)
        self._log.info("events and devices in {where}", where=where)
        # Every call goes through the availability guard: while Redis is down it fails at
        # once instead of queueing in txredisapi (docs/reliability.md).
        self.availability = RedisAvailability.for_txredisapi(
            pool, clock=self._reactor, call_timeout=self._config.call_timeout
        )
        self.availability.start()
        self.redis = GuardedRedis(pool, self.availability)

    async def _pool(self, target: RedisTarget) -> Any:
        from cwmpgw import redisclient  # imports txredisapi (see the module docstring)

        return await redisclient.pool(
            self._reactor,
            host=target.host,
            port=target.port or 6379,
            path=target.path,
            dbid=target.db,
            password=target.password,
            poolsize=self._config.connections,
        )

    @property
    def url(self) -> str:
        """Where sibling processes find this Redis (the configured URL, or the embedded)."""
        if self._config.url:
            return self._config.url
        embedded = self.embedded
        assert embedded is not None
        return f"unix://{embedded.unix_path}" if embedded.unix_path else embedded.url

    def connector(self) -> Any:
        """Connects a protocol factory to this Redis (for a connection of its own)."""
        target = self.target
        assert target is not None
        reactor = self._reactor

        def connect(factory: Any) -> Deferred[Any]:
            if target.path is not None:
                endpoint: Any = UNIXClientEndpoint(reactor, target.path)
            else:
                endpoint = TCP4ClientEndpoint(
                    reactor, target.host or "127.0.0.1", target.port or 6379
                )
            d: Deferred[Any] = endpoint.connect(factory)
            return d

        return connect

    def dedicated(self) -> Deferred[Any]:
        """A lazy connection of its own, e.g. for a blocking read that must not hold one
        of the shared pool's connections."""
        import txredisapi

        target = self.target
        assert target is not None
        options: dict[str, Any] = {
            "dbid": target.db,
            "password": target.password,
            "convertNumbers": False,
        }
        if target.path is not None:
            conn = txredisapi.lazyUnixConnection(target.path, **options)
        else:
            conn = txredisapi.lazyConnection(
                target.host or "127.0.0.1", target.port or 6379, **options
            )
        # Closed before its handshake is over (a stop just after a start or a Redis
        # outage), a lazy connection fails its "connected" Deferred, which nobody holds:
        # txredisapi would report an unhandled error. Nobody needs it.
        conn._connected.addErrback(lambda _: None)
        return succeed(conn)

    def event_listener(self, prefix: str) -> tuple[EventListener, Part]:
        """The event listener on a connection of its own, and the part that starts it:
        started once it is subscribed."""
        target = self.target
        assert target is not None
        listener = EventListener(
            self.connector(), prefix, clock=self._reactor, password=target.password
        )

        async def start() -> None:
            listener.startService()
            await listener.whenSubscribed().addTimeout(START_TIMEOUT, self._reactor)

        async def stop() -> None:
            await listener.stopService()

        return listener, FunctionPart("listener", start, stop)

    async def stop(self) -> None:
        if self.availability is not None:
            self.availability.stop()
        if self.redis is not None:
            # The last events are out or in the spool: the parts started after this one
            # (the spool among them) have stopped already.
            await self.redis.disconnect()
            self.redis = None
        if self.embedded is not None:
            stopped = self.embedded.stopService()
            self.embedded = None
            await stopped
