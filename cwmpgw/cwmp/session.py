"""The per-session CWMP state machine: envelopes in, replies and effects out. No I/O.

A session alternates strictly (TR-069 §3.7): after the InformResponse it is the CPE's
turn (its own requests, then an empty POST), then the ACS's turn (one request per HTTP
response, each answered by the CPE's next POST), until the ACS answers 204.

The caller (the ACS resource) feeds each POST to :meth:`CwmpSession.receive`, carries
out the returned effects (store writes, events), and sends the reply. When the reply is
``None`` it is the ACS's turn: the caller asks its request source for the next request
and calls :meth:`CwmpSession.send_request`, or :meth:`CwmpSession.finish` for the 204.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from cwmpgw.cwmp import soap
from cwmpgw.cwmp.messages import (
    AutonomousTransferComplete,
    CompletionReport,
    CpeFault,
    DUStateChangeComplete,
    Envelope,
    GetRPCMethods,
    Inform,
    RpcResponse,
    TransferComplete,
    UnknownRequest,
)
from cwmpgw.cwmp.versions import Negotiated

__all__ = [
    "ACS_METHODS",
    "AcsRequest",
    "AnswerUnreadable",
    "CwmpSession",
    "Effect",
    "Outcome",
    "Reply",
    "ResponseReceived",
    "SessionEnded",
    "Step",
    "TransferReceived",
]

# What this ACS answers when the CPE asks GetRPCMethods.
ACS_METHODS: Final = (
    "Inform",
    "GetRPCMethods",
    "TransferComplete",
    "AutonomousTransferComplete",
    "DUStateChangeComplete",
    "AutonomousDUStateChangeComplete",
)


class Outcome(StrEnum):
    """How a session ended; published in ``session.closed``."""

    COMPLETED = "completed"  # the ACS answered 204 with nothing left to do
    TIMEOUT = "timeout"  # no POST within the session timeout
    SUPERSEDED = "superseded"  # the device started a new session (a new Inform)
    PROTOCOL_ERROR = "protocol_error"  # the CPE broke the message sequence
    SHUTDOWN = "shutdown"  # the gateway stopped


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response: 200 with an envelope, 204 empty, or 4xx with a short reason."""

    status: int
    body: bytes = b""
    reason: str = ""  # for 4xx: safe to log and to send as text/plain

    @property
    def is_envelope(self) -> bool:
        return self.status == 200


@dataclass(frozen=True, slots=True)
class AcsRequest:
    """A request the ACS sends in its turn; ``ref`` lets the sender correlate the answer."""

    method: str  # e.g. "GetParameterValues"
    request_id: str
    body: bytes  # the envelope, built by the sender in the session's namespace
    ref: object = None
    # The sender already checked that this session still owns its device (the engine
    # need not ask the session lock again): see cwmpgw.store.sessionlock.
    owner_checked: bool = False


@dataclass(frozen=True, slots=True)
class TransferReceived:
    """The CPE reported a finished transfer (TransferComplete or AutonomousTransferComplete)
    or deployment-unit change ((Autonomous)DUStateChangeComplete). ``request_id`` is its
    cwmp:ID: a fault answering it instead of the acknowledgement must echo it."""

    message: CompletionReport
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The CPE answered an ACS request, with its response or a fault."""

    request: AcsRequest
    response: RpcResponse | CpeFault


@dataclass(frozen=True, slots=True)
class AnswerUnreadable:
    """The CPE's answer to ``request`` could not be parsed (``reason``: the codec's).

    It will not become readable by waiting: the sender should not count on an answer."""

    request: AcsRequest
    reason: str


@dataclass(frozen=True, slots=True)
class SessionEnded:
    outcome: Outcome
    reason: str = ""


Effect = TransferReceived | ResponseReceived | AnswerUnreadable | SessionEnded


@dataclass(frozen=True, slots=True)
class Step:
    """What one POST produced. ``reply is None`` means: the ACS's turn, pick a request."""

    reply: Reply | None
    effects: tuple[Effect, ...] = ()


class _Phase(Enum):
    CPE_TURN = "cpe_turn"
    ACS_TURN = "acs_turn"  # a request of ours is outstanding
    CLOSED = "closed"


