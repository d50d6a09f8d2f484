"""Hear every gateway node's events: one Redis subscriber connection per process.

This is how a caller waiting on one node learns that a task finished in a session that
another node ran. Pub/sub delivers only while subscribed: anything published during a
reconnect is not heard again, so users also re-read state (see ``RedisTaskService.wait``).

The events are heard only while somebody waits for one: every node would otherwise
receive every event of the fleet (three per session) and drop nearly all of them. The
connection stays subscribed to a channel of its own (``whenSubscribed``: Redis is there);
the events' pattern is added when the first waiter comes (``whenListening``) and dropped
``linger`` seconds after the last one left.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from cwmpgw.availability import revive_stopped_factory
from cwmpgw.waiters import Waiters

__all__ = ["EventListener"]

Envelope = dict[str, Any]


@implementer(IStreamClientEndpoint)
class _FunctionEndpoint:
    """An endpoint made of a connect function, so TCP and unix sockets both fit."""

    def __init__(self, connect: Callable[[Any], Deferred[Any]]) -> None:
        self._connect = connect

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        return self._connect(protocolFactory)


class EventListener(Service):
    """PSUBSCRIBE ``<prefix>events:*`` while somebody waits, on a connection that comes back
    after every loss.

    txredisapi does not subscribe again after a reconnect, so every new connection
    subscribes in ``connectionMade``; the factory reconnects with exponential backoff.
    While unsubscribed, a check every ``revive_interval`` seconds restarts a factory that
    txredisapi stopped for good after a failed AUTH (:func:`revive_stopped_factory`).
    """

    _log = Logger()

    def __init__(
        self,
        connect: Callable[[Any], Deferred[Any]],
        prefix: str,
        *,
        clock: IReactorTime,
        password: str | None = None,
        revive_interval: float = 5.0,
        linger: float = 30.0,
    ) -> None:
        self._connect = connect
        self._revive_interval = revive_interval
        self._linger = linger
        self._revive_call: IDelayedCall | None = None
        self.pattern = prefix + "events:*"
        self.channel = prefix + "listener"  # nothing is published here: it keeps us subscribed
        self._clock = clock
        self._password = password
        self._callbacks: dict[object, Callable[[Envelope], None]] = {}
        self._by_device: dict[str, dict[object, Callable[[Envelope], None]]] = {}
        self._factory: Any = None
        self._protocol: Any = None
        self._subscribed = False
        self._when_subscribed: Waiters[None] = Waiters()
        # The events' pattern: subscribed while there are callbacks (and ``linger`` after).
        self._listening = False
        self._pattern_sent = False
        self._when_listening: Waiters[None] = Waiters()
        self._linger_call: IDelayedCall | None = None
        # Pending wait_for() Deferreds and how to end each one: told at stop.
        self._waits: dict[Deferred[Envelope | None], Callable[[], None]] = {}

    # -- API -----------------------------------------------------------------------------

    def subscribe(
        self, callback: Callable[[Envelope], None], *, device: str | None = None
    ) -> Callable[[], None]:
        """Call ``callback`` with every event envelope (only those of ``device``, if
        given: a mass wake-up waits on thousands of devices at once, and each event then
        meets only its own device's waiters); returns the unsubscribe function."""
        token = object()
        callbacks = self._callbacks if device is None else self._by_device.setdefault(device, {})
        callbacks[token] = callback
        self._follow_waiters()

        def unsubscribe() -> None:
            callbacks.pop(token, None)
            if device is not None and not callbacks:
                self._by_device.pop(device, None)
            self._follow_waiters()

        return unsubscribe

    def wait_for(
        self,
        predicate: Callable[[Envelope], bool],
        timeout: float,
        *,
        device: str | None = None,
    ) -> Deferred[Envelope | None]:
        """The first event (of ``device``, if given) ``predicate`` accepts, or None after
        ``timeout`` seconds.

        Cancelling the Deferred (or it firing) removes both the callback and the timer.
        """

        def cancel(_: Deferred[Envelope | None]) -> None:
            cleanup()

        def cleanup() -> None:
            unsubscribe()
            if call.active():
                call.cancel()

        def check(envelope: Envelope) -> None:
            if d.called or not predicate(envelope):
                return
            cleanup()
            d.callback(envelope)

        def timed_out() -> None:
            unsubscribe()
            d.callback(None)

        def give_up() -> None:  # the listener stops: nothing more will be seen
            cleanup()
            d.callback(None)

        d: Deferred[Envelope | None] = Deferred(cancel)
        call = self._clock.callLater(max(timeout, 0), timed_out)
        unsubscribe = self.subscribe(check, device=device)
        self._waits[d] = give_up

        def forget(result: object) -> object:
            self._waits.pop(d, None)
            return result

        d.addBoth(forget)
        return d

    def whenSubscribed(self) -> Deferred[None]:
        """Fires once the connection is subscribed (at once if it is now): Redis is there."""
        if self._subscribed:
            return succeed(None)
        return self._when_subscribed.wait()

    def whenListening(self) -> Deferred[None]:
        """Fires once the events' pattern is subscribed (at once if it is now): events
        published from then on are heard. Subscribe (or ``wait_for``) first; a caller that
        reads state after listening waits for this in between."""
        if self._listening:
            return succeed(None)
        return self._when_listening.wait()

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @property
    def listening(self) -> bool:
        return self._listening

    # -- service -------------------------------------------------------------------------

    def startService(self) -> None:
        import txredisapi  # installs the global reactor: only once the service runs

        listener = self

        class _Protocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def connectionMade(self) -> Any:
                self.whenConnected().addCallback(listener._connected)
                return super().connectionMade()

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                listener._message(channel, message)

            def connectionLost(self, why: Any) -> None:
                listener._lost(self)
                super().connectionLost(why)

        factory = txredisapi.SubscriberFactory()
        factory.protocol = _Protocol
        factory.password = self._password
        self._factory = factory
        super().startService()  # type: ignore[no-untyped-call]
        factory.startConnecting(_FunctionEndpoint(self._connect))

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        # Whoever still waits is told "nothing came" now, not when its timer runs out on a
        # reactor that has moved on (a wake-up in flight when the gateway stops).
        for give_up in list(self._waits.values()):
            give_up()
        if self._revive_call is not None and self._revive_call.active():
            self._revive_call.cancel()
        self._revive_call = None
        self._cancel_linger()
        factory, self._factory = self._factory, None
        self._subscribed = self._listening = self._pattern_sent = False
        if factory is None:
            return succeed(None)
        d: Deferred[Any] = factory.disconnect()
        return d.addCallback(lambda _: None)

    # -- connection events ---------------------------------------------------------------

    def _connected(self, protocol: Any) -> None:
        if self._factory is None:
            return
        self._protocol = protocol

        def subscribed(_: object) -> None:
            if protocol is not self._protocol:
                return
            self._log.info(
                "ready to listen for events on {pattern} (while somebody waits)",
                pattern=self.pattern,
            )
            self._subscribed = True
            self._when_subscribed.fire(None)
            self._follow_waiters()

        maybeDeferred(protocol.subscribe, self.channel).addCallbacks(
            subscribed, lambda f: self._failed(protocol, f, self.channel)
        )

    def _failed(self, protocol: Any, failure: Any, what: str) -> None:
        self._log.failure("could not subscribe to {pattern}", failure, pattern=what)
        if protocol.transport is not None:
            protocol.transport.loseConnection()  # the factory tries again, backing off

    def _follow_waiters(self) -> None:
        """Subscribe the events' pattern while there are callbacks; drop it ``linger``
        seconds after the last one went (a steady trickle of waits keeps it)."""
        protocol = self._protocol
        if protocol is None or not self._subscribed:
            return
        wanted = bool(self._callbacks or self._by_device)
        if wanted:
            self._cancel_linger()
            if not self._pattern_sent:
                self._pattern_sent = True

                def listening(_: object) -> None:
                    if protocol is not self._protocol or not self._pattern_sent:
                        return
                    self._log.info("listening for events on {pattern}", pattern=self.pattern)
                    self._listening = True
                    self._when_listening.fire(None)

                maybeDeferred(protocol.psubscribe, self.pattern).addCallbacks(
                    listening, lambda f: self._failed(protocol, f, self.pattern)
                )
        elif self._pattern_sent and self._linger_call is None:
            self._linger_call = self._clock.callLater(self._linger, self._stop_listening)

    def _stop_listening(self) -> None:
        self._linger_call = None
        protocol = self._protocol
        if protocol is None or self._callbacks or self._by_device or not self._pattern_sent:
            return
        self._pattern_sent = self._listening = False
        self._log.debug(
            "nobody waits for events: no longer listening on {pattern}", pattern=self.pattern
        )
        d = maybeDeferred(protocol.punsubscribe, self.pattern)
        d.addErrback(lambda f: self._failed(protocol, f, self.pattern))

    def _cancel_linger(self) -> None:
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None

    def _lost(self, protocol: Any) -> None:
        if protocol is self._protocol:
            self._protocol = None
            if self._subscribed:
                self._log.warn("event subscription lost; reconnecting")
            self._subscribed = self._listening = self._pattern_sent = False
            self._cancel_linger()
        self._watch()

    def _watch(self) -> None:
        """Until subscribed again, check now and then that the factory still reconnects."""
        if self._factory is None or (self._revive_call is not None and self._revive_call.active()):
            return  # stopped, or already watching

        def check() -> None:
            self._revive_call = None
            if self._factory is None or self._subscribed:
                return
            revive_stopped_factory(self._factory, self._log)
            self._watch()

        self._revive_call = self._clock.callLater(self._revive_interval, check)

    def _message(self, channel: Any, message: Any) -> None:
        if not self._callbacks and not self._by_device:
            return  # nobody waits: every event of the fleet comes here, most unread
        try:
            envelope = json.loads(message)
        except (TypeError, ValueError):
            self._log.warn("ignoring an event that is not JSON on {channel}", channel=channel)
            return
        if not isinstance(envelope, dict):
            self._log.warn("ignoring an event that is not an object on {channel}", channel=channel)
            return
        device = envelope.get("device")
        keyed = self._by_device.get(device.get("id", "")) if isinstance(device, dict) else None
        callbacks = list(self._callbacks.values())
        if keyed:
            callbacks += keyed.values()
        for callback in callbacks:
            try:
                callback(envelope)
            except Exception:
                self._log.failure(
                    "event callback failed for {event_type}", event_type=envelope.get("type")
                )
