"""Live CWMP sessions of this process, and the seam the ACS asks in its turn.

Sessions are found by cookie, else by connection, and timed out on a clock.

A CPE may continue its session on a new TCP connection (TR-069 §3.4.2), so the cookie
is the primary key; CPEs that drop cookies are followed by their connection instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import Interface, implementer

from cwmpgw.cwmp import rpc
from cwmpgw.cwmp.messages import CompletionReport, CpeFault, DeviceId, RpcResponse
from cwmpgw.cwmp.session import AcsRequest, CwmpSession, Outcome, SessionEnded

__all__ = ["IRequestSource", "LiveSession", "NoRequests", "SessionRegistry", "acs_request"]


@dataclass(eq=False)
class LiveSession:
    machine: CwmpSession
    device_id: str
    device: DeviceId
    cookie: str
    peer: str
    started: float
    timeout: float
    channel: object | None = None  # the connection authenticated for this session
    owner: str | None = None  # its name in the session lock, when there is one
    seq: int = 0  # arrival order of its Inform on this node: the later Inform wins
    timer: IDelayedCall | None = field(default=None, repr=False)

    @property
    def session_id(self) -> str:
        return self.machine.session_id


def new_session_id() -> str:
    """128 random bits: the cookie is a bearer secret for the rest of the session."""
    return os.urandom(16).hex()


class SessionRegistry:
    def __init__(
        self,
        clock: IReactorTime,
        on_end: Callable[[LiveSession, SessionEnded], None],
    ) -> None:
        self._clock = clock
        self._on_end = on_end
        self._by_cookie: dict[str, LiveSession] = {}
        self._by_device: dict[str, LiveSession] = {}
        # The sessions on each connection: a closed connection finds its own without
        # walking every live session (10,000 by default: a walk per connection closed).
        self._by_channel: dict[object, set[LiveSession]] = {}

    def __len__(self) -> int:
        return len(self._by_cookie)

    def add(self, live: LiveSession) -> None:
        """Register a new session; an older session of the same device is superseded.

        Older means its Inform arrived first (``seq``), not that it was stored first: two
        Informs of one device in flight at once are registered in the order their stores
        answer, and the one that arrived last is the one holding the session lock.
        """
        old = self._by_device.get(live.device_id)
        if old is not None and old.seq > live.seq:
            self.end(live, Outcome.SUPERSEDED, "the device started a newer session")
            return
        if old is not None:
            self.end(old, Outcome.SUPERSEDED, "the device started a new session")
        self._by_cookie[live.cookie] = live
        self._by_device[live.device_id] = live
        self.attach(live, live.channel)
        self.touch(live)

    def attach(self, live: LiveSession, channel: object | None) -> None:
        """``live`` goes on over ``channel`` (None: over no connection for now)."""
        self._detach(live)
        live.channel = channel
        if channel is not None:
            self._by_channel.setdefault(channel, set()).add(live)

    def _detach(self, live: LiveSession) -> None:
        on = self._by_channel.get(live.channel)
        if on is not None:
            on.discard(live)
            if not on:
                del self._by_channel[live.channel]
        live.channel = None

    def by_cookie(self, cookie: str | None) -> LiveSession | None:
        if cookie is None:
            return None
        return self._by_cookie.get(cookie)

    def by_device(self, device_id: str) -> LiveSession | None:
        return self._by_device.get(device_id)

    def touch(self, live: LiveSession) -> None:
        """Restart the idle timer: called on every POST of the session."""
        if live.timer is not None and live.timer.active():
            live.timer.reset(live.timeout)
        else:
            live.timer = self._clock.callLater(live.timeout, self._expire, live)

    def _expire(self, live: LiveSession) -> None:
        live.timer = None
        self.end(live, Outcome.TIMEOUT, f"no POST for {live.timeout:g} s")

    def end(self, live: LiveSession, outcome: Outcome, reason: str = "") -> None:
        """End a session from outside the machine (timeout, superseded, shutdown)."""
        ended = live.machine.end(outcome, reason)
        if ended is not None:
            self.ended(live, ended)

    def ended(self, live: LiveSession, ended: SessionEnded) -> None:
        """Forget a session the machine has closed, and report it once."""
        if self._by_cookie.get(live.cookie) is live:
            del self._by_cookie[live.cookie]
        if self._by_device.get(live.device_id) is live:
            del self._by_device[live.device_id]
        if live.timer is not None and live.timer.active():
            live.timer.cancel()
        live.timer = None
        self._detach(live)
        self._on_end(live, ended)

    def connection_lost(self, channel: object) -> None:
        """A connection closed: sessions on it wait for a new connection, or end if done."""
        for live in list(self._by_channel.pop(channel, ())):
            live.channel = None
            if live.machine.may_end_quietly:
                self.end(live, Outcome.COMPLETED, "the CPE closed after its held requests")

    def sessions(self) -> list[LiveSession]:
        return list(self._by_cookie.values())

    def end_all(self, outcome: Outcome, reason: str = "") -> None:
        for live in list(self._by_cookie.values()):
            self.end(live, outcome, reason)


def acs_request(
    session: LiveSession,
    method: str,
    request_id: str,
    args: dict[str, Any],
    ref: object,
    *,
    owner_checked: bool = False,
) -> AcsRequest:
    """A request source's ``method`` with ``args``, as the envelope this session's CPE reads
    (its namespace and HoldRequests). Raises :class:`rpc.ArgumentError` for arguments the
    method (or the CPE's CWMP version) does not take."""
    body = rpc.build(
        session.machine.namespace,
        request_id,
        method,
        args,
        hold_requests=session.machine.hold_requests,
    )
    return AcsRequest(method, request_id, body, ref=ref, owner_checked=owner_checked)


class IRequestSource(Interface):
    """What the ACS sends in its turn: the seam the task queue plugs into."""

    def next_request(session: LiveSession) -> Deferred[AcsRequest | None]:
        """The next request for this session's device, or None when there is none.

        May fail with :class:`~cwmpgw.store.sessionlock.Superseded` when it found that
        ``session.owner`` no longer owns the device; a request it returns with
        ``owner_checked`` set was checked in the same step, else the engine checks.
        """

    def answered(
        session: LiveSession, request: AcsRequest, response: RpcResponse | CpeFault
    ) -> Deferred[None]:
        """The CPE answered ``request``; fires once the answer is recorded."""

    def transfer_completed(
        session: LiveSession,
        message: CompletionReport,
    ) -> Deferred[None]:
        """The CPE reported a finished transfer or deployment-unit change (a Download or a
        ChangeDUState of an earlier task may be finished)."""

    def answer_unusable(session: LiveSession, request: AcsRequest, reason: str) -> Deferred[None]:
        """The CPE's answer to ``request`` could not be used (unreadable, or too large), for
        ``reason``; the session then ends. Resending would most likely get the same answer:
        the request's work should end here, saying why, rather than run again. Fires once
        that is recorded."""

    def session_ended(session: LiveSession) -> Deferred[None] | None:
        """The session is over: a request sent but not answered must run again later.

        A Deferred returned fires once that is recorded: stopping the gateway waits for it.
        """

    def session_starting(device_id: str, owner: str | None) -> None:
        """A session of ``device_id`` (owned by ``owner``) is being opened: its Inform's write
        is under way. A source may read what it will need in the same round trip."""


@implementer(IRequestSource)
class NoRequests:
    """The ACS never has anything to ask: every session ends after the CPE's turn."""

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        return succeed(None)

    def answered(
        self, session: LiveSession, request: AcsRequest, response: RpcResponse | CpeFault
    ) -> Deferred[None]:
        return succeed(None)

    def transfer_completed(
        self,
        session: LiveSession,
        message: CompletionReport,
    ) -> Deferred[None]:
        return succeed(None)

    def answer_unusable(
        self, session: LiveSession, request: AcsRequest, reason: str
    ) -> Deferred[None]:
        return succeed(None)

    def session_ended(self, session: LiveSession) -> Deferred[None] | None:
        return None

    def session_starting(self, device_id: str, owner: str | None) -> None:
        return None
