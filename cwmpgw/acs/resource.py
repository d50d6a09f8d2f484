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
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cwmpgw.acs.admission import AdmissionControl
from cwmpgw.acs.auth import CpeAuthenticator
from cwmpgw.acs.bootstrap import BootstrapWatch
from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.gate import AuthGate, ClientCertificates, Refusal
from cwmpgw.acs.throttle import IAuthThrottle
from cwmpgw.availability import is_backend_failure, log_call_failure
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.deviceid import device_id as make_device_id
from cwmpgw.cwmp.messages import Envelope, Inform
from cwmpgw.cwmp.session import Reply
from cwmpgw.sessions import LiveSession
from cwmpgw.store.interfaces import ICredentialStore
from cwmpgw.web.budget import SourceBudget
from cwmpgw.web.site import ConnectionLimits, HardenedChannel, HardenedSite, is_gone

__all__ = [
    "COOKIE_NAME",
    "AcsChannel",
    "AcsResource",
    "AcsSite",
    "ClientCertificates",
    "ConnectionLimits",
]

COOKIE_NAME = "cwmpgw_session"
#: Elements an envelope may hold before its sender has proved a session (an Inform has a
#: few hundred); inside one, one per BYTES_PER_ELEMENT bytes of the session body cap (a
#: discovery answer has about one per 40 bytes).
MAX_ELEMENTS = 20_000
BYTES_PER_ELEMENT = 16
# Some CPEs separate cookies with "," instead of ";" (PROTOCOL.md §2.3); some echo it the
# RFC 2965 way, between $Version and $Path attributes, with the value quoted and blanks
# around "=": $Version="1"; cwmpgw_session="<32 hex>"; $Path="/".
_COOKIE_RE = re.compile(r"(?:^|[;,]\s*)" + COOKIE_NAME + r'\s*=\s*("?)([0-9a-f]{32})\1(?=$|[;,\s])')


class AcsChannel(HardenedChannel):
    """A CPE's connection: the hardened base, plus the CWMP session it carries.

    A connection carrying an open session may sit idle as long as a session may
    (the site's ``timeout``); one that carries none gets the short ``idle_timeout`` of
    its limits, so a client that sent one request and nothing since keeps no slot.
    """

    cwmp_session: LiveSession | None = None
    auth_failures: int = 0
    session_idle: float = 300.0
    # What a sender that has proved its session may send: acs.max_session_body_bytes, and
    # read_timeout plus the body's size at acs.min_session_upload_rate to send it.
    session_body_bytes: int | None = None
    session_upload_rate: float = 16384.0
    _read_extension = 0.0  # seconds granted past read_timeout to the request being read

    def has_session(self) -> bool:
        live = self.cwmp_session
        return live is not None and not live.machine.closed

    def idle_timeout(self) -> float:
        return self.session_idle if self.has_session() else self.limits.idle_timeout

    def proven_session(self) -> LiveSession | None:
        """The open session the sender of the request being read has proved it belongs to.

        The session this connection authenticated for; or, for a POST that continues a
        session on a new connection (it authenticates again before being answered), the
        session its cookie names, a 128-bit secret sent to that device only, when it comes
        from the address the session was opened from.
        """
        if self.has_session():
            return self.cwmp_session
        site = getattr(self, "site", None)
        if not self.requests or not isinstance(site, AcsSite):
            return None
        live = site.engine.registry.by_cookie(_cookie(self.requests[-1]))
        if live is None or live.machine.closed or live.peer != self.peer():
            return None
        return live

    def body_limit(self) -> int:
        if self.session_body_bytes is not None and self.proven_session() is not None:
            return self.session_body_bytes
        return self.limits.max_body_bytes

    def read_time_left(self) -> float:
        """Inside a session a large body may take its size at the minimum upload rate."""
        if self.session_body_bytes is None or self.proven_session() is None:
            return 0.0
        content = getattr(self.requests[-1], "content", None)
        received = content.tell() if content is not None else 0
        more = received / self.session_upload_rate - self._read_extension
        if more <= 0:
            return 0.0
        more = max(more, 1.0)
        self._read_extension += more
        return more

    def allContentReceived(self) -> None:
        self._read_extension = 0.0
        super().allContentReceived()

    def refuse(self, status: int, reason: str) -> None:
        if status == 413 and not self.refused:
            live = self.proven_session()
            site = getattr(self, "site", None)
            if live is not None and isinstance(site, AcsSite):
                limit = self.body_limit()
                length = self.length if self.length and self.length > limit else None
                site.engine.answer_too_large(live, length, limit)
        super().refuse(status, reason)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        site = getattr(self, "site", None)
        if isinstance(site, AcsSite):
            site.engine.registry.connection_lost(self)
        self.cwmp_session = None


