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

The presets (periodic inform, ``[[provision.values]]``) go in one SetParameterValues, which
a CPE applies atomically: one parameter it lacks (fault 9003 with a 9005 for it) and
nothing is applied. So only what the device has is set. PeriodicInformEnable and
PeriodicInformInterval are required of every CPE; another ManagementServer parameter
(PeriodicInformTime above all, which many CPEs lack) is set only if the device reported it
(Inform, parameter cache) or listed it when asked once with GetParameterNames on
``ManagementServer.`` (NextLevel true; the answer is remembered in the device store). A
9003 fault that names the parameters it refused is retried once without them
(``presets.partial``); those refused as unknown (9005) or not writable (9008) are
remembered and never sent to that device again.

A CPE that ends its session without answering one of these requests (some drop the
session rather than send a fault) is logged with its device id, and the request is not
sent again in every session: after two such sessions in a row it waits an hour, then
twice as long each time, up to a day.

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

from cwmpgw.bus.events import Event, IEventSink, device_ref, format_ts
from cwmpgw.config import ProvisionConfig
from cwmpgw.cwmp import rpc
from cwmpgw.cwmp.messages import (
    CompletionReport,
    CpeFault,
    RpcResponse,
)
from cwmpgw.cwmp.session import AcsRequest, Outcome
from cwmpgw.sessions import IRequestSource, LiveSession, acs_request
from cwmpgw.store.interfaces import (
    NAME_ABSENT,
    NAME_LISTED,
    NAME_READ_ONLY,
    NAME_UNLISTED,
    NAME_WRITABLE,
    ConnReqCredential,
    IConnReqCredentialStore,
    ICredentialStore,
    IDeviceStore,
)
from cwmpgw.web.digest import ha1

__all__ = ["MemoryRotations", "Provisioner", "RedisRotations", "root_object"]

_ALGORITHMS = ("MD5", "SHA-256")
# TR-069 requires these of every CPE: they are set without asking whether it has them.
_REQUIRED = ("PeriodicInformEnable", "PeriodicInformInterval")
# After two sessions in a row ended without an answer, wait before trying again.
UNANSWERED_WAIT = 3600.0
UNANSWERED_MAX_WAIT = 86400.0


def unanswered_wait(count: int) -> float:
    """Seconds to wait after ``count`` sessions in a row ended without an answer: none
    after one (a CPE may lose power once), then an hour, doubling, up to a day."""
    if count < 2:
        return 0.0
    return min(UNANSWERED_WAIT * 2.0 ** (count - 2), UNANSWERED_MAX_WAIT)


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


# KEYS: prov-unanswered:<id>; ARGV: kind, now. Forgotten a week after the last one.
_NOTE_UNANSWERED = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HSET', KEYS[1], ARGV[1] .. ':at', ARGV[2])
redis.call('EXPIRE', KEYS[1], 604800)
return n
"""


class RedisRotations:
    """Devices whose credentials should be replaced in their next session (any node), and
    devices that confirmed a change they have not used yet (not to be overwritten)."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._key = prefix + "cred-rotate"
        self._confirmed = prefix + "cred-confirmed"
        self._unanswered = prefix + "prov-unanswered:"

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

    # Requests a device left unanswered, per kind ("credentials", "stun", "presets").

    def unanswered(self, device_id: str, kind: str) -> Deferred[tuple[int, float]]:
        """How many sessions in a row ended without an answer, and when the last did."""
        d: Deferred[Any] = self._redis.execute_command(
            "HMGET", self._unanswered + device_id, kind, kind + ":at"
        )
        return d.addCallback(lambda r: (int(r[0] or 0), float(r[1] or 0)))

    def note_unanswered(self, device_id: str, kind: str, at: float) -> Deferred[int]:
        d: Deferred[Any] = self._redis.eval(
            _NOTE_UNANSWERED, [self._unanswered + device_id], [kind, repr(at)]
        )
        return d.addCallback(int)

    def answered(self, device_id: str, kind: str) -> Deferred[None]:
        d: Deferred[Any] = self._redis.execute_command(
            "HDEL", self._unanswered + device_id, kind, kind + ":at"
        )
        return d.addCallback(lambda _: None)


