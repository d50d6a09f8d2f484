"""wake(device): ask a CPE to open a session now, over XMPP, HTTP or UDP, within the guard's
rules.

The order of work for one wake-up:
1. coalesce with a wake-up of the same device already in flight on this node;
2. refuse if the device was woken less than ``min_interval`` ago (on any node: Redis);
3. pick the methods the device supports (XMPP to its ConnReqJabberID, HTTP
   ConnectionRequestURL, UDP via its STUN binding or UDPConnectionRequestAddress), in the
   configured order; each target must pass the guard (for XMPP: a JID on an allowed
   domain), or it is refused with a ``connreq.refused`` event and nothing is sent (a
   STUN binding is no exception: it never widens what the guard allows);
4. start listening for the device's "6 CONNECTION REQUEST" Inform *before* sending, so a
   fast CPE cannot be missed;
5. send, within the global rate and the concurrency limits (overall and per destination),
   retrying network errors with a doubling delay;
6. report ``connreq.succeeded`` or ``connreq.failed`` (method, target, attempts); with
   ``connreq.sent_events`` also ``connreq.sent`` before each attempt.

Steps 2 and 3 read the device, its credential and its STUN binding, and claim the
interval, in one Redis script when the gateway gives one (``wake_state``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet.defer import (
    Deferred,
    DeferredSemaphore,
    FirstError,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink, device_ref
from cwmpgw.config import ConnreqConfig
from cwmpgw.connreq.guard import GuardPolicy, Refusal, check_http_target, check_udp_target
from cwmpgw.connreq.interfaces import IConnectionRequester, WakeResult
from cwmpgw.connreq.state import WAKE_PARAMETERS, WakeState
from cwmpgw.store.interfaces import ConnReqCredential, IConnReqCredentialStore, IDeviceStore

__all__ = ["ConnectionRequestService", "RateLimiter", "session_follows"]

_NETWORK_ERRORS = ("unreachable", "timeout")


class RateLimiter:
    """At most ``rate`` starts per second, first come first served, on the injected clock.

    Spreads mass wake-ups (thousands of devices) so they never crowd out live sessions.
    """

    def __init__(self, rate: float, clock: IReactorTime) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._next = 0.0
        self._waiting: deque[Deferred[None]] = deque()

    def acquire(self) -> Deferred[None]:
        wait = self.take()
        if wait is None:
            return succeed(None)
        return deferLater(self._clock, wait, lambda: None)

    def take(self) -> float | None:
        """Take the next start: None if it is now, else how many seconds until it is."""
        now = self._clock.seconds()
        start = max(now, self._next)
        self._next = start + self._interval
        return None if start <= now else start - now


def _take(semaphore: DeferredSemaphore) -> Deferred[Any] | _Taken:
    """``semaphore.acquire()``, or, with a token free, the token taken now (what acquire
    does then) and nothing to wait for."""
    if semaphore.tokens > 0 and not semaphore.waiting:
        semaphore.tokens -= 1
        return _TAKEN
    return semaphore.acquire()


class _Taken:
    """Awaitable at once: a limit taken without a Deferred."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


_TAKEN = _Taken()


def _param(params: dict[str, Any], suffix: str) -> str:
    for name, value in params.items():
        if name.endswith(suffix):
            return str(value.get("value", ""))
    return ""


