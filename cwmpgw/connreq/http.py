"""The HTTP Connection Request client (TR-069 section 3.2.2).

One GET to the CPE's ConnectionRequestURL, answered with 401 and a challenge, then
one authenticated GET on a new connection (many CPEs close after the challenge; we
never rely on keep-alive).  Redirects are never followed, bodies are read only up
to a small bound, and the whole exchange is bounded by one timeout on the reactor
clock.  The URL host must be an IP literal: the guard checked it against the
device's address, and this client never resolves a name.

Every outcome is an L{HttpAttempt}; its ``detail`` never contains the password or
the Authorization value, nor the URL path (which the CPE may use as a secret).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from cwmpgw.connreq.digest_client import (
    Challenge,
    ChallengeError,
    authorization,
    choose,
    parse_challenges,
)
from cwmpgw.connreq.guard import Refusal, Target, parse_http_url

__all__ = ["OUTCOMES", "HttpAttempt", "HttpConnectionRequester"]

OUTCOMES = ("ok", "unreachable", "auth_failed", "timeout", "busy", "error")

_USER_AGENT = b"cwmpgw"
_MAX_DETAIL = 200


@dataclass(frozen=True)
class HttpAttempt:
    """How one Connection Request went.

    ``outcome`` is one of L{OUTCOMES}: "busy" means the CPE answered 503;
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


