"""Profiles: named desired state, applied by the gateway in the device's own sessions.

A profile is a set of parameter values with a selector (which devices) and a trigger
(when): ``bootstrap`` (a session with ``0 BOOTSTRAP``: first contact and every factory
reset), ``boot`` (``1 BOOT`` or ``0 BOOTSTRAP``), ``every`` session, or ``once`` per
device and profile version. Every value is typed and checked against the data model
(:mod:`cwmpgw.cwmp.datamodel`) when the profile is stored, so what reaches a CPE is
right for it as far as the gateway can know.

Profiles live in Redis (a hash of JSON, a version counter every change increments) and
are cached per process for ``fleet.profile_cache`` seconds. :class:`ProfileApplier` is a
request source between the provisioner and the task runner: in the ACS's turn it sends
one SetParameterValues per profile due, then hands over to the tasks. What it applied is
remembered per device (``device:<id>:profiles``: name → version); a device that
bootstraps forgets it (a factory reset lost everything), so ``once`` profiles are applied
again as well. A profile due in a session that ends before the CPE answers stays due and
is sent in the next session, whatever its events. ``profile.applied`` and
``profile.failed`` events say what happened.

Names are relative (``ManagementServer.PeriodicInformInterval``: the device's own root
is put in front, so one profile serves TR-181 and TR-098 devices) or absolute
(``Device.…``: sent only to devices with that root).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from cwmpgw.bus.events import Event, IEventSink, device_ref
from cwmpgw.cwmp import rpc, values
from cwmpgw.cwmp.datamodel import ROOTS, DataModel, DataModelError, standard_model
from cwmpgw.cwmp.messages import CompletionReport, CpeFault, RpcResponse
from cwmpgw.cwmp.session import AcsRequest
from cwmpgw.fleet.selector import Selector, SelectorError, parse_selector
from cwmpgw.sessions import IRequestSource, LiveSession
from cwmpgw.store.interfaces import IDeviceStore

__all__ = [
    "MAX_PARAMETERS",
    "MAX_PROFILES",
    "WHEN",
    "IProfileStore",
    "MemoryProfileStore",
    "Profile",
    "ProfileApplier",
    "ProfileCache",
    "ProfileError",
    "RedisProfileStore",
    "parse_profile",
]

#: When a profile is applied.
WHEN: Final = ("bootstrap", "boot", "every", "once")
MAX_PARAMETERS: Final = 256
MAX_PROFILES: Final = 1000
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")
_SECRET_RE: Final = re.compile(r"(Password|Passphrase|PreSharedKey|WEPKey|Secret)", re.I)
_BODY_KEYS: Final = ("selector", "when", "parameters", "enabled", "description")


class ProfileError(ValueError):
    """A profile the caller got wrong; ``path`` names the culprit. ``data_model`` is true
    when the data model refused a value (a 422 rather than a 400)."""

    def __init__(self, message: str, path: str = "", *, data_model: bool = False) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.data_model = data_model


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    selector: Selector
    when: str
    parameters: tuple[tuple[str, str, str], ...]  # name, wire value, canonical type
    enabled: bool = True
    description: str = ""
    version: int = 0
    updated: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "selector": self.selector.to_dict(),
            "when": self.when,
            "parameters": [{"name": n, "value": v, "type": t} for n, v, t in self.parameters],
            "enabled": self.enabled,
            "description": self.description,
            "version": self.version,
            "updated": self.updated,
        }

    def values_for(self, root: str) -> list[dict[str, str]]:
        """The SetParameterValues list for a device whose root object is ``root``."""
        out = []
        for name, value, type_ in self.parameters:
            first = name.split(".", 1)[0]
            if first in ROOTS:
                if first != root:
                    continue
            else:
                name = f"{root}.{name}"
            out.append({"name": name, "value": value, "type": type_})
        return out


def _check_value(
    model: DataModel, name: str, value: Any, type_: str | None, where: str
) -> tuple[str, str]:
    """A value checked against every root it may be sent to: (wire text, type)."""
    roots = [name.split(".", 1)[0]] if name.split(".", 1)[0] in ROOTS else list(ROOTS)
    result: tuple[str, str] | None = None
    for root in roots:
        full = name if len(roots) == 1 else f"{root}.{name}"
        try:
            checked = model.check(full, value, type_)
        except DataModelError as e:
            raise ProfileError(str(e), where, data_model=True) from None
        except ValueError as e:
            raise ProfileError(str(e), where) from None
        if result is None or (type_ is None and not checked.unchecked):
            result = (checked.value, checked.type)
    assert result is not None
    return result


def parse_profile(
    name: str, obj: Any, *, model: DataModel | None = None, now: float = 0.0
) -> Profile:
    """Check a profile's body (the API's PUT, a command entry) and build it (version 0)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ProfileError("1 to 64 characters of A-Z a-z 0-9 _ . : @ + -", "name")
    if not isinstance(obj, Mapping):
        raise ProfileError("the body must be a JSON object")
    for key in obj:
        if key not in _BODY_KEYS:
            raise ProfileError(f"unknown field (allowed: {', '.join(_BODY_KEYS)})", str(key))
    try:
        selector = parse_selector(obj.get("selector") or {})
    except SelectorError as e:
        raise ProfileError(e.reason, e.path) from None
    when = obj.get("when", "bootstrap")
    if when not in WHEN:
        raise ProfileError(f"one of {', '.join(WHEN)}", "when")
    enabled = obj.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ProfileError("expected true or false", "enabled")
    description = obj.get("description", "")
    if not isinstance(description, str) or len(description) > 1024:
        raise ProfileError("a string of at most 1024 characters", "description")
    entries = obj.get("parameters")
    if not isinstance(entries, list) or not entries:
        raise ProfileError("a non-empty list of {name, value, type?}", "parameters")
    if len(entries) > MAX_PARAMETERS:
        raise ProfileError(f"at most {MAX_PARAMETERS}", "parameters")
    model = model if model is not None else standard_model()
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    for i, entry in enumerate(entries):
        where = f"parameters[{i}]"
        if not isinstance(entry, Mapping) or set(entry) - {"name", "value", "type"}:
            raise ProfileError("an object of name, value and optionally type", where)
        pname = entry.get("name")
        if (
            not isinstance(pname, str)
            or not pname
            or len(pname) > 256
            or pname.endswith(".")
            or pname.startswith(".")
        ):
            raise ProfileError("a parameter name (not an object path)", where + ".name")
        if pname in seen:
            raise ProfileError(f"{pname} is set twice", where + ".name")
        seen.add(pname)
        if "value" not in entry:
            raise ProfileError("required", where + ".value")
        type_ = entry.get("type")
        if type_ is not None:
            try:
                values.normalise_type(type_)
            except ValueError as e:
                raise ProfileError(str(e), where + ".type") from None
        text, canonical = _check_value(model, pname, entry["value"], type_, where)
        out.append((pname, text, canonical))
    return Profile(name, selector, when, tuple(out), enabled, description, 0, now)