class CwmpSession:
    """One CWMP session of one device, from its InformResponse to its end."""

    def __init__(
        self,
        session_id: str,
        inform: Envelope,
        negotiated: Negotiated,
        *,
        hold_requests: bool = False,
    ) -> None:
        if not isinstance(inform.message, Inform):
            raise TypeError("a session starts with an Inform")
        self.session_id = session_id
        self.namespace = inform.namespace
        self.inform: Inform = inform.message
        self.negotiated = negotiated
        self.hold_requests = hold_requests
        self.cpe_requests = 1  # the Inform
        self.acs_requests = 0
        self.outcome: Outcome | None = None
        self._phase = _Phase.CPE_TURN
        self._pending: AcsRequest | None = None
        # Whether the last envelope we sent carried HoldRequests: the CPE may still have
        # requests of its own, so a 204 after it does not end the session yet.
        self._held = hold_requests
        self._hold_lifted = False
        self._inform_request_id = inform.request_id

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def pending(self) -> AcsRequest | None:
        return self._pending

    def inform_response(self) -> Reply:
        """The InformResponse that opens the session (sent once the Inform is stored)."""
        return Reply(
            200,
            soap.inform_response(
                self.namespace,
                self._inform_request_id,
                use_cwmp_version=self.negotiated.use_cwmp_version,
                hold_requests=self.hold_requests,
            ),
        )

    def receive(self, envelope: Envelope | None) -> Step:
        """Handle one POST of this session: ``None`` is the empty POST."""
        if self._phase is _Phase.CLOSED:
            return Step(Reply(400, reason="session is closed"))
        if self._phase is _Phase.ACS_TURN:
            return self._receive_answer(envelope)
        if envelope is None:
            self._phase = _Phase.ACS_TURN
            return Step(None)
        return self._receive_cpe_request(envelope)

    def _receive_cpe_request(self, envelope: Envelope) -> Step:
        message = envelope.message
        ns, rid = self.namespace, envelope.request_id
        if isinstance(message, (RpcResponse, CpeFault)):
            return self._protocol_error("a response arrived but no ACS request is outstanding")
        if isinstance(message, Inform):
            return self._protocol_error("a second Inform inside a session")
        self.cpe_requests += 1
        if isinstance(message, GetRPCMethods):
            return Step(Reply(200, soap.get_rpc_methods_response(ns, rid, ACS_METHODS)))
        if isinstance(message, TransferComplete):
            return Step(
                Reply(200, soap.transfer_complete_response(ns, rid)),
                (TransferReceived(message, rid),),
            )
        if isinstance(message, AutonomousTransferComplete):
            return Step(
                Reply(200, soap.autonomous_transfer_complete_response(ns, rid)),
                (TransferReceived(message, rid),),
            )
        if isinstance(message, DUStateChangeComplete):
            return Step(
                Reply(
                    200,
                    soap.du_state_change_complete_response(ns, rid, autonomous=message.autonomous),
                ),
                (TransferReceived(message, rid),),
            )
        assert isinstance(message, UnknownRequest)
        return Step(Reply(200, soap.acs_fault(ns, rid, 8000)))

    def _receive_answer(self, envelope: Envelope | None) -> Step:
        pending = self._pending
        if pending is None:
            # The ACS's turn with nothing outstanding: the caller has not picked yet.
            return self._protocol_error("a POST arrived before the ACS sent its request")
        if envelope is None:
            return self._protocol_error(f"empty POST while {pending.method} is outstanding")
        message = envelope.message
        if not isinstance(message, (RpcResponse, CpeFault)):
            return self._protocol_error(f"a CPE request while {pending.method} is outstanding")
        if envelope.request_id != pending.request_id:
            return self._protocol_error("cwmp:ID does not match the outstanding request")
        if isinstance(message, RpcResponse) and message.method != pending.method:
            return self._protocol_error(
                f"{message.method}Response does not answer {pending.method}"
            )
        self._pending = None
        return Step(None, (ResponseReceived(pending, message),))

    def send_request(self, request: AcsRequest) -> Reply:
        """Send the ACS's next request (the caller built it with ``hold_requests``)."""
        if self._phase is not _Phase.ACS_TURN or self._pending is not None:
            raise RuntimeError("not the ACS's turn")
        self._pending = request
        self.acs_requests += 1
        self._held = self.hold_requests
        return Reply(200, request.body)

    def finish(self) -> Step:
        """The ACS has nothing more to send: 204, and the end of the session.

        If our last envelope held the CPE's requests, the CPE may now send them, so the
        session stays open for them (and ends on the next 204 or on the timeout).
        """
        if self._phase is not _Phase.ACS_TURN or self._pending is not None:
            raise RuntimeError("not the ACS's turn")
        if self._held:
            self._held = False
            self._hold_lifted = True
            self._phase = _Phase.CPE_TURN
            return Step(Reply(204))
        return self._close(Outcome.COMPLETED, Reply(204))

    def end(self, outcome: Outcome, reason: str = "") -> SessionEnded | None:
        """End the session from outside (timeout, a new Inform, shutdown)."""
        if self._phase is _Phase.CLOSED:
            return None
        self._phase = _Phase.CLOSED
        self.outcome = outcome
        return SessionEnded(outcome, reason)

    def unreadable(self, status: int, reason: str) -> Step:
        """A POST of this session that could not be parsed was answered ``status``.

        In the CPE's turn nothing changes: the CPE may send its request again. While an ACS
        request is outstanding, the unreadable POST was its answer; the CPE, refused, ends
        its session (TR-069 §3.7.1.4), so the session ends here too, as a protocol error,
        and the request's sender learns that no answer will come.
        """
        pending = self._pending
        if self._phase is not _Phase.ACS_TURN or pending is None:
            return Step(Reply(status, reason=reason))
        self._pending = None
        why = f"the answer to {pending.method} was unreadable: {reason}"
        step = self._close(Outcome.PROTOCOL_ERROR, Reply(status, reason=reason), why)
        return Step(step.reply, (AnswerUnreadable(pending, reason), *step.effects))

    @property
    def may_end_quietly(self) -> bool:
        """True after a 204 that lifted HoldRequests: the CPE closing now is a normal end."""
        return self._phase is _Phase.CPE_TURN and self._hold_lifted

    def _protocol_error(self, reason: str) -> Step:
        return self._close(Outcome.PROTOCOL_ERROR, Reply(400, reason=reason), reason)

    def _close(self, outcome: Outcome, reply: Reply, reason: str = "") -> Step:
        self._phase = _Phase.CLOSED
        self.outcome = outcome
        return Step(reply, (SessionEnded(outcome, reason),))
