"""The session engine: runs CWMP sessions against the stores, the event bus and the work source.

The HTTP resource hands it authenticated envelopes; the engine drives the sans-IO
machine, stores what the CPE reported, publishes events and asks the request source
(the task queue, in a later cut) what the ACS should send in its turn. An Inform is
answered only after its device record and events are stored, so a CPE whose Inform
could not be stored keeps its events and retries, as TR-069 makes it do.
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import asdict, replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.availability import (
    RedisAvailability,
    RedisTimeout,
    Unavailable,
    log_call_failure,
)
from cwmpgw.bus.events import Event, IEventSink, IStoredEvents, device_ref
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.deviceid import device_id as make_device_id
from cwmpgw.cwmp.messages import (
    AutonomousTransferComplete,
    CompletionReport,
    CpeFault,
    DeviceId,
    DUStateChangeComplete,
    Envelope,
    Inform,
    RpcResponse,
)
from cwmpgw.cwmp.session import (
    AnswerUnreadable,
    CwmpSession,
    Effect,
    Outcome,
    Reply,
    ResponseReceived,
    SessionEnded,
    TransferReceived,
)
from cwmpgw.cwmp.versions import VersionMismatch, negotiate
from cwmpgw.logs import debug_wanted
from cwmpgw.sessions import (
    IRequestSource,
    LiveSession,
    NoRequests,
    SessionRegistry,
    new_session_id,
)
from cwmpgw.store.interfaces import IDeviceStore, InformRecord
from cwmpgw.store.sessionlock import Superseded

__all__ = ["AcsEngine"]


# What an envelope.repaired event lists at most: the event stays small whatever was sent.
_MAX_REPAIRED_LISTED = 16
_MAX_RAW_BYTES = 256


def _method_name(envelope: Envelope) -> str:
    message = envelope.message
    if isinstance(message, RpcResponse):
        return message.method + "Response"
    if isinstance(message, CpeFault):
        return "Fault"
    if isinstance(message, DUStateChangeComplete) and message.autonomous:
        return "AutonomousDUStateChangeComplete"
    return type(message).__name__


def _raw(value: str) -> str:
    """A repaired value as the CPE sent it (bytes that were not UTF-8 included), base64."""
    return base64.b64encode(value.encode("utf-8", "surrogateescape")[:_MAX_RAW_BYTES]).decode()


def _device_ref(device_id: str, d: DeviceId) -> dict[str, str]:
    return device_ref(device_id, d.oui, d.product_class, d.serial_number, d.manufacturer)


class AcsEngine:
    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        devices: IDeviceStore,
        events: IEventSink,
        requests: IRequestSource | None = None,
        node: str,
        session_timeout: float = 30.0,
        max_session_timeout: float = 300.0,
        hold_requests: bool = False,
        metrics: Any = None,
        lock: Any = None,
        availability: RedisAvailability | None = None,
    ) -> None:
        self._clock = clock
        # Redis reachability (docs/reliability.md); None where the stores are not Redis.
        self._availability = availability
        self._devices = devices
        self._events = events
        self._requests: IRequestSource = requests or NoRequests()
        self.node = node
        self._session_timeout = session_timeout
        self._max_session_timeout = max_session_timeout
        self._hold_requests = hold_requests
        self._metrics = metrics  # cwmpgw.metrics.Metrics, or None
        self._lock = lock  # cwmpgw.store.sessionlock: one session per device across nodes
        self.registry = SessionRegistry(clock, self._session_ended)
        self._busy: set[str] = set()
        self._arrivals = itertools.count(1)
        self._in_flight: set[Deferred[Any]] = set()

    def _event(self, type_: str, data: dict[str, Any], device: dict[str, str] | None) -> Event:
        return Event(type=type_, ts=self._clock.seconds(), node=self.node, data=data, device=device)

    def publish(
        self, type_: str, data: dict[str, Any], device: dict[str, str] | None = None
    ) -> Deferred[None]:
        return self._events.publish(self._event(type_, data, device))

    async def _announce(self, event: Event, stored: bool) -> None:
        """Publish ``event``, or only tell the sink of it (metrics) when the store already
        stored it with the write it reports (``IDeviceStore.stores_events``)."""
        if not stored:
            await self._events.publish(event)
        elif IStoredEvents.providedBy(self._events):
            IStoredEvents(self._events).stored(event)

    async def start_session(
        self, envelope: Envelope, *, peer: str, channel: object, authenticated_as: str
    ) -> tuple[LiveSession | None, Reply]:
        """Open a session for an authenticated Inform and store what it reports.

        Raises whatever the store or the bus raised: the caller answers 503 and the
        CPE retries the Inform later with its events intact.
        """
        inform = envelope.message
        assert isinstance(inform, Inform)
        if self._availability is not None:
            # Redis is down: refuse at once (the caller answers 503) rather than queue
            # the device write behind a dead connection.
            self._availability.check()
        device_id = make_device_id(inform.device_id)
        try:
            negotiated = negotiate(envelope)
        except VersionMismatch:
            return None, Reply(200, soap.acs_fault(envelope.namespace, envelope.request_id, 8006))
        now = self._clock.seconds()
        seq = next(self._arrivals)  # before any wait: the order Informs came in
        machine = CwmpSession(
            new_session_id(), envelope, negotiated, hold_requests=self._hold_requests
        )
        record = InformRecord(
            device_id=device_id,
            device=inform.device_id,
            ts=now,
            source=peer,
            cwmp_version=negotiated.version,
            namespace=envelope.namespace,
            events=inform.events,
            parameters=inform.parameters,
        )
        if self._lock is not None:
            # A new Inform starts a new session wherever it lands: take the device over,
            # in the device write when the store can (one round trip less).
            owner, ttl = self._owner(machine.session_id), self._max_session_timeout + 60
            record = replace(record, session_owner=owner, session_ttl=ttl)
            if not self._devices.takes_session:
                await self._lock.take(device_id, owner, ttl)
        dev = _device_ref(device_id, inform.device_id)
        bootstrap = "0 BOOTSTRAP" in [e.code for e in inform.events]

        def registered(first_contact: bool) -> Event:
            data = {
                "first_contact": first_contact,
                "bootstrap": bootstrap,
                "source": peer,
                "username": authenticated_as,
            }
            return self._event("device.registered", data, dev)

        # device.registered and inform go with the device write where the store can
        # (device.registered is due once, on first contact: a crash between the two would
        # lose it for good; inform once per Inform, even when the CPE repeats it because
        # its answer was lost).
        if_new, if_known = registered(True), registered(False) if bootstrap else None
        announcement = self._event(
            "inform",
            {
                "session_id": machine.session_id,
                "events": [{"code": e.code, "command_key": e.command_key} for e in inform.events],
                "parameters": {
                    p.name: {"value": p.value, "type": p.type} for p in inform.parameters
                },
                "retry_count": inform.retry_count,
                "current_time": inform.current_time,
                "cwmp_version": negotiated.version,
                "source": peer,
                "connection_request_url": record.connection_request_url,
            },
            dev,
        )
        stores = self._devices.stores_events
        written = self._devices.record_session_inform(
            record, if_new, if_known, announcement, inform.retry_count
        )
        self._requests.session_starting(device_id, record.session_owner)  # same write
        is_new, announced = await written
        event = if_new if is_new else if_known
        if event is not None:
            await self._announce(event, stores)
        if announced is None:
            await self._events.publish(announcement)
        elif announced:
            await self._announce(announcement, True)
        else:
            self._log.debug(
                "inform of {device_id} repeats one whose answer was lost: not announced again",
                device_id=device_id,
            )
        self._report_repair(envelope, machine.session_id, device_id, dev)
        timeout = max(self._session_timeout, float(envelope.session_timeout or 0))
        live = LiveSession(
            machine=machine,
            device_id=device_id,
            device=inform.device_id,
            cookie=machine.session_id,
            peer=peer,
            started=now,
            timeout=min(timeout, self._max_session_timeout),
            channel=channel,
            owner=record.session_owner,
            seq=seq,
        )
        self.registry.add(live)
        if self._metrics is not None:
            self._metrics.rpcs.labels("Inform", "cpe").inc()
            self._metrics.live_sessions.set(len(self.registry))
        # Debug, as every per-session line: the inform and session.closed events are the
        # record of sessions; an info line each cost ~1.5% of a session's CPU.
        if debug_wanted():
            self._log.debug(
                "session {session_id} opened for {device_id} from {peer} (CWMP {cwmp_version})",
                session_id=live.session_id,
                device_id=device_id,
                peer=peer,
                cwmp_version=negotiated.version,
            )
        return live, machine.inform_response()

    async def continue_session(self, live: LiveSession, envelope: Envelope | None) -> Reply:
        """One POST of a live session after the Inform (``None`` is the empty POST)."""
        if live.session_id in self._busy:
            return Reply(400, reason="another request of this session is in progress")
        self._busy.add(live.session_id)
        try:
            self.registry.touch(live)
            if envelope is not None:
                self._report_repair(
                    envelope,
                    live.session_id,
                    live.device_id,
                    _device_ref(live.device_id, live.device),
                )
            step = live.machine.receive(envelope)
            reply = step.reply
            if self._metrics is not None and envelope is not None:
                message = envelope.message
                if not isinstance(message, (RpcResponse, CpeFault)):  # a CPE request
                    self._metrics.rpcs.labels(type(message).__name__, "cpe").inc()
            try:
                failed = await self._apply(live, step.effects)
                if failed is not None:
                    return failed
                if reply is None:
                    return await self._acs_turn(live)
            except (Unavailable, RedisTimeout):
                # Redis is down: an answer that could not be recorded leaves its task
                # running (it is sent again, with the same keys, in a later session) and
                # queued work stays queued; this session ends cleanly with 204 rather than
                # failing the CPE's request.
                self._log.warn(
                    "session {session_id} of {device_id}: redis unreachable; ending it",
                    session_id=live.session_id,
                    device_id=live.device_id,
                )
                step = live.machine.finish()
                await self._apply(live, step.effects)
                assert step.reply is not None
                return step.reply
            return reply
        finally:
            self._busy.discard(live.session_id)

    async def unreadable(self, live: LiveSession, status: int, reason: str) -> Reply:
        """A POST of ``live`` that could not be parsed, on its authenticated connection: what
        to answer. While an ACS request is outstanding it was the answer, and the session
        ends (its request's sender is told first, so a task fails rather than hang)."""
        if live.session_id in self._busy:
            return Reply(400, reason="another request of this session is in progress")
        self._busy.add(live.session_id)
        try:
            step = live.machine.unreadable(status, reason)
            for effect in step.effects:
                if isinstance(effect, AnswerUnreadable):
                    self._log.warn(
                        "session {session_id} of {device_id}: the answer to {cwmp_method} "
                        "was unreadable ({reason}); ending the session",
                        session_id=live.session_id,
                        device_id=live.device_id,
                        cwmp_method=effect.request.method,
                        reason=reason,
                    )
            for effect in step.effects:
                try:
                    await self._apply(live, (effect,))
                except Exception:
                    # The session ends all the same: its task is then run again.
                    log_call_failure(
                        self._log,
                        Failure(),
                        "could not record the unreadable answer of {device_id}",
                        device_id=live.device_id,
                    )
            assert step.reply is not None
            return step.reply
        finally:
            self._busy.discard(live.session_id)

    def _report_repair(
        self, envelope: Envelope, session_id: str, device_id: str, dev: dict[str, str]
    ) -> None:
        """Publish ``envelope.repaired`` for an envelope read only once repaired (a warning:
        nobody waits for it, and a failure to publish it fails nothing)."""
        repair = envelope.repaired
        if repair is None:
            return
        listed = repair.values[:_MAX_REPAIRED_LISTED]
        method = _method_name(envelope)
        self._log.warn(
            "{cwmp_method} of {device_id} held {count} characters XML forbids; replaced "
            "by U+FFFD (parameters: {names})",
            cwmp_method=method,
            device_id=device_id,
            count=repair.characters,
            names=[v.name for v in listed],
        )
        d = self.publish(
            "envelope.repaired",
            {
                "session_id": session_id,
                "method": method,
                "characters": repair.characters,
                "parameters": [
                    {
                        "name": v.name,
                        "raw": _raw(v.raw),
                    }
                    for v in listed
                ],
                "parameters_omitted": len(repair.values) - len(listed),
            },
            dev,
        )
        d.addErrback(
            lambda f: self._log.failure(
                "could not publish envelope.repaired for {device_id}", f, device_id=device_id
            )
        )
        self._track(d)

    async def _acs_turn(self, live: LiveSession) -> Reply:
        """The ACS's turn: its next request, or the end of the session.

        A request goes out only while this session owns the device: a device that started
        a newer session elsewhere gets nothing more from this one. Ending needs no check.
        """
        reply: Reply | None = None
        while reply is None:
            try:
                request = await self._requests.next_request(live)
            except Superseded:
                return self._superseded(live)
            if request is not None:
                if (
                    self._lock is not None
                    and not request.owner_checked
                    and not await self._lock.owns(live.device_id, live.owner)
                ):
                    return self._superseded(live)  # the source requeues what it took
                return live.machine.send_request(request)
            step = live.machine.finish()
            await self._apply(live, step.effects)
            reply = step.reply
        return reply

    def answer_too_large(self, live: LiveSession, size: int | None, limit: int) -> None:
        """A POST of this session was refused (413) for its size.

        The request it answered fails with the reason (the CPE would send the same answer
        again: no retry) and the session ends; the HTTP layer closes the connection.
        """
        amount = f"more than {limit}" if size is None else str(size)
        reason = f"answer too large: {amount} bytes > limit {limit} bytes"
        pending = live.machine.pending
        self._log.warn(
            "session {session_id} of {device_id}: {reason} (answering {cwmp_method})",
            session_id=live.session_id,
            device_id=live.device_id,
            reason=reason,
            cwmp_method=pending.method if pending is not None else None,
        )

        async def fail() -> None:
            if pending is not None:
                await self._requests.answer_unusable(live, pending, reason)
            self.registry.end(live, Outcome.PROTOCOL_ERROR, reason)

        d = Deferred.fromCoroutine(fail())
        d.addErrback(
            lambda f: log_call_failure(
                self._log,
                f,
                "could not fail the request of {device_id} answered too large",
                device_id=live.device_id,
            )
        )
        self._track(d)

    def _superseded(self, live: LiveSession) -> Reply:
        self.registry.end(live, Outcome.SUPERSEDED, "a newer session on another node")
        return Reply(204)

    async def _apply(self, live: LiveSession, effects: tuple[Effect, ...]) -> Reply | None:
        """Carry out effects; a reply is returned only when one must replace the normal one."""
        for effect in effects:
            if isinstance(effect, TransferReceived):
                try:
                    await self._record_transfer(live, effect.message)
                except Exception:
                    log_call_failure(
                        self._log,
                        Failure(),
                        "could not record a transfer of {device_id}; not acknowledging it",
                        device_id=live.device_id,
                    )
                    # 8005 Retry request, with the request's cwmp:ID: the CPE keeps the
                    # report and sends it again (TR-069 A.5); it is stored once then.
                    namespace = live.machine.namespace
                    return Reply(200, soap.acs_fault(namespace, effect.request_id, 8005))
            elif isinstance(effect, ResponseReceived):
                if self._metrics is not None:
                    result = "fault" if isinstance(effect.response, CpeFault) else "ok"
                    self._metrics.rpcs.labels(effect.request.method, result).inc()
                await self._requests.answered(live, effect.request, effect.response)
            elif isinstance(effect, AnswerUnreadable):
                reason = (
                    f"the CPE's answer to {effect.request.method} could not be read"
                    f" ({effect.reason}); it may have carried the request out"
                )
                await self._requests.answer_unusable(live, effect.request, reason)
            elif isinstance(effect, SessionEnded):
                self.registry.ended(live, effect)
        return None

    async def _record_transfer(
        self,
        live: LiveSession,
        message: CompletionReport,
    ) -> None:
        """Store a completion report once (a CPE sends it again until acknowledged), tell
        the request source (a task may be waiting for it), publish it the first time."""
        data: dict[str, Any] = asdict(message)
        if isinstance(message, DUStateChangeComplete):
            autonomous, event_type = message.autonomous, "du.complete"
            success = all(not r.fault_code for r in message.results)
            first_result = message.results[0]
            parts = [
                "adu" if autonomous else "du",
                first_result.start_time,
                first_result.complete_time,
                first_result.uuid,
                message.command_key,
            ]
        else:
            autonomous = isinstance(message, AutonomousTransferComplete)
            event_type, success = "transfer.complete", not message.fault_code
            parts = [
                "atc" if autonomous else "tc",
                message.start_time,
                message.complete_time,
                str(message.fault_code),
                getattr(message, "command_key", "") or getattr(message, "transfer_url", ""),
            ]
        # Published the first time only, so stored with the report where the store can: a
        # crash between the two would lose it for good (the CPE's repeat is not the first).
        event = self._event(
            event_type,
            {**data, "session_id": live.session_id, "autonomous": autonomous, "success": success},
            _device_ref(live.device_id, live.device),
        )
        key, stores = ":".join(parts), self._devices.stores_events
        first = await (
            self._devices.record_transfer(live.device_id, key, data, event)
            if stores
            else self._devices.record_transfer(live.device_id, key, data)
        )
        await self._requests.transfer_completed(live, message)
        if not first:
            self._log.info(
                "completion report of {device_id} re-delivered; acknowledged again",
                device_id=live.device_id,
            )
            return
        await self._announce(event, stores)

    def _session_ended(self, live: LiveSession, ended: SessionEnded) -> None:
        """Report a session's end once, whatever ended it."""
        m = live.machine
        recorded = self._requests.session_ended(live)
        if recorded is not None:
            self._track(recorded)
        # The session lock is not released: a newer session overwrites it and it expires
        # on its own (cwmpgw.store.sessionlock), so a release would be a round trip for
        # nothing.
        duration = self._clock.seconds() - live.started
        if self._metrics is not None:
            self._metrics.sessions.labels(ended.outcome.value).inc()
            self._metrics.session_duration.observe(duration)
            self._metrics.live_sessions.set(len(self.registry))
        if ended.outcome is not Outcome.COMPLETED or debug_wanted():
            log = self._log.debug if ended.outcome is Outcome.COMPLETED else self._log.info
            log(
                "session {session_id} of {device_id} ended: {outcome}",
                session_id=live.session_id,
                device_id=live.device_id,
                outcome=ended.outcome.value,
            )
        d = self.publish(
            "session.closed",
            {
                "session_id": live.session_id,
                "outcome": ended.outcome.value,
                "reason": ended.reason,
                "duration": round(duration, 3),
                "rpc_count": m.cpe_requests + m.acs_requests,
                "cpe_requests": m.cpe_requests,
                "acs_requests": m.acs_requests,
                "cwmp_version": m.negotiated.version,
                "events": [e.code for e in m.inform.events],
                "source": live.peer,
            },
            _device_ref(live.device_id, live.device),
        )
        d.addErrback(
            lambda f: self._log.failure(
                "could not publish session.closed for {device_id}", f, device_id=live.device_id
            )
        )
        self._track(d)

    def _owner(self, session_id: str) -> str:
        return f"{self.node}:{session_id}"

    def _track(self, d: Deferred[Any]) -> None:
        """Remember a publish nobody waits for, so shutdown can let it finish."""
        self._in_flight.add(d)

        def forget(result: object) -> object:
            self._in_flight.discard(d)
            return result

        d.addBoth(forget)

    def flush(self) -> Deferred[Any]:
        """Fires once the events published in the background so far are out."""
        return DeferredList(list(self._in_flight), consumeErrors=True)

    def live_connections(self) -> int:
        """Sessions whose CPE is connected now (the ones a drain waits for)."""
        return sum(1 for live in self.registry.sessions() if live.channel is not None)

    def note_shed(self) -> None:
        """Admission control refused a new session or connection."""
        if self._metrics is not None:
            self._metrics.admission_rejections.inc()

    def note_over_budget(self) -> None:
        """An unauthenticated body was refused unparsed: its address was over budget."""
        if self._metrics is not None:
            self._metrics.budget_refusals.inc()

    def note_stuck_bootstrap(self, *, refused: bool) -> None:
        """A device that confirmed its own credential was reported (credentials.stuck), or
        refused, for authenticating with the bootstrap credential."""
        if self._metrics is not None:
            (self._metrics.bootstrap_refused if refused else self._metrics.credentials_stuck).inc()

    def shutdown(self) -> None:
        self.registry.end_all(Outcome.SHUTDOWN, "the gateway is stopping")

    # The HTTP layer's other way into the bus.
    def auth_failed(
        self,
        *,
        peer: str,
        reason: str,
        username: str | None,
        device: DeviceId | None = None,
    ) -> None:
        if self._metrics is not None:
            self._metrics.auth_failures.inc()
        self._log.warn(
            "authentication failed from {peer} (user {username!r}, device {device_id}): {reason}",
            peer=peer,
            username=username,
            device_id=make_device_id(device) if device is not None else None,
            reason=reason,
        )
        ref = _device_ref(make_device_id(device), device) if device is not None else None
        d = self.publish(
            "auth.failed",
            {"source": peer, "username": username, "reason": reason},
            ref,
        )
        d.addErrback(lambda f: self._log.failure("could not publish auth.failed", f))
        self._track(d)