def _profile_from_json(raw: str | bytes) -> Profile:
    d = json.loads(raw)
    return Profile(
        name=d["name"],
        selector=parse_selector(d.get("selector") or {}),
        when=d["when"],
        parameters=tuple((p["name"], p["value"], p["type"]) for p in d["parameters"]),
        enabled=bool(d.get("enabled", True)),
        description=d.get("description", ""),
        version=int(d.get("version", 0)),
        updated=float(d.get("updated", 0.0)),
    )


def _to_json(profile: Profile) -> str:
    return json.dumps(profile.to_dict(), separators=(",", ":"), ensure_ascii=False)


# -- storage ------------------------------------------------------------------------------


class IProfileStore(Interface):
    def all() -> Deferred[list[Profile]]:
        """Every profile, by name."""

    def get(name: str) -> Deferred[Profile | None]:
        """One profile, or None."""

    def put(profile: Profile) -> Deferred[tuple[Profile, bool]]:
        """Store it with the next version; fires with it and whether it is new."""

    def delete(name: str) -> Deferred[bool]:
        """Forget it; True if it existed."""

    def applied(device_id: str) -> Deferred[dict[str, str]]:
        """What the device was given: ``name`` → version applied, ``due:<name>`` → version
        sent but not answered yet."""

    def note(
        device_id: str, set_fields: Mapping[str, str], remove: Sequence[str], *, reset: bool
    ) -> Deferred[None]:
        """Change the device's record (after forgetting it all, with ``reset``)."""


