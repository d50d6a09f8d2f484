"""The ACS endpoint: HTTP POSTs from CPEs in, CWMP replies out.

HTTP concerns live here (method, size, cookie, authentication, status codes); CWMP
concerns live in the engine and the sans-IO session machine. Every failure becomes a
clear HTTP answer: a CWMP fault where the protocol has one, else 400/401/403/405/413/
414/415/429/431/503 with a one-line text body, never a traceback. Connections are bounded
(:class:`ConnectionLimits`): head size, body size, requests per connection, and an
absolute read deadline per request that trickled bytes do not extend.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from txredisapi import ConnectionError as RedisConnectionError

from cwmpgw.acs.admission import AdmissionControl
from cwmpgw.acs.auth import AuthFailure, CpeAuthenticator, Identity
from cwmpgw.acs.certs import certificate_identity, matches, peer_certificate
from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.sessions import LiveSession
from cwmpgw.acs.throttle import Block, Claims, IAuthThrottle
from cwmpgw.bus.events import device_ref, format_ts
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.deviceid import device_id as make_device_id
from cwmpgw.cwmp.messages import DeviceId, Envelope, Inform
from cwmpgw.cwmp.session import Reply
from cwmpgw.store.availability import RedisTimeout, Unavailable, log_call_failure
from cwmpgw.store.interfaces import ICredentialStore

__all__ = [
    "COOKIE_NAME",
    "AcsChannel",
    "AcsRequest",
    "AcsResource",
    "AcsSite",
    "ClientCertificates",
    "ConnectionLimits",
]

COOKIE_NAME = "cwmpgw_session"
# Some CPEs separate cookies with "," instead of ";" (PROTOCOL.md §2.3).
_COOKIE_RE = re.compile(r"(?:^|[;,]\s*)" + COOKIE_NAME + r"=([0-9a-f]{32})(?=$|[;,\s])")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one TCP connection may send before it is answered 4xx and closed.

    ``read_timeout`` is an absolute deadline per request, from its first byte until
    its body is complete, that trickled bytes do not extend (Twisted's own timeout, the
    site's ``timeout``, restarts on every byte: slowloris). Raise it together with
    ``max_body_bytes``: a slow link needs time for a large body. ``first_byte_timeout``
    bounds the start of a connection the same way: its TLS handshake and its first
    request byte must come within it (a stalled handshake, or a client that connects and
    says nothing, is closed), however slowly handshake bytes trickle in.
    """

    max_request_line: int = 8192
    max_header_bytes: int = 16384  # request line plus headers, as Twisted counts them
    max_headers: int = 100
    max_body_bytes: int = 262_144
    max_requests: int = 1000
    read_timeout: float = 30.0
    first_byte_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_bytes", "max_headers", "max_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_body_bytes < 0 or self.read_timeout <= 0:
            raise ValueError("max_body_bytes must be >= 0 and read_timeout > 0")