def _split_host_port(text: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` (Annex G: the port defaults to 80)."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else 80
    except ValueError:
        return None
    return (host, port) if host else None


@implementer(IConnectionRequester)
class ConnectionRequestService:
    _log = Logger()
    # Set when the gateway stops: wakes still under way end without publishing.
    stopped = False

    def __init__(
        self,
        *,
        clock: IReactorTime,
        config: ConnreqConfig,
        devices: IDeviceStore,
        credentials: IConnReqCredentialStore,
        http: Any,
        udp: Any | None,
        events: IEventSink,
        node: str,
        policy: GuardPolicy,
        claim_interval: Callable[[str, float], Deferred[bool]],
        stun_binding: Callable[[str], Deferred[tuple[str, int] | None]],
        session_started: Callable[[str, float], Deferred[bool]] | None,
        metrics: Any = None,
        xmpp: Any | None = None,
        xmpp_first: bool = True,
        wake_state: Callable[[str], Deferred[WakeState]] | None = None,
        release_interval: Callable[[str], Deferred[None]] | None = None,
    ) -> None:
        self._clock = clock
        self._xmpp = xmpp  # cwmpgw.connreq.xmpp.XmppConnectionRequester, or None
        self._xmpp_first = xmpp_first
        self._config = config
        self._devices = devices
        self._credentials = credentials
        self._http = http
        self._udp = udp if config.udp else None
        self._events = events
        self._node = node
        self._policy = policy
        self._claim_interval = claim_interval
        self._stun_binding = stun_binding
        self._session_started = session_started
        self._wake_state = wake_state or self._read_apart
        self._release_interval = release_interval
        self._metrics = metrics  # cwmpgw.metrics.Metrics, or None
        self._rate = RateLimiter(config.rate, clock)
        self._all = DeferredSemaphore(config.max_concurrent)
        self._per_destination: dict[str, DeferredSemaphore] = {}
        self._in_flight: dict[str, list[Deferred[WakeResult]]] = {}

    # -- the interface -------------------------------------------------------------------

    def wake(self, device_id: str) -> Deferred[WakeResult]:
        d: Deferred[WakeResult] = Deferred()
        waiting = self._in_flight.get(device_id)
        if waiting is not None:
            waiting.append(d)  # one wake-up per device at a time: share its result
            return d
        self._in_flight[device_id] = [d]

        def done(result: WakeResult) -> None:
            if self._metrics is not None:
                self._metrics.connection_requests.labels(
                    result.method or "none", result.outcome
                ).inc()
            for waiter in self._in_flight.pop(device_id, []):
                waiter.callback(result)

        def failed(failure: Any) -> None:
            if self.stopped:
                # The gateway is stopping under it (its client closed, Redis going away):
                # expected, and no bug to trace back.
                self._log.info("wake-up of {device_id} ended by the stop", device_id=device_id)
                done(WakeResult("error", detail="the gateway is stopping"))
                return
            self._log.failure("wake-up of {device_id} failed", failure, device_id=device_id)
            done(WakeResult("error", detail="internal error"))

        Deferred.fromCoroutine(self._wake(device_id)).addCallbacks(done, failed)
        return d

    # -- the work ------------------------------------------------------------------------

    async def _read_apart(self, device_id: str) -> WakeState:
        """The reads of a wake-up one by one (stores without a one-script read); the
        interval is left to claim."""
        # Both reads go out together (one write on a pipelined connection); only the few
        # parameters a wake-up needs are read, not the device's whole parameter cache.
        reads: list[Deferred[Any]] = [
            self._devices.get_device(device_id, WAKE_PARAMETERS),
            self._credentials.get(device_id),
        ]
        try:
            device, credential = await gatherResults(reads, consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        if device is None or credential is None or self._udp is None:
            return WakeState(device, credential, None, None)
        params: dict[str, Any] = device.get("parameters", {})
        # Authenticated bindings are stored under the device id (its STUNUsername, as the
        # gateway set it); a lab that takes unauthenticated ones looks up what it reported.
        stun_user = (
            device_id
            if self._config.stun_require_integrity
            else _param(params, ".ManagementServer.STUNUsername") or device_id
        )
        return WakeState(device, credential, await self._stun_binding(stun_user), None)

    async def _wake(self, device_id: str) -> WakeResult:
        state = await self._wake_state(device_id)
        device, credential, binding = state.device, state.credential, state.binding
        if device is None:
            return WakeResult("refused", detail="unknown device")
        ref = device_ref(
            device_id,
            device.get("oui", ""),
            device.get("product_class", ""),
            device.get("serial_number", ""),
            device.get("manufacturer", ""),
        )
        if credential is None:
            return await self._refuse(
                ref, None, "no connection-request credentials for this device"
            )
        params: dict[str, Any] = device.get("parameters", {})
        url = device.get("connection_request_url", "")
        udp_target = binding or _split_host_port(
            _param(params, ".ManagementServer.UDPConnectionRequestAddress")
        )
        methods: list[str] = []
        if url:
            methods.append("http")
        if self._udp is not None and udp_target is not None:
            nat = _param(params, ".ManagementServer.NATDetected").lower() in ("1", "true")
            methods.insert(0 if self._config.prefer == "udp" or (nat and binding) else 1, "udp")
        # Annex K: the JID is reported (forced inform) only by CPEs with XMPP enabled.
        jid = _param(params, ".ManagementServer.ConnReqJabberID").strip()
        if self._xmpp is not None and jid:
            methods.insert(0 if self._xmpp_first else len(methods), "xmpp")
        if not methods:
            if state.claimed and self._release_interval is not None:
                # Claimed with the reads (an address that does not parse): nothing will be
                # sent, so the next wake-up must not be told "busy".
                await self._release_interval(device_id)
            return await self._refuse(ref, None, "the device reported no connection-request URL")
        claimed = state.claimed
        if claimed is None:
            claimed = await self._claim_interval(device_id, self._config.min_interval)
        if not claimed:
            interval = f"{self._config.min_interval:g}"
            return WakeResult(
                "busy", detail=f"a connection request was sent less than {interval} s ago"
            )

        waiter = (
            self._session_started(device_id, self._config.session_wait)
            if self._session_started is not None and self._config.session_wait > 0
            else None
        )
        last = WakeResult("refused", detail="no method could be used")
        sent: dict[str, Any] = {}  # target and attempts of the last method tried
        try:
            for method in methods:
                if method == "xmpp":
                    last, sent = await self._try_xmpp(ref, jid, credential)
                elif method == "http":
                    last, sent = await self._try_http(ref, url, device, credential)
                else:
                    assert udp_target is not None
                    last, sent = await self._try_udp(ref, udp_target, device, credential)
                if last.outcome == "ok":
                    break
            if last.outcome != "ok":
                return last
            started = bool(await waiter) if waiter is not None else False
            waiter = None
        finally:
            if waiter is not None:
                waiter.addErrback(lambda _: False)  # cancelled: nobody waits for it any more
                waiter.cancel()
        if last.method == "udp" and not started and self._config.session_wait > 0:
            # UDP has no answer: only the session tells that the CPE got the message.
            result = WakeResult("timeout", False, "udp", "no session followed the UDP request")
            await self._publish("connreq.failed", ref, {**result.to_dict(), **sent})
            return result
        result = WakeResult("ok", started, last.method, last.detail)
        await self._publish("connreq.succeeded", ref, {**result.to_dict(), **sent})
        return result

    async def _try_http(
        self,
        ref: dict[str, str],
        url: str,
        device: dict[str, Any],
        credential: ConnReqCredential,
    ) -> tuple[WakeResult, dict[str, Any]]:
        """The result, and the target and attempts for the result event."""
        target = check_http_target(url, last_source=device.get("last_source"), policy=self._policy)
        if isinstance(target, Refusal):
            return await self._refuse(ref, "http", target.reason, url), {}
        attempt: Any = None
        attempts = 0
        for number in range(self._config.retries + 1):
            if number:
                await deferLater(
                    self._clock, self._config.retry_delay * 2 ** (number - 1), lambda: None
                )
            attempts = number + 1
            if self._config.sent_events:
                await self._publish(
                    "connreq.sent",
                    ref,
                    {"method": "http", "target": target.url, "attempt": attempts},
                )
            attempt = await self._limited(
                target.host,
                lambda: self._http.request(
                    target,
                    credential.username,
                    credential.password,
                    allow_basic=credential.allow_basic,
                ),
            )
            if attempt.outcome not in _NETWORK_ERRORS:
                break
        result = WakeResult(attempt.outcome, False, "http", attempt.detail)
        sent = {"target": target.url, "attempts": attempts}
        if attempt.outcome != "ok":
            await self._publish(
                "connreq.failed", ref, {**result.to_dict(), **sent, "status": attempt.status}
            )
        return result, sent

    async def _try_xmpp(
        self, ref: dict[str, str], jid: str, credential: ConnReqCredential
    ) -> tuple[WakeResult, dict[str, Any]]:
        xmpp = self._xmpp
        assert xmpp is not None
        reason = xmpp.check_target(jid)
        if reason is not None:
            return await self._refuse(ref, "xmpp", reason, jid), {}
        if self._config.sent_events:
            await self._publish(
                "connreq.sent", ref, {"method": "xmpp", "target": jid, "attempt": 1}
            )
        # All XMPP requests go through one server: the per-destination limit is per JID.
        attempt = await self._limited(
            "xmpp:" + jid,
            lambda: xmpp.request(jid, credential.username, credential.password),
        )
        result = WakeResult(attempt.outcome, False, "xmpp", attempt.detail)
        sent = {"target": jid, "attempts": 1}
        if attempt.outcome != "ok":
            await self._publish("connreq.failed", ref, {**result.to_dict(), **sent, "status": None})
        return result, sent

    async def _try_udp(
        self,
        ref: dict[str, str],
        address: tuple[str, int],
        device: dict[str, Any],
        credential: ConnReqCredential,
    ) -> tuple[WakeResult, dict[str, Any]]:
        host, port = address
        # A STUN binding is a target only where the guard allows its address anyway:
        # the device's own last source, or the operator's networks (never widened by it).
        target = check_udp_target(
            host, port, last_source=device.get("last_source"), policy=self._policy
        )
        if isinstance(target, Refusal):
            return await self._refuse(ref, "udp", target.reason, f"{host}:{port}"), {}
        if self._config.sent_events:
            await self._publish(
                "connreq.sent", ref, {"method": "udp", "target": target.netloc, "attempt": 1}
            )
        udp = self._udp
        assert udp is not None
        sent = await self._limited(
            target.host,
            lambda: udp.request(target.host, target.port, credential.username, credential.password),
        )
        result = WakeResult("ok", False, "udp", f"{sent} datagram(s) sent")
        return result, {"target": target.netloc, "attempts": 1}

    async def _limited(self, destination: str, start: Callable[[], Deferred[Any]]) -> Any:
        """Run ``start`` within the rate, the global limit and the destination's limit.

        A limit with room is taken at once (a token, as ``acquire`` takes it) rather than
        through a fired Deferred awaited: three coroutine resumptions fewer per request.
        """
        wait = self._rate.take()
        if wait is not None:
            await deferLater(self._clock, wait, lambda: None)
        per = self._per_destination.get(destination)
        if per is None:
            per = self._per_destination[destination] = DeferredSemaphore(
                self._config.per_destination
            )
        await _take(per)
        try:
            await _take(self._all)
            try:
                return await start()
            finally:
                self._all.release()
        finally:
            per.release()
            if per.tokens == per.limit and not per.waiting:
                self._per_destination.pop(destination, None)

    async def _refuse(
        self, ref: dict[str, str], method: str | None, reason: str, target: str = ""
    ) -> WakeResult:
        self._log.info(
            "connection request to {device_id} refused: {reason}",
            device_id=ref["id"],
            reason=reason,
        )
        await self._publish(
            "connreq.refused", ref, {"method": method, "reason": reason, "target": target}
        )
        return WakeResult("refused", False, method, reason)

    async def _publish(self, type_: str, ref: dict[str, str], data: dict[str, Any]) -> None:
        if self.stopped:
            return
        event = Event(type=type_, ts=self._clock.seconds(), node=self._node, data=data, device=ref)
        try:
            await self._events.publish(event)
        except Exception:
            self._log.failure("could not publish {type}", type=type_)


def session_follows(listener: Any) -> Callable[[str, float], Deferred[bool]]:
    """``session_started`` for :class:`ConnectionRequestService` from the event listener:
    true once the device's next Inform carries ``6 CONNECTION REQUEST``, whichever node
    served it (the listener sees every node's events)."""

    def session_started(device_id: str, timeout: float) -> Deferred[bool]:
        def matches(event: dict[str, Any]) -> bool:
            return (
                event.get("type") == "inform"
                and (event.get("device") or {}).get("id") == device_id
                and any(
                    e.get("code") == "6 CONNECTION REQUEST"
                    for e in event.get("data", {}).get("events", [])
                )
            )

        d: Deferred[Any] = listener.wait_for(matches, timeout, device=device_id)
        return d.addCallback(lambda event: event is not None)

    return session_started
