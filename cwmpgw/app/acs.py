"""The ACS part: the engine, authentication, the hardened site, TLS, and its listener.

Over-cap connections are refused by a :class:`~cwmpgw.web.site.ConnectionGate` in front
of the TLS wrapper, so a crowd costs no handshakes. Stopping drains: the port closes,
live sessions may finish (up to ``acs.drain_timeout``), the rest are ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
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
from cwmpgw.acs.tls import ReloadableServerTLS, describe_certificates, ensure_self_signed
from cwmpgw.app.tree import Listener
from cwmpgw.availability import AdmitWhileAvailable, GuardedRedis, RedisAvailability
from cwmpgw.bus.events import IEventSink
from cwmpgw.config import Config
from cwmpgw.metrics import Metrics
from cwmpgw.sessions import IRequestSource
from cwmpgw.store.interfaces import ICredentialStore, IDeviceStore
from cwmpgw.store.sessionlock import RedisSessionLock
from cwmpgw.web.digest import DigestCredentialFactory
from cwmpgw.web.site import ConnectionGate

__all__ = ["AcsListener", "certificate", "make_acs", "make_engine"]

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
        path=acs.path,
        throttle=throttle,
        certificates=(
            ClientCertificates(acs.client_identity, acs.client_identity_match)
            if acs.client_certs != "off"
            else None
        ),
        # While Redis is down a new session is answered 503 before any Redis work.
        admission=AdmitWhileAvailable(availability, rate_limits),  # type: ignore[arg-type]
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
    )


class AcsListener(Listener):
    """The ACS port; stopping it drains the live sessions before they are ended."""

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        site: AcsSite,
        *,
        config: Config,
        tls: ReloadableServerTLS | None,
        reuse_port: bool,
        reactor: Any,
    ) -> None:
        acs = config.acs
        factory: Any = TLSMemoryBIOFactory(tls, False, site) if tls is not None else site
        scheme = "https" if tls is not None else "http"
        super().__init__(
            "acs",
            endpoint,
            ConnectionGate(site, factory),
            f"ACS endpoint listening on {scheme}://{{host}}:{{port}}{acs.path}",
        )
        self.site = site
        self.engine = site.engine
        self.tls = tls
        self._reuse_port = reuse_port
        self._config = config
        self._reactor = reactor
        self._uninstall_sighup: Callable[[], None] | None = None

    async def start(self) -> None:
        if self._reuse_port:
            # Workers of one node share the port (SO_REUSEPORT), so it is bound by hand.
            from cwmpgw.workers import listen_reuseport

            acs = self._config.acs
            self.port = listen_reuseport(self._reactor, acs.port, acs.interface, self.factory)
            address: Any = self.port.getHost()
            self._log.info(self._describe, host=address.host, port=address.port)
        else:
            await super().start()
        if self.tls is not None:
            from cwmpgw.acs.tls import install_sighup

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


def make_acs(
    config: Config, reactor: Any, site: AcsSite, data_dir: str, *, reuse_port: bool
) -> AcsListener:
    acs = config.acs
    tls = None
    if acs.tls:
        pair, second_pair = certificate(config, data_dir)
        tls = ReloadableServerTLS(
            *pair,
            second_pair=second_pair,
            client_certs=acs.client_certs,
            ca_file=acs.client_ca_file or None,
            legacy_ciphers=acs.legacy_ciphers,
        )
    endpoint = tcp_endpoint(reactor, acs.port, acs.interface)
    return AcsListener(
        endpoint, site, config=config, tls=tls, reuse_port=reuse_port, reactor=reactor
    )


def tcp_endpoint(reactor: Any, port: int, interface: str) -> IStreamServerEndpoint:
    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, interface=interface)
    return TCP4ServerEndpoint(reactor, port, interface=interface)