_REFUSALS = {
    400: b"Bad Request",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


class AcsRequest(Request):
    """A request that stops buffering a body once it passes the channel's limit.

    Twisted buffers the whole body before rendering; a chunked body has no length to
    refuse up front, so the cap is applied chunk by chunk here.
    """

    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if isinstance(channel, AcsChannel):
            if channel.refused:
                return
            self._received += len(data)
            if self._received > channel.limits.max_body_bytes:
                channel.refuse(413, "body too large")
                return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class ClientCertificates:
    """How a verified client certificate names its device (acs.client_identity[_match])."""

    field: str = "cn"
    match: str = "device_id"


class AcsChannel(HTTPChannel):
    """An HTTP connection that remembers its session and enforces the connection limits."""

    _log = Logger()

    cwmp_session: LiveSession | None = None
    auth_failures: int = 0
    limits: ConnectionLimits = ConnectionLimits()
    refused = False  # a limit was broken: answered, closing, ignoring the rest
    _requests_seen = 0
    _head_bytes = 0
    _head_lines = 0
    _head_fields = 0
    _in_request = False  # a complete request is being answered; later bytes are buffered
    _deadline: IDelayedCall | None = None
    _first_byte: IDelayedCall | None = None

    _clock: IReactorTime | None = None

    def configure(self, limits: ConnectionLimits, clock: IReactorTime) -> None:
        """Apply ``limits``, keeping Twisted's own checks as a second line behind ours."""
        self.limits = limits
        self._clock = clock
        self._first_byte = clock.callLater(limits.first_byte_timeout, self._silent)
        self.MAX_LENGTH = max(limits.max_request_line, limits.max_header_bytes)
        self.totalHeadersSize = limits.max_header_bytes
        self.maxHeaders = limits.max_headers

    def _peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(address, "host", address))

    def _silent(self) -> None:
        self._first_byte = None
        self._log.info(
            "{peer} sent no request within {first_byte_timeout}s of connecting; closing",
            peer=self._peer(),
            first_byte_timeout=self.limits.first_byte_timeout,
        )
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._first_byte is not None and data:
            # TLS done (we only see decrypted bytes) and a request begun: read_timeout now.
            self._first_byte.cancel()
            self._first_byte = None
        if self.refused:
            return
        if data and not self._in_request and self._deadline is None:
            # The first byte of a request: its head and body must be in within read_timeout.
            call_later: Any = self._clock.callLater if self._clock else self.callLater
            self._deadline = call_later(self.limits.read_timeout, self._read_timed_out)
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _read_timed_out(self) -> None:
        self._deadline = None
        self._log.warn(
            "request from {peer} not complete within {read_timeout}s; closing",
            peer=self._peer(),
            read_timeout=self.limits.read_timeout,
        )
        self.refused = True
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def lineReceived(self, line: bytes) -> None:
        if self.refused:
            return
        if self._head_lines == 0:
            if not line:  # the stray CRLF some clients send after a body; Twisted eats one
                super().lineReceived(line)  # type: ignore[no-untyped-call]
                return
            if len(line) > self.limits.max_request_line:
                return self.refuse(414, "request line too long")
        elif line and line[:1] not in b" \t":
            self._head_fields += 1
        self._head_lines += 1
        self._head_bytes += len(line)
        if self._head_bytes > self.limits.max_header_bytes:
            return self.refuse(431, "request headers too large")
        if self._head_fields > self.limits.max_headers:
            return self.refuse(431, "too many request headers")
        if not line:
            self._head_lines = self._head_bytes = self._head_fields = 0
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._head_lines == 0:
            self.refuse(414, "request line too long")
        else:
            self.refuse(431, "request headers too large")

    def allHeadersReceived(self) -> None:
        length = self.length
        if length is not None and length > self.limits.max_body_bytes:
            # Refused before any of the body is read (and before a 100 Continue).
            return self.refuse(413, "body too large")
        super().allHeadersReceived()  # type: ignore[no-untyped-call]
        self._requests_seen += 1
        if self._requests_seen >= self.limits.max_requests:
            self.persistent = False
            self.requests[-1].responseHeaders.setRawHeaders(b"connection", [b"close"])

    def allContentReceived(self) -> None:
        if self.refused:
            return
        self._cancel_deadline()
        self._in_request = True
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        super().rawDataReceived(data)

    def requestDone(self, request: Request) -> None:
        # A response that says "Connection: close" really closes the connection.
        connection = request.responseHeaders.getRawHeaders(b"connection") or []
        if any(b"close" in v.lower() for v in connection):
            self.persistent = False
        self._in_request = False
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def refuse(self, status: int, reason: str) -> None:
        """Answer a broken limit with a short plain response and close the connection."""
        if self.refused:
            return
        self.refused = True
        self._cancel_deadline()
        self._log.info(
            "refused a request from {peer}: {status} {reason}",
            peer=self._peer(),
            status=status,
            reason=reason,
        )
        body = reason.encode() + b"\n"
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 %d %s\r\n" % (status, _REFUSALS[status])
                + b"Connection: close\r\n"
                + b"Content-Type: text/plain; charset=utf-8\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
            self.loseConnection()  # type: ignore[no-untyped-call]

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "bad request")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_deadline()
        if self._first_byte is not None and self._first_byte.active():
            self._first_byte.cancel()
        self._first_byte = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        site = getattr(self, "site", None)
        if isinstance(site, AcsSite):
            site.forget(self)
            site.engine.registry.connection_lost(self)
        self.cwmp_session = None


