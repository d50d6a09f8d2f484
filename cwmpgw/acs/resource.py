"""The ACS endpoint: HTTP POSTs from CPEs in, CWMP replies out.

HTTP concerns live here (method, size, cookie, authentication, status codes); CWMP
concerns live in the engine and the sans-IO session machine. Every failure becomes a
clear HTTP answer: a CWMP fault where the protocol has one, else 400/401/403/405/413/503
with a one-line text body, never a traceback.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from cwmpgw.acs.auth import AuthFailure, CpeAuthenticator, Identity
from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.sessions import LiveSession
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.deviceid import device_id as make_device_id
from cwmpgw.cwmp.messages import Envelope, Inform
from cwmpgw.cwmp.session import Reply
from cwmpgw.store.interfaces import ICredentialStore

__all__ = ["COOKIE_NAME", "AcsChannel", "AcsResource", "AcsSite"]

COOKIE_NAME = "cwmpgw_session"
# Some CPEs separate cookies with "," instead of ";" (PROTOCOL.md §2.3).
_COOKIE_RE = re.compile(r"(?:^|[;,]\s*)" + COOKIE_NAME + r"=([0-9a-f]{32})(?=$|[;,\s])")


class AcsChannel(HTTPChannel):
    """An HTTP connection that remembers which session and identity it carries."""

    cwmp_session: LiveSession | None = None
    auth_failures: int = 0

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        site = getattr(self, "site", None)
        if isinstance(site, AcsSite):
            site.engine.registry.connection_lost(self)
        self.cwmp_session = None


class AcsSite(Site):
    """The Site for the ACS endpoint: our channel, no form parsing, no HTTP/2."""

    protocol = AcsChannel  # type: ignore[assignment]

    def __init__(self, resource: AcsResource, **kwargs: Any) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)  # type: ignore[no-untyped-call]
        self.engine = resource.engine
        self.noisy = False

    def log(self, request: Any) -> None:
        """No access log line per request: at fleet scale it is noise; sessions are logged."""


def _cookie(request: Request) -> str | None:
    header = request.getHeader(b"cookie")
    if not header:
        return None
    match = _COOKIE_RE.search(header.decode("latin-1"))
    return match.group(1) if match else None


class AcsResource(Resource):
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
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.engine = engine
        self._auth = authenticator
        self._credentials = credentials
        self._max_body = max_body_bytes
        self._path = path.encode()

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
        self._log.failure("unhandled error answering {peer}", failure, peer=_peer(request))
        if not request.finished and not getattr(request, "_disconnected", False):
            self._send(request, Reply(500, reason="internal error"))

    async def _handle(self, request: Request) -> None:
        peer = _peer(request)
        channel: Any = request.channel
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            self._log.warn("body of {length} bytes from {peer} refused", length=length, peer=peer)
            return self._send(request, Reply(413, reason="body too large"))
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
            return await self._inform(request, envelope, peer, channel)

        if live is None:
            self._log.info("POST without a session from {peer}", peer=peer)
            return self._send(request, Reply(400, reason="no session: start with an Inform"))
        if live.channel is not channel:
            identity = await self._authenticate(request, peer, live.device)
            if identity is None:
                return None
            refusal = await self._auth.authorize(identity, live.device_id, self._credentials)
            if refusal is not None:
                return self._refuse(request, peer, identity.username, live.device, refusal)
            live.channel = channel
            if isinstance(channel, AcsChannel):
                channel.cwmp_session = live
        reply = await self.engine.continue_session(live, envelope)
        self._send(request, reply)
        return None

    async def _inform(self, request: Request, envelope: Envelope, peer: str, channel: Any) -> None:
        inform = envelope.message
        assert isinstance(inform, Inform)
        identity = await self._authenticate(request, peer, inform.device_id)
        if identity is None:
            return None
        device_id = make_device_id(inform.device_id)
        refusal = await self._auth.authorize(identity, device_id, self._credentials)
        if refusal is not None:
            return self._refuse(request, peer, identity.username, inform.device_id, refusal)
        if isinstance(channel, AcsChannel):
            channel.auth_failures = 0
        try:
            live, reply = await self.engine.start_session(
                envelope, peer=peer, channel=channel, authenticated_as=identity.username
            )
        except Exception:
            self._log.failure("could not store the Inform of {device_id}", device_id=device_id)
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

    async def _authenticate(self, request: Request, peer: str, device: Any) -> Identity | None:
        """The identity the request proves, or None after answering 401 ourselves."""
        result = await self._auth.authenticate(request)
        if isinstance(result, Identity):
            return result
        self._challenge(request, peer, result, device)
        return None

    def _challenge(self, request: Request, peer: str, failure: AuthFailure, device: Any) -> None:
        channel: Any = request.channel
        if not failure.challenge_only and not failure.stale:
            self.engine.auth_failed(
                peer=peer, reason=failure.reason, username=failure.username, device=device
            )
            if isinstance(channel, AcsChannel):
                channel.auth_failures += 1
        for value in self._auth.challenges(request, stale=failure.stale):
            request.responseHeaders.addRawHeader(b"www-authenticate", value)
        if isinstance(channel, AcsChannel) and channel.auth_failures >= 2:
            request.setHeader(b"connection", b"close")
        self._send(request, Reply(401, reason="authentication required"))

    def _refuse(self, request: Request, peer: str, username: str, device: Any, reason: str) -> None:
        self.engine.auth_failed(peer=peer, reason=reason, username=username, device=device)
        request.setHeader(b"connection", b"close")
        self._send(request, Reply(403, reason="these credentials may not speak for this device"))

    def _send(self, request: Request, reply: Reply) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(reply.status)
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