class AcsSite(HardenedSite):
    """The Site for the ACS endpoint: our channel, no form parsing, no HTTP/2.

    ``timeout`` is the idle time allowed between requests on a connection that carries a
    live session (give it the session timeout); ``idle_timeout`` the idle time of one
    that carries none. The other limits are :class:`ConnectionLimits`.
    """

    protocol = AcsChannel

    def __init__(
        self,
        resource: AcsResource,
        *,
        timeout: float = 300.0,
        max_request_line: int = 8192,
        max_header_bytes: int = 16384,
        max_headers: int = 100,
        max_body_bytes: int | None = None,
        max_session_body_bytes: int | None = None,
        min_session_upload_rate: float = 16384.0,
        max_requests_per_connection: int = 1000,
        read_timeout: float = 30.0,
        max_connections: int = 0,
        max_connections_per_source: int = 0,
        first_byte_timeout: float = 10.0,
        idle_timeout: float = 30.0,
        linger: float = 2.0,
        **kwargs: Any,
    ) -> None:
        limits = ConnectionLimits(
            max_request_line=max_request_line,
            max_header_bytes=max_header_bytes,
            max_headers=max_headers,
            max_body_bytes=(resource.max_body_bytes if max_body_bytes is None else max_body_bytes),
            max_requests=max_requests_per_connection,
            read_timeout=read_timeout,
            first_byte_timeout=first_byte_timeout,
            idle_timeout=min(idle_timeout, timeout),
            linger=linger,
        )
        self.engine = resource.engine
        super().__init__(
            resource,
            limits=limits,
            max_connections=max_connections,
            max_connections_per_source=max_connections_per_source,
            on_refused=lambda cap: self.engine.note_shed(),
            **kwargs,
        )
        self.session_idle = timeout
        self.session_body_bytes = (
            resource.max_session_body_bytes
            if max_session_body_bytes is None
            else max_session_body_bytes
        )
        self.session_upload_rate = float(min_session_upload_rate)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if isinstance(channel, AcsChannel):
            channel.session_idle = self.session_idle
            channel.session_body_bytes = self.session_body_bytes
            channel.session_upload_rate = self.session_upload_rate
        return channel

    def drain(self) -> None:
        """Shutting down: connections with no session and no request close now; the others
        close after the answer that ends their session (see AcsResource._send)."""
        self.resource.draining = True
        for channel in list(self.open_connections):
            if isinstance(channel, AcsChannel) and not channel.requests:
                if not channel.has_session():
                    channel.loseConnection()


def _cookie(request: Any) -> str | None:
    header = request.getHeader(b"cookie")
    if not header:
        return None
    match = _COOKIE_RE.search(header.decode("latin-1"))
    return match.group(2) if match else None