class AcsSite(Site):
    """The Site for the ACS endpoint: our channel, no form parsing, no HTTP/2.

    ``timeout`` is the idle time allowed between requests on a connection (give it the
    session timeout); the other limits are :class:`ConnectionLimits`.
    """

    protocol = AcsChannel  # type: ignore[assignment]
    requestFactory = AcsRequest

    def __init__(
        self,
        resource: AcsResource,
        *,
        timeout: float = 300.0,
        max_request_line: int = 8192,
        max_header_bytes: int = 16384,
        max_headers: int = 100,
        max_body_bytes: int | None = None,
        max_requests_per_connection: int = 1000,
        read_timeout: float = 30.0,
        max_connections: int = 0,
        max_connections_per_source: int = 0,
        first_byte_timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            resource, parsePOSTFormSubmission=False, timeout=timeout, **kwargs
        )
        self.engine = resource.engine
        self.noisy = False
        self.max_connections = max_connections  # 0 = no limit
        self.open_connections: set[AcsChannel] = set()
        # Per source address: many CPEs can share one (CGNAT), so the default is generous.
        self.max_connections_per_source = max_connections_per_source  # 0 = no limit
        self._per_source: dict[str, int] = {}
        self._sources: dict[AcsChannel, str] = {}
        self.limits = ConnectionLimits(
            max_request_line=max_request_line,
            max_header_bytes=max_header_bytes,
            max_headers=max_headers,
            max_body_bytes=(resource.max_body_bytes if max_body_bytes is None else max_body_bytes),
            max_requests=max_requests_per_connection,
            read_timeout=read_timeout,
            first_byte_timeout=first_byte_timeout,
        )

    def buildProtocol(self, addr: Any) -> Any:
        if self.max_connections and len(self.open_connections) >= self.max_connections:
            # Refused before any TLS work: the cheapest way to shed a crowd. The CPE
            # retries with its back-off.
            self.engine.note_shed()
            return None
        source = str(getattr(addr, "host", ""))
        if self.max_connections_per_source and (
            self._per_source.get(source, 0) >= self.max_connections_per_source
        ):
            self.engine.note_shed()
            return None
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if isinstance(channel, AcsChannel):
            channel.configure(self.limits, self.reactor)
            self.open_connections.add(channel)
            self._sources[channel] = source
            self._per_source[source] = self._per_source.get(source, 0) + 1
        return channel

    def forget(self, channel: AcsChannel) -> None:
        """A connection closed: it no longer counts against the limits."""
        self.open_connections.discard(channel)
        source = self._sources.pop(channel, None)
        if source is not None:
            left = self._per_source.get(source, 1) - 1
            if left > 0:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)

    def drain(self) -> None:
        """Shutting down: connections with no session and no request close now; the others
        close after the answer that ends their session (see AcsResource._send)."""
        self.resource.draining = True
        for channel in list(self.open_connections):
            live = channel.cwmp_session
            if not channel.requests and (live is None or live.machine.closed):
                channel.transport.loseConnection()  # type: ignore[union-attr]

    def abort_all(self) -> None:
        for channel in list(self.open_connections):
            channel.transport.abortConnection()  # type: ignore[union-attr]

    def log(self, request: Any) -> None:
        """No access log line per request: at fleet scale it is noise; sessions are logged."""


def _cookie(request: Request) -> str | None:
    header = request.getHeader(b"cookie")
    if not header:
        return None
    match = _COOKIE_RE.search(header.decode("latin-1"))
    return match.group(1) if match else None


