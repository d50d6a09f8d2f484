"""Thousands of simulated CPEs in one process, talking CWMP to a real ACS over HTTP(S).

:class:`Fleet` owns the devices (:mod:`cwmpgw.sim.device`), moves their envelopes with
Twisted's HTTP client (a new connection per session, kept alive within it, as CPEs do;
or a new one per request), answers the ACS's Digest challenges with
:mod:`cwmpgw.web.digest_client`, keeps cookies, bounds the sessions in flight, and
starts sessions according to an arrival model:

* :class:`Rate` — ``per_second`` sessions started per second across the fleet, round
  robin (None: as many as the concurrency allows, a closed loop for benchmarks);
* :class:`Periodic` — every device informs every ``interval`` seconds, first boots
  spread evenly over one interval, then periodic informs with jitter;
* :class:`Storm` — every device boots at a random moment within ``window`` seconds (a
  power cut ending), then informs periodically.

Whatever the model, a device also opens sessions of its own: retries after a failure
(TR-069 back-off), the TRANSFER COMPLETE after a Download, the BOOT after a Reboot,
scheduled informs, VALUE CHANGE, and connection requests (:mod:`cwmpgw.sim.connreq`).
"""

from __future__ import annotations

import base64
import math
import random
import re
import sys
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from heapq import heappop, heappush
from io import BytesIO
from typing import Any, Final

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    TimeoutError,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IDelayedCall, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from cwmpgw.cwmp.deviceid import device_id as make_device_id
from cwmpgw.cwmp.diagnostics import DIAGNOSTICS_COMPLETE
from cwmpgw.cwmp.messages import DeviceId
from cwmpgw.sim.connreq import ConnectionRequestListener
from cwmpgw.sim.datamodel import Template, builtin_template
from cwmpgw.sim.device import (
    CONNECTION_REQUEST,
    Behaviour,
    Credentials,
    CredentialSource,
    SessionFailed,
    SimDevice,
    credential_templates,
    parse_device_id,
)
from cwmpgw.sim.diagnostics import make_agent, run_diagnostic
from cwmpgw.sim.xmpp import XmppCpes, XmppSettings
from cwmpgw.web.digest_client import (
    Challenge,
    ChallengeError,
    authorization,
    choose,
    is_stale,
    parse_challenges,
)

__all__ = [
    "Arrival",
    "Fleet",
    "FleetStats",
    "Periodic",
    "Rate",
    "SessionResult",
    "Storm",
]

