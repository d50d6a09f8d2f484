"""A persistent XMPP client session (RFC 6120) on twisted.words, for Annex K.

One :class:`XmppClient` keeps one authenticated stream to one server, on the injected
reactor, for as long as it runs:

* TCP to the configured host and port, then STARTTLS, required, with the given TLS
  options (they carry the trust roots and the name the server's certificate must have:
  the connection-request credentials travel inside the stream);
* SASL SCRAM-SHA-256 or SCRAM-SHA-1 (the server's signature is checked), else PLAIN —
  never before TLS, since the TLS step is required;
* resource binding, then the stream is ``ready``;
* a lost or refused connection, or a failed login, is retried after a delay that doubles
  from ``retry_min`` up to ``retry_max`` (with jitter) and starts again once a login
  succeeds; a stream that stops answering pings is dropped and made again.
  (``ClientService`` is not used: its state machine breaks when a connection it has
  rejected in ``prepareConnection`` closes afterwards, which is every failed login.)

Stanzas: :meth:`send_iq` sends an IQ and fires with the result IQ (or fails with
:class:`StanzaError`, or on timeout or a lost stream); :meth:`handle_iq` answers incoming
``get``/``set`` IQs by the payload's qualified name. Unknown payloads get
``service-unavailable`` as RFC 6120 §8.4 asks.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    maybeDeferred,
    succeed,
)
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import client, sasl, sasl_mechanisms, xmlstream
from twisted.words.protocols.jabber.error import StanzaError, exceptionFromStanza
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.xish import domish

from cwmpgw.xmpp.scram import Scram, ScramError

__all__ = ["NotConnected", "StanzaError", "XmppClient", "same_jid"]

NS_PING = "urn:xmpp:ping"
_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN")


class NotConnected(Exception):
    """The client has no authenticated stream now."""


def same_jid(a: str | JID | None, b: str | JID | None) -> bool:
    """Equal after normalisation (nodeprep/nameprep lower-case the parts)."""
    if a is None or b is None:
        return False
    try:
        ja = a if isinstance(a, JID) else JID(a)
        jb = b if isinstance(b, JID) else JID(b)
    except InvalidFormat:
        return False
    return bool(ja.full() == jb.full())


class _Sasl(sasl.SASLInitiatingInitializer):
    """SCRAM first (the password never leaves us), PLAIN only if the server has nothing
    better; this step runs only after STARTTLS, which is required."""

    mechanism: Any

    def setMechanism(self) -> None:
        authenticator = self.xmlstream.authenticator
        offered = sasl.get_mechanisms(self.xmlstream)
        for name in _MECHANISMS:
            if name in offered:
                break
        else:
            raise sasl.SASLNoAcceptableMechanism()
        if name == "PLAIN":
            self.mechanism = sasl_mechanisms.Plain(
                None, authenticator.jid.user, authenticator.password
            )
        else:
            self.mechanism = Scram(name, authenticator.jid.user, authenticator.password)

    def onSuccess(self, success: domish.Element) -> None:
        if isinstance(self.mechanism, Scram):
            try:
                self.mechanism.verify_success(sasl.fromBase64(str(success)))
            except (ScramError, sasl.SASLIncorrectEncodingError) as e:
                self.xmlstream.removeObserver("/challenge", self.onChallenge)
                self.xmlstream.removeObserver("/failure", self.onFailure)
                self._fail(e)
                return
        super().onSuccess(success)  # type: ignore[no-untyped-call]

    def onChallenge(self, element: domish.Element) -> None:
        try:
            super().onChallenge(element)  # type: ignore[no-untyped-call]
        except ScramError as e:
            self._fail(e)

    def _fail(self, error: Exception) -> None:
        d = self._deferred
        if d is not None and not d.called:
            d.errback(Failure(error))


class _Authenticator(client.XMPPAuthenticator):
    def associateWithStream(self, xs: xmlstream.XmlStream) -> None:
        super().associateWithStream(xs)  # type: ignore[no-untyped-call]
        xs.initializers = [
            client.CheckVersionInitializer(xs),
            xmlstream.TLSInitiatingInitializer(
                xs, required=True, configurationForTLS=self._configurationForTLS
            ),
            _Sasl(xs, required=True),  # type: ignore[no-untyped-call]
            client.BindInitializer(xs, required=True),
            client.SessionInitializer(xs, required=False),
        ]


class _Factory(Factory):
    def __init__(self, owner: XmppClient) -> None:
        self._owner = owner

    def buildProtocol(self, addr: Any) -> xmlstream.XmlStream:
        return self._owner._new_stream()


class XmppClient:
    """``start()`` it, wait for :meth:`when_ready`, then send and receive IQs."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        jid: str,
        password: str,
        *,
        host: str,
        port: int,
        tls: Any,
        connect_timeout: float = 10.0,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
        keepalive: float = 60.0,
        presence: bool = False,
    ) -> None:
        self._reactor = reactor
        self._jid = JID(jid)
        if self._jid.user is None:
            raise ValueError("the JID needs a user part (user@domain)")
        self._password = password
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._presence = presence
        self._endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
        self._factory = _Factory(self)
        self._retry_min, self._retry_max = retry_min, retry_max
        self._failures = 0
        self._running = False
        self._connecting: Deferred[Any] | None = None
        self._retry: Any = None  # IDelayedCall
        self._current: xmlstream.XmlStream | None = None  # connected, maybe not logged in
        self._closed: Deferred[None] | None = None
        self._stream: xmlstream.XmlStream | None = None
        self._handlers: dict[tuple[str, str], Callable[[domish.Element], Any]] = {}
        self._pending: dict[str, tuple[str, Deferred[domish.Element]]] = {}
        self._ready_waiters: list[Deferred[bool]] = []
        self._pinger: LoopingCall | None = None
        self.bound: JID | None = None  # the full JID the server bound, while connected
        self.connects = 0  # streams authenticated so far (reconnects = connects - 1)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the stream; fires once the connection is closed."""
        self._running = False
        self._stop_pinger()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._connecting is not None:
            self._connecting.cancel()
        closed = self._closed
        xs = self._current
        if xs is None or closed is None or closed.called:
            return succeed(None)
        transport: Any = xs.transport
        waiting: Deferred[None] = Deferred()
        if transport is not None:
            transport.loseConnection()
            abort = self._reactor.callLater(5, transport.abortConnection)
            waiting.addBoth(lambda r: abort.cancel() if abort.active() else None)
        closed.addBoth(lambda _: waiting.callback(None))
        return waiting

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        self._connecting = self._endpoint.connect(self._factory)

        def connected(protocol: Any) -> Deferred[None]:
            self._connecting = None
            return self._prepare(protocol)

        def failed(failure: Failure) -> None:
            self._connecting = None
            if self._running and not failure.check(CancelledError):
                self._log.warn(
                    "XMPP connection as {jid} failed: {reason}",
                    jid=self._jid.userhost(),
                    reason=failure.getErrorMessage() or repr(failure.value),
                )
            self._failed()

        self._connecting.addCallback(connected).addErrback(failed)

    def _failed(self) -> None:
        """Schedule the next attempt, each delay twice the one before."""
        if not self._running or self._retry is not None:
            return
        delay = min(self._retry_min * 2**self._failures, self._retry_max)
        self._failures = min(self._failures + 1, 64)
        delay += random.uniform(0, min(1.0, delay / 2))
        self._retry = self._reactor.callLater(delay, self._connect)

    @property
    def ready(self) -> bool:
        return self._stream is not None

    def when_ready(self, timeout: float) -> Deferred[bool]:
        """True once a stream is authenticated (at once if it is), False after ``timeout``."""
        if self._stream is not None:
            return succeed(True)
        d: Deferred[bool] = Deferred()
        self._ready_waiters.append(d)

        def expired(failure: Failure) -> bool:
            failure.trap(CancelledError, TimeoutError)
            if d in self._ready_waiters:
                self._ready_waiters.remove(d)
            return False

        d.addTimeout(timeout, self._reactor)
        return d.addErrback(expired)

    # -- stanzas -------------------------------------------------------------------------

    def handle_iq(
        self, namespace: str, name: str, handler: Callable[[domish.Element], Any]
    ) -> None:
        """Answer ``get``/``set`` IQs whose payload is ``{namespace}name``: ``handler(iq)``
        returns (or fires with) None for a result IQ, or raises :class:`StanzaError`."""
        self._handlers[(namespace, name)] = handler

    def send_iq(
        self, to: str, payload: domish.Element, timeout: float, type_: str = "get"
    ) -> Deferred[domish.Element]:
        """Send an IQ; fires with the ``result`` IQ, fails with :class:`StanzaError` for an
        ``error`` IQ, :class:`NotConnected`, or ``TimeoutError`` (as ``CancelledError``
        turned by ``addTimeout``)."""
        xs = self._stream
        if xs is None:
            return fail(NotConnected("no XMPP stream now"))
        iq = domish.Element((None, "iq"))
        iq["type"] = type_
        iq["to"] = to
        iq["id"] = "cwmpgw-" + secrets.token_hex(8)
        iq.addChild(payload)

        def cancelled(_: Deferred[domish.Element]) -> None:
            self._pending.pop(iq["id"], None)

        d: Deferred[domish.Element] = Deferred(cancelled)
        self._pending[iq["id"]] = (to, d)
        xs.send(iq)
        d.addTimeout(timeout, self._reactor)
        return d

    # -- the stream ----------------------------------------------------------------------

    def _new_stream(self) -> xmlstream.XmlStream:
        authenticator = _Authenticator(  # type: ignore[no-untyped-call]
            self._jid, self._password, configurationForTLS=self._tls
        )
        xs = xmlstream.XmlStream(authenticator)
        self._current, self._closed = xs, Deferred()
        closed = self._closed
        ready: Deferred[xmlstream.XmlStream] = Deferred()
        xs.cwmpgw_ready = ready  # type: ignore[attr-defined]

        def authenticated(_: object) -> None:
            if not ready.called:
                ready.callback(xs)

        def failed(failure: Failure) -> None:
            if not ready.called:
                ready.errback(failure)

        def ended(reason: object) -> None:
            if not ready.called:
                ready.errback(reason if isinstance(reason, Failure) else Failure(ConnectionDone()))
            self._stream_lost(xs)
            if self._current is xs:
                self._current = None
            if not closed.called:
                closed.callback(None)
            self._failed()

        xs.addObserver(xmlstream.STREAM_AUTHD_EVENT, authenticated)
        xs.addObserver(xmlstream.INIT_FAILED_EVENT, failed)
        xs.addObserver(xmlstream.STREAM_END_EVENT, ended)
        return xs

    def _prepare(self, protocol: xmlstream.XmlStream) -> Deferred[None]:
        """A new connection is usable once authenticated and bound; else it is dropped
        (and the next attempt comes after the back-off)."""
        ready: Deferred[xmlstream.XmlStream] = protocol.cwmpgw_ready  # type: ignore[attr-defined]
        ready.addTimeout(self._connect_timeout * 3, self._reactor)

        def up(xs: xmlstream.XmlStream) -> None:
            if not self._running:
                transport: Any = xs.transport
                transport.loseConnection()
                return
            self._failures = 0
            self._stream_up(xs)

        def down(failure: Failure) -> None:
            if self._running:
                self._log.warn(
                    "XMPP login as {jid} failed: {reason}",
                    jid=self._jid.userhost(),
                    reason=failure.getErrorMessage() or repr(failure.value),
                )
            transport: Any = protocol.transport
            if transport is not None:
                transport.abortConnection()

        return ready.addCallbacks(up, down)

    def _stream_up(self, xs: xmlstream.XmlStream) -> None:
        self._stream = xs
        self.connects += 1
        self.bound = xs.authenticator.jid
        xs.addObserver('/iq[@type="result"]', self._response)
        xs.addObserver('/iq[@type="error"]', self._response)
        xs.addObserver('/iq[@type="get"]', self._request)
        xs.addObserver('/iq[@type="set"]', self._request)
        if self._presence:
            xs.send(domish.Element((None, "presence")))
        self._log.info("XMPP stream up as {jid}", jid=self.bound.full() if self.bound else "")
        if self._keepalive > 0:
            self._pinger = LoopingCall(self._ping)
            self._pinger.clock = self._reactor
            self._pinger.start(self._keepalive, now=False)
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(True)

    def _stream_lost(self, xs: xmlstream.XmlStream) -> None:
        if self._stream is not xs:
            return
        self._stream = None
        self.bound = None
        self._stop_pinger()
        self._log.info("XMPP stream as {jid} ended", jid=self._jid.userhost())
        pending, self._pending = self._pending, {}
        for _, d in pending.values():
            d.errback(NotConnected("the XMPP stream ended"))

    def _stop_pinger(self) -> None:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self._pinger = None

    def _ping(self) -> None:
        xs = self._stream
        if xs is None or self.bound is None:
            return
        d = self.send_iq(self.bound.host, domish.Element((NS_PING, "ping")), self._keepalive)

        def dead(failure: Failure) -> None:
            if failure.check(StanzaError):
                return  # an answer, even an error, means the stream is alive
            transport: Any = xs.transport
            if self._stream is xs and transport is not None:
                self._log.warn("XMPP server stopped answering: reconnecting")
                transport.abortConnection()

        d.addCallbacks(lambda _: None, dead)

    def _response(self, iq: domish.Element) -> None:
        entry = self._pending.get(iq.getAttribute("id", ""))
        if entry is None:
            return
        to, d = entry
        sender = iq.getAttribute("from")
        own = self.bound.userhost() if self.bound else None
        # RFC 6120 §10.1 / §8.1.2.1: only the addressee (or our server/account, for
        # stanzas it answers itself) may answer an IQ.
        if not (
            same_jid(sender, to)
            or (sender is None and to in (own, self._jid.host))
            or (self.bound is not None and same_jid(sender, self.bound.host) and to == sender)
        ):
            return
        iq.handled = True  # type: ignore[attr-defined]
        del self._pending[iq["id"]]
        if iq["type"] == "result":
            d.callback(iq)
        else:
            d.errback(exceptionFromStanza(iq))

    def _request(self, iq: domish.Element) -> None:
        if getattr(iq, "handled", False):
            return
        iq.handled = True  # type: ignore[attr-defined]
        xs = self._stream
        payload = iq.firstChildElement()
        handler = self._handlers.get((payload.uri, payload.name)) if payload is not None else None
        if xs is None:
            return
        if payload is not None and (payload.uri, payload.name) == (NS_PING, "ping"):
            xs.send(xmlstream.toResponse(iq, "result"))
            return
        if handler is None:
            xs.send(StanzaError("service-unavailable", "cancel").toResponse(iq))
            return

        def answered(_: object) -> None:
            if self._stream is xs:
                xs.send(xmlstream.toResponse(iq, "result"))

        def refused(failure: Failure) -> None:
            error = failure.value
            if not isinstance(error, StanzaError):
                self._log.failure("handling an IQ failed", failure)
                error = StanzaError("internal-server-error", "wait")
            if self._stream is xs:
                xs.send(error.toResponse(iq))

        maybeDeferred(handler, iq).addCallbacks(answered, refused)
