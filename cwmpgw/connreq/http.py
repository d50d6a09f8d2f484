"""The HTTP Connection Request client (TR-069 section 3.2.2).

One GET to the CPE's ConnectionRequestURL, answered with 401 and a challenge, then
one authenticated GET on a new connection (many CPEs close after the challenge; we
never rely on keep-alive).  Redirects are never followed, bodies are read only up
to a small bound, and the whole exchange is bounded by one timeout on the reactor
clock.  The URL host must be an IP literal: the guard checked it against the
device's address, and this client never resolves a name.

The HTTP/1.1 client is a small one of its own rather than twisted.web.client.Agent:
it only ever sends one GET with ``Connection: close`` and reads one answer (status,
the few headers it needs, a bounded body). Agent's pool, URI parsing, header objects
and endpoint layers were the largest part of the CPU a connection request cost the
gateway (bench/connreq.py: with the faster challenge parser, ~40% less per request).

Every outcome is an :class:`HttpAttempt`; its ``detail`` never contains the password or
the Authorization value, nor the URL path (which the CPE may use as a secret).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error, tcp
from twisted.internet.base import BaseConnector
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cwmpgw.connreq.guard import Refusal, Target, parse_http_url
from cwmpgw.logs import debug_wanted
from cwmpgw.timeouts import FixedTimeouts
from cwmpgw.web.digest_client import (
    Challenge,
    ChallengeError,
    authorization,
    choose,
    parse_challenges,
)

__all__ = ["OUTCOMES", "HttpAttempt", "HttpConnectionRequester"]

OUTCOMES = ("ok", "unreachable", "auth_failed", "timeout", "busy", "error")

_USER_AGENT = b"cwmpgw"
_MAX_DETAIL = 200


@dataclass(frozen=True)
class HttpAttempt:
    """How one Connection Request went.

    ``outcome`` is one of :data:`OUTCOMES`: "busy" means the CPE answered 503;
    ``status`` is the last HTTP status received, if any; ``detail`` is safe to log.
    """

    outcome: str
    status: int | None
    detail: str


class _Exchange:
    """The state of one exchange: the last challenges, and the outcome once it is known.

    ``final`` is read when the total timeout cuts the exchange short while a final
    response's body is still being drained.
    """

    def __init__(self) -> None:
        self.challenges: list[Challenge] = []
        self.final: HttpAttempt | None = None


class _NoResponse(Exception):
    """The connection ended before a complete status line and headers."""

    def __init__(self, reason: Failure, partial: bool) -> None:
        super().__init__(reason.getErrorMessage())
        self.reason = reason
        self.partial = partial  # some bytes of an answer had arrived


class _BadResponse(Exception):
    """The answer is not HTTP/1.x as we read it; the message is safe to log."""


# The status line and headers of one answer (with interim 1xx answers): room for
# every WWW-Authenticate value digest_client accepts, and a bound on a hostile CPE.
_MAX_HEAD = 65536
_HEAD_END = re.compile(rb"\n\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([1-5][0-9][0-9])(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})[ \t]*(?:;[^\r\n]*)?\r?\n")
_NO_BODY = frozenset({204, 304})


def _chunked_end(body: bytes) -> int | None:
    """Where a chunked body ends (the offset after its last CRLF), or None if not yet."""
    i = 0
    while True:
        m = _CHUNK_SIZE.match(body, i)
        if m is None:
            if len(body) - i > 1024 or b"\n" in body[i : i + 1024]:
                raise _BadResponse("malformed chunked body")
            return None
        size = int(m.group(1), 16)
        i = m.end()
        if size == 0:
            break
        i += size
        if body[i : i + 2] == b"\r\n":
            i += 2
        elif body[i : i + 1] == b"\n":
            i += 1
        elif len(body) - i >= 2:
            raise _BadResponse("malformed chunked body")
        else:
            return None
    while True:  # trailer fields, up to an empty line
        nl = body.find(b"\n", i)
        if nl < 0:
            return None
        line, i = body[i:nl], nl + 1
        if line in (b"", b"\r"):
            return i


class _OneRequest(Protocol):
    """One request on one connection: sends it, reads the answer's status and headers,
    drains at most ``max_body`` bytes of its body, then closes.

    ``done`` fires with (status, WWW-Authenticate values) once the answer is complete
    (or the connection ends after its headers), or fails with :class:`_NoResponse` or
    :class:`_BadResponse`; cancelling it aborts the connection. ``on_status`` is called with
    the final status as soon as the headers are read.
    """

    def __init__(self, request: bytes, max_body: int, on_status: Callable[[int], None]) -> None:
        self._request = request
        self._max_body = max_body
        self._on_status = on_status
        self._buffer = b""
        self._received = False
        self._status: int | None = None
        self._challenges: list[bytes] = []
        self._length: int | None = None  # Content-Length, else read to the end
        self._chunked = False
        self._body = 0  # body bytes received (chunked: with the framing)
        self.done: Deferred[tuple[int, list[bytes]]] = Deferred(self._cancel)
        self.stop_connecting: Callable[[], object] | None = None  # set by who connects
        # Set by who connects with a timeout of its own: called once connected or failed.
        self.connect_settled: Callable[[], object] | None = None
        self.connector: Any = None  # the reactor's, for a connect timeout of ours

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.connect_settled is not None:
            self.connect_settled()
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self._received = True
        if self._status is None:
            self._buffer += data
            try:
                if not self._read_head():
                    return
            except _BadResponse as e:
                self._buffer = b""
                self.done.errback(Failure(e))
                self._close(abort=True)
                return
            data, self._buffer = self._buffer, b""
        self._read_body(data)

    def _read_head(self) -> bool:
        """Parse the head once it is complete (skipping 1xx answers); False until then."""
        while True:
            end = _HEAD_END.search(self._buffer)
            if end is None:
                if len(self._buffer) > _MAX_HEAD:
                    raise _BadResponse("HTTP response headers too long")
                return False
            if end.start() > _MAX_HEAD:
                raise _BadResponse("HTTP response headers too long")
            head, self._buffer = self._buffer[: end.start()], self._buffer[end.end() :]
            status = self._parse_head(head)
            if status >= 200:
                self._status = status
                self._on_status(status)
                return True

    def _parse_head(self, head: bytes) -> int:
        lines = head.split(b"\n")
        match = _STATUS_LINE.fullmatch(lines[0].rstrip(b"\r"))
        if match is None:
            raise _BadResponse("malformed HTTP status line")
        status = int(match.group(1))
        if status < 200:
            return status  # interim (100 Continue...): its headers do not matter
        challenges: list[bytes] = []
        length: bytes | None = None
        chunked = False
        name = b""
        for raw in lines[1:]:
            line = raw.rstrip(b"\r")
            if line[:1] in (b" ", b"\t"):  # obs-fold: continues the previous field
                if name == b"www-authenticate" and challenges:
                    challenges[-1] += b" " + line.strip(b" \t")
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip(b" \t"):
                raise _BadResponse("malformed HTTP header")
            name = name.lower()
            if name == b"www-authenticate":
                challenges.append(value.strip(b" \t"))
            elif name == b"content-length":
                value = value.strip(b" \t")
                if not value.isdigit() or (length is not None and value != length):
                    raise _BadResponse("invalid Content-Length")
                length = value
            elif name == b"transfer-encoding":
                chunked = value.strip(b" \t").lower().endswith(b"chunked")
        self._challenges = challenges
        self._chunked = chunked
        if status in _NO_BODY:
            self._length = 0
        elif not chunked and length is not None:
            self._length = int(length)
        return status

    def _read_body(self, data: bytes) -> None:
        self._body += len(data)
        if self._body > self._max_body:
            self._complete(abort=True)  # the rest is not worth reading
            return
        if self._chunked:
            self._buffer += data
            try:
                complete = _chunked_end(self._buffer) is not None
            except _BadResponse:
                self._complete(abort=True)  # the status is known: the body does not matter
                return
        else:
            complete = self._length is not None and self._body >= self._length
        if complete:
            self._complete(abort=False)

    def _complete(self, *, abort: bool) -> None:
        assert self._status is not None
        self._buffer = b""
        self.done.callback((self._status, self._challenges))
        self._close(abort=abort)

    def _close(self, *, abort: bool) -> None:
        transport: Any = self.transport
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        if self._status is not None:  # the body ends with the connection
            self.done.callback((self._status, self._challenges))
        else:
            self.done.errback(Failure(_NoResponse(reason, self._received)))

    def connect_failed(self, reason: Failure) -> None:
        """The connection could not be made (an errback, or ClientFactory's hook)."""
        if self.connect_settled is not None:
            self.connect_settled()
        if not self.done.called:
            self.done.errback(reason)

    def _cancel(self, _: Deferred[Any]) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()
        elif self.stop_connecting is not None:
            try:
                self.stop_connecting()
            except error.NotConnectingError:
                pass


class _V4Connector(tcp.Connector):
    """``connectTCP``'s connector for an IPv4 literal, without its IPv6 test.

    ``tcp.Connector`` asks ``isIPv6Address(host)`` first, which for an IPv4 address is an
    exception raised and caught: ~4% of a connection request's CPU, twice per request.
    The guard has parsed the host already (an IP literal, no ':' in it). Relies on
    Twisted 26.10's ``tcp.Connector`` (pinned): its ``__init__`` minus that test.
    """

    def __init__(
        self,
        host: str,
        port: int,
        factory: ClientFactory,
        timeout: float | None,
        bindAddress: tuple[str, int] | None,
        reactor: Any,
    ) -> None:
        self.host, self.port = host, port
        self.bindAddress = bindAddress
        BaseConnector.__init__(self, factory, timeout, reactor)  # type: ignore[arg-type]


def _connect_timed_out(protocol: _OneRequest) -> None:
    """What Twisted's own connect timer calls: the connection attempt fails with
    TimeoutError (unless it was made meanwhile)."""
    connector = protocol.connector
    transport = getattr(connector, "transport", None)
    if transport is not None:
        transport.failIfNotConnected(error.TimeoutError())
    else:  # a connector without a transport (a test's memory reactor): stop it ourselves
        connector.stopConnecting()
        protocol.connect_failed(Failure(error.TimeoutError()))


class _Connect(ClientFactory):
    """Connects the one protocol built for this request."""

    noisy = False  # no "Starting factory" line for every request

    def __init__(self, protocol: _OneRequest) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> _OneRequest:
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._protocol.connect_failed(reason)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """TLS 1.2+ that accepts any server certificate: CPE certificates are self-signed."""

    def __init__(self) -> None:
        self._options = CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


def _detail(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


def _status_attempt(status: int, *, authenticated: bool) -> HttpAttempt:
    """The outcome of a final (non-401) status."""
    if status in (200, 204):
        how = "authenticated" if authenticated else "no authentication asked"
        return HttpAttempt("ok", status, f"HTTP {status} ({how})")
    if status == 503:
        return HttpAttempt("busy", status, "HTTP 503: CPE busy or rate-limiting")
    if 300 <= status < 400:
        return HttpAttempt("error", status, f"HTTP {status}: redirect not followed")
    return HttpAttempt("error", status, f"unexpected HTTP status {status}")


class HttpConnectionRequester:
    """Sends HTTP Connection Requests, each GET on a connection of its own.

    ``bind_address`` is the source address of outgoing connections (operators put it
    in CPE firewall allow-lists).  ``verify_tls`` checks https CPEs against the system
    trust store; by default any certificate is accepted, still with TLS 1.2 or later.
    ``close`` cancels requests in flight.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        connect_timeout: float = 2.0,
        total_timeout: float = 5.0,
        bind_address: str | None = None,
        verify_tls: bool = False,
        max_body: int = 4096,
    ) -> None:
        if not connect_timeout > 0 or not total_timeout > 0:
            raise ValueError("timeouts must be positive")
        if max_body < 0:
            raise ValueError("max_body must not be negative")
        self._bind: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        if bind_address is not None:
            self._bind = ipaddress.ip_address(bind_address)  # ValueError names the bad value
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        # One reactor timer each for all requests in flight (cwmpgw.timeouts).
        self._connect_timeouts: FixedTimeouts[_OneRequest] = FixedTimeouts(
            reactor, connect_timeout, _connect_timed_out
        )
        self._total_timeouts: FixedTimeouts[Deferred[HttpAttempt]] = FixedTimeouts(
            reactor, total_timeout, Deferred.cancel
        )
        self._verify_tls = verify_tls
        self._max_body = max_body
        self._unverified_tls: _UnverifiedTLS | None = None
        self._pending: set[Deferred[HttpAttempt]] = set()
        self._closed = False

    def close(self) -> Deferred[None]:
        """Cancel requests in flight (they fire with an "error" attempt)."""
        self._closed = True
        for d in list(self._pending):
            d.cancel()
        self._connect_timeouts.stop()
        self._total_timeouts.stop()
        return succeed(None)

    def request(
        self, url: str | Target, username: str, password: str, *, allow_basic: bool = False
    ) -> Deferred[HttpAttempt]:
        """GET ``url`` and answer its challenge; never fails, the outcome says what happened.

        ``url`` may be the :class:`Target` the guard already parsed it into (the same
        syntax rules, so it is not parsed twice). ``allow_basic`` lets a Basic challenge
        be answered (the password then crosses the network in clear unless the URL is
        https).
        """
        if self._closed:
            return succeed(HttpAttempt("error", None, "requester closed"))
        target = url if isinstance(url, Target) else parse_http_url(url)
        if isinstance(target, Refusal):
            return succeed(HttpAttempt("error", None, target.reason))
        bind = self._bind
        if bind is not None and bind.version != ipaddress.ip_address(target.host).version:
            return succeed(
                HttpAttempt("error", None, f"bind address is IPv{bind.version}, target is not")
            )
        exchange = _Exchange()
        d = Deferred.fromCoroutine(
            self._exchange(target, username, password, allow_basic, exchange)
        )
        # As Deferred.addTimeout(total_timeout, onTimeoutCancel=...), on the shared timer.
        self._total_timeouts.start(d)
        self._pending.add(d)

        def settle(result: HttpAttempt | Failure) -> HttpAttempt:
            """The outcome (one callback for the timeout, the failures and the log)."""
            timed_out = not self._total_timeouts.cancel(d)  # its timeout cancelled it
            self._pending.discard(d)
            if timed_out:
                attempt = exchange.final or HttpAttempt(
                    "timeout", None, f"no complete answer within {self._total_timeout:g} s"
                )
            elif isinstance(result, Failure):
                attempt = self._from_failure(result, target)
            else:
                attempt = result
            if debug_wanted():  # a filtered debug line still cost ~2% of a request
                self._log.debug(
                    "Connection request to {peer}: {outcome} ({detail})",
                    peer=target.netloc,
                    outcome=attempt.outcome,
                    detail=attempt.detail,
                )
            return attempt

        return d.addBoth(settle)

    # -- the exchange --------------------------------------------------------------

    async def _exchange(
        self,
        target: Target,
        username: str,
        password: str,
        allow_basic: bool,
        exchange: _Exchange,
    ) -> HttpAttempt:
        head = (
            f"GET {target.path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
            "User-Agent: cwmpgw\r\nConnection: close\r\n"
        ).encode("ascii")  # parse_http_url let only RFC 3986 characters through
        status = await self._get(target, head, None, exchange)
        if status != 401:
            return _status_attempt(status, authenticated=False)
        challenge = choose(exchange.challenges, allow_basic=allow_basic)
        if challenge is None:
            return HttpAttempt("auth_failed", 401, self._no_challenge_detail(allow_basic))
        retried_stale = False
        while True:
            try:
                header = authorization(challenge, username, password, "GET", target.path)
                if b"\r" in header or b"\n" in header:  # cannot happen: defence in depth
                    raise ChallengeError("line break in the Authorization value")
            except ChallengeError as e:  # e.g. a ':' in a Basic username; never the value
                return HttpAttempt("error", 401, _detail(f"cannot answer the challenge: {e}"))
            status = await self._get(target, head, header, exchange)
            if status != 401:
                return _status_attempt(status, authenticated=True)
            again = choose(exchange.challenges, allow_basic=allow_basic)
            if again is not None and again.stale and not retried_stale:
                retried_stale = True
                challenge = again
                continue
            return HttpAttempt("auth_failed", 401, "HTTP 401 again: credentials refused")

    async def _get(
        self, target: Target, head: bytes, auth: bytes | None, exchange: _Exchange
    ) -> int:
        """One GET on a new connection; returns the status once the body is drained."""
        if auth is None:
            request = head + b"\r\n"
        else:
            request = head + b"Authorization: " + auth + b"\r\n\r\n"
        authenticated = auth is not None

        def on_status(status: int) -> None:
            if status != 401:
                exchange.final = _status_attempt(status, authenticated=authenticated)

        protocol = _OneRequest(request, self._max_body, on_status)
        self._connect(target, protocol)
        status, challenges = await protocol.done
        if status == 401:
            exchange.challenges = parse_challenges(challenges)  # ChallengeError if malformed
        return status

    def _connect(self, target: Target, protocol: _OneRequest) -> None:
        """Start connecting ``protocol`` to the target; its ``done`` reports a failure."""
        bind = (str(self._bind), 0) if self._bind is not None else None
        if target.scheme != "https":
            # The reactor directly (an IP literal: nothing is resolved), without the
            # endpoint layers: one connection per GET, thousands a second.
            # No timer of Twisted's per connection (timeout None): the shared one calls
            # what Twisted's would.
            factory = _Connect(protocol)
            if isinstance(self._reactor, PosixReactorBase) and ":" not in target.host:
                connector: Any = _V4Connector(
                    target.host, target.port, factory, None, bind, self._reactor
                )
                connector.connect()  # what connectTCP does with it
            else:
                connector = self._reactor.connectTCP(target.host, target.port, factory, None, bind)
            protocol.connector = connector
            protocol.stop_connecting = connector.stopConnecting
            protocol.connect_settled = partial(self._connect_timeouts.cancel, protocol)
            self._connect_timeouts.start(protocol)
            return
        tcp: IStreamClientEndpoint
        if ":" in target.host:
            tcp = TCP6ClientEndpoint(
                self._reactor, target.host, target.port, self._connect_timeout, bind
            )
        else:
            tcp = TCP4ClientEndpoint(
                self._reactor, target.host, target.port, self._connect_timeout, bind
            )
        connecting: Deferred[Any] = wrapClientTLS(self._tls_creator(target.host), tcp).connect(
            _Connect(protocol)
        )
        connecting.addErrback(protocol.connect_failed)
        protocol.stop_connecting = connecting.cancel

    def _tls_creator(self, host: str) -> IOpenSSLClientConnectionCreator:
        if self._verify_tls:
            return optionsForClientTLS(
                host, extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2}
            )
        if self._unverified_tls is None:
            self._unverified_tls = _UnverifiedTLS()
        return self._unverified_tls

    # -- outcomes ------------------------------------------------------------------

    @staticmethod
    def _no_challenge_detail(allow_basic: bool) -> str:
        return "HTTP 401 without a challenge we can answer" + (
            "" if allow_basic else " (Basic not allowed for this device)"
        )

    def _from_failure(self, failure: Failure, target: Target) -> HttpAttempt:
        """Map what went wrong to an outcome; unexpected exceptions are logged."""
        if failure.check(CancelledError):
            return HttpAttempt("error", None, "cancelled")
        if failure.check(ChallengeError):
            return HttpAttempt(
                "error", 401, _detail(f"malformed WWW-Authenticate: {failure.getErrorMessage()}")
            )
        if failure.check(error.ConnectBindError):
            return HttpAttempt("error", None, "cannot bind the source address")
        if failure.check(error.ConnectionRefusedError):
            return HttpAttempt("unreachable", None, "connection refused")
        if failure.check(error.NoRouteError):
            return HttpAttempt("unreachable", None, "no route to host")
        if failure.check(error.TimeoutError, error.TCPTimedOutError):
            return HttpAttempt("unreachable", None, "connect timed out")
        if failure.check(error.ConnectError):
            return HttpAttempt(
                "unreachable", None, _detail(f"cannot connect: {failure.getErrorMessage()}")
            )
        if failure.check(error.ConnectingCancelledError):
            return HttpAttempt("error", None, "cancelled")
        if failure.check(_BadResponse):
            return HttpAttempt("error", None, _detail(failure.getErrorMessage()))
        if failure.check(_NoResponse):
            value: Any = failure.value
            reason: Failure = value.reason
            if reason.check(CancelledError):
                return HttpAttempt("error", None, "cancelled")
            if reason.check(VerificationError) or (
                reason.check(SSL.Error) and "certificate verify failed" in reason.getErrorMessage()
            ):
                return HttpAttempt("error", None, "TLS certificate verification failed")
            if reason.check(SSL.Error):
                return HttpAttempt("error", None, "TLS handshake failed")
            if not value.partial:
                return HttpAttempt("error", None, "connection closed before a response")
            return HttpAttempt("error", None, "connection lost during the response")
        self._log.failure(
            "Unexpected failure of a connection request to {peer}", failure, peer=target.netloc
        )
        return HttpAttempt("error", None, f"internal error ({type(failure.value).__name__})")
