"""Whether Redis answers now, known cheaply, and Redis calls that fail fast instead of queueing.

txredisapi queues a command without bound while its pool has no connection, and a command
sent to a Redis that hangs waits for ever. A gateway that let its CPEs' requests pile up
behind a dead Redis would hold every socket and all its memory until Redis came back, and
then answer CPEs that gave up long ago. Instead:

- :class:`RedisAvailability` knows, on the hot path and without a round trip, whether Redis
  is reachable: the pool's count of live connections (zero as soon as Redis closes them)
  and, while down or when a call went wrong, a PING with a short timeout every second.
- :meth:`RedisAvailability.guard` refuses a call at once with :class:`Unavailable` while
  Redis is down (nothing is sent) and puts a timeout on it while up (:class:`RedisTimeout`:
  sent, outcome unknown). :class:`GuardedRedis` routes every command of a client through it.
- :class:`AdmitWhileAvailable` makes the ACS answer a new session 503 + Retry-After
  before any Redis work.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable
from functools import partial
from random import choice
from typing import Any, Final, TypeVar

from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.timeouts import FixedTimeouts
from cwmpgw.waiters import Waiters

__all__ = [
    "AdmitWhileAvailable",
    "GuardedRedis",
    "RedisAvailability",
    "RedisTimeout",
    "Unavailable",
    "log_call_failure",
    "revive_stopped_factory",
]

T = TypeVar("T")


class Unavailable(ConnectionError):
    """Redis is unreachable now: the call was refused before anything was sent.

    A ``ConnectionError`` (an ``OSError``), so code that treats those as "the backend is
    down, answer 503" treats this one alike (:func:`is_backend_failure`).
    """


class RedisTimeout(TimeoutError):
    """A call was sent and not answered in time: it may or may not have been applied."""


def is_backend_failure(e: BaseException) -> bool:
    """Redis unreachable, too slow, or not serving: worth a 503 and a retry, not a 500.

    txredisapi's own errors are recognised by class once txredisapi is loaded, without
    importing it here (importing it installs the global reactor). An error reply that is
    a bug of ours (a script error, a wrong type) is not a backend failure.
    """
    if isinstance(
        e,
        OSError  # Unavailable is one
        | RedisTimeout
        | DeferredTimeout
        | net_error.ConnectError
        | net_error.ConnectionLost
        | net_error.ConnectionDone,
    ):
        return True
    txredisapi = sys.modules.get("txredisapi")
    if txredisapi is None:
        return False
    if isinstance(e, txredisapi.ConnectionError):
        return True
    # A Redis that is loading, a replica after a failover, or one out of memory answers
    # with an error reply: the backend is not there for us now, as good as unreachable.
    return isinstance(e, txredisapi.ResponseError) and str(e).startswith(_BACKEND_REPLIES)


_BACKEND_REPLIES: Final = ("LOADING", "BUSY", "READONLY", "MASTERDOWN", "TRYAGAIN", "OOM")


def log_call_failure(log: Logger, failure: Failure, message: str, **fields: Any) -> None:
    """Log a call that failed: one warning line when Redis is unreachable (expected during
    an outage, which the availability reports once), a traceback for anything else."""
    if failure.check(Unavailable, RedisTimeout):
        log.warn(message + ": redis unreachable", **fields)
    else:
        log.failure(message, failure, **fields)


def revive_stopped_factory(factory: Any, log: Logger) -> bool:
    """Make a txredisapi factory reconnect again after it gave up on its own.

    txredisapi 1.6.0 stops reconnecting every connection of a factory for good when the
    AUTH or SELECT of one reconnecting connection fails, which happens whenever a
    connection is accepted and then dropped during that handshake: a Redis that dies
    again as it comes back, or a TCP proxy in front of a Redis that is down. The gateway
    would stay unavailable until restarted. A factory stopped that way (not by
    ``disconnect``) gets its connections restarted; they back off as before. Returns
    whether it did anything.
    """
    if not getattr(factory, "stopped", False) or getattr(factory, "disconnectCalled", True):
        return False
    factory.stopped = False
    for slot in getattr(factory, "slots", ()):
        if not slot.reconnect:
            slot.reconnect = True
            if not slot.service.running:
                slot.service.startService()
    log.warn("redis connections had stopped reconnecting (a handshake failed); reconnecting")
    return True


class RedisAvailability:
    """Up or down, from the pool's connections and a PING; ``guard`` for fail-fast calls.

    ``connections`` counts the pool's usable connections (read on every check: an int, no
    I/O). ``ping`` must bypass the guard. Start with :meth:`start` once the pool is
    connected (it is assumed up then); :meth:`stop` cancels the timers.
    """

    _log = Logger()

    def __init__(
        self,
        ping: Callable[[], Deferred[Any]],
        connections: Callable[[], int],
        *,
        clock: IReactorTime,
        interval: float = 1.0,
        ping_timeout: float = 1.0,
        call_timeout: float = 5.0,
        revive: Callable[[], object] | None = None,
    ) -> None:
        self._ping = ping
        self._connections = connections
        self._revive = revive  # called each tick without a connection
        self._clock = clock
        self.interval = interval
        self.ping_timeout = ping_timeout
        self._up = True
        self._suspect = False  # a call failed while up: confirm with a PING
        self._pinging: Deferred[Any] | None = None
        self._tick_call: IDelayedCall | None = None
        self._running = False
        # Calls under way with the default timeout, on one timer (cwmpgw.timeouts).
        self._in_flight: FixedTimeouts[Deferred[Any]] = FixedTimeouts(
            clock, call_timeout, Deferred.cancel
        )
        self._riders: list[Callable[[], None]] = []  # see ride()
        self._subscribers: dict[object, Callable[[bool], None]] = {}
        self._waiting: Waiters[None] = Waiters()

    @classmethod
    def for_txredisapi(cls, pool: Any, **kwargs: Any) -> RedisAvailability:
        """For what ``txredisapi.ConnectionPool`` fires with (a ``ConnectionHandler``).

        ``_factory.size`` is the number of connections in the pool that are connected and
        ready (authenticated, database selected); txredisapi 1.6.0 keeps it up to date as
        connections are made and lost.
        """
        factory = pool._factory
        kwargs.setdefault("revive", lambda: revive_stopped_factory(factory, cls._log))
        return cls(pool.ping, lambda: int(factory.size), **kwargs)

    # -- state -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether a call made now would be sent: cheap enough for every request."""
        return self._up and self._connections() > 0

    def check(self) -> None:
        """Raise :class:`Unavailable` unless Redis is available now."""
        if not self._observe():
            raise Unavailable("redis is unreachable")

    def whenAvailable(self) -> Deferred[None]:
        """Fires once Redis is available (at once if it is now); cancellable."""
        if self._observe():
            return succeed(None)
        return self._waiting.wait()

    def subscribe(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``callback(available)`` on every change; returns the unsubscribe function."""
        token = object()
        self._subscribers[token] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe

    # -- calls -------------------------------------------------------------------------------

    def guard(
        self, call: Callable[[], Deferred[T]], *, timeout: float | None = None
    ) -> Deferred[T]:
        """``call()`` if Redis is available, with a timeout; else fail at once, sending nothing.

        Fails with :class:`Unavailable` (not sent) or :class:`RedisTimeout` (sent, no
        answer within ``timeout``, default ``call_timeout``), else as the call failed.
        Cancelling the returned Deferred cancels the call; txredisapi keeps its replies
        in step with its commands when one is cancelled.

        Calls with the default timeout share one timer (see :meth:`_send`); a call with a
        ``timeout`` of its own gets a timer of its own.
        """
        if timeout is None:
            return self._send(call)
        if not (self._up and self._connections() > 0) and not self._observe():
            return fail(Unavailable("redis is unreachable"))
        try:
            d: Deferred[T] = call()
        except BaseException:
            return fail()
        d.addTimeout(timeout, self._clock)
        return d.addErrback(self._failed_on_its_own_timer, timeout)

    def ride(self, send: Callable[[], None]) -> None:
        """Call ``send`` (which sends commands of its own) just before the next command goes
        out, so that its commands leave in the same write and their answers come back in
        the same read: for work nobody waits on (an event published in the background),
        one wake-up of Redis and of the gateway less. The caller bounds the wait itself
        (a timer), for when no other command comes."""
        self._riders.append(send)

    def _send(self, call: Callable[..., Deferred[T]], /, *args: Any, **kwargs: Any) -> Deferred[T]:
        """``guard(lambda: call(*args, **kwargs))`` without the lambda: every command of a
        :class:`GuardedRedis` comes here.

        The timeout costs no timer per call: calls under way wait in ``_in_flight``, a
        :class:`~cwmpgw.timeouts.FixedTimeouts` (one timer at the oldest deadline), each
        taken out by one callback when it is settled. A call whose deadline comes is
        cancelled (as ``addTimeout`` would: txredisapi keeps its replies in step), and
        ``_settled`` makes that CancelledError a RedisTimeout.
        """
        if not (self._up and self._connections() > 0) and not self._observe():
            return fail(Unavailable("redis is unreachable"))
        if self._riders:
            riders, self._riders = self._riders, []
            for send in riders:
                send()
        try:
            d = call(*args, **kwargs)
        except BaseException:
            return fail()
        self._in_flight.start(d)
        d.addBoth(self._settled, d)
        return d

    def _settled(self, result: T | Failure, d: Deferred[T]) -> T | Failure:
        timed_out = not self._in_flight.cancel(d)  # its timeout took it out (and cancelled it)
        if not self._running:
            self._in_flight.disarm()  # stopped: leave no timer behind
        if not isinstance(result, Failure):
            return result
        if result.check(CancelledError):
            if not timed_out:
                return result  # the caller gave up: says nothing about Redis
            self._suspect_now()
            return Failure(RedisTimeout(f"redis did not answer within {self.call_timeout}s"))
        self._suspect_now()
        return result

    @property
    def call_timeout(self) -> float:
        """Seconds a call may take unless it names its own (set once, at start-up)."""
        return self._in_flight.seconds

    def _failed_on_its_own_timer(self, failure: Failure, seconds: float) -> Failure:
        if failure.check(CancelledError):
            return failure  # the caller gave up: says nothing about Redis
        self._suspect_now()
        if failure.check(DeferredTimeout):
            return Failure(RedisTimeout(f"redis did not answer within {seconds}s"))
        return failure

    # -- service ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._tick_call = self._clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        self._running = False
        if self._tick_call is not None and self._tick_call.active():
            self._tick_call.cancel()
        self._tick_call = None
        if self._pinging is not None:
            self._pinging.cancel()
        # Calls under way still time out; the last one settled disarms the timer.
        self._in_flight.disarm()

    # -- internals -------------------------------------------------------------------------

    def _observe(self) -> bool:
        """``available``, and notice a lost pool now rather than at the next tick."""
        if self._up and self._connections() == 0:
            self._set(False, "no connection to redis")
        return self.available

    def _suspect_now(self) -> None:
        if self._up and not self._suspect:
            self._suspect = True
            if self._tick_call is not None and self._tick_call.active():
                self._tick_call.reset(0)  # confirm with a PING now, not at the next tick

    def _tick(self) -> None:
        self._tick_call = None
        self._check()
        if self._running:
            self._tick_call = self._clock.callLater(self.interval, self._tick)

    def _check(self) -> None:
        if not self._running:
            return
        if self._connections() == 0:
            # Nothing to PING over: a PING would only join txredisapi's queue.
            self._set(False, "no connection to redis")
            if self._revive is not None:
                self._revive()
            return
        if (self._up and not self._suspect) or self._pinging is not None:
            return
        d = maybeDeferred(self._ping)
        d.addTimeout(self.ping_timeout, self._clock)
        self._pinging = d

        def answered(_: object) -> None:
            self._pinging = None
            self._suspect = False
            self._set(True, "redis answers again")

        def silent(failure: Failure) -> None:
            self._pinging = None
            self._suspect = False
            if self._running:  # else stop() cancelled it
                self._set(False, f"redis did not answer a PING ({failure.getErrorMessage()})")

        d.addCallbacks(answered, silent)

    def _set(self, up: bool, reason: str) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            self._log.info("redis is available: {reason}", reason=reason)
        else:
            self._log.warn("redis is unavailable: {reason}", reason=reason)
        for callback in list(self._subscribers.values()):
            try:
                callback(up)
            except Exception:
                self._log.failure("a redis availability subscriber failed")
        if up:
            self._waiting.fire(None)


class GuardedRedis:
    """A txredisapi client whose every command goes through :meth:`RedisAvailability.guard`.

    Stores and buses take it in place of the pool: their calls fail fast with
    :class:`Unavailable` while Redis is down instead of queueing. ``disconnect`` and
    private attributes pass straight through.
    """

    _UNGUARDED = frozenset({"disconnect"})

    def __init__(self, redis: Any, availability: RedisAvailability) -> None:
        self.unguarded = redis
        self.availability = availability

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.unguarded, name)
        if name.startswith("_") or name in self._UNGUARDED or not callable(target):
            return target
        # guard(lambda: target(*args, **kwargs)) without a lambda, a closure and two Python
        # frames per call; made once per name: this runs for every command of every session.
        guarded = partial(self.availability._send, _direct(self.unguarded, name) or target)
        self.__dict__[name] = guarded
        return guarded


def _direct(pool: Any, name: str) -> Callable[..., Deferred[Any]] | None:
    """A txredisapi pool's command ``name`` sent straight over a ready connection.

    txredisapi 1.6.0's ``ConnectionHandler`` sends each command through
    ``factory.getConnection``, an ``inlineCallbacks`` generator, and two closures, even
    when a connection is ready: about 20 µs of CPU per command. For a command that does
    not hold a connection to itself (not ``_blocking``: not MULTI, WATCH, BLPOP...), that
    path takes a connection at random among the ready ones (``peek``) and calls the
    protocol's method on it at once; this does the same, and leaves every other case (no
    connection ready, a dead one to discard, a blocking command, another client) to
    txredisapi's own path. None if ``pool`` is not such a pool.
    """
    txredisapi = sys.modules.get("txredisapi")
    if txredisapi is None or type(pool) not in (
        txredisapi.ConnectionHandler,
        txredisapi.UnixConnectionHandler,  # differs in its repr only
    ):
        return None
    factory = pool._factory
    method = getattr(factory.protocol, name, None)
    if not callable(method) or getattr(method, "_blocking", False):
        return None
    slow_path = getattr(pool, name)

    def command(*args: Any, **kwargs: Any) -> Deferred[Any]:
        ready: list[Any] = factory.connectionQueue.pending
        if ready:
            # One connection by default (redis.connections): no random pick to pay for.
            connection = ready[0] if len(ready) == 1 else choice(ready)
            if connection.connected:
                d: Deferred[Any] = method(connection, *args, **kwargs)
                return d
        d = slow_path(*args, **kwargs)
        return d

    return command


class AdmitWhileAvailable:
    """Admission control's first question: is Redis there to take a new session at all?

    The same ``admit`` as :class:`cwmpgw.acs.admission.AdmissionControl` (None: admit;
    else the Retry-After for a 503), asked by the ACS resource after the cheap parse and
    before any credential or Redis work. While Redis is down a new session is refused
    there, without touching Redis; the Retry-After is jittered so that the CPEs refused
    during an outage do not all come back in the same second. Otherwise ``inner`` (the
    rate limits, or None) decides.
    """

    def __init__(
        self,
        availability: RedisAvailability,
        inner: Any = None,
        *,
        retry_after: tuple[float, float] = (30.0, 90.0),
        rng: random.Random | None = None,
    ) -> None:
        self._availability = availability
        self.last_reason = ""  # why the last refusal happened, for the answer's text
        self._inner = inner
        self._retry_after = retry_after
        self._rng = rng or random.Random()
        self.refused = 0

    def admit(self, event_codes: Iterable[str], live_sessions: int) -> int | None:
        self.last_reason = "too many new sessions; retry later"
        if not self._availability.available:
            self.last_reason = "storage unavailable; retry later"
            self.refused += 1
            return round(self._rng.uniform(*self._retry_after))
        if self._inner is None:
            return None
        retry: int | None = self._inner.admit(event_codes, live_sessions)
        return retry
