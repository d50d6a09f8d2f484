"""The composition root: the one place that builds every concrete part and wires them.

Start order: data directory → Redis (the embedded child, or the configured one) →
stores and event bus → engine, authentication and the ACS resource → TLS → listener.
Stop order is the reverse, so the embedded Redis goes last.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.config import Config, RedisTarget

__all__ = ["GatewayService", "make_service"]

# How long the embedded redis-server may take to say it is ready (it restarts on its own
# meanwhile); past this the gateway stops with an error rather than wait forever.
_REDIS_START_TIMEOUT = 30.0


def make_service(config: Config, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return GatewayService(config, reactor)


class GatewayService(Service):
    """The whole gateway as one twistd service."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self._reactor = reactor
        self.node = config.gateway.node_name
        self.data_dir = os.path.abspath(config.gateway.data_dir)
        self.acs_port: IListeningPort | None = None
        self.engine: Any = None
        self.redis: Any = None
        self.embedded_redis: Any = None
        self._started: Deferred[None] | None = None
        self._waiting: list[Deferred[GatewayService]] = []

    def whenStarted(self) -> Deferred[GatewayService]:
        """Fires with this service once every endpoint listens (errbacks if start failed)."""
        d: Deferred[GatewayService] = Deferred()
        if self._started is not None and self._started.called:
            d.callback(self)
        else:
            self._waiting.append(d)
        return d

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._started = Deferred.fromCoroutine(self._start())
        self._started.addCallbacks(self._start_done, self._start_failed)

    def _start_done(self, _: object) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)

    def _start_failed(self, failure: Failure) -> None:
        self._log.failure("cwmpgw could not start", failure)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)
        if not waiting and self._reactor.running:
            self._reactor.stop()

    async def _start(self) -> None:
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        self.redis = await self._connect_redis()
        prefix = self.config.redis.prefix

        from cwmpgw.acs.auth import CpeAuthenticator, DeviceCredentialsChecker
        from cwmpgw.acs.digest import DigestCredentialFactory
        from cwmpgw.acs.engine import AcsEngine
        from cwmpgw.acs.resource import AcsResource, AcsSite
        from cwmpgw.bus.redis import RedisEventBus
        from cwmpgw.store.redis import RedisCredentialStore, RedisDeviceStore

        acs, auth = self.config.acs, self.config.auth
        credentials = RedisCredentialStore(self.redis, prefix)
        self.engine = AcsEngine(
            clock=self._reactor,
            devices=RedisDeviceStore(self.redis, prefix),
            events=RedisEventBus(
                self.redis, prefix, stream_maxlen=self.config.events.stream_maxlen
            ),
            node=self.node,
            session_timeout=acs.session_timeout,
            max_session_timeout=acs.max_session_timeout,
            hold_requests=acs.hold_requests,
        )
        enroll = auth.unknown_devices == "enroll"
        checker = DeviceCredentialsChecker(
            credentials,
            auth.realm,
            bootstrap_username=auth.bootstrap_username if enroll else None,
            bootstrap_password=auth.bootstrap_password if enroll else None,
        )
        digest = DigestCredentialFactory(
            auth.realm,
            clock=self._reactor,
            algorithms=auth.digest_algorithms,
            nonce_lifetime=auth.nonce_lifetime,
            secret=await self._shared_secret(prefix),
        )
        authenticator = CpeAuthenticator(
            checker,
            digest,
            schemes=auth.schemes,
            realm=auth.realm,
            basic_without_tls=auth.allow_basic_without_tls,
        )
        resource = AcsResource(
            self.engine,
            authenticator,
            credentials,
            max_body_bytes=acs.max_body_bytes,
            path=acs.path,
        )
        site = AcsSite(resource, reactor=self._reactor, timeout=acs.max_session_timeout)
        self.acs_port = await self._endpoint().listen(site)
        address: Any = self.acs_port.getHost()
        scheme = "https" if acs.tls else "http"
        self._log.info(
            "ACS endpoint listening on {scheme}://{host}:{port}{path}",
            scheme=scheme,
            host=address.host,
            port=address.port,
            path=acs.path,
        )

    async def _connect_redis(self) -> Any:
        import txredisapi

        target: RedisTarget | None = self.config.redis.target
        if target is None:
            from cwmpgw.store.embedded import EmbeddedRedisService

            self.embedded_redis = EmbeddedRedisService(
                os.path.join(self.data_dir, "redis"), reactor=self._reactor
            )
            self.embedded_redis.startService()
            await self.embedded_redis.whenReady().addTimeout(_REDIS_START_TIMEOUT, self._reactor)
            embedded = self.embedded_redis
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
        if target.path is not None:
            redis = await txredisapi.UnixConnectionPool(
                target.path,
                dbid=target.db,
                password=target.password,
                convertNumbers=False,
                poolsize=4,
            )
        else:
            redis = await txredisapi.ConnectionPool(
                target.host or "127.0.0.1",
                target.port or 6379,
                dbid=target.db,
                password=target.password,
                convertNumbers=False,
                poolsize=4,
            )
        self._log.info("events and devices in {where}", where=where)
        return redis

    async def _shared_secret(self, prefix: str) -> bytes:
        """The Digest nonce key, shared through Redis so every node accepts every nonce."""
        key = prefix + "secret:digest-nonce"
        await self.redis.execute_command("SET", key, os.urandom(32).hex(), "NX")
        value = await self.redis.get(key)
        return bytes.fromhex(value)

    def _endpoint(self) -> Any:
        acs = self.config.acs
        interface = acs.interface
        if not acs.tls:
            if ":" in interface:
                return TCP6ServerEndpoint(self._reactor, acs.port, interface=interface)
            return TCP4ServerEndpoint(self._reactor, acs.port, interface=interface)
        from cwmpgw.acs.tls import ensure_self_signed, fingerprint_sha256, server_options

        cert_file, key_file = acs.cert_file, acs.key_file
        if not cert_file:
            cert_file, key_file, _ = ensure_self_signed(self.data_dir, acs.certificate_hostname)
        with open(cert_file, "rb") as f:
            fingerprint = fingerprint_sha256(f.read())
        self._log.info("TLS certificate SHA-256 fingerprint {fingerprint}", fingerprint=fingerprint)
        return SSL4ServerEndpoint(
            self._reactor, acs.port, server_options(cert_file, key_file), interface=interface
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._started is not None and not self._started.called:
            self._started.cancel()
        if self.acs_port is not None:
            await maybeDeferred(self.acs_port.stopListening)
            self.acs_port = None
        if self.engine is not None:
            self.engine.shutdown()
        if self.redis is not None:
            # Let the last events (session.closed of the sessions just ended) go out,
            # but do not wait forever for a Redis that is gone.
            try:
                await self.redis.ping().addTimeout(5, self._reactor)
            except Exception:
                self._log.warn("redis did not answer at shutdown; last events may be lost")
            await self.redis.disconnect()
            self.redis = None
        if self.embedded_redis is not None:
            stopped = self.embedded_redis.stopService()
            self.embedded_redis = None
            await stopped
