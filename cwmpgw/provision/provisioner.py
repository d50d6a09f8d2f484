"""What the gateway itself sets on devices: unique credentials and periodic-inform presets.

TR-069's security guidance asks for a unique username and a random, individual password
per device. The provisioner is a request source placed in front of the task runner: in
the ACS's turn it first sends its own SetParameterValues, then hands over to the tasks.

The credential switch is safe at every step:
1. new credentials are generated in memory; the ACS password is stored only as a
   *pending* HA1, the connection-request password as a pending ciphertext — the old
   credential (the device's own, or the bootstrap one) keeps working;
2. SetParameterValues sets all four on the CPE (with a ParameterKey);
3. on status 0 or 1 the connection-request credential switches (the CPE now expects it);
   on a fault the pending ACS credential is dropped and the old one stays the only one;
4. the first time the CPE authenticates with the new password, it replaces the old one
   (DeviceCredentialsChecker promotes it) and ``credentials.changed`` says ``active``.
If the session dies between 2 and 3 nothing is lost: a CPE that applied the change
authenticates with the new credential (and it is promoted), one that did not still has
the old one, and the next session tries again with freshly generated values.

With the credentials, the CPE gets its STUN credentials (TR-069 Annex G):
``STUNUsername`` = the device id and a random ``STUNPassword``, with which the STUN
server verifies its bindings.  They go in a SetParameterValues of their own, because a
CPE without STUN refuses the parameters (fault 9005) and would otherwise refuse its
new ACS credentials with them.  The password is stored pending (encrypted) and accepted
beside the current one until the CPE confirms; a fault drops it and changes nothing else.

The passwords exist in plain text only in this process's memory and in the SetParameter
Values envelope; they are never stored, logged or published.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from cwmpgw.bus.events import Event, IEventSink, device_ref
from cwmpgw.config import ProvisionConfig
from cwmpgw.cwmp import rpc
from cwmpgw.cwmp.messages import (
    CompletionReport,
    CpeFault,
    RpcResponse,
)
from cwmpgw.cwmp.session import AcsRequest
from cwmpgw.sessions import IRequestSource, LiveSession
from cwmpgw.store.interfaces import ConnReqCredential, IConnReqCredentialStore, ICredentialStore
from cwmpgw.web.digest import ha1

__all__ = ["MemoryRotations", "Provisioner", "RedisRotations", "root_object"]

_ALGORITHMS = ("MD5", "SHA-256")


def root_object(session: LiveSession) -> str:
    """``Device`` (TR-181) or ``InternetGatewayDevice`` (TR-098), from the Inform."""
    for p in session.machine.inform.parameters:
        root = p.name.split(".", 1)[0]
        if root:
            return root
    return "Device"


def inform_phase(device_id: str, interval: int) -> str:
    """A PeriodicInformTime whose phase depends on the device id: a fleet spread evenly."""
    offset = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big") % interval
    return datetime.fromtimestamp(offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RedisRotations:
    """Devices whose credentials should be replaced in their next session (any node), and
    devices that confirmed a change they have not used yet (not to be overwritten)."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._key = prefix + "cred-rotate"
        self._confirmed = prefix + "cred-confirmed"

    def mark_confirmed(self, device_id: str, confirmed: bool) -> Deferred[None]:
        op = self._redis.sadd if confirmed else self._redis.srem
        d: Deferred[Any] = op(self._confirmed, device_id)
        return d.addCallback(lambda _: None)

    def confirmed(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.sismember(self._confirmed, device_id)
        return d.addCallback(bool)

    def request(self, device_id: str) -> Deferred[None]:
        d: Deferred[Any] = self._redis.sadd(self._key, device_id)
        return d.addCallback(lambda _: None)

    def requested(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.sismember(self._key, device_id)
        return d.addCallback(bool)

    def clear(self, device_id: str) -> Deferred[None]:
        d: Deferred[Any] = self._redis.srem(self._key, device_id)
        return d.addCallback(lambda _: None)


class MemoryRotations:
    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.confirmed_devices: set[str] = set()

    def mark_confirmed(self, device_id: str, confirmed: bool) -> Deferred[None]:
        (self.confirmed_devices.add if confirmed else self.confirmed_devices.discard)(device_id)
        return succeed(None)

    def confirmed(self, device_id: str) -> Deferred[bool]:
        return succeed(device_id in self.confirmed_devices)

    def request(self, device_id: str) -> Deferred[None]:
        self.devices.add(device_id)
        return succeed(None)

    def requested(self, device_id: str) -> Deferred[bool]:
        return succeed(device_id in self.devices)

    def clear(self, device_id: str) -> Deferred[None]:
        self.devices.discard(device_id)
        return succeed(None)


@dataclass(eq=False)
class _Step:
    kind: str  # "credentials", "stun" or "presets"
    parameter_key: str = field(default_factory=lambda: "cg" + os.urandom(8).hex())


@dataclass(eq=False)
class _SessionState:
    steps: list[_Step]
    outstanding: _Step | None = None


@implementer(IRequestSource)
class Provisioner:
    _log = Logger()

    def __init__(
        self,
        inner: IRequestSource,
        *,
        credentials: ICredentialStore,
        connreq_credentials: IConnReqCredentialStore,
        rotations: Any,
        events: IEventSink,
        clock: IReactorTime,
        node: str,
        realm: str,
        config: ProvisionConfig,
    ) -> None:
        self._inner = inner
        self._credentials = credentials
        self._connreq = connreq_credentials
        self._rotations = rotations
        self._events = events
        self._clock = clock
        self._node = node
        self._realm = realm
        self._config = config
        self._sessions: dict[str, _SessionState] = {}

    # -- what to do in a session -----------------------------------------------------------

    async def _plan(self, session: LiveSession) -> _SessionState:
        steps: list[_Step] = []
        device_id = session.device_id
        codes = {e.code for e in session.machine.inform.events}
        if self._config.credentials:
            own = await self._credentials.username_for(device_id)
            wanted = own is None or await self._rotations.requested(device_id)
            # A change the CPE confirmed but has not used yet (status 1: applied later)
            # must not be overwritten, unless the CPE was reset since (BOOTSTRAP).
            if wanted and (
                "0 BOOTSTRAP" in codes or not await self._rotations.confirmed(device_id)
            ):
                steps.append(_Step("credentials"))
                if self._config.stun_credentials:
                    steps.append(_Step("stun"))
        if self._config.periodic_inform or self._config.values:
            when = self._config.presets_on
            if (
                when == "every"
                or "0 BOOTSTRAP" in codes
                or (when == "boot" and "1 BOOT" in codes)
                or bool(steps)  # a device getting its credentials gets the presets too
            ):
                steps.append(_Step("presets"))
        return _SessionState(steps)

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        return Deferred.fromCoroutine(self._next(session))

    async def _next(self, session: LiveSession) -> AcsRequest | None:
        state = self._sessions.get(session.session_id)
        if state is None:
            state = self._sessions[session.session_id] = await self._plan(session)
        if state.steps:
            step = state.outstanding = state.steps[0]
            if step.kind == "credentials":
                values = await self._new_credentials(session, step)
            elif step.kind == "stun":
                values = await self._new_stun_credentials(session)
            else:
                values = self._presets(session)
            request_id = f"{step.kind[:4]}.{step.parameter_key[-8:]}"
            body = rpc.build(
                session.machine.namespace,
                request_id,
                "SetParameterValues",
                {"parameters": values, "parameter_key": step.parameter_key},
                hold_requests=session.machine.hold_requests,
            )
            return AcsRequest("SetParameterValues", request_id, body, ref=step)
        result: AcsRequest | None = await self._inner.next_request(session)
        return result

    async def _new_credentials(self, session: LiveSession, step: _Step) -> list[dict[str, str]]:
        device_id = session.device_id
        username = device_id  # TR-069 §3.4.4's globally unique form, OUI-ProductClass-Serial
        password = secrets.token_urlsafe(24)  # 192 bits from the OS CSPRNG
        cr = ConnReqCredential("cr-" + secrets.token_hex(8), secrets.token_urlsafe(24))
        await self._credentials.set_pending(
            device_id, username, {a: ha1(a, username, self._realm, password) for a in _ALGORITHMS}
        )
        await self._connreq.set_pending(device_id, cr)
        await self._publish(session, {"phase": "sent", "username": username})
        ms = root_object(session) + ".ManagementServer."
        return [
            {"name": ms + "Username", "value": username, "type": "xsd:string"},
            {"name": ms + "Password", "value": password, "type": "xsd:string"},
            {"name": ms + "ConnectionRequestUsername", "value": cr.username, "type": "xsd:string"},
            {"name": ms + "ConnectionRequestPassword", "value": cr.password, "type": "xsd:string"},
        ]

    async def _new_stun_credentials(self, session: LiveSession) -> list[dict[str, str]]:
        device_id = session.device_id
        password = secrets.token_urlsafe(24)  # 192 bits, the MESSAGE-INTEGRITY key
        await self._connreq.set_stun_pending(device_id, password)
        ms = root_object(session) + ".ManagementServer."
        return [
            {"name": ms + "STUNUsername", "value": device_id, "type": "xsd:string"},
            {"name": ms + "STUNPassword", "value": password, "type": "xsd:string"},
        ]

    def _presets(self, session: LiveSession) -> list[dict[str, str]]:
        ms = root_object(session) + ".ManagementServer."
        interval = self._config.periodic_inform_interval
        values: list[dict[str, str]] = []
        if self._config.periodic_inform:
            values += [
                {"name": ms + "PeriodicInformEnable", "value": "true", "type": "xsd:boolean"},
                {
                    "name": ms + "PeriodicInformInterval",
                    "value": str(interval),
                    "type": "xsd:unsignedInt",
                },
            ]
        root = root_object(session)
        for name, value, type_ in self._config.values:
            if not name.startswith(("Device.", "InternetGatewayDevice.")):
                name = f"{root}.{name}"
            values.append({"name": name, "value": value, "type": type_})
        if self._config.periodic_inform and self._config.spread_informs:
            values.append(
                {
                    "name": ms + "PeriodicInformTime",
                    "value": inform_phase(session.device_id, interval),
                    "type": "xsd:dateTime",
                }
            )
        return values

    # -- answers ---------------------------------------------------------------------------

    def answered(
        self, session: LiveSession, request: AcsRequest, response: RpcResponse | CpeFault
    ) -> Deferred[None]:
        if not isinstance(request.ref, _Step):
            return self._inner.answered(session, request, response)
        return Deferred.fromCoroutine(self._answered(session, request.ref, response))

    async def _answered(
        self, session: LiveSession, step: _Step, response: RpcResponse | CpeFault
    ) -> None:
        state = self._sessions.get(session.session_id)
        if state is not None and state.steps and state.steps[0] is step:
            state.steps.pop(0)
            state.outstanding = None
        if isinstance(response, CpeFault):
            fault = rpc.fault(response)
            self._log.warn(
                "{device_id} refused its {kind} (fault {code})",
                device_id=session.device_id,
                kind=step.kind,
                code=fault["code"],
            )
            if step.kind == "stun":
                # Most likely a CPE without STUN (9005): its bindings stay unauthenticated,
                # hence ignored, and everything else it was given stands.
                await self._connreq.drop_stun_pending(session.device_id)
            if step.kind == "credentials":
                await self._credentials.drop_pending(session.device_id)
                await self._rotations.clear(session.device_id)
                await self._publish(
                    session,
                    {
                        "phase": "failed",
                        "fault": {"code": fault["code"], "string": fault["string"]},
                    },
                )
            return
        if step.kind == "stun":
            # From now on its bindings are signed with the new password (only).
            await self._connreq.promote_stun(session.device_id)
            self._log.info("{device_id} took its STUN credentials", device_id=session.device_id)
        if step.kind == "credentials":
            # The CPE took the change: it now expects the new connection-request credential.
            await self._connreq.promote(session.device_id)
            await self._rotations.mark_confirmed(session.device_id, True)
            await self._publish(session, {"phase": "confirmed", "username": session.device_id})

    def answer_unusable(
        self, session: LiveSession, request: AcsRequest, reason: str
    ) -> Deferred[None]:
        if not isinstance(request.ref, _Step):
            return self._inner.answer_unusable(session, request, reason)
        # The session ends: as if it had died mid-step. The CPE may or may not have taken
        # the change, both cases are safe (see the module docs), and the next session tries
        # again.
        self._log.warn(
            "{device_id}: the answer to its {kind} could not be used: {reason}",
            device_id=session.device_id,
            kind=request.ref.kind,
            reason=reason,
        )
        return succeed(None)

    def promoted(self, device_id: str, username: str) -> None:
        """The device authenticated with its new credential: the switch is complete."""

        async def done() -> None:
            await self._rotations.clear(device_id)
            await self._rotations.mark_confirmed(device_id, False)
            await self._events.publish(
                Event(
                    type="credentials.changed",
                    ts=self._clock.seconds(),
                    node=self._node,
                    data={"phase": "active", "username": username},
                    device=device_ref(device_id),
                )
            )

        Deferred.fromCoroutine(done()).addErrback(
            lambda f: self._log.failure("could not finish the credential switch", f)
        )

    # -- the rest goes to the tasks ----------------------------------------------------------

    def transfer_completed(self, session: LiveSession, message: CompletionReport) -> Deferred[None]:
        return self._inner.transfer_completed(session, message)

    def session_ended(self, session: LiveSession) -> Deferred[None] | None:
        self._sessions.pop(session.session_id, None)
        return self._inner.session_ended(session)

    async def _publish(self, session: LiveSession, data: dict[str, Any]) -> None:
        d = session.device
        ref = device_ref(session.device_id, d.oui, d.product_class, d.serial_number, d.manufacturer)
        event = Event(
            type="credentials.changed",
            ts=self._clock.seconds(),
            node=self._node,
            data=data,
            device=ref,
        )
        try:
            await self._events.publish(event)
        except Exception:
            self._log.failure("could not publish credentials.changed")
