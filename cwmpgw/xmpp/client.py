"""A persistent XMPP client session (RFC 6120) on twisted.words, for Annex K.

One :class:`XmppClient` keeps one authenticated stream to one server, on the injected
reactor, for as long as it runs:

* TCP to the configured host and port, then STARTTLS, required, with the given TLS
  options (they carry the trust roots and the name the server's certificate must have:
  the connection-request credentials travel inside the stream);
* SASL SCRAM-SHA-256 or SCRAM-SHA-1 (the server's signature is checked), else PLAIN —
  never before TLS, since the TLS step is required;
* resource binding, then the stream is ``ready``;
* a lost or refused connection is retried with an exponential back-off
  (``twisted.application.internet.ClientService``), and a stream that stops answering
  pings is dropped and made again.

Stanzas: :meth:`send_iq` sends an IQ and fires with the result IQ (or fails with
:class:`StanzaError`, or on timeout or a lost stream); :meth:`handle_iq` answers incoming
``get``/``set`` IQs by the payload's qualified name. Unknown payloads get
``service-unavailable`` as RFC 6120 §8.4 asks.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.words.protocols.jabber import client, sasl, xmlstream
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


class _Sasl(sasl.SASLInitiatingInitializer):  # type: ignore[misc]
    """SCRAM first (the password never leaves us), PLAIN only if the server has nothing
    better; this step runs only after STARTTLS, which is required."""

    def setMechanism(self) -> None:
        authenticator = self.xmlstream.authenticator
        offered = sasl.get_mechanisms(self.xmlstream)
        for name in _MECHANISMS:
            if name in offered:
                break
        else:
            raise sasl.SASLNoAcceptableMechanism()
        if name == "PLAIN":
            self.mechanism = sasl.sasl_mechanisms.Plain(
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
                self._deferred.errback(Failure(e))
                return
        super().onSuccess(success)

    def onChallenge(self, element: domish.Element) -> None:
        try:
            super().onChallenge(element)
        except ScramError as e:
            self._deferred.errback(Failure(e))


class _Authenticator(client.XMPPAuthenticator):  # type: ignore[misc]
    def associateWithStream(self, xs: xmlstream.XmlStream) -> None:
        super().associateWithStream(xs)
        xs.initializers = [
            client.CheckVersionInitializer(xs),
            xmlstream.TLSInitiatingInitializer(
                xs, required=True, configurationForTLS=self._configurationForTLS
            ),
            _Sasl(xs, required=True),
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
        self._service = ClientService(
            TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout),
            _Factory(self),
            retryPolicy=backoffPolicy(retry_min, retry_max, 2.0),
            clock=reactor,
            prepareConnection=self._prepare,
        )
        self._stream: xmlstream.XmlStream | None = None
        self._handlers: dict[tuple[str, str], Callable[[domish.Element], Any]] = {}
        self._pending: dict[str, tuple[str, Deferred[domish.Element]]] = {}
        self._ready_waiters: list[Deferred[bool]] = []
        self._pinger: LoopingCall | None = None
        self.bound: JID | None = None  # the full JID the server bound, while connected
        self.connects = 0  # streams authenticated so far (reconnects = connects - 1)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._service.startService()

    def stop(self) -> Deferred[None]:
        self._stop_pinger()
        d: Deferred[None] = maybeDeferred(self._service.stopService)
        return d.addCallback(lambda _: None)

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
            failure.trap(CancelledError)
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
        authenticator = _Authenticator(self._jid, self._password, configurationForTLS=self._tls)
        xs = xmlstream.XmlStream(authenticator)
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

        xs.addObserver(xmlstream.STREAM_AUTHD_EVENT, authenticated)
        xs.addObserver(xmlstream.INIT_FAILED_EVENT, failed)
        xs.addObserver(xmlstream.STREAM_END_EVENT, ended)
        return xs

    def _prepare(self, protocol: Any) -> Deferred[None]:
        """ClientService's check of a new connection: ready once authenticated and bound,
        rejected (and retried with back-off) if that fails or takes too long."""
        ready: Deferred[xmlstream.XmlStream] = protocol.cwmpgw_ready
        ready.addTimeout(self._connect_timeout * 3, self._reactor)

        def up(xs: xmlstream.XmlStream) -> None:
            self._stream_up(xs)

        def down(failure: Failure) -> Failure:
            self._log.warn(
                "XMPP login as {jid} failed: {reason}",
                jid=self._jid.userhost(),
                reason=failure.getErrorMessage() or failure.type.__name__,
            )
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
            return failure

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
        self._log.info(
            "XMPP stream up as {jid}", jid=self.bound.full() if self.bound else ""
        )
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
            if self._stream is xs and xs.transport is not None:
                self._log.warn("XMPP server stopped answering: reconnecting")
                xs.transport.abortConnection()

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
        iq.handled = True
        del self._pending[iq["id"]]
        if iq["type"] == "result":
            d.callback(iq)
        else:
            d.errback(exceptionFromStanza(iq))

    def _request(self, iq: domish.Element) -> None:
        if iq.handled:
            return
        iq.handled = True
        xs = self._stream
        payload = iq.firstChildElement()
        handler = (
            self._handlers.get((payload.uri, payload.name)) if payload is not None else None
        )
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
            if failure.check(StanzaError):
                error: StanzaError = failure.value
            else:
                self._log.failure("handling an IQ failed", failure)
                error = StanzaError("internal-server-error", "wait")
            if self._stream is xs:
                xs.send(error.toResponse(iq))

        maybeDeferred(handler, iq).addCallbacks(answered, refused)
