"""The hardened HTTP base both listeners stand on: the ACS endpoint and the northbound API.

Everything here is about what one TCP connection may cost before anyone knows who is on
the other end: head and body size, an absolute read deadline that trickled bytes do not
extend, a deadline for the first byte, a short idle limit for a connection that holds
nothing, requests per connection, and caps on open connections overall and per source
address. A connection over a cap is closed at once (never left half-built under the TLS
wrapper); a connection whose request was refused is closed after its answer, and one
that will not let go is aborted after a short linger, so no client keeps a slot by
streaming into a connection we have given up on.

The ACS and the API subclass :class:`HardenedChannel` and :class:`HardenedSite` for what
is theirs (sessions, draining, JSON errors); nothing here knows CWMP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from cwmpgw.web.trim import FloodMemory

__all__ = [
    "CappedRequest",
    "ConnectionGate",
    "ConnectionLimits",
    "HardenedChannel",
    "HardenedSite",
    "is_gone",
]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one TCP connection may send, and for how long, before it is refused and closed.

    ``read_timeout`` is an absolute deadline per request, from its first byte until its
    body is complete, that trickled bytes do not extend (Twisted's own timeout restarts
    on every byte: slowloris). ``first_byte_timeout`` bounds the start of a connection
    the same way: its TLS handshake and first request byte must come within it.
    ``idle_timeout`` is how long a connection may sit between requests when it holds
    nothing (a subclass may allow more, e.g. an ACS connection carrying a live session).
    ``linger`` is how long a connection we are closing may take to say goodbye (a TLS
    close_notify) before it is aborted.
    """

    max_request_line: int = 8192
    max_header_bytes: int = 16384  # request line plus headers, as Twisted counts them
    max_headers: int = 100
    max_body_bytes: int = 262_144
    max_requests: int = 1000
    read_timeout: float = 30.0
    first_byte_timeout: float = 10.0
    idle_timeout: float = 30.0
    linger: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_bytes", "max_headers", "max_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_body_bytes < 0 or self.read_timeout <= 0:
            raise ValueError("max_body_bytes must be >= 0 and read_timeout > 0")
        if self.idle_timeout <= 0 or self.first_byte_timeout <= 0 or self.linger < 0:
            raise ValueError("idle_timeout and first_byte_timeout must be > 0, linger >= 0")


_REFUSALS = {
    400: b"Bad Request",
    403: b"Forbidden",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def is_gone(request: Request) -> bool:
    """The answer can no longer be written: finished already, or the client went away."""
    if request.finished:
        return True
    channel = request.channel
    return channel is None or getattr(channel, "transport", None) is None


class CappedRequest(Request):
    """A request that stops buffering its body once it passes the channel's limit.

    Twisted buffers any body before rendering; a chunked body has no length to refuse up
    front, so the cap is applied chunk by chunk. Past it, a channel that ``refuses``
    oversize bodies answers 413 and closes at once; otherwise the request is marked
    ``body_too_large`` for the resource to answer in its own format.
    """

    body_too_large = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        # Never a temporary file: the body is capped, so memory is the right place.
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        channel = self.channel
        limit = channel.body_limit() if isinstance(channel, HardenedChannel) else None
        self._received += len(data)
        if limit is not None and self._received > limit:
            self.body_too_large = True
            if isinstance(channel, HardenedChannel) and channel.refuse_oversize_body:
                channel.refuse(413, "body too large")
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]