_USER_AGENT: Final = b"cwmpgw-sim/0.1"
_CONTENT_TYPE: Final = b'text/xml; charset="utf-8"'
_TICK: Final = 0.05  # how often arrivals are checked, seconds
_MAX_BODY: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` sessions started per second across the fleet (None: as fast as the
    concurrency allows)."""

    per_second: float | None = None


@dataclass(frozen=True, slots=True)
class Periodic:
    """Every device informs every ``interval`` seconds; boots spread over one interval."""

    interval: float


@dataclass(frozen=True, slots=True)
class Storm:
    """Every device boots within ``window`` seconds, then informs at ``interval`` (None:
    the data model's PeriodicInformInterval)."""

    window: float = 10.0
    interval: float | None = None


Arrival = Rate | Periodic | Storm


@dataclass(frozen=True, slots=True)
class SessionResult:
    """One session as the CPE saw it."""

    device_id: str
    events: tuple[str, ...]  # the Inform's event codes
    ok: bool
    reason: str  # why it failed ("" when ok): "http 503", "auth: refused", "timeout"...
    started: float
    latency: float  # seconds from the first byte sent to the session's end
    rpcs: tuple[str, ...]  # ACS requests answered, in order
    faults: tuple[tuple[str, int], ...]  # (method, fault code) the CPE answered with


@dataclass
class FleetStats:
    """Counts and latencies of the sessions that ended since ``started``."""

    started: float
    sessions: int = 0
    completed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rpcs: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    transfers: Counter[str] = field(default_factory=Counter)  # "download ok", "upload 9011"…
    bytes_downloaded: int = 0

    def record(self, result: SessionResult) -> None:
        self.sessions += 1
        if result.ok:
            self.completed += 1
            self.latencies.append(result.latency)
        else:
            self.failures[result.reason] += 1
        self.rpcs.update(result.rpcs)
        self.faults.update(f"{method} {code}" for method, code in result.faults)
        self.events.update(result.events)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of completed sessions' latencies (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def summary(self, now: float) -> dict[str, Any]:
        elapsed = max(now - self.started, 1e-9)
        return {
            "elapsed": round(elapsed, 3),
            "sessions": self.sessions,
            "completed": self.completed,
            "failed": sum(self.failures.values()),
            "sessions_per_second": round(self.sessions / elapsed, 2),
            "failures": dict(self.failures.most_common()),
            "latency": {
                "p50": round(self.percentile(50), 4),
                "p90": round(self.percentile(90), 4),
                "p99": round(self.percentile(99), 4),
                "max": round(max(self.latencies, default=0.0), 4),
            },
            "rpcs": dict(self.rpcs.most_common()),
            "faults": dict(self.faults.most_common()),
            "events": dict(self.events.most_common()),
        }


# ---------------------------------------------------------------------------------------
# TLS


@implementer(IOpenSSLClientConnectionCreator)
class _AnyCertificate:
    """TLS 1.2+ without checking the server's certificate (``--insecure``)."""

    def __init__(self, hostname: str, client: PrivateCertificate | None) -> None:
        options = CertificateOptions(
            raiseMinimumTo=TLSVersion.TLSv1_2,
            privateKey=client.privateKey.original if client else None,
            certificate=client.original if client else None,
        )
        self._context = options.getContext()
        self._sni = None if _is_ip(hostname) else hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@implementer(IPolicyForHTTPS)
class _TlsPolicy:
    """TLS 1.2+ trusting ``cafile`` (the system's roots when None), or anything."""

    def __init__(
        self,
        cafile: str | None,
        insecure: bool,
        client_cert: str | None,
        client_key: str | None,
    ) -> None:
        self._insecure = insecure
        self._trust: Any = None
        if cafile is not None:
            with open(cafile, "rb") as f:
                pem = f.read()
            blocks = [
                b"-----BEGIN CERTIFICATE-----" + part
                for part in pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
            ]
            if not blocks:
                raise ValueError(f"{cafile}: no PEM certificate")
            self._trust = trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
        self._client: PrivateCertificate | None = None
        if client_cert is not None:
            with open(client_cert, "rb") as f:
                material = f.read()
            if client_key is not None:
                with open(client_key, "rb") as f:
                    material += b"\n" + f.read()
            self._client = PrivateCertificate.loadPEM(material)
        self._creators: dict[tuple[bytes, int], Any] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        creator = self._creators.get((hostname, port))
        if creator is None:
            host = hostname.decode("idna")
            if self._insecure:
                creator = _AnyCertificate(host, self._client)
            else:
                creator = optionsForClientTLS(
                    host,
                    trustRoot=self._trust,
                    clientCertificate=self._client,
                    extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
                )
            self._creators[(hostname, port)] = creator
        return creator


# ---------------------------------------------------------------------------------------
# HTTP


@implementer(IBodyProducer)
class _Bytes:
    """A request body already in memory (FileBodyProducer would add a cooperator)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_FIRMWARE_RE = re.compile(rb"CWMPGW-SIM-FIRMWARE ([^\r\n]{1,64})\n")


class _TransferFailed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Counting(Protocol):
    """A downloaded body, counted and dropped (its first bytes kept: the image header)."""

    def __init__(self) -> None:
        self.head = b""
        self.size = 0
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if len(self.head) < 128:
            self.head += data[: 128 - len(self.head)]
        self.size += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class _Body(Protocol):
    """Collects a response body, up to a limit (an ACS's envelopes are small)."""

    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self._done = done
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._done.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done.errback(SessionFailed("protocol: response body too large"))
            self.abort()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is None:
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.stopProducing()


def _read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    holder: list[_Body] = []
    d: Deferred[bytes] = Deferred(lambda _: holder[0].abort() if holder else None)
    protocol = _Body(d, limit)
    holder.append(protocol)
    response.deliverBody(protocol)
    return d


def _retry_after(headers: Headers) -> float | None:
    values = headers.getRawHeaders(b"retry-after") or []
    for value in values:
        text = value.decode("latin-1").strip()
        if text.isdigit():
            return float(min(int(text), 86400))
    return 60.0 if values else None


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """One reusable endpoint per ACS address.

    Agent's default builds a HostnameEndpoint for every request, and that one resolves
    even an IP literal through the thread pool and builds a class per connection: more
    CPU than the rest of a session. An IP literal gets a plain TCP endpoint here; a host
    name keeps HostnameEndpoint (resolved per connection, as a CPE does).
    """

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._cache: dict[tuple[bytes, bytes, int], Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            tcp = self.tcp(uri)
            if uri.scheme == b"https":
                creator = self._fleet.tls_policy().creatorForNetloc(uri.host, uri.port)
                tcp = wrapClientTLS(creator, tcp)
            endpoint = self._cache[key] = tcp
        return endpoint

    def tcp(self, uri: Any) -> Any:
        """The TCP endpoint under it (cached too)."""
        key = (b"tcp", uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is None:
            fleet = self._fleet
            host = uri.host.decode("ascii").strip("[]")
            timeout = fleet.connect_timeout
            if _is_ip(host):
                kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
                endpoint = kind(fleet.reactor, host, uri.port, timeout=timeout)
            else:
                endpoint = HostnameEndpoint(fleet.reactor, uri.host, uri.port, timeout=timeout)
            self._cache[key] = endpoint
        return endpoint


@implementer(IOpenSSLClientConnectionCreator)
class _Resuming:
    """The fleet's TLS connection creator, offering the device's last TLS session (a
    session ticket) so the server may resume it instead of a full handshake."""

    def __init__(self, inner: Any, offered: SSL.Session | None) -> None:
        self._inner = inner
        self._offered = offered
        self.connections: list[SSL.Connection] = []

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._inner.clientConnectionForTLS(tlsProtocol)
        if self._offered is not None:
            connection.set_session(self._offered)
        self.connections.append(connection)
        return connection


def _session_reused(connection: SSL.Connection) -> bool:
    """SSL_session_reused: pyOpenSSL has no public call for it."""
    from OpenSSL._util import lib

    return bool(lib.SSL_session_reused(connection._ssl))


@implementer(IAgentEndpointFactory)
class _ResumingEndpoints:
    """One session's endpoints when the fleet resumes TLS sessions: the device's own."""

    def __init__(self, fleet: Fleet, creator: _Resuming) -> None:
        self._fleet = fleet
        self._creator = creator

    def endpointForURI(self, uri: Any) -> Any:
        tcp = self._fleet.endpoints.tcp(uri)
        if uri.scheme != b"https":
            return tcp
        inner = self._fleet.tls_policy().creatorForNetloc(uri.host, uri.port)
        self._creator._inner = inner
        return wrapClientTLS(self._creator, tcp)


class _Http:
    """The HTTP side of one session: its connection(s), cookies and authentication."""

    def __init__(self, fleet: Fleet, device: SimDevice, url: str) -> None:
        self._fleet = fleet
        self._device = device
        self._pool = HTTPConnectionPool(fleet.reactor, persistent=fleet.connection == "session")
        self._pool.maxPersistentPerHost = 1
        self._pool.retryAutomatically = False  # never replay a POST behind the CPE's back
        endpoints: Any = fleet.endpoints
        self._tls: _Resuming | None = None
        if fleet.tls_resume:
            self._tls = _Resuming(None, fleet.tls_sessions.get(device.device_id))
            endpoints = _ResumingEndpoints(fleet, self._tls)
        self._agent = Agent.usingEndpointFactory(fleet.reactor, endpoints, pool=self._pool)
        self._url = url.encode("ascii")
        parts = urllib.parse.urlsplit(url)
        self._uri = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._cookies: dict[str, str] = {}
        self._challenge: Challenge | None = None
        self._nc = 0
        # A returning CPE answers the last challenge of its previous session again, with
        # the next nonce count, on its first request: no 401 while the nonce is good.
        self._preemptive = False
        if fleet.reuse_nonce:
            remembered = fleet.nonces.get(device.device_id)
            if remembered is not None:
                self._challenge, self._nc = remembered
                self._preemptive = True

    def _authorization(self, fresh_connection: bool) -> bytes | None:
        device, fleet = self._device, self._fleet
        challenge = self._challenge
        if challenge is None:
            if fleet.basic:  # over TLS a CPE SHOULD send Basic without waiting
                challenge = Challenge("basic")
            else:
                return None
        elif not fresh_connection:
            return None
        self._nc += 1
        if fleet.reuse_nonce and challenge.scheme == "digest":
            fleet.nonces[device.device_id] = (challenge, self._nc)
        return authorization(
            challenge, device.username, device.password, "POST", self._uri, nc=self._nc
        )

    async def post(self, body: bytes) -> tuple[int, Headers, bytes]:
        """POST ``body`` (b"" for the empty POST); a 401 is answered here."""
        answered = False
        per_request = self._fleet.connection == "request"
        for attempt in range(3):
            headers = Headers({b"user-agent": [_USER_AGENT]})
            if body:
                headers.addRawHeader(b"content-type", _CONTENT_TYPE)
                headers.addRawHeader(b"soapaction", b"")
            if self._cookies:
                cookie = "; ".join(f"{k}={v}" for k, v in self._cookies.items())
                headers.addRawHeader(b"cookie", cookie.encode("latin-1"))
            auth = self._authorization(attempt > 0 or per_request or self._preemptive)
            self._preemptive = False
            if auth is not None:
                headers.addRawHeader(b"authorization", auth)
            self._fleet.trace("cpe", self._device, body)
            response = await self._request(headers, body)
            data = await self._read(response)
            self._fleet.trace("acs", self._device, data)
            for value in response.headers.getRawHeaders(b"set-cookie") or []:
                pair = value.decode("latin-1").split(";", 1)[0]
                name, sep, cookie_value = pair.partition("=")
                if sep and name.strip():
                    self._cookies[name.strip()] = cookie_value.strip()
            if response.code != 401:
                return response.code, response.headers, data
            try:
                challenges = parse_challenges(
                    response.headers.getRawHeaders(b"www-authenticate") or []
                )
            except ChallengeError:
                raise SessionFailed("auth: unreadable challenge") from None
            pick = choose(challenges, allow_basic=True)
            if pick is None:
                raise SessionFailed("auth: no usable challenge")
            if answered and not is_stale(pick):
                raise SessionFailed("auth: refused")
            self._challenge, self._nc, answered = pick, 0, True
        raise SessionFailed("auth: refused")

    async def _request(self, headers: Headers, body: bytes) -> IResponse:
        d: Deferred[IResponse] = self._agent.request(
            b"POST", self._url, headers, _Bytes(body) if body else None
        )
        d.addTimeout(self._fleet.request_timeout, self._fleet.reactor)
        return await d

    async def _read(self, response: IResponse) -> bytes:
        d = _read_body(response, _MAX_BODY)
        d.addTimeout(self._fleet.request_timeout, self._fleet.reactor)
        return await d

    async def close(self) -> None:
        if self._tls is not None:
            fleet = self._fleet
            for connection in self._tls.connections:
                session = connection.get_session()
                if session is None:
                    continue  # no handshake completed on it
                fleet.tls_handshakes["resumed" if _session_reused(connection) else "full"] += 1
                fleet.tls_sessions[self._device.device_id] = session
        await self._pool.closeCachedConnections()


def _reason(failure: BaseException) -> str:
    """A short, stable failure reason for the statistics."""
    if isinstance(failure, SessionFailed):
        return failure.reason
    if isinstance(failure, TimeoutError):
        return "timeout"
    if isinstance(failure, CancelledError):
        return "cancelled"
    if isinstance(failure, net_error.ConnectionRefusedError):
        return "connect: refused"
    if isinstance(failure, net_error.TimeoutError):
        return "connect: timeout"
    if isinstance(failure, net_error.DNSLookupError):
        return "connect: dns"
    if isinstance(failure, net_error.ConnectError):
        return "connect: error"
    reasons = getattr(failure, "reasons", None)
    if reasons:
        for reason in reasons:
            if reason.check(SSL.Error):
                return "tls"
        for reason in reasons:
            if reason.check(net_error.ConnectionLost, net_error.ConnectionDone):
                return "connection lost"
    return type(failure).__name__


# ---------------------------------------------------------------------------------------
# The fleet


@dataclass(eq=False)
class _Run:
    stats: FleetStats
    count: int | None
    done: Deferred[None]
    launched: int = 0
    ended: int = 0
    sids: list[int] = field(default_factory=list)  # the sessions its arrivals started


class Fleet:
    """Simulated CPEs and everything that runs them.

    Build it, ``await fleet.start()``, then ``await fleet.run_sessions(count=...)`` or
    ``duration=...`` (as often as wanted), and ``await fleet.stop()``. Between runs the
    devices still do what they were asked to (transfers, reboots, scheduled informs,
    connection requests); only the arrival model is paused.

    ``devices`` is a number (identities from the template's, serial numbers
    ``serial_prefix`` + a zero-padded index) or the exact DeviceIds. ``credentials`` is a
    :data:`CredentialSource` or a mapping from device id (as read from a credentials CSV).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        acs_url: str,
        *,
        devices: int | Sequence[DeviceId] = 1,
        template: Template | None = None,
        credentials: CredentialSource | Mapping[str, Credentials] | None = None,
        serial_prefix: str = "SIM",
        first_index: int = 0,
        cafile: str | None = None,
        insecure: bool = False,
        client_cert: str | None = None,
        client_key: str | None = None,
        basic: bool = False,
        concurrency: int = 100,
        connection: str = "session",
        arrival: Arrival | None = None,
        behaviour: Behaviour | None = None,
        bootstrap: bool = True,
        connreq_listen: tuple[str, int] | None = None,
        connreq_host: str | None = None,
        xmpp: XmppSettings | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        drain_timeout: float = 30.0,
        seed: int | None = None,
        trace: Callable[[str, SimDevice, bytes], None] | None = None,
        reuse_nonce: bool = False,
        tls_resume: bool = False,
    ) -> None:
        scheme = urllib.parse.urlsplit(acs_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError("the ACS URL must be http:// or https://")
        if connection not in ("session", "request"):
            raise ValueError("connection must be 'session' or 'request'")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.reactor = reactor
        self.acs_url = acs_url
        self.arrival: Arrival = arrival if arrival is not None else Storm()
        self.basic = basic
        self.connection = connection
        # A returning CPE re-uses its last Digest nonce (next nonce count) instead of
        # waiting for a 401; and offers its last TLS session for resumption.
        self.reuse_nonce = reuse_nonce
        self.nonces: dict[str, tuple[Challenge, int]] = {}
        self.tls_resume = tls_resume
        self.tls_sessions: dict[str, SSL.Session] = {}
        self.tls_handshakes: Counter[str] = Counter()  # "full", "resumed" (tls_resume)
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.drain_timeout = drain_timeout
        self._tls_args = (cafile, insecure, client_cert, client_key)
        self._tls: _TlsPolicy | None = None
        self.endpoints = _Endpoints(self)
        self._trace = trace
        self._rng = random.Random(seed)  # timing jitter, not secrets
        self._behaviour = behaviour or Behaviour()
        self._connreq_listen = connreq_listen
        self._connreq_host = connreq_host
        self.listener: ConnectionRequestListener | None = None
        self._xmpp_settings = xmpp
        self.xmpp: XmppCpes | None = None
        self._files_agent: Agent | None = None
        self._moving: set[Deferred[None]] = set()  # transfers moving bytes now
        self._files_pool: HTTPConnectionPool | None = None

        base = template or builtin_template()
        ms = base.ms
        shared = {ms + "URL": acs_url, ms + "ConnectionRequestURL": ""}
        interval = self._interval(self.arrival)
        if interval is not None:
            shared[ms + "PeriodicInformInterval"] = str(max(1, round(interval)))
        self.template = base.with_values(shared)

        source = credentials
        if source is None:
            source = credential_templates("{device_id}", "{device_id}")
        identity = self.template.identity
        if isinstance(devices, int):
            width = max(6, len(str(first_index + devices - 1)))
            ids = [
                DeviceId(
                    identity.manufacturer,
                    identity.oui,
                    identity.product_class,
                    f"{serial_prefix}{first_index + i:0{width}d}",
                )
                for i in range(devices)
            ]
        else:
            ids = list(devices)
        self.devices: list[SimDevice] = []
        self._by_id: dict[str, SimDevice] = {}
        for index, device_identity in enumerate(ids):
            device_id = make_device_id(device_identity)
            if isinstance(source, Mapping):
                creds = source.get(device_id)
                if creds is None:
                    raise ValueError(f"no credentials for device {device_id}")
            else:
                creds = source(first_index + index, device_identity, device_id)
            device = SimDevice(index, device_identity, self.template, creds, bootstrap=bootstrap)
            self.devices.append(device)
            self._by_id[device.device_id] = device

        self.stats = FleetStats(started=reactor.seconds())
        self._slots = DeferredSemaphore(concurrency)
        self._sessions: dict[int, Deferred[None]] = {}  # by session number
        self._session_ids = 0
        self._waiting: dict[int, Deferred[DeferredSemaphore]] = {}  # for a slot, by number
        self._waiters: dict[int, list[Deferred[SessionResult]]] = {}
        self._runs: list[_Run] = []
        self._heap: list[tuple[float, int]] = []
        self._timer: IDelayedCall | None = None
        self._started = False
        self._periodic = False
        self._arrivals: LoopingCall | None = None
        self._diagnosing: set[Deferred[None]] = set()  # diagnostics running
        self.queued = 0
        self.active = 0

    @staticmethod
    def _interval(arrival: Arrival) -> float | None:
        if isinstance(arrival, Periodic):
            return arrival.interval
        if isinstance(arrival, Storm):
            return arrival.interval
        return None

    @classmethod
    def from_device_ids(
        cls, reactor: Any, acs_url: str, credentials: Mapping[str, Credentials], **kw: Any
    ) -> Fleet:
        """A fleet of exactly the devices of a credentials CSV (``read_credentials_csv``)."""
        template: Template = kw.pop("template", None) or builtin_template()
        identity = template.identity
        ids = []
        for device_id in credentials:
            oui, product_class, serial = parse_device_id(device_id)
            ids.append(DeviceId(identity.manufacturer, oui, product_class, serial))
        return cls(reactor, acs_url, devices=ids, template=template, credentials=credentials, **kw)

    # -- lifecycle --------------------------------------------------------------------------

    def tls_policy(self) -> _TlsPolicy:
        if self._tls is None:
            self._tls = _TlsPolicy(*self._tls_args)
        return self._tls

    async def start(self) -> None:
        """Load the TLS material and start the connection-request listener, if any."""
        self.tls_policy()
        if self._connreq_listen is not None:
            interface, port = self._connreq_listen
            listener = ConnectionRequestListener(self.reactor, self._connection_request)
            listener.listen(interface, port, self._connreq_host)
            name = self.template.ms + "ConnectionRequestURL"
            if name in self.template.params:
                for device in self.devices:
                    device.model.set(name, listener.register(device))
            self.listener = listener
        if self._xmpp_settings is not None:
            self.xmpp = XmppCpes(self.reactor, self._xmpp_settings, self._connection_request)
            await self.xmpp.start(self.devices)
        self._started = True
        self.stats = FleetStats(started=self.reactor.seconds())

    async def stop(self) -> None:
        """Stop arrivals and timers, let live sessions finish (up to ``drain_timeout``),
        then cancel the rest and close the listener."""
        self._started = False
        self._stop_arrivals()
        for run in list(self._runs):
            if not run.done.called:
                run.done.callback(None)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for waiting in list(self._waiting.values()):
            waiting.cancel()  # not begun: dropped, not counted
        for diagnostic in list(self._diagnosing):
            diagnostic.cancel()
        await self._drain(self.drain_timeout)
        if self.listener is not None:
            await self.listener.stop()
        if self.xmpp is not None:
            await self.xmpp.stop()
        for moving in list(self._moving):
            moving.cancel()
        if self._files_pool is not None:
            await self._files_pool.closeCachedConnections()

    def interrupt(self) -> None:
        """End the current run now (as if its count or duration were reached)."""
        for run in list(self._runs):
            if not run.done.called:
                run.done.callback(None)

    async def _drain(self, timeout: float) -> None:
        pending = [d for d in self._sessions.values() if not d.called]
        if not pending:
            return
        waiting: Deferred[Any] = DeferredList(pending, consumeErrors=True)
        waiting.addTimeout(timeout, self.reactor)
        try:
            await waiting
        except TimeoutError:
            for d in list(self._sessions.values()):
                d.cancel()
            self._log.warn(
                "cancelled the sessions still running after {timeout} s", timeout=timeout
            )

    # -- runs -------------------------------------------------------------------------------

    async def run_sessions(
        self,
        count: int | None = None,
        duration: float | None = None,
        *,
        arrival: Arrival | None = None,
    ) -> FleetStats:
        """Run the arrival model until ``count`` sessions ended or ``duration`` seconds
        passed (with neither: until :meth:`interrupt` or :meth:`stop`), then wait for the
        sessions in flight; returns the statistics of the sessions that ended during the
        run."""
        if not self._started:
            raise RuntimeError("start() the fleet first")
        arrival = arrival or self.arrival
        run = _Run(FleetStats(started=self.reactor.seconds()), count, Deferred())
        self._runs.append(run)
        timer = None
        if duration is not None:
            timer = self.reactor.callLater(duration, self._end_run, run)
        self._start_arrivals(arrival, run)
        try:
            await run.done
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            self._stop_arrivals()
            # What the run started but no slot was free for yet is dropped; what is under
            # way finishes.
            for sid in run.sids:
                waiting = self._waiting.get(sid)
                if waiting is not None:
                    waiting.cancel()
            await self._drain(self.drain_timeout)
            self._runs.remove(run)
        return run.stats

    def _end_run(self, run: _Run) -> None:
        if not run.done.called:
            run.done.callback(None)

    def _start_arrivals(self, arrival: Arrival, run: _Run) -> None:
        now = self.reactor.seconds()
        self._periodic = not isinstance(arrival, Rate)
        plan: list[tuple[float, int]] = []
        if isinstance(arrival, Periodic):
            n = len(self.devices)
            plan = [(now + arrival.interval * i / n, i) for i in range(n)]
        elif isinstance(arrival, Storm):
            plan = sorted(
                (now + self._rng.uniform(0, arrival.window), i) for i in range(len(self.devices))
            )
        state = {"next": 0, "cursor": 0, "start": now}

        def tick() -> None:
            current = self.reactor.seconds()
            if isinstance(arrival, Rate):
                self._rate_tick(arrival, run, state, current)
                return
            while state["next"] < len(plan) and plan[int(state["next"])][0] <= current:
                device = self.devices[plan[int(state["next"])][1]]
                state["next"] += 1
                if run.count is not None and run.launched >= run.count:
                    continue
                sid = self._launch(device)
                if sid is not None:
                    run.launched += 1
                    run.sids.append(sid)

        interval = _TICK
        if isinstance(arrival, Rate) and arrival.per_second:
            interval = min(_TICK, 1 / arrival.per_second)
        self._arrivals = LoopingCall(tick)
        self._arrivals.clock = self.reactor
        self._arrivals.start(interval, now=True).addErrback(
            lambda f: self._log.failure("the arrival model failed", f)
        )

    def _rate_tick(self, arrival: Rate, run: _Run, state: dict[str, float], now: float) -> None:
        if arrival.per_second is None:
            due = self.concurrency - self.queued - self.active
        else:
            due = int((now - state["start"]) * arrival.per_second) + 1 - run.launched
        if run.count is not None:
            due = min(due, run.count - run.launched)
        n = len(self.devices)
        tries = 0
        while due > 0 and tries < n:
            device = self.devices[int(state["cursor"]) % n]
            state["cursor"] += 1
            tries += 1
            sid = self._launch(device)
            if sid is not None:
                run.launched += 1
                run.sids.append(sid)
                due -= 1
                tries = 0

    def _stop_arrivals(self) -> None:
        self._periodic = False
        if self._arrivals is not None and self._arrivals.running:
            self._arrivals.stop()
        self._arrivals = None

    # -- sessions ---------------------------------------------------------------------------

    def _behaviour_now(self) -> Behaviour:
        if self._behaviour.periodic and not self._periodic:
            return replace(self._behaviour, periodic=False)
        return self._behaviour

    def _launch(self, device: SimDevice) -> int | None:
        """Start a session for ``device`` unless it is in one (or waiting for a slot);
        returns the session's number."""
        if device.busy or not self._started:
            return None
        device.busy = True
        self.queued += 1
        self._session_ids += 1
        sid = self._session_ids
        d = Deferred.fromCoroutine(self._session(device, sid))
        if not d.called:
            self._sessions[sid] = d
        return sid

    async def _session(self, device: SimDevice, sid: int) -> None:
        try:
            slot = self._waiting[sid] = self._slots.acquire()
            try:
                await slot
            except CancelledError:
                self.queued -= 1
                device.busy = False
                return
            finally:
                self._waiting.pop(sid, None)
            self.queued -= 1
            self.active += 1
            try:
                result = await self._exchange(device)
            finally:
                self._slots.release()
                self.active -= 1
                device.busy = False
            if not result.ok:
                self._log.debug(
                    "session of {device_id} failed: {reason}",
                    device_id=device.device_id,
                    reason=result.reason,
                )
            # The device's next steps are scheduled before anyone hears of the result.
            self._after_session(device, result)
            self.stats.record(result)
            for waiter in self._waiters.pop(device.index, []):
                if not waiter.called:  # a caller may have given up (cancelled)
                    waiter.callback(result)
            for run in list(self._runs):
                run.stats.record(result)
                run.ended += 1
                if run.count is not None and run.ended >= run.count and not run.done.called:
                    run.done.callback(None)
        finally:
            self._sessions.pop(sid, None)

    async def _exchange(self, device: SimDevice) -> SessionResult:
        started = self.reactor.seconds()
        url = device.acs_url(self.acs_url)
        session = device.begin(started, url, self._behaviour_now())
        http = _Http(self, device, url)
        ok, reason, retry_after = True, "", None
        try:
            body = session.inform()
            while True:
                status, headers, data = await http.post(body)
                after = _retry_after(headers) if status in (429, 503) else None
                following = session.receive(status, data, after)
                if following is None:
                    break
                body = following
        except SessionFailed as e:
            ok, reason, retry_after = False, e.reason, e.retry_after
        except Exception as e:  # every failure is a result, never an escape
            ok, reason = False, _reason(e)
            if reason == type(e).__name__:
                self._log.failure(
                    "unexpected failure in a session of {device_id}", device_id=device.device_id
                )
        finally:
            try:
                await http.close()
            except Exception:
                self._log.failure("could not close a session's connections")
        ended = self.reactor.seconds()
        device.finish(session, ended, self._rng, ok=ok, retry_after=retry_after)
        return SessionResult(
            device_id=device.device_id,
            events=tuple(code for code, _ in session.events),
            ok=ok,
            reason=reason,
            started=started,
            latency=ended - started,
            rpcs=tuple(session.answered),
            faults=tuple(session.faults),
        )

    def _after_session(self, device: SimDevice, result: SessionResult) -> None:
        if not self._started:
            return
        if device.diagnostics:
            requested, device.diagnostics = device.diagnostics, None
            for obj in requested:
                d = Deferred.fromCoroutine(self._diagnostic(device, obj))
                if not d.called:
                    self._diagnosing.add(d)
                    d.addBoth(_forget, self._diagnosing, d)
        now = self.reactor.seconds()
        behaviour = self._behaviour_now()
        if result.ok and self._periodic:
            device.schedule_periodic(now, behaviour, self._rng)
        for transfer in device.fetches_due(behaviour):
            moving = Deferred.fromCoroutine(self._transfer(device, transfer, behaviour))
            self._moving.add(moving)
            moving.addBoth(self._moved, moving)
        if device.fire(now, behaviour, self._rng):
            self.reactor.callLater(0, self._launch_later, device)
        else:
            self._reschedule(device)

    def _moved(self, result: object, moving: Deferred[None]) -> None:
        self._moving.discard(moving)

    async def _transfer(self, device: SimDevice, transfer: Any, behaviour: Behaviour) -> None:
        """Really move a transfer's bytes, then let the device report it."""
        kind = "download" if transfer.is_download else "upload"
        fault: tuple[int, str] | None = None
        version: str | None = None
        try:
            if self._rng.random() < behaviour.fail_fraction:
                raise _TransferFailed(9010 if transfer.is_download else 9011, "simulated failure")
            if transfer.is_download:
                head = await self._retrying(self._download, transfer)
                if transfer.file_type.startswith("1 "):
                    m = _FIRMWARE_RE.match(head)
                    if m is None:
                        raise _TransferFailed(9018, "file corrupted: not a firmware image")
                    version = m.group(1).decode("utf-8", "replace")
            else:
                await self._retrying(lambda t: self._upload(device, t), transfer)
        except _TransferFailed as e:
            fault = (e.code, e.reason)
        except Exception as e:
            fault = (9010 if transfer.is_download else 9011, f"transfer failed: {e!r}"[:200])
        self.stats.transfers[f"{kind} {fault[0] if fault else 'ok'}"] += 1
        device.fetched(transfer, self.reactor.seconds(), fault, version)
        if self._started:
            self.wake(device)

    async def _retrying(self, move: Callable[[Any], Any], transfer: Any) -> Any:
        """A CPE tries a transfer a few times when the server cannot be reached."""
        for attempt in range(5):
            try:
                return await move(transfer)
            except _TransferFailed:
                raise
            except Exception:
                if attempt == 4:
                    raise
                await deferLater(self.reactor, 0.5 * (attempt + 1), lambda: None)
        return None

    def _transfer_agent(self) -> Agent:
        if self._files_agent is None:
            self._files_pool = HTTPConnectionPool(self.reactor, persistent=False)
            self._files_agent = Agent.usingEndpointFactory(
                self.reactor, self.endpoints, pool=self._files_pool
            )
        return self._files_agent

    @staticmethod
    def _transfer_headers(transfer: Any) -> Headers:
        headers = Headers({b"user-agent": [b"cwmpgw-sim"]})
        if transfer.username or transfer.password:
            token = f"{transfer.username}:{transfer.password}".encode()
            headers.addRawHeader(b"authorization", b"Basic " + base64.b64encode(token))
        return headers

    async def _download(self, transfer: Any) -> bytes:
        agent = self._transfer_agent()
        d = agent.request(b"GET", transfer.url.encode("ascii"), self._transfer_headers(transfer))
        response: IResponse = await d.addTimeout(self.request_timeout, self.reactor)
        body = _Counting()
        response.deliverBody(body)
        await body.done.addTimeout(max(self.request_timeout, 600), self.reactor)
        if response.code != 200:
            raise _TransferFailed(9010, f"HTTP {response.code}")
        if transfer.file_size and body.size != transfer.file_size:
            raise _TransferFailed(9018, f"got {body.size} bytes, not {transfer.file_size}")
        self.stats.bytes_downloaded += body.size
        return body.head

    async def _upload(self, device: SimDevice, transfer: Any) -> None:
        agent = self._transfer_agent()
        data = f"<config device='{device.device_id}'/>\n".encode() * 64
        d = agent.request(
            b"PUT",
            transfer.url.encode("ascii"),
            self._transfer_headers(transfer),
            FileBodyProducer(BytesIO(data), cooperator=self._cooperator()),
        )
        response: IResponse = await d.addTimeout(self.request_timeout, self.reactor)
        body = _Counting()
        response.deliverBody(body)
        await body.done
        if not 200 <= response.code < 300:
            raise _TransferFailed(9011, f"HTTP {response.code}")

    def _cooperator(self) -> Any:
        from twisted.internet.task import Cooperator

        return Cooperator(scheduler=lambda x: self.reactor.callLater(0, x))

    def _launch_later(self, device: SimDevice) -> None:
        self._launch(device)

    async def _diagnostic(self, device: SimDevice, obj: str) -> None:
        """Run a requested diagnostic, then inform with 8 DIAGNOSTICS COMPLETE."""
        agent, pool = make_agent(self.reactor, self.tls_policy(), self.connect_timeout)
        try:
            state = await run_diagnostic(self.reactor, device.model, obj, agent)
        finally:
            await pool.closeCachedConnections()
        self._log.debug(
            "diagnostic {object} of {device_id}: {state}",
            object=obj,
            device_id=device.device_id,
            state=state,
        )
        if not self._started:
            return
        device.add_event(DIAGNOSTICS_COMPLETE)
        device.retry_at = None
        self.wake(device)

    # -- the devices' own timers ------------------------------------------------------------

    def _reschedule(self, device: SimDevice) -> None:
        when = device.next_wakeup()
        if when is None or device.wake_at == when:
            device.wake_at = when
            return
        device.wake_at = when
        heappush(self._heap, (when, device.index))
        if self._timer is None or not self._timer.active() or self._timer.getTime() > when:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            delay = max(0.0, when - self.reactor.seconds())
            self._timer = self.reactor.callLater(delay, self._fire_due)

    def _fire_due(self) -> None:
        self._timer = None
        if not self._started:
            return
        now = self.reactor.seconds()
        behaviour = self._behaviour_now()
        while self._heap and self._heap[0][0] <= now:
            when, index = heappop(self._heap)
            device = self.devices[index]
            if device.wake_at != when:
                continue  # superseded by a later reschedule
            device.wake_at = None
            if device.busy:
                continue  # looked at again when its session ends
            if device.fire(now, behaviour, self._rng):
                self._launch(device)
            else:
                self._reschedule(device)
        if self._heap and self._timer is None:
            delay = max(0.0, self._heap[0][0] - now)
            self._timer = self.reactor.callLater(delay, self._fire_due)

    def wake(self, device: SimDevice) -> None:
        """Start the device's session now if it wants one, else at its next due time."""
        if device.busy:
            return
        if device.fire(self.reactor.seconds(), self._behaviour_now(), self._rng):
            self._launch(device)
        else:
            self._reschedule(device)

    def _connection_request(self, device: SimDevice) -> None:
        device.add_event(CONNECTION_REQUEST)
        device.retry_at = None  # a new event ends a retry wait at once
        self.reactor.callLater(0, self.wake, device)

    # -- for tests, benchmarks and the command line ----------------------------------------

    def device(self, device_id: str) -> SimDevice:
        return self._by_id[device_id]

    def next_session(self, device: SimDevice) -> Deferred[SessionResult]:
        """Fires with the result of the device's next session to end."""
        d: Deferred[SessionResult] = Deferred()
        self._waiters.setdefault(device.index, []).append(d)
        return d

    def inform(
        self, device: SimDevice, event: str = "2 PERIODIC", command_key: str = ""
    ) -> Deferred[SessionResult]:
        """Have the device open a session with ``event`` now; fires with its result."""
        d = self.next_session(device)
        device.add_event(event, command_key)
        device.retry_at = None
        self.wake(device)
        return d

    def value_change(self, device: SimDevice, name: str, value: str) -> None:
        """A change not made by the ACS; an active notification opens a session."""
        if device.local_change(name, value) == "active":
            self.wake(device)

    def trace(self, direction: str, device: SimDevice, body: bytes) -> None:
        if self._trace is not None:
            self._trace(direction, device, body)

    def credentials_csv(self) -> str:
        """The CSV ``python -m cwmpgw.credentials import`` takes, for the current credentials."""
        lines = ["device_id,username,password,cr_username,cr_password"]
        for device in self.devices:
            c = device.credentials()
            row = (device.device_id, c.username, c.password, c.cr_username, c.cr_password)
            if any(ch in text for text in row for ch in ',"\r\n'):
                raise ValueError(f"{device.device_id}: a credential needs CSV quoting")
            lines.append(",".join(row))
        return "\n".join(lines) + "\n"

    def memory_per_device(self) -> float:
        """Average bytes each device holds of its own (the shared template not counted)."""
        if not self.devices:
            return 0.0
        seen: set[int] = set()
        _shared(self.template, seen)
        total = sum(_footprint(device, seen) for device in self.devices)
        return total / len(self.devices)


def _forget(result: object, running: set[Deferred[None]], d: Deferred[None]) -> None:
    """A diagnostic ended (a cancelled one at stop() included)."""
    running.discard(d)
    if isinstance(result, Failure) and not result.check(CancelledError):
        Fleet._log.failure("a simulated diagnostic failed", result)


def _shared(template: Template, seen: set[int]) -> None:
    """Mark what every device shares (the template, its names and values) as seen."""
    seen.add(id(template))
    for name, param in template.params.items():
        seen.update((id(name), id(param), id(param.value), id(param.type)))
    for name in template.objects:
        seen.add(id(name))


def _footprint(obj: Any, seen: set[int]) -> int:
    """Bytes reachable from ``obj`` not yet counted (an iterative walk, no recursion)."""
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or item is None or isinstance(item, bool | Template):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif hasattr(item, "__slots__"):
            for cls in type(item).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(item, slot):
                        stack.append(getattr(item, slot))
    return total