class _BoundedDrain(Protocol):
    """Receives a response body, keeps none of it, and aborts past ``limit`` bytes.

    ``done`` fires with the number of bytes seen once the body ends (however it ends);
    cancelling it aborts the connection.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._received = 0
        self._stopped = False
        self._cancelled = False
        self.done: Deferred[int] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._limit:
            self._stop()

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        if not self._cancelled and not self.done.called:
            self.done.callback(min(self._received, self._limit))

    def _stop(self) -> None:
        producer: Any = self.transport  # a TransportProxyProducer: IPushProducer
        if not self._stopped and producer is not None:
            self._stopped = True
            producer.stopProducing()

    def _cancel(self, _: Deferred[int]) -> None:
        self._cancelled = True  # so connectionLost, maybe run by _stop, does not fire done
        self._stop()


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    """No "Starting factory" log lines for every request (Twisted's client howto recipe)."""

    noisy = False


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


@implementer(IAgentEndpointFactory)
class _FixedEndpoint:
    """Hands the Agent the one endpoint built for this target, so nothing is resolved."""

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return self._endpoint


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
    """Sends HTTP Connection Requests; owns a non-persistent connection pool.

    ``bind_address`` is the source address of outgoing connections (operators put it
    in CPE firewall allow-lists).  ``verify_tls`` checks https CPEs against the system
    trust store; by default any certificate is accepted, still with TLS 1.2 or later.
    ``close`` cancels requests in flight and closes the pool.
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
        self._verify_tls = verify_tls
        self._max_body = max_body
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._pool._factory = _QuietHTTP11ClientFactory
        self._unverified_tls: _UnverifiedTLS | None = None
        self._pending: set[Deferred[HttpAttempt]] = set()
        self._closed = False

    def close(self) -> Deferred[None]:
        """Cancel requests in flight (they fire with an "error" attempt) and close the pool."""
        self._closed = True
        for d in list(self._pending):
            d.cancel()
        closed: Deferred[Any] = self._pool.closeCachedConnections()
        return closed.addCallback(lambda _: None)

    def request(
        self, url: str, username: str, password: str, *, allow_basic: bool = False
    ) -> Deferred[HttpAttempt]:
        """GET ``url`` and answer its challenge; never fails, the outcome says what happened.

        ``allow_basic`` lets a Basic challenge be answered (the password then crosses
        the network in clear unless the URL is https).
        """
        if self._closed:
            return succeed(HttpAttempt("error", None, "requester closed"))
        target = parse_http_url(url)
        if isinstance(target, Refusal):
            return succeed(HttpAttempt("error", None, target.reason))
        address = ipaddress.ip_address(target.host)
        if self._bind is not None and self._bind.version != address.version:
            return succeed(
                HttpAttempt(
                    "error", None, f"bind address is IPv{self._bind.version}, target is not"
                )
            )
        exchange = _Exchange()
        d = Deferred.fromCoroutine(
            self._exchange(target, username, password, allow_basic, exchange)
        )
        d.addTimeout(
            self._total_timeout,
            self._reactor,
            onTimeoutCancel=lambda _result, timeout: (
                exchange.final
                or HttpAttempt("timeout", None, f"no complete answer within {timeout:g} s")
            ),
        )
        d.addErrback(self._from_failure, target)
        self._pending.add(d)

        def forget(attempt: HttpAttempt) -> HttpAttempt:
            self._pending.discard(d)
            self._log.debug(
                "Connection request to {peer}: {outcome} ({detail})",
                peer=target.netloc,
                outcome=attempt.outcome,
                detail=attempt.detail,
            )
            return attempt

        return d.addCallback(forget)

    # -- the exchange --------------------------------------------------------------

    async def _exchange(
        self,
        target: Target,
        username: str,
        password: str,
        allow_basic: bool,
        exchange: _Exchange,
    ) -> HttpAttempt:
        url = target.url.encode("ascii")
        status = await self._get(target, url, None, exchange)
        if status != 401:
            return _status_attempt(status, authenticated=False)
        challenge = choose(exchange.challenges, allow_basic=allow_basic)
        if challenge is None:
            return HttpAttempt("auth_failed", 401, self._no_challenge_detail(allow_basic))
        retried_stale = False
        while True:
            try:
                header = authorization(challenge, username, password, "GET", target.path)
            except ChallengeError as e:  # e.g. a ':' in a Basic username; never the value
                return HttpAttempt("error", 401, _detail(f"cannot answer the challenge: {e}"))
            status = await self._get(target, url, header, exchange)
            if status != 401:
                return _status_attempt(status, authenticated=True)
            again = choose(exchange.challenges, allow_basic=allow_basic)
            if again is not None and again.stale and not retried_stale:
                retried_stale = True
                challenge = again
                continue
            return HttpAttempt("auth_failed", 401, "HTTP 401 again: credentials refused")

    async def _get(
        self, target: Target, url: bytes, auth: bytes | None, exchange: _Exchange
    ) -> int:
        """One GET on a new connection; returns the status once the body is drained."""
        headers = Headers({b"user-agent": [_USER_AGENT]})
        if auth is not None:
            headers.addRawHeader(b"authorization", auth)
        agent = Agent.usingEndpointFactory(
            self._reactor, _FixedEndpoint(self._endpoint(target)), pool=self._pool
        )
        response: IResponse = await agent.request(b"GET", url, headers)
        status: int = response.code
        if status != 401:
            exchange.final = _status_attempt(status, authenticated=auth is not None)
        drain = _BoundedDrain(self._max_body)
        response.deliverBody(drain)
        await drain.done
        if status == 401:
            values = response.headers.getRawHeaders(b"www-authenticate", [])
            exchange.challenges = parse_challenges(values)  # ChallengeError if malformed
        return status

    def _endpoint(self, target: Target) -> IStreamClientEndpoint:
        bind = (str(self._bind), 0) if self._bind is not None else None
        tcp: IStreamClientEndpoint
        if ":" in target.host:
            tcp = TCP6ClientEndpoint(
                self._reactor, target.host, target.port, self._connect_timeout, bind
            )
        else:
            tcp = TCP4ClientEndpoint(
                self._reactor, target.host, target.port, self._connect_timeout, bind
            )
        if target.scheme != "https":
            return tcp
        return wrapClientTLS(self._tls_creator(target.host), tcp)

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
        if failure.check(ResponseNeverReceived, ResponseFailed):
            value: Any = failure.value
            reasons: list[Failure] = value.reasons
            if any(r.check(CancelledError) for r in reasons):
                return HttpAttempt("error", None, "cancelled")
            if any(r.check(VerificationError) for r in reasons) or any(
                r.check(SSL.Error) and "certificate verify failed" in r.getErrorMessage()
                for r in reasons
            ):
                return HttpAttempt("error", None, "TLS certificate verification failed")
            if any(r.check(SSL.Error) for r in reasons):
                return HttpAttempt("error", None, "TLS handshake failed")
            if failure.check(ResponseNeverReceived):
                return HttpAttempt("error", None, "connection closed before a response")
            return HttpAttempt("error", None, "connection lost during the response")
        self._log.failure(
            "Unexpected failure of a connection request to {peer}", failure, peer=target.netloc
        )
        return HttpAttempt("error", None, f"internal error ({type(failure.value).__name__})")