class Deadline:
    """A deadline that moves without making and cancelling reactor timers.

    Twisted's channel cancels its idle timer when a request is complete and makes a new
    one when the request is answered, and the read deadline is armed at each request's
    first byte and cancelled at its last: four DelayedCalls made and cancelled per request,
    ~3% of a session's CPU. Here one DelayedCall stands for the deadline: moving it later
    only notes the time (the call, when it comes early, waits again for the rest), and
    disarming leaves it to come to nothing; only arming it sooner than it would come
    makes a new one. :meth:`stop` cancels it for good (the connection is gone: nothing
    should keep it alive until then).
    """

    __slots__ = ("_call", "_clock", "_due", "_fn")

    def __init__(self, clock: IReactorTime, fn: Callable[[], object]) -> None:
        self._clock = clock
        self._fn = fn
        self._call: IDelayedCall | None = None
        self._due: float | None = None

    @property
    def armed(self) -> bool:
        return self._due is not None

    def arm(self, seconds: float) -> None:
        """Come due ``seconds`` from now (whatever it was armed for before)."""
        due = self._due = self._clock.seconds() + seconds
        call = self._call
        if call is None:
            self._call = self._clock.callLater(seconds, self._fire)
        elif call.getTime() > due:
            call.cancel()
            self._call = self._clock.callLater(seconds, self._fire)

    def disarm(self) -> None:
        self._due = None

    def stop(self) -> None:
        self._due = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _fire(self) -> None:
        self._call = None
        due = self._due
        if due is None:
            return
        left = due - self._clock.seconds()
        if left > 0:
            self._call = self._clock.callLater(left, self._fire)
            return
        self._due = None
        self._fn()