class AcsResource(Resource):
    """Answers CPE POSTs; with a ``throttle``, also the brute-force defence.

    The throttle is consulted only about attempts that failed verification: each is
    counted, and answered 429 (with Retry-After, closing the connection) instead of
    401 while its source address or a claimed identity is blocked; a success clears
    that identity's count, never the address's. What verifies nothing is never
    counted: a request with no credentials, a scheme we do not offer (pre-emptive
    Basic), a right Digest response under a stale nonce. So a block never refuses a
    correct credential: not the device's own from another address, and not an honest
    CPE's behind the same carrier-grade NAT as an attacker (see
    :mod:`cwmpgw.acs.throttle`).
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
        max_session_body_bytes: int | None = None,
        path: str = "/",
        throttle: IAuthThrottle | None = None,
        certificates: ClientCertificates | None = None,
        admission: AdmissionControl | None = None,
        budget: SourceBudget | None = None,
        bootstrap: BootstrapWatch | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.engine = engine
        self._gate = AuthGate(
            engine,
            authenticator,
            credentials,
            throttle=throttle,
            certificates=certificates,
            bootstrap=bootstrap,
        )
        self._max_body = max_body_bytes
        # Inside an authenticated session (see AcsChannel.body_limit); by default the same.
        self._max_session_body = max(max_body_bytes, max_session_body_bytes or 0)
        self._path = path.encode()
        self._admission = admission
        self._budget = budget
        self.draining = False

    @property
    def max_body_bytes(self) -> int:
        return self._max_body

    @property
    def max_session_body_bytes(self) -> int:
        return self._max_session_body

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
        answerable = not is_gone(request)
        if failure.value is not None and is_backend_failure(failure.value):
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
        # The channel's cap: small until the sender has proved its session, then large.
        limit = channel.body_limit() if isinstance(channel, AcsChannel) else self._max_body
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return self._too_large(request, peer, channel, int(length), limit)
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
        body = request.content.read(limit + 1)
        if len(body) > limit or getattr(request, "body_too_large", False):
            return self._too_large(request, peer, channel, None, limit)

        live = self.engine.registry.by_cookie(_cookie(request))
        if live is None and isinstance(channel, AcsChannel) and channel.cwmp_session is not None:
            if not channel.cwmp_session.machine.closed:
                live = channel.cwmp_session

        envelope: Envelope | None = None
        if body.strip():
            if self._over_budget(request, peer, channel, len(body)):
                return None
            if live is None and self._gate.challenge_only(request):
                # Nothing to verify and no session to continue: whatever the body says,
                # the answer is the challenge (or, draining, "come back later"), so it is
                # not parsed. Every Digest session's first request is one of these.
                if self.draining:
                    request.setHeader(b"retry-after", b"30")
                    request.setHeader(b"connection", b"close")
                    return self._send(
                        request, Reply(503, reason="the gateway is shutting down; retry later")
                    )
                return self._refused(request, self._gate.challenge(request))
            try:
                envelope = soap.parse_envelope(
                    body,
                    content_type=_str(request.getHeader(b"content-type")),
                    max_elements=max(MAX_ELEMENTS, limit // BYTES_PER_ELEMENT),
                )
            except soap.SoapError as e:
                self._log.warn(
                    "unreadable envelope from {peer} (device {device_id}): {reason}",
                    peer=peer,
                    device_id=live.device_id if live else None,
                    reason=e.reason,
                )
                if live is not None and live.channel is channel:
                    # On the session's own (authenticated) connection this may have been
                    # the answer to an ACS request: the engine decides (a task must not
                    # wait for ever for an answer that cannot be read).
                    reply = await self.engine.unreadable(live, e.status, e.reason)
                    return self._send(request, reply)
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
            verdict = await self._gate.check(request, peer, live.device, live.device_id)
            if isinstance(verdict, Refusal):
                return self._refused(request, verdict)
            self.engine.registry.attach(live, channel)
            if isinstance(channel, AcsChannel):
                channel.cwmp_session = live
        reply = await self.engine.continue_session(live, envelope)
        self._send(request, reply)
        return None

    def _too_large(
        self, request: Request, peer: str, channel: Any, length: int | None, limit: int
    ) -> None:
        live = channel.proven_session() if isinstance(channel, AcsChannel) else None
        if live is not None:
            self.engine.answer_too_large(live, length, limit)
        else:
            self._log.warn(
                "body of {length} bytes from {peer} refused (limit {limit} before authentication)",
                length="more than " + str(limit) if length is None else length,
                peer=peer,
                limit=limit,
            )
        request.setHeader(b"connection", b"close")
        self._send(request, Reply(413, reason="body too large"))

    def _over_budget(self, request: Request, peer: str, channel: Any, size: int) -> bool:
        """Whether ``peer`` has spent its budget of unauthenticated bytes (then answered 503).

        Parsing is the dearest work a stranger can cause, so a body that does not come on a
        connection carrying an authenticated session is charged to its source address first
        (:class:`~cwmpgw.web.budget.SourceBudget`).
        """
        if self._budget is None or (isinstance(channel, AcsChannel) and channel.has_session()):
            return False
        wait = self._budget.charge(peer, size)
        if wait is None:
            return False
        self.engine.note_over_budget()
        self._log.debug("refused {peer}: over its budget of unauthenticated bytes", peer=peer)
        request.setHeader(b"retry-after", str(max(1, math.ceil(wait))).encode())
        request.setHeader(b"connection", b"close")
        self._send(request, Reply(503, reason="too much unauthenticated data; retry later"))
        return True

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
            not self._gate.has_certificate(request)
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
        identity = await self._gate.check(request, peer, inform.device_id, device_id)
        if isinstance(identity, Refusal):
            return self._refused(request, identity)
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

    def _refused(self, request: Request, refusal: Refusal) -> None:
        for name, value in refusal.headers:
            request.responseHeaders.addRawHeader(name, value)
        self._send(request, Reply(refusal.status, reason=refusal.reason))

    def _send(self, request: Request, reply: Reply) -> None:
        if is_gone(request):
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


def _str(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
