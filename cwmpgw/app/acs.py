"""The ACS part: the engine, authentication, the hardened site, TLS, and its listener.

Over-cap connections are refused by a :class:`~cwmpgw.web.site.ConnectionGate` in front
of the TLS wrapper, so a crowd costs no handshakes. Stopping drains: the port closes,
live sessions may finish (up to ``acs.drain_timeout``), the rest are ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from cwmpgw.acs.admission import AdmissionControl
from cwmpgw.acs.auth import CpeAuthenticator, DeviceCredentialsChecker
from cwmpgw.acs.bootstrap import BootstrapPolicy, BootstrapWatch
from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.nonceclaims import RedisNonceClaims, shared_nonce_secret
from cwmpgw.acs.resource import AcsResource, AcsSite, ClientCertificates
from cwmpgw.acs.throttle import AuthThrottle
from cwmpgw.acs.tls import (
    ReloadableServerTLS,
    describe_certificates,
    ensure_self_signed,
    install_sighup,
)
from cwmpgw.app.tree import Listener
from cwmpgw.availability import AdmitWhileAvailable, GuardedRedis, RedisAvailability
from cwmpgw.bus.events import IEventSink
from cwmpgw.config import Config
from cwmpgw.metrics import Metrics
from cwmpgw.sessions import IRequestSource
from cwmpgw.store.interfaces import ICredentialStore, IDeviceStore
from cwmpgw.store.sessionlock import RedisSessionLock
from cwmpgw.web.budget import SourceBudget
from cwmpgw.web.digest import DigestCredentialFactory
from cwmpgw.web.site import ConnectionGate

__all__ = ["AcsPart", "certificate", "make_engine", "make_site", "tcp_endpoint"]

_log = Logger()


def certificate(config: Config, data_dir: str) -> tuple[tuple[str, str], tuple[str, str] | None]:
    """The ACS certificate pairs (cert, key): configured, else the generated ECDSA and RSA
    pair; the second is None when only one is configured."""
    acs = config.acs
    pair = (acs.cert_file, acs.key_file)
    second = (acs.rsa_cert_file, acs.rsa_key_file) if acs.rsa_cert_file else None
    if not acs.cert_file:
        pair, second = ensure_self_signed(data_dir, acs.certificate_hostname)
    _log.info(
        "TLS certificate SHA-256 fingerprints: {certificates}",
        certificates=describe_certificates([pair, *([second] if second else [])]),
    )
    return pair, second


def make_engine(
    config: Config,
    reactor: Any,
    *,
    redis: GuardedRedis,
    availability: RedisAvailability,
    devices: IDeviceStore,
    events: IEventSink,
    requests: IRequestSource,
    metrics: Metrics,
) -> AcsEngine:
    acs = config.acs
    return AcsEngine(
        clock=reactor,
        devices=devices,
        events=events,
        node=config.gateway.node_name,
        requests=requests,
        metrics=metrics,
        lock=RedisSessionLock(redis, config.redis.prefix),
        availability=availability,
        session_timeout=acs.session_timeout,
        max_session_timeout=acs.max_session_timeout,
        hold_requests=acs.hold_requests,
    )


async def make_site(
    config: Config,
    reactor: Any,
    engine: AcsEngine,
    *,
    redis: GuardedRedis,
    availability: RedisAvailability,
    credentials: ICredentialStore,
    on_promoted: Callable[..., Any],
) -> AcsSite:
    """The ACS site: authentication (Digest, Basic, certificates), the brute-force
    throttle, admission control, and the connection limits."""
    acs, auth, prefix = config.acs, config.auth, config.redis.prefix
    enroll = auth.unknown_devices == "enroll"
    checker = DeviceCredentialsChecker(
        credentials,
        auth.realm,
        bootstrap_username=auth.bootstrap_username if enroll else None,
        bootstrap_password=auth.bootstrap_password if enroll else None,
        on_promoted=on_promoted,
    )
    digest = DigestCredentialFactory(
        auth.realm,
        clock=reactor,
        algorithms=auth.digest_algorithms,
        nonce_lifetime=auth.nonce_lifetime,
        secret=await shared_nonce_secret(redis, prefix),
    )
    authenticator = CpeAuthenticator(
        checker,
        digest,
        schemes=auth.schemes,
        realm=auth.realm,
        basic_without_tls=auth.allow_basic_without_tls,
        nonce_claims=RedisNonceClaims(redis, prefix),
    )
    throttle = None
    if auth.max_failures_per_source or auth.max_failures_per_device:
        throttle = AuthThrottle(
            redis,
            prefix,
            clock=reactor,
            max_failures_per_source=auth.max_failures_per_source or 2**31,
            max_failures_per_device=auth.max_failures_per_device or 2**31,
            window=auth.failure_window,
            block_for=auth.block_for,
        )
    rate_limits = (
        AdmissionControl(
            reactor,
            max_new_per_second=acs.max_new_sessions_per_second,
            max_sessions=acs.max_sessions,
            retry_after=(acs.retry_after_min, acs.retry_after_max),
        )
        if acs.max_new_sessions_per_second
        else None
    )
    resource = AcsResource(
        engine,
        authenticator,
        credentials,
        max_body_bytes=acs.max_body_bytes,
        max_session_body_bytes=acs.max_session_body_bytes,
        path=acs.path,
        throttle=throttle,
        certificates=(
            ClientCertificates(acs.client_identity, acs.client_identity_match)
            if acs.client_certs != "off"
            else None
        ),
        # While Redis is down a new session is answered 503 before any Redis work.
        admission=AdmitWhileAvailable(availability, rate_limits),  # type: ignore[arg-type]
        budget=(
            SourceBudget(
                reactor,
                rate=acs.unauthenticated_bytes_per_second,
                burst=acs.unauthenticated_burst_bytes,
            )
            if acs.unauthenticated_bytes_per_second
            else None
        ),
        bootstrap=(
            BootstrapWatch(
                credentials,
                reactor,
                BootstrapPolicy(
                    stuck_after=auth.bootstrap_stuck_after,
                    refuse=auth.bootstrap_after_confirm == "refuse",
                    grace=auth.bootstrap_grace,
                ),
            )
            if enroll
            else None
        ),
    )
    return AcsSite(
        resource,
        reactor=reactor,
        timeout=acs.max_session_timeout,
        read_timeout=acs.read_timeout,
        max_requests_per_connection=acs.max_requests_per_connection,
        max_connections=acs.max_connections,
        max_connections_per_source=acs.max_connections_per_source,
        first_byte_timeout=acs.first_byte_timeout,
        idle_timeout=acs.idle_timeout,
        min_session_upload_rate=acs.min_session_upload_rate,
    )


class AcsPart(Listener):
    """The ACS port. Its site is made when it starts (the nonce secret comes from Redis);
    stopping it drains the live sessions before they are ended."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        data_dir: str,
        engine: AcsEngine,
        make_site: Callable[[], Awaitable[AcsSite]],
        *,
        reuse_port: bool,
    ) -> None:
        acs = config.acs
        scheme = "https" if acs.tls else "http"
        super().__init__(
            "acs",
            tcp_endpoint(reactor, acs.port, acs.interface),
            Factory(),  # replaced by the gate in front of the site at start
            f"ACS endpoint listening on {scheme}://{{host}}:{{port}}{acs.path}",
        )
        self.engine = engine
        self.site: AcsSite | None = None
        self.tls: ReloadableServerTLS | None = None
        self._make_site = make_site
        self._data_dir = data_dir
        self._reuse_port = reuse_port
        self._config = config
        self._reactor = reactor
        self._uninstall_sighup: Callable[[], None] | None = None

    async def start(self) -> None:
        acs = self._config.acs
        self.site = site = await self._make_site()
        if acs.tls:
            pair, second_pair = certificate(self._config, self._data_dir)
            self.tls = ReloadableServerTLS(
                *pair,
                second_pair=second_pair,
                client_certs=acs.client_certs,
                ca_file=acs.client_ca_file or None,
                legacy_ciphers=acs.legacy_ciphers,
            )
        inner: Any = TLSMemoryBIOFactory(self.tls, False, site) if self.tls else site
        self.factory = ConnectionGate(site, inner)
        if self._reuse_port:
            # Workers of one node share the port (SO_REUSEPORT), so it is bound by hand.
            from cwmpgw.workers import listen_reuseport

            self.port = listen_reuseport(self._reactor, acs.port, acs.interface, self.factory)
            address: Any = self.port.getHost()
            self._log.info(self._describe, host=address.host, port=address.port)
        else:
            await super().start()
        if self.tls is not None:
            # SIGHUP: new certificates for new connections; live sessions keep theirs.
            self._uninstall_sighup = install_sighup(self._reactor, self.tls.reload)

    async def stop(self) -> None:
        listening = self.port is not None
        await super().stop()
        if listening:
            await self._drain()
        if self._uninstall_sighup is not None:
            self._uninstall_sighup()
            self._uninstall_sighup = None
        self.engine.shutdown()

    async def _drain(self) -> None:
        """Let live sessions finish (up to acs.drain_timeout), then end the rest."""
        site, deadline = self.site, self._config.acs.drain_timeout
        assert site is not None
        site.drain()
        waited = 0.0
        # Only sessions whose CPE is still connected can finish: the port is closed.
        while self.engine.live_connections() and waited < deadline:
            await deferLater(self._reactor, 0.1, lambda: None)
            waited += 0.1
        self._log.info(
            "drained: {left} session(s) still open after {waited:.1f} s are ended",
            left=len(self.engine.registry),
            waited=waited,
        )
        self.engine.shutdown()
        site.abort_all()
        try:
            await self.engine.flush().addTimeout(5, self._reactor)
        except Exception:
            self._log.warn("some events of the last sessions could not be published")


def tcp_endpoint(reactor: Any, port: int, interface: str) -> IStreamServerEndpoint:
    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, interface=interface)
    return TCP4ServerEndpoint(reactor, port, interface=interface)