class HardenedChannel(HTTPChannel):
    """An HTTP connection held to :class:`ConnectionLimits`."""

    _log = Logger()

    limits: ConnectionLimits = ConnectionLimits()
    # Answer an oversize body with a plain 413 as soon as the cap is passed (the ACS);
    # False: let the resource answer in its own format (the API's JSON errors).
    refuse_oversize_body = True
    refused = False  # a limit was broken: answered, closing, ignoring the rest
    _requests_seen = 0
    _head_bytes = 0
    _head_lines = 0
    _head_fields = 0
    _in_request = False  # a complete request is being answered; later bytes are buffered
    _read: Deadline | None = None  # the request being read must be complete by then
    _idle: Deadline | None = None  # Twisted's idle timeout (TimeoutMixin), made lazy
    _first_byte: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _closing = False  # loseConnection was called: what the peer sends now is dropped
    _sent_while_closing = 0
    _clock: IReactorTime | None = None
    _host: Any = None

    def configure(self, limits: ConnectionLimits, clock: IReactorTime) -> None:
        """Apply ``limits``, keeping Twisted's own checks as a second line behind ours."""
        self.limits = limits
        self._clock = clock
        self._first_byte = clock.callLater(limits.first_byte_timeout, self._silent)
        self._read = Deadline(clock, self._read_timed_out)
        self._idle = Deadline(clock, self.timeoutConnection)
        self.MAX_LENGTH = max(limits.max_request_line, limits.max_header_bytes)
        self.totalHeadersSize = limits.max_header_bytes
        self.maxHeaders = limits.max_headers
        self.timeOut = self.idle_timeout()  # type: ignore[assignment]

    # -- hooks for subclasses -----------------------------------------------------------

    def body_limit(self) -> int:
        """The largest body this connection may send now."""
        return self.limits.max_body_bytes

    def idle_timeout(self) -> float:
        """How long this connection may sit idle between requests now."""
        return self.limits.idle_timeout

    def read_time_left(self) -> float:
        """Asked when ``read_timeout`` (or the time this last granted) has passed on a
        request still arriving: how many seconds more it may take (0: close it now)."""
        return 0.0

    # -- deadlines ---------------------------------------------------------------------

    def getHost(self) -> Any:
        """The local address, asked of the socket once per connection: Twisted's
        ``Request`` asks for it on every request (a ``getsockname`` call each)."""
        host = self._host
        if host is None:
            host = self._host = super().getHost()  # type: ignore[no-untyped-call]
        return host

    def peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(address, "host", address))

    def _silent(self) -> None:
        self._first_byte = None
        self._log.info(
            "{peer} sent no request within {first_byte_timeout}s of connecting; closing",
            peer=self.peer(),
            first_byte_timeout=self.limits.first_byte_timeout,
        )
        self._abort()

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            # Answered and closing: nothing more is read as a request.
            self._sent_while_closing += len(data)
            return
        if self._first_byte is not None and data:
            # TLS done (we only see decrypted bytes) and a request begun: read_timeout now.
            self._first_byte.cancel()
            self._first_byte = None
        if self.refused:
            return
        read = self._read
        if data and not self._in_request and read is not None and not read.armed:
            # The first byte of a request: its head and body must be in within read_timeout.
            read.arm(self.limits.read_timeout)
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def _read_timed_out(self) -> None:
        more = self.read_time_left()
        if more > 0 and self._read is not None:
            self._read.arm(more)
            return
        self._log.info(
            "request from {peer} not complete within {read_timeout}s; closing",
            peer=self.peer(),
            read_timeout=self.limits.read_timeout,
        )
        self.refused = True
        self._abort()

    def _cancel_deadline(self) -> None:
        if self._read is not None:
            self._read.disarm()

    # -- the idle timeout: TimeoutMixin's, on a Deadline ------------------------------------

    def setTimeout(self, period: float | None) -> float | None:
        if self._idle is None:  # not configured: Twisted's own timer
            prev: float | None = super().setTimeout(period)  # type: ignore[no-untyped-call]
            return prev
        prev = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        if period is None:
            self._idle.disarm()
        else:
            self._idle.arm(period)
        return prev

    def resetTimeout(self) -> None:
        idle = self._idle
        if idle is None:
            super().resetTimeout()  # type: ignore[no-untyped-call]
        elif idle.armed and self.timeOut is not None:
            idle.arm(self.timeOut)

    # -- the request head ---------------------------------------------------------------

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
        if length is not None and length > self.body_limit() and self.refuse_oversize_body:
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
        if self.persistent and self.transport is not None and not self.requests:
            # Idle between requests: as long as what this connection holds deserves. (A
            # sooner deadline is a new timer: Twisted would move the pending one sooner by
            # a linear search of every timer of the reactor, DelayedCall.reset.)
            self.setTimeout(self.idle_timeout())

    # -- closing --------------------------------------------------------------------------

    def refuse(self, status: int, reason: str) -> None:
        """Answer a broken limit with a short plain response and close the connection."""
        if self.refused:
            return
        self.refused = True
        self._cancel_deadline()
        self._log.info(
            "refused a request from {peer}: {status} {reason}",
            peer=self.peer(),
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
            self.loseConnection()

    def loseConnection(self) -> None:
        """Close after what is written, giving a peer that lingers ``limits.linger``.

        Over TLS a clean close waits for the peer's close_notify, and a client that never
        sends one (but keeps streaming) would hold the connection for as long as it likes.
        A refused connection stops being read at once and is aborted after the linger (its
        answer is a few bytes). After a normal answer nothing more is taken from the peer
        (what it sends is dropped), and after the linger: a peer that sent anything since
        is aborted; a silent one (slowly reading a large answer) gets a plain TCP close
        instead of the TLS goodbye, which hands what is written to the kernel to deliver,
        and is aborted only if it has not taken the rest within ``limits.read_timeout``.
        """
        transport: Any = self.transport
        if transport is None:
            return
        if self._linger is None and self._clock is not None:
            self._closing = True
            self._linger = self._clock.callLater(self.limits.linger, self._lingered)
            if self.refused and not getattr(transport, "disconnecting", False):
                transport.pauseProducing()
        super().loseConnection()  # type: ignore[no-untyped-call]

    def _lingered(self) -> None:
        self._linger = None
        if self.refused or self._sent_while_closing:
            return self._abort()
        transport: Any = self.transport
        if transport is None or self._clock is None:
            return
        # Under TLS: close the TCP connection without waiting for the peer's close_notify.
        bottom = transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else None
        if bottom is not None:
            bottom.loseConnection()
        self._linger = self._clock.callLater(self.limits.read_timeout, self._abort)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        for call in (self._first_byte, self._linger):
            if call is not None and call.active():
                call.cancel()
        self._first_byte = self._linger = None
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        for deadline in (self._read, self._idle):
            if deadline is not None:
                deadline.stop()  # a disarmed timer would keep the channel until it came
        site = getattr(self, "site", None)
        if isinstance(site, HardenedSite):
            site.forget(self)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.refuse(400, "bad request")


class _Refused(Protocol):
    """Stands in for a connection over a cap: closed the moment it is made, no reply."""

    def makeConnection(self, transport: Any) -> None:
        transport.abortConnection()  # RST: the descriptor is free at once, no TIME_WAIT


class HardenedSite(Site):
    """A Site of :class:`HardenedChannel`\\ s: connection caps, no access log, no forms.

    ``on_refused(reason)`` is told of every connection refused for a cap ("total" or
    "source"), so the owner can count it; nothing is logged per refusal.
    """

    protocol = HardenedChannel  # type: ignore[assignment]
    requestFactory = CappedRequest

    def __init__(
        self,
        resource: Any,
        *,
        limits: ConnectionLimits = ConnectionLimits(),
        max_connections: int = 0,
        max_connections_per_source: int = 0,
        on_refused: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            resource, parsePOSTFormSubmission=False, timeout=limits.idle_timeout, **kwargs
        )
        self.noisy = False
        self.limits = limits
        self.max_connections = max_connections  # 0 = no limit
        # Many CPEs can share one source address (CGNAT): its default is generous.
        self.max_connections_per_source = max_connections_per_source  # 0 = no limit
        self.open_connections: set[HardenedChannel] = set()
        self._per_source: dict[str, int] = {}
        self._sources: dict[HardenedChannel, str] = {}
        self._on_refused = on_refused
        self.refused_connections = 0
        # The memory of a connection flood goes back to the system once it has drained.
        self.flood_memory = FloodMemory()

    def over_cap(self, addr: IAddress | None) -> str | None:
        """Which cap a new connection from ``addr`` would break ("total", "source"), if any."""
        if self.max_connections and len(self.open_connections) >= self.max_connections:
            return "total"
        if self.max_connections_per_source:
            source = str(getattr(addr, "host", ""))
            if self._per_source.get(source, 0) >= self.max_connections_per_source:
                return "source"
        return None

    def refuse_connection(self, cap: str) -> Protocol:
        self.refused_connections += 1
        if self._on_refused is not None:
            self._on_refused(cap)
        return _Refused()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        cap = self.over_cap(addr)
        if cap is not None:
            return self.refuse_connection(cap)
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if isinstance(channel, HardenedChannel):
            channel.configure(self.limits, self.reactor)
            source = str(getattr(addr, "host", ""))
            self.open_connections.add(channel)
            self._sources[channel] = source
            self._per_source[source] = self._per_source.get(source, 0) + 1
            self.flood_memory.note(len(self.open_connections), self.reactor.seconds())
        return channel

    def forget(self, channel: HardenedChannel) -> None:
        """A connection closed: it no longer counts against the caps."""
        self.open_connections.discard(channel)
        source = self._sources.pop(channel, None)
        if source is not None:
            left = self._per_source.get(source, 1) - 1
            if left > 0:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)
            self.flood_memory.note(len(self.open_connections), self.reactor.seconds())

    def abort_all(self) -> None:
        for channel in list(self.open_connections):
            channel._abort()

    def log(self, request: Any) -> None:
        """No access log line per request: at fleet scale it is noise."""


class ConnectionGate(Factory):
    """The outermost factory of a listener: over-cap connections are closed before TLS.

    ``inner`` is what serves an admitted connection (the site, or the TLS wrapper around
    it); ``site`` keeps the count. Without this gate a TLS listener would build its TLS
    wrapper first and only then ask the site, paying for a handshake it will not serve.
    """

    def __init__(self, site: HardenedSite, inner: Factory) -> None:
        self.site = site
        self.inner = inner
        self.noisy = False

    def doStart(self) -> None:
        self.inner.doStart()

    def doStop(self) -> None:
        self.inner.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        cap = self.site.over_cap(addr)
        if cap is not None:
            return self.site.refuse_connection(cap)
        return self.inner.buildProtocol(addr)
