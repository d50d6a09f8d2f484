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
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from cwmpgw.acs.admission import AdmissionControl
from cwmpgw.acs.auth import AuthFailure, CpeAuthenticator, Identity
from cwmpgw.acs.bootstrap import BootstrapWatch
from cwmpgw.acs.certs import certificate_identity, matches, peer_certificate
from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.throttle import Block, Claims, IAuthThrottle
from cwmpgw.availability import is_backend_failure, log_call_failure
from cwmpgw.bus.events import device_ref, format_ts
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.deviceid import device_id as make_device_id
from cwmpgw.cwmp.messages import DeviceId, Envelope, Inform
from cwmpgw.cwmp.session import Reply
from cwmpgw.sessions import LiveSession
from cwmpgw.store.interfaces import ICredentialStore
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
# Some CPEs separate cookies with "," instead of ";" (PROTOCOL.md §2.3).
_COOKIE_RE = re.compile(r"(?:^|[;,]\s*)" + COOKIE_NAME + r"=([0-9a-f]{32})(?=$|[;,\s])")


@dataclass(frozen=True, slots=True)
class ClientCertificates:
    """How a verified client certificate names its device (acs.client_identity[_match])."""

    field: str = "cn"
    match: str = "device_id"


class AcsChannel(HardenedChannel):
    """A CPE's connection: the hardened base, plus the CWMP session it carries.

    A connection carrying an open session may sit idle as long as a session may
    (the site's ``timeout``); one that carries none gets the short ``idle_timeout`` of
    its limits, so a client that sent one request and nothing since keeps no slot.
    """

    cwmp_session: LiveSession | None = None
    auth_failures: int = 0
    session_idle: float = 300.0

    def has_session(self) -> bool:
        live = self.cwmp_session
        return live is not None and not live.machine.closed

    def idle_timeout(self) -> float:
        return self.session_idle if self.has_session() else self.limits.idle_timeout

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

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if isinstance(channel, AcsChannel):
            channel.session_idle = self.session_idle
        return channel

    def drain(self) -> None:
        """Shutting down: connections with no session and no request close now; the others
        close after the answer that ends their session (see AcsResource._send)."""
        self.resource.draining = True
        for channel in list(self.open_connections):
            if isinstance(channel, AcsChannel) and not channel.requests:
                if not channel.has_session():
                    channel.loseConnection()


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
        bootstrap: BootstrapWatch | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._bootstrap = bootstrap
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
        if identity.bootstrap and self._bootstrap is not None:
            if await self._bootstrap_refused(request, peer, identity, inform.device_id, device_id):
                return None
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

    async def _bootstrap_refused(
        self, request: Request, peer: str, identity: Identity, device: DeviceId, device_id: str
    ) -> bool:
        """A session opened with the bootstrap credential by a device that confirmed its
        own (:mod:`cwmpgw.acs.bootstrap`): reported once, refused after the grace period
        if the policy says so (then answered here: True)."""
        assert self._bootstrap is not None
        verdict = await self._bootstrap.session(device_id)
        use, policy = verdict.use, self._bootstrap.policy
        if use is None:
            return False
        if use.report:
            since = format_ts(use.confirmed_at)
            self._log.warn(
                "{device_id} confirmed its own credentials at {since} but still authenticates"
                " with the bootstrap credential ({sessions} sessions since)",
                device_id=device_id,
                since=since,
                sessions=use.sessions,
            )
            self.engine.note_stuck_bootstrap(refused=False)
            ref = device_ref(
                device_id,
                device.oui,
                device.product_class,
                device.serial_number,
                device.manufacturer,
            )
            data = {
                "username": identity.username,
                "sessions": use.sessions,
                "since": since,
                "policy": "refuse" if policy.refuse else "accept",
                "refused_from": format_ts(use.confirmed_at + policy.grace)
                if policy.refuse
                else None,
            }
            try:
                await self.engine.publish("credentials.stuck", data, ref)
            except Exception:
                log_call_failure(
                    self._log,
                    Failure(),
                    "could not publish credentials.stuck for {device_id}",
                    device_id=device_id,
                )
        if not verdict.refused:
            return False
        # The credential is right, so this is no guess: not counted towards any block.
        # The 401 asks once more; firmware that re-reads its credential then gets in.
        self.engine.note_stuck_bootstrap(refused=True)
        self.engine.auth_failed(
            peer=peer,
            reason="bootstrap credential refused: the device confirmed its own",
            username=identity.username,
            device=device,
        )
        request.setHeader(b"connection", b"close")
        self._challenge(request, AuthFailure("bootstrap credential refused"))
        return True

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


def _authenticated(channel: Any) -> bool:
    """Whether this connection already carries an authenticated, open session."""
    live = getattr(channel, "cwmp_session", None)
    return live is not None and not live.machine.closed


def _str(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