class MemoryRotations:
    def __init__(self) -> None:
        self.devices: set[str] = set()
        self.confirmed_devices: set[str] = set()
        self.unanswered_counts: dict[tuple[str, str], tuple[int, float]] = {}

    def unanswered(self, device_id: str, kind: str) -> Deferred[tuple[int, float]]:
        return succeed(self.unanswered_counts.get((device_id, kind), (0, 0.0)))

    def note_unanswered(self, device_id: str, kind: str, at: float) -> Deferred[int]:
        count = self.unanswered_counts.get((device_id, kind), (0, 0.0))[0] + 1
        self.unanswered_counts[(device_id, kind)] = (count, at)
        return succeed(count)

    def answered(self, device_id: str, kind: str) -> Deferred[None]:
        self.unanswered_counts.pop((device_id, kind), None)
        return succeed(None)

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
    kind: str  # "credentials", "stun", "names" (GetParameterNames first) or "presets"
    parameter_key: str = field(default_factory=lambda: "cg" + os.urandom(8).hex())
    path: str = ""  # names: the object whose parameters are listed
    values: list[dict[str, str]] | None = None  # presets: what is set (None: not chosen yet)
    retry: bool = False  # presets: the second attempt, without what the first refused
    dropped: list[dict[str, Any]] = field(default_factory=list)  # refused by the first
    remembered: list[str] = field(default_factory=list)  # of those, never to be sent again

    @property
    def family(self) -> str:
        """What an unanswered request holds up: listing the names is part of the presets."""
        return "presets" if self.kind == "names" else self.kind