class AcsResource(Resource):
    """Answers CPE POSTs; with a ``throttle``, also the brute-force defence.

    The throttle is consulted at three points: a blocked source address is refused
    with 429 before any credential work; every failed verification is counted (a
    plain first challenge is not) and may answer 429 when the claimed identity is
    blocked; a success clears that identity's count. A correct credential is never
    refused because of another address's failures (see :mod:`cwmpgw.acs.throttle`).
    Connections already carrying an authenticated session are not checked again.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        engine: AcsEngine,
        authenticator: CpeAuthenticator,
        credentials: ICredentialStore,
        *,
        max_body_bytes: int = 262_144,
        path: str = "/",
        throttle: IAuthThrottle | None = None,
        certificates: ClientCertificates | None = None,
        admission: AdmissionControl | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.engine = engine
        self._auth = authenticator
        self._credentials = credentials
        self._max_body = max_body_bytes
        self._path = path.encode()
        self._throttle = throttle
        self._certificates = certificates
        self._admission = admission
        self.draining = False

    @property
    def max_body_bytes(self) -> int:
        return self._max_body

    def render(self, request: Request) -> bytes | int:
        if request.method != b"POST":
            request.setResponseCode(405)
            request.setHeader(b"allow", b"POST")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"only POST is allowed here\n"
        if self._path != b"/" and request.path != self._path:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not the ACS URL\n"
        d = Deferred.fromCoroutine(self._handle(request))
        d.addErrback(self._internal_error, request)
        return NOT_DONE_YET

    def _internal_error(self, failure: Failure, request: Request) -> None:
        answerable = not request.finished and not getattr(request, "_disconnected", False)
        if failure.check(Unavailable, RedisTimeout, RedisConnectionError):
            # Redis went away under this request (e.g. during the credential lookup):
            # "retry later", like an Inform that cannot be stored, not an internal error.
            self._log.warn(
                "redis unreachable answering {peer}: {error}",
                peer=_peer(request),
                error=failure.getErrorMessage(),
            )
            if answerable:
                request.setHeader(b"retry-after", b"60")
                self._send(request, Reply(503, reason="storage unavailable; retry later"))
            return
        self._log.failure("unhandled error answering {peer}", failure, peer=_peer(request))
        if answerable:
            self._send(request, Reply(500, reason="internal error"))

    async def _handle(self, request: Request) -> None:
        peer = _peer(request)
        channel: Any = request.channel
        if self._throttle is not None and not _authenticated(channel):
            retry = await self._blocked(peer, None)
            if retry is not None:
                self._log.debug("refused {peer}: the address is blocked", peer=peer)
                return self._too_many(request, retry)
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._log.warn("body of {length} bytes from {peer} refused", length=length, peer=peer)
            return self._send(request, Reply(413, reason="body too large"))
        encoding = (request.getHeader(b"content-encoding") or b"").strip().lower()
        if encoding not in (b"", b"identity"):
            # Never decompressed (no gzip bomb can grow past the body cap): say so clearly
            # rather than answer "malformed XML" (RFC 7694: 415 with Accept-Encoding).
            self._log.info(
                "compressed body from {peer} refused ({encoding})",
                peer=peer,
                encoding=encoding[:32].decode("latin-1"),
            )
            request.setHeader(b"accept-encoding", b"identity")
            return self._send(request, Reply(415, reason="Content-Encoding not supported"))
        assert request.content is not None
        body = request.content.read(self._max_body + 1)
        if len(body) > self._max_body:
            return self._send(request, Reply(413, reason="body too large"))

        live = self.engine.registry.by_cookie(_cookie(request))
        if live is None and isinstance(channel, AcsChannel) and channel.cwmp_session is not None:
            if not channel.cwmp_session.machine.closed:
                live = channel.cwmp_session

        envelope: Envelope | None = None
        if body.strip():
            try:
                envelope = soap.parse_envelope(
                    body, content_type=_str(request.getHeader(b"content-type"))
                )
            except soap.SoapError as e:
                self._log.warn(
                    "unreadable envelope from {peer} (device {device_id}): {reason}",
                    peer=peer,
                    device_id=live.device_id if live else None,
                    reason=e.reason,
                )
                return self._send(request, Reply(e.status, reason=e.reason))
            except soap.InvalidMessage as e:
                self._log.warn(
                    "invalid request from {peer} (device {device_id}): {reason}",
                    peer=peer,
                    device_id=live.device_id if live else None,
                    reason=e.reason,
                )
                return self._send(
                    request,
                    Reply(200, soap.acs_fault(e.namespace, e.request_id, 8003, e.reason[:256])),
                )

        if envelope is not None and isinstance(envelope.message, Inform):
            shed = self._admit(request, envelope.message)
            if shed is not None:
                request.setHeader(b"retry-after", str(shed[1]).encode())
                request.setHeader(b"connection", b"close")
                return self._send(request, Reply(503, reason=shed[0]))
            return await self._inform(request, envelope, peer, channel)

        if live is None:
            self._log.info("POST without a session from {peer}", peer=peer)
            return self._send(request, Reply(400, reason="no session: start with an Inform"))
        if live.channel is not channel:
            identity = await self._authenticate(request, peer, live.device, live.device_id)
            if identity is None:
                return None
            refusal = await self._auth.authorize(identity, live.device_id, self._credentials)
            if refusal is not None:
                return await self._refuse(
                    request, peer, identity.username, live.device, live.device_id, refusal
                )
            await self._succeeded(peer, (identity.username, live.device_id))
            live.channel = channel
            if isinstance(channel, AcsChannel):
                channel.cwmp_session = live
        reply = await self.engine.continue_session(live, envelope)
        self._send(request, reply)
        return None

    def _admit(self, request: Request, inform: Inform) -> tuple[str, int] | None:
        """Why a new session must wait, and for how long; None if it may start.

        Checked right after the (cheap) parse and before any credential or Redis work.
        An Inform without credentials is not charged: its answer is the 401 challenge,
        which costs neither, and charging it would make every Digest session pay twice.
        """
        if self.draining:
            return "the gateway is shutting down; retry later", 30
        if self._admission is None:
            return None
        if request.getHeader(b"authorization") is None and (
            self._certificates is None or peer_certificate(request.transport) is None
        ):
            return None
        retry = self._admission.admit((e.code for e in inform.events), len(self.engine.registry))
        if retry is None:
            return None
        self.engine.note_shed()
        reason = getattr(self._admission, "last_reason", "") or "too many new sessions; retry later"
        return reason, retry

    async def _inform(self, request: Request, envelope: Envelope, peer: str, channel: Any) -> None:
        inform = envelope.message
        assert isinstance(inform, Inform)
        device_id = make_device_id(inform.device_id)
        identity = await self._authenticate(request, peer, inform.device_id, device_id)
        if identity is None:
            return None
        refusal = await self._auth.authorize(identity, device_id, self._credentials)
        if refusal is not None:
            return await self._refuse(
                request, peer, identity.username, inform.device_id, device_id, refusal
            )
        await self._succeeded(peer, (identity.username, device_id))
        if isinstance(channel, AcsChannel):
            channel.auth_failures = 0
        try:
            live, reply = await self.engine.start_session(
                envelope, peer=peer, channel=channel, authenticated_as=identity.username
            )
        except Exception:
            log_call_failure(
                self._log,
                Failure(),
                "could not store the Inform of {device_id}",
                device_id=device_id,
            )
            request.setHeader(b"retry-after", b"60")
            return self._send(
                request, Reply(503, reason="temporarily unable to store; retry later")
            )
        if live is not None:
            if isinstance(channel, AcsChannel):
                channel.cwmp_session = live
            cookie = f"{COOKIE_NAME}={live.cookie}; Path=/; HttpOnly"
            if request.isSecure():
                cookie += "; Secure"
            request.setHeader(b"set-cookie", cookie.encode())
        self._send(request, reply)
        return None

    async def _authenticate(
        self, request: Request, peer: str, device: DeviceId, device_id: str
    ) -> Identity | None:
        """The identity the request proves, or None after answering 401/403/429 ourselves."""
        if self._certificates is not None:
            cert = peer_certificate(request.transport)
            if cert is not None:
                # TLS verified it against our CA; here it must name this very device.
                names = certificate_identity(cert, self._certificates.field)
                if matches(names, device, device_id, self._certificates.match):
                    label = names.values[0] if names.values else ""
                    return Identity(f"certificate:{label}", device_id, "certificate")
                await self._refuse(
                    request,
                    peer,
                    "certificate:" + ",".join(names.values)[:128],
                    device,
                    device_id,
                    "the client certificate does not name this device",
                )
                return None
        result = await self._auth.authenticate(request)
        if isinstance(result, Identity):
            return result
        if result.challenge_only or result.stale:
            self._challenge(request, result)
            return None
        self.engine.auth_failed(
            peer=peer, reason=result.reason, username=result.username, device=device
        )
        channel: Any = request.channel
        if isinstance(channel, AcsChannel):
            channel.auth_failures += 1
        claims = [c for c in (result.username, device_id) if c]
        retry = await self._failed(peer, claims, device, device_id)
        if retry is not None:
            self._log.info(
                "refused {peer} (user {username!r}): too many failed authentications",
                peer=peer,
                username=result.username,
            )
            self._too_many(request, retry)
            return None
        self._challenge(request, result)
        return None

    def _challenge(self, request: Request, failure: AuthFailure) -> None:
        channel: Any = request.channel
        for value in self._auth.challenges(request, stale=failure.stale):
            request.responseHeaders.addRawHeader(b"www-authenticate", value)
        if isinstance(channel, AcsChannel) and channel.auth_failures >= 2:
            request.setHeader(b"connection", b"close")
        self._send(request, Reply(401, reason="authentication required"))

    async def _refuse(
        self,
        request: Request,
        peer: str,
        username: str,
        device: DeviceId,
        device_id: str,
        reason: str,
    ) -> None:
        """Valid credentials that may not speak for this device: counted for the device."""
        self.engine.auth_failed(peer=peer, reason=reason, username=username, device=device)
        await self._failed(peer, [device_id], device, device_id, check=False)
        request.setHeader(b"connection", b"close")
        self._send(request, Reply(403, reason="these credentials may not speak for this device"))

    def _too_many(self, request: Request, retry: float) -> None:
        request.setHeader(b"retry-after", str(max(1, math.ceil(retry))).encode())
        request.setHeader(b"connection", b"close")
        self._send(request, Reply(429, reason="too many failed authentications; retry later"))

    # The throttle is a defence, not a dependency: if it fails, authentication still
    # decides alone (and the failure is logged).
    async def _blocked(self, peer: str, claims: Claims) -> float | None:
        assert self._throttle is not None
        try:
            return await self._throttle.blocked(peer, claims)
        except Exception:
            log_call_failure(
                self._log, Failure(), "could not check the auth blocks of {peer}", peer=peer
            )
            return None

    async def _failed(
        self,
        peer: str,
        claims: list[str],
        device: DeviceId,
        device_id: str,
        *,
        check: bool = True,
    ) -> float | None:
        """Count a failure, report the blocks it starts; the wait if this attempt is blocked."""
        if self._throttle is None:
            return None
        try:
            blocks = await self._throttle.failed(peer, claims)
        except Exception:
            log_call_failure(
                self._log,
                Failure(),
                "could not count a failed authentication from {peer}",
                peer=peer,
            )
            return None
        for block in blocks:
            ref = None
            if block.kind == "device" and block.key == device_id:
                ref = device_ref(
                    device_id,
                    device.oui,
                    device.product_class,
                    device.serial_number,
                    device.manufacturer,
                )
            self._report(block, ref)
        return await self._blocked(peer, claims) if check else None

    async def _succeeded(self, peer: str, claims: tuple[str, str]) -> None:
        if self._throttle is None:
            return
        try:
            await self._throttle.succeeded(peer, claims)
        except Exception:
            log_call_failure(
                self._log, Failure(), "could not clear the failure count of {peer}", peer=peer
            )

    def _report(self, block: Block, ref: dict[str, str] | None) -> None:
        until = format_ts(block.until)
        self._log.warn(
            "blocking {kind} {key} until {until} after {failures} failed authentications",
            kind=block.kind,
            key=block.key,
            until=until,
            failures=block.failures,
        )
        d = self.engine.publish(
            "auth.blocked",
            {"kind": block.kind, "key": block.key, "until": until, "failures": block.failures},
            ref,
        )
        d.addErrback(lambda f: self._log.failure("could not publish auth.blocked", f))

    def _send(self, request: Request, reply: Reply) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(reply.status)
        if self.draining and reply.status != 200:
            # A session's envelopes keep their connection (the port is closed: the CPE
            # could not come back); the 204 that ends it, and everything else, close.
            request.setHeader(b"connection", b"close")
        # Always a Content-Length, never chunked: embedded CPE HTTP clients vary.
        if reply.status == 200:
            body = reply.body
            request.setHeader(b"content-type", b'text/xml; charset="utf-8"')
        elif reply.status == 204:
            body = b""
        else:
            body = reply.reason.encode() + b"\n"
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if reply.status != 204:
            request.setHeader(b"content-length", str(len(body)).encode())
            request.write(body)
        request.finish()


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def _authenticated(channel: Any) -> bool:
    """Whether this connection already carries an authenticated, open session."""
    live = getattr(channel, "cwmp_session", None)
    return live is not None and not live.machine.closed


def _str(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