# KEYS: profiles, profiles:version; ARGV: name, JSON without version (filled here).
_PUT_LUA: Final = """
local v = redis.call('INCR', KEYS[2])
local p = cjson.decode(ARGV[2])
p['version'] = v
local new = redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(p))
return {v, new}
"""
# KEYS: device:<id>:profiles; ARGV: reset flag, n, field, value (n times), fields to remove
_NOTE_LUA: Final = """
if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[3 + 2 * i], ARGV[4 + 2 * i])
end
for i = 3 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
return 1
"""


@implementer(IProfileStore)
class RedisProfileStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._key = prefix + "profiles"
        self._version = prefix + "profiles:version"
        self._device = prefix + "device:{}:profiles"

    def all(self) -> Deferred[list[Profile]]:
        d: Deferred[Any] = self._redis.hgetall(self._key)
        return d.addCallback(
            lambda h: sorted((_profile_from_json(v) for v in h.values()), key=lambda p: p.name)
        )

    def get(self, name: str) -> Deferred[Profile | None]:
        d: Deferred[Any] = self._redis.hget(self._key, name)
        return d.addCallback(lambda raw: _profile_from_json(raw) if raw else None)

    def put(self, profile: Profile) -> Deferred[tuple[Profile, bool]]:
        d: Deferred[Any] = self._redis.eval(
            _PUT_LUA, [self._key, self._version], [profile.name, _to_json(profile)]
        )

        def done(r: list[Any]) -> tuple[Profile, bool]:
            return _replace(profile, version=int(r[0])), bool(int(r[1]))

        return d.addCallback(done)

    def delete(self, name: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.hdel(self._key, name)
        return d.addCallback(lambda n: bool(n))

    def applied(self, device_id: str) -> Deferred[dict[str, str]]:
        d: Deferred[Any] = self._redis.hgetall(self._device.format(device_id))
        return d.addCallback(lambda h: {_s(k): _s(v) for k, v in (h or {}).items()})

    def note(
        self, device_id: str, set_fields: Mapping[str, str], remove: Sequence[str], *, reset: bool
    ) -> Deferred[None]:
        args: list[str] = ["1" if reset else "0", str(len(set_fields))]
        for k, v in set_fields.items():
            args += [k, v]
        args += list(remove)
        d: Deferred[Any] = self._redis.eval(_NOTE_LUA, [self._device.format(device_id)], args)
        return d.addCallback(lambda _: None)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _replace(profile: Profile, **changes: Any) -> Profile:
    from dataclasses import replace

    return replace(profile, **changes)


@implementer(IProfileStore)
class MemoryProfileStore:
    def __init__(self) -> None:
        self.profiles: dict[str, Profile] = {}
        self.version = 0
        self.devices: dict[str, dict[str, str]] = {}

    def all(self) -> Deferred[list[Profile]]:
        return succeed(sorted(self.profiles.values(), key=lambda p: p.name))

    def get(self, name: str) -> Deferred[Profile | None]:
        return succeed(self.profiles.get(name))

    def put(self, profile: Profile) -> Deferred[tuple[Profile, bool]]:
        self.version += 1
        new = profile.name not in self.profiles
        stored = self.profiles[profile.name] = _replace(profile, version=self.version)
        return succeed((stored, new))

    def delete(self, name: str) -> Deferred[bool]:
        return succeed(self.profiles.pop(name, None) is not None)

    def applied(self, device_id: str) -> Deferred[dict[str, str]]:
        return succeed(dict(self.devices.get(device_id, {})))

    def note(
        self, device_id: str, set_fields: Mapping[str, str], remove: Sequence[str], *, reset: bool
    ) -> Deferred[None]:
        record = {} if reset else self.devices.get(device_id, {})
        record.update(set_fields)
        for name in remove:
            record.pop(name, None)
        self.devices[device_id] = record
        return succeed(None)


class ProfileCache:
    """The profiles as this process knows them: re-read at most every ``ttl`` seconds."""

    def __init__(self, store: IProfileStore, clock: IReactorTime, ttl: float) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl
        self._profiles: list[Profile] | None = None
        self._read_at = 0.0

    async def profiles(self) -> list[Profile]:
        now = self._clock.seconds()
        if self._profiles is None or now - self._read_at >= self._ttl:
            self._profiles = await self._store.all()
            self._read_at = now
        return self._profiles

    def invalidate(self) -> None:
        self._profiles = None


# -- applying -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Apply:
    profile: Profile
    values: list[dict[str, str]]
    key: str = field(default_factory=lambda: "pf" + os.urandom(8).hex())


@dataclass(eq=False)
class _State:
    steps: list[_Apply]
    outstanding: _Apply | None = None


def _root(session: LiveSession) -> str:
    for p in session.machine.inform.parameters:
        root = p.name.split(".", 1)[0]
        if root:
            return root
    return "Device"


@implementer(IRequestSource)
class ProfileApplier:
    """Sends the profiles due in a session, then hands over to ``inner`` (the tasks)."""

    _log = Logger()

    def __init__(
        self,
        inner: IRequestSource,
        *,
        profiles: ProfileCache,
        store: IProfileStore,
        devices: IDeviceStore,
        events: IEventSink,
        clock: IReactorTime,
        node: str,
        online_window: float,
    ) -> None:
        self._inner = inner
        self._profiles = profiles
        self._store = store
        self._devices = devices
        self._events = events
        self._clock = clock
        self._node = node
        self._online_window = online_window
        self._sessions: dict[str, _State] = {}

    async def _plan(self, session: LiveSession) -> _State:
        profiles = [p for p in await self._profiles.profiles() if p.enabled]
        codes = {e.code for e in session.machine.inform.events}
        bootstrap = "0 BOOTSTRAP" in codes
        if not profiles:
            if bootstrap:
                await self._store.note(session.device_id, {}, (), reset=True)
            return _State([])
        applied = {} if bootstrap else await self._store.applied(session.device_id)
        wanted = {name for p in profiles for name, _ in p.selector.parameters}
        record = await self._devices.get_device(session.device_id, sorted(wanted))
        if record is None:
            return _State([])
        now = self._clock.seconds()
        root = _root(session)
        steps: list[_Apply] = []
        due: dict[str, str] = {}
        for p in profiles:
            triggered = (
                p.when == "every"
                or (p.when == "bootstrap" and bootstrap)
                or (p.when == "boot" and (bootstrap or "1 BOOT" in codes))
                or (p.when == "once" and applied.get(p.name) != str(p.version))
                or applied.get("due:" + p.name) == str(p.version)
            )
            if not triggered or not p.selector.matches(
                record,
                tags=record.get("tags", ()),
                parameters=record.get("parameters"),
                now=now,
                online_window=self._online_window,
            ):
                continue
            values_ = p.values_for(root)
            if values_:
                steps.append(_Apply(p, values_))
                due["due:" + p.name] = str(p.version)
        if bootstrap or due:
            # A factory reset lost what was applied; what is due stays due until answered.
            await self._store.note(session.device_id, due, (), reset=bootstrap)
        return _State(steps)

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        return Deferred.fromCoroutine(self._next(session))

    async def _next(self, session: LiveSession) -> AcsRequest | None:
        state = self._sessions.get(session.session_id)
        if state is None:
            state = self._sessions[session.session_id] = await self._plan(session)
        if state.steps:
            step = state.steps[0]
            state.outstanding = step
            request_id = f"prof.{step.key[-8:]}"
            body = rpc.build(
                session.machine.namespace,
                request_id,
                "SetParameterValues",
                {"parameters": step.values, "parameter_key": step.key[:32]},
                hold_requests=session.machine.hold_requests,
            )
            return AcsRequest("SetParameterValues", request_id, body, ref=step)
        result: AcsRequest | None = await self._inner.next_request(session)
        return result

    def answered(
        self, session: LiveSession, request: AcsRequest, response: RpcResponse | CpeFault
    ) -> Deferred[None]:
        if not isinstance(request.ref, _Apply):
            return self._inner.answered(session, request, response)
        return Deferred.fromCoroutine(self._answered(session, request.ref, response))

    async def _answered(
        self, session: LiveSession, step: _Apply, response: RpcResponse | CpeFault
    ) -> None:
        state = self._sessions.get(session.session_id)
        if state is not None and state.steps and state.steps[0] is step:
            state.steps.pop(0)
            state.outstanding = None
        p = step.profile
        shown = [
            {"name": v["name"], "value": "***" if _SECRET_RE.search(v["name"]) else v["value"]}
            for v in step.values
        ]
        data: dict[str, Any] = {"profile": p.name, "version": p.version, "parameters": shown}
        version = str(p.version)
        if isinstance(response, CpeFault):
            fault = rpc.fault(response)
            self._log.warn(
                "{device_id} refused profile {profile} v{version} (fault {code} {string})",
                device_id=session.device_id,
                profile=p.name,
                version=p.version,
                code=fault["code"],
                string=fault["string"],
            )
            # Not sent again until it changes or the device is reset (or every session).
            await self._store.note(
                session.device_id, {p.name: version}, ["due:" + p.name], reset=False
            )
            await self._publish(
                session, "profile.failed", {**data, "reason": "fault", "fault": fault}
            )
            return
        try:
            status = rpc.result("SetParameterValues", response)["status"]
        except rpc.ResponseError:
            status = 0
        await self._store.note(session.device_id, {p.name: version}, ["due:" + p.name], reset=False)
        await self._devices.update_parameters(
            session.device_id, [(v["name"], v["value"], v["type"]) for v in step.values]
        )
        self._log.info(
            "{device_id} took profile {profile} v{version}",
            device_id=session.device_id,
            profile=p.name,
            version=p.version,
        )
        await self._publish(session, "profile.applied", {**data, "status": status})

    def answer_unusable(
        self, session: LiveSession, request: AcsRequest, reason: str
    ) -> Deferred[None]:
        if not isinstance(request.ref, _Apply):
            return self._inner.answer_unusable(session, request, reason)
        self._log.warn(
            "{device_id}: the answer to profile {profile} could not be used: {reason}",
            device_id=session.device_id,
            profile=request.ref.profile.name,
            reason=reason,
        )
        return succeed(None)  # still due: tried again in the next session

    def transfer_completed(self, session: LiveSession, message: CompletionReport) -> Deferred[None]:
        return self._inner.transfer_completed(session, message)

    def session_ended(self, session: LiveSession) -> Deferred[None] | None:
        state = self._sessions.pop(session.session_id, None)
        if state is not None and state.outstanding is not None:
            self._log.info(
                "{device_id} ended its session without answering profile {profile}; it stays due",
                device_id=session.device_id,
                profile=state.outstanding.profile.name,
            )
        return self._inner.session_ended(session)

    async def _publish(self, session: LiveSession, type_: str, data: dict[str, Any]) -> None:
        d = session.device
        ref = device_ref(session.device_id, d.oui, d.product_class, d.serial_number, d.manufacturer)
        try:
            await self._events.publish(
                Event(type=type_, ts=self._clock.seconds(), node=self._node, data=data, device=ref)
            )
        except Exception:
            self._log.failure("could not publish {type}", type=type_)