@dataclass(eq=False)
class _SessionState:
    steps: list[_Step]
    outstanding: _Step | None = None
    listed: bool = False  # GetParameterNames was asked in this session


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
        devices: IDeviceStore | None = None,
    ) -> None:
        self._inner = inner
        # What the device's data model has; without it the presets are sent whole and
        # only the retry after a fault adapts them.
        self._devices = devices
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
            if (
                wanted
                and ("0 BOOTSTRAP" in codes or not await self._rotations.confirmed(device_id))
                and await self._due(device_id, "credentials")
            ):
                steps.append(_Step("credentials"))
                if self._config.stun_credentials and await self._due(device_id, "stun"):
                    steps.append(_Step("stun"))
        if self._config.periodic_inform or self._config.values:
            when = self._config.presets_on
            if (
                when == "every"
                or "0 BOOTSTRAP" in codes
                or (when == "boot" and "1 BOOT" in codes)
                or bool(steps)  # a device getting its credentials gets the presets too
            ) and await self._due(device_id, "presets"):
                steps.append(_Step("presets"))
        return _SessionState(steps)

    async def _due(self, device_id: str, family: str) -> bool:
        """False while a request the device left unanswered should not be sent again."""
        count, last = await self._rotations.unanswered(device_id, family)
        after = last + unanswered_wait(count)
        if self._clock.seconds() >= after:
            return True
        self._log.info(
            "{kind} for {device_id} postponed until {after}: its last {count} sessions"
            " with them ended without an answer",
            kind=family,
            device_id=device_id,
            after=format_ts(after),
            count=count,
        )
        return False

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        state = self._sessions.get(session.session_id)
        if state is not None and not state.steps:
            # Planned, and nothing (left) to do: the inner source's turn, without a
            # coroutine of ours around it (every turn of nearly every session).
            return self._inner.next_request(session)
        return Deferred.fromCoroutine(self._next(session))

    async def _next(self, session: LiveSession) -> AcsRequest | None:
        state = self._sessions.get(session.session_id)
        if state is None:
            state = self._sessions[session.session_id] = await self._plan(session)
        while state.steps:
            step = state.steps[0]
            if step.kind == "presets" and step.values is None:
                values, ask = await self._presets(session, state)
                if ask is not None:
                    step = _Step("names", path=ask)
                    state.steps.insert(0, step)
                elif not values:
                    state.steps.pop(0)  # everything it could take, it has refused before
                    continue
                else:
                    step.values = values
            state.outstanding = step
            request_id = f"{step.kind[:4]}.{step.parameter_key[-8:]}"
            if step.kind == "names":
                method = "GetParameterNames"
                args: dict[str, Any] = {"parameter_path": step.path, "next_level": True}
            else:
                method = "SetParameterValues"
                if step.kind == "credentials":
                    values = await self._new_credentials(session, step)
                elif step.kind == "stun":
                    values = await self._new_stun_credentials(session)
                else:
                    values = step.values or []
                args = {"parameters": values, "parameter_key": step.parameter_key}
            return acs_request(session, method, request_id, args, step)
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

    def _preset_values(self, session: LiveSession) -> list[dict[str, str]]:
        """Everything the configuration asks to set, in this device's root object."""
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

    async def _presets(
        self, session: LiveSession, state: _SessionState
    ) -> tuple[list[dict[str, str]], str | None]:
        """The presets this device can take; or the object to list first, when a
        ManagementServer parameter is wanted that the device may not have."""
        wanted = self._preset_values(session)
        if self._devices is None:
            return wanted, None
        ms = root_object(session) + ".ManagementServer."
        known = await self._devices.parameter_names(
            session.device_id, [v["name"] for v in wanted] + [ms]
        )
        listed = known.get(ms)
        values, skipped = [], []
        for v in wanted:
            name = v["name"]
            seen = known.get(name)
            if seen in (NAME_ABSENT, NAME_READ_ONLY):
                skipped.append(name)  # refused before: not again
                continue
            rest = name[len(ms) :] if name.startswith(ms) else None
            if seen is None and rest is not None and "." not in rest and rest not in _REQUIRED:
                if listed == NAME_LISTED:
                    skipped.append(name)  # listed, and not there
                    continue
                if listed is None and not state.listed:
                    return [], ms
                # It could not be listed: try, and let the retry drop it if refused.
            values.append(v)
        if skipped:
            self._log.debug(
                "presets for {device_id} without {parameters}: not in its data model"
                " or not writable",
                device_id=session.device_id,
                parameters=", ".join(skipped),
            )
        return values, None

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
        await self._rotations.answered(session.device_id, step.family)
        if step.kind == "names":
            return await self._names_answered(session, state, step, response)
        if step.kind == "presets":
            return await self._presets_answered(session, state, step, response)
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
            return None
        if step.kind == "stun":
            # From now on its bindings are signed with the new password (only).
            await self._connreq.promote_stun(session.device_id)
            self._log.info("{device_id} took its STUN credentials", device_id=session.device_id)
        if step.kind == "credentials":
            # The CPE took the change: it now expects the new connection-request credential,
            # and a session it still opens with the bootstrap credential is counted.
            await self._connreq.promote(session.device_id)
            await self._rotations.mark_confirmed(session.device_id, True)
            await self._credentials.confirm_pending(session.device_id, self._clock.seconds())
            await self._publish(session, {"phase": "confirmed", "username": session.device_id})
        return None

    async def _names_answered(
        self,
        session: LiveSession,
        state: _SessionState | None,
        step: _Step,
        response: RpcResponse | CpeFault,
    ) -> None:
        """Remember which parameters the listed object has, and whether each is writable."""
        assert self._devices is not None
        if state is not None:
            state.listed = True
        notes: dict[str, str] = {}
        try:
            if isinstance(response, CpeFault):
                raise rpc.ResponseError(f"fault {response.fault_code}")
            for p in rpc.result("GetParameterNames", response)["parameters"]:
                if not p["name"].endswith("."):
                    notes[p["name"]] = NAME_WRITABLE if p["writable"] else NAME_READ_ONLY
            notes[step.path] = NAME_LISTED
        except rpc.ResponseError as e:
            # Asked once: its presets are tried whole, and the retry drops what it refuses.
            self._log.info(
                "{device_id} could not list {path}: {error}",
                device_id=session.device_id,
                path=step.path,
                error=str(e),
            )
            notes = {step.path: NAME_UNLISTED}
        await self._devices.note_parameter_names(session.device_id, notes)

    async def _presets_answered(
        self,
        session: LiveSession,
        state: _SessionState | None,
        step: _Step,
        response: RpcResponse | CpeFault,
    ) -> None:
        device_id = session.device_id
        sent = [v["name"] for v in step.values or []]
        if not isinstance(response, CpeFault):
            if step.retry:
                self._log.warn(
                    "{device_id} took its presets without {parameters} ({faults})",
                    device_id=device_id,
                    parameters=", ".join(d["name"] for d in step.dropped),
                    faults="; ".join(
                        f"{d['name']}: {d['code']} {d['string']}" for d in step.dropped
                    ),
                )
                await self._publish(
                    session,
                    {"applied": sent, "dropped": step.dropped, "remembered": step.remembered},
                    "presets.partial",
                )
            return
        fault = rpc.fault(response)
        refused = {p["name"]: p for p in fault["parameters"] if p["name"] in sent}
        if not step.retry and fault["code"] == 9003 and refused:
            # One bad parameter and the CPE applied nothing: once more without it.
            remember = {
                name: NAME_ABSENT if p["code"] == 9005 else NAME_READ_ONLY
                for name, p in refused.items()
                if p["code"] in (9005, 9008)
            }
            if remember and self._devices is not None:
                await self._devices.note_parameter_names(device_id, remember)
            rest = [v for v in step.values or [] if v["name"] not in refused]
            if rest and state is not None:
                retry = _Step(
                    "presets",
                    values=rest,
                    retry=True,
                    dropped=list(refused.values()),
                    remembered=list(remember),
                )
                state.steps.insert(0, retry)
                return
        self._log.warn(
            "{device_id} refused its presets (fault {code} {string}{details})",
            device_id=device_id,
            code=fault["code"],
            string=fault["string"],
            details="".join(f"; {p['name']}: {p['code']}" for p in fault["parameters"]),
        )
        await self._publish(
            session,
            {"reason": "fault", "fault": fault, "parameters": sent, "retry": step.retry},
            "presets.failed",
        )

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

    def session_starting(self, device_id: str, owner: str | None) -> None:
        self._inner.session_starting(device_id, owner)

    def session_ended(self, session: LiveSession) -> Deferred[None] | None:
        state = self._sessions.pop(session.session_id, None)
        inner = self._inner.session_ended(session)
        step = state.outstanding if state is not None else None
        if step is None or session.machine.outcome is Outcome.SHUTDOWN:
            return inner  # answered, or cut short by us rather than by the CPE

        async def record() -> None:
            try:
                await self._unanswered(session, step)
            except Exception:
                self._log.failure(
                    "could not record the unanswered request of {device_id}",
                    device_id=session.device_id,
                )
            if inner is not None:
                await inner

        return Deferred.fromCoroutine(record())

    async def _unanswered(self, session: LiveSession, step: _Step) -> None:
        """The session ended with our request unanswered: say so, and do not send it
        again in every session of a CPE that cannot take it."""
        now = self._clock.seconds()
        count = await self._rotations.note_unanswered(session.device_id, step.family, now)
        after = format_ts(now + unanswered_wait(count))
        outcome = session.machine.outcome
        self._log.warn(
            "{device_id} ended its session ({outcome}) without answering the"
            " {cwmp_method} of its {kind}; {count} such sessions in a row, next attempt"
            " not before {after}",
            device_id=session.device_id,
            outcome=outcome.value if outcome is not None else "",
            cwmp_method="GetParameterNames" if step.kind == "names" else "SetParameterValues",
            kind=step.family,
            count=count,
            after=after,
        )
        if step.family == "presets":
            await self._publish(
                session,
                {
                    "reason": "unanswered",
                    "parameters": [v["name"] for v in step.values or []],
                    "unanswered": count,
                    "next_attempt": after,
                },
                "presets.failed",
            )

    async def _publish(
        self, session: LiveSession, data: dict[str, Any], type_: str = "credentials.changed"
    ) -> None:
        d = session.device
        ref = device_ref(session.device_id, d.oui, d.product_class, d.serial_number, d.manufacturer)
        try:
            event = Event(
                type=type_,
                ts=self._clock.seconds(),
                node=self._node,
                data=data,
                device=ref,
            )
            await self._events.publish(event)
        except Exception:
            self._log.failure("could not publish {type}", type=type_)
