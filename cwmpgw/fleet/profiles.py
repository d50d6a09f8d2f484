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

A profile may also list objects to exist: a multi-instance table (``NAT.PortMapping.``),
the values that identify its instance (``match``) and values to set on it (``values``).
Applying one is idempotent (:class:`ProfileRun`): GetParameterValues of the table; the
first instance whose values match gets the ``values`` that differ (nothing is sent when
none differs); with no matching instance, AddObject, then SetParameterValues of ``match``
and ``values`` on the new instance.
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
from cwmpgw.sessions import IRequestSource, LiveSession, acs_request
from cwmpgw.store.interfaces import IDeviceStore

__all__ = [
    "MAX_OBJECTS",
    "MAX_PARAMETERS",
    "MAX_PROFILES",
    "WHEN",
    "IProfileStore",
    "MemoryProfileStore",
    "Profile",
    "ProfileApplier",
    "ProfileCache",
    "ProfileError",
    "ProfileObject",
    "ProfileRun",
    "RedisProfileStore",
    "parse_profile",
]

#: When a profile is applied.
WHEN: Final = ("bootstrap", "boot", "every", "once")
MAX_PARAMETERS: Final = 256
MAX_OBJECTS: Final = 32
MAX_PROFILES: Final = 1000
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:@+-]{1,64}")
_SECRET_RE: Final = re.compile(r"(Password|Passphrase|PreSharedKey|WEPKey|Secret)", re.I)
_BODY_KEYS: Final = ("selector", "when", "parameters", "objects", "enabled", "description")
_OBJECT_KEYS: Final = ("path", "match", "values")
# A value as (name, wire text, canonical type).
_Value = tuple[str, str, str]


class ProfileError(ValueError):
    """A profile the caller got wrong; ``path`` names the culprit. ``data_model`` is true
    when the data model refused a value (a 422 rather than a 400)."""

    def __init__(self, message: str, path: str = "", *, data_model: bool = False) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.data_model = data_model


def _typed(entries: Sequence[_Value]) -> list[dict[str, str]]:
    return [{"name": n, "value": v, "type": t} for n, v, t in entries]


@dataclass(frozen=True, slots=True)
class ProfileObject:
    """An instance of ``path`` (a table, ending with ".") that is to exist: the one whose
    parameters have the ``match`` values, with the ``values`` too. Names are relative to
    the instance."""

    path: str
    match: tuple[_Value, ...]
    values: tuple[_Value, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "match": _typed(self.match), "values": _typed(self.values)}

    def table_for(self, root: str) -> str | None:
        """The absolute table path for a device whose root is ``root`` (None: not its)."""
        first = self.path.split(".", 1)[0]
        if first in ROOTS:
            return self.path if first == root else None
        return f"{root}.{self.path}"


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    selector: Selector
    when: str
    parameters: tuple[_Value, ...]  # name, wire value, canonical type
    enabled: bool = True
    description: str = ""
    version: int = 0
    updated: float = 0.0
    objects: tuple[ProfileObject, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "selector": self.selector.to_dict(),
            "when": self.when,
            "parameters": _typed(self.parameters),
            "objects": [o.to_dict() for o in self.objects],
            "enabled": self.enabled,
            "description": self.description,
            "version": self.version,
            "updated": self.updated,
        }

    def objects_for(self, root: str) -> list[tuple[str, ProfileObject]]:
        """(absolute table path, object) for a device whose root object is ``root``."""
        out = []
        for obj in self.objects:
            table = obj.table_for(root)
            if table is not None:
                out.append((table, obj))
        return out

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
    entries = obj.get("parameters", [])
    raw_objects = obj.get("objects", [])
    if not isinstance(entries, list):
        raise ProfileError("a list of {name, value, type?}", "parameters")
    if not isinstance(raw_objects, list) or len(raw_objects) > MAX_OBJECTS:
        raise ProfileError(f"a list of at most {MAX_OBJECTS} {{path, match, values}}", "objects")
    if not entries and not raw_objects:
        raise ProfileError("a non-empty list of {name, value, type?} (or objects)", "parameters")
    model = model if model is not None else standard_model()
    out = _parse_values(model, entries, "parameters", lambda n: n)
    objects = tuple(_parse_object(model, o, f"objects[{i}]") for i, o in enumerate(raw_objects))
    total = len(out) + sum(len(o.match) + len(o.values) for o in objects)
    if total > MAX_PARAMETERS:
        raise ProfileError(f"at most {MAX_PARAMETERS} values in all", "parameters")
    return Profile(name, selector, when, out, enabled, description, 0, now, objects)


def _parse_values(
    model: DataModel, entries: Any, where: str, full: Any, *, relative: bool = False
) -> tuple[_Value, ...]:
    """A list of {name, value, type?} (or, for an object, a map of name → value), each
    checked as ``full(name)``."""
    if relative and isinstance(entries, Mapping):
        entries = [{"name": k, "value": v} for k, v in entries.items()]
    if not isinstance(entries, list):
        raise ProfileError("a list of {name, value, type?} or a map of name to value", where)
    seen: set[str] = set()
    out: list[_Value] = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, Mapping) or set(entry) - {"name", "value", "type"}:
            raise ProfileError("an object of name, value and optionally type", at)
        pname = entry.get("name")
        if (
            not isinstance(pname, str)
            or not pname
            or len(pname) > 256
            or pname.endswith(".")
            or pname.startswith(".")
            or (relative and pname.split(".", 1)[0] in ROOTS)
        ):
            what = "a parameter name relative to the instance" if relative else "a parameter name"
            raise ProfileError(what + " (not an object path)", at + ".name")
        if pname in seen:
            raise ProfileError(f"{pname} is set twice", at + ".name")
        seen.add(pname)
        if "value" not in entry:
            raise ProfileError("required", at + ".value")
        type_ = entry.get("type")
        if type_ is not None:
            try:
                values.normalise_type(type_)
            except ValueError as e:
                raise ProfileError(str(e), at + ".type") from None
        text, canonical = _check_value(model, full(pname), entry["value"], type_, at)
        out.append((pname, text, canonical))
    return tuple(out)


def _parse_object(model: DataModel, obj: Any, where: str) -> ProfileObject:
    if not isinstance(obj, Mapping) or set(obj) - set(_OBJECT_KEYS):
        raise ProfileError("an object of path, match and optionally values", where)
    path = obj.get("path")
    if (
        not isinstance(path, str)
        or not 2 <= len(path) <= 256
        or not path.endswith(".")
        or path.startswith(".")
        or ".." in path
    ):
        raise ProfileError("a multi-instance object path ending with '.'", where + ".path")
    roots = [path.split(".", 1)[0]] if path.split(".", 1)[0] in ROOTS else list(ROOTS)
    absolute = len(roots) == 1
    known = []
    for root in roots:
        full = path if absolute else f"{root}.{path}"
        try:
            if model.table(full) is not None:
                known.append(full)
        except DataModelError as e:
            raise ProfileError(str(e), where + ".path", data_model=True) from None
    # Values are checked as names of an instance, <table>1.<name>: of the one root whose
    # model has the table when only one has it (a TR-181 table unknown to TR-098).
    table = known[0] if len(known) == 1 else path
    match = _parse_values(
        model, obj.get("match"), where + ".match", lambda n: f"{table}1.{n}", relative=True
    )
    if not match:
        raise ProfileError("at least one value that identifies the instance", where + ".match")
    set_ = _parse_values(
        model, obj.get("values", []), where + ".values", lambda n: f"{table}1.{n}", relative=True
    )
    twice = {n for n, _, _ in match} & {n for n, _, _ in set_}
    if twice:
        raise ProfileError(f"{sorted(twice)[0]} is in match and values", where + ".values")
    return ProfileObject(path, match, set_)


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
        objects=tuple(
            ProfileObject(
                o["path"],
                tuple((v["name"], v["value"], v["type"]) for v in o["match"]),
                tuple((v["name"], v["value"], v["type"]) for v in o.get("values", [])),
            )
            for o in d.get("objects", [])
        ),
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


def _same(type_: str, a: str, b: str) -> bool:
    """Whether the CPE's value ``a`` is the wanted ``b`` (booleans as 1/true, numbers)."""
    a, b = a.strip() if type_ != "xsd:string" else a, b
    if type_ == "xsd:boolean":
        return (a.lower() in ("1", "true")) == (b.lower() in ("1", "true"))
    return a == b


class ProfileRun:
    """The RPCs that apply one profile on one device, sans-IO: :meth:`next_call` says what
    to send, :meth:`on_result` takes :func:`cwmpgw.cwmp.rpc.result`'s answer to it.

    First the profile's values (one SetParameterValues), then per object: the table's
    GetParameterValues; the first instance matching gets the values that differ, or with
    none matching, AddObject then SetParameterValues of match and values on the new one.
    """

    def __init__(
        self,
        values: list[dict[str, str]],
        objects: Sequence[tuple[str, ProfileObject]],
        parameter_key: str,
    ) -> None:
        self._key = parameter_key
        self._queue: list[tuple[str, dict[str, Any], tuple[str, ProfileObject] | None]] = []
        if values:
            self._queue.append(("SetParameterValues", self._spv(values), None))
        for table, obj in objects:
            self._queue.append(("GetParameterValues", {"parameter_names": [table]}, (table, obj)))
        #: What was set (name, value, type), and per object {path, instance, created}.
        self.set: list[dict[str, str]] = []
        self.objects: list[dict[str, Any]] = []
        self.status = 0

    def _spv(self, parameters: list[dict[str, str]]) -> dict[str, Any]:
        return {"parameters": parameters, "parameter_key": self._key}

    @property
    def done(self) -> bool:
        return not self._queue

    def next_call(self) -> tuple[str, dict[str, Any]] | None:
        if not self._queue:
            return None
        method, args, _ = self._queue[0]
        return method, args

    def on_result(self, result: Mapping[str, Any]) -> None:
        method, args, target = self._queue.pop(0)
        if method == "SetParameterValues":
            self.set.extend(args["parameters"])
            self.status = max(self.status, int(result.get("status", 0)))
            return
        assert target is not None
        table, obj = target
        if method == "AddObject":
            number = int(result["instance_number"])
            self.status = max(self.status, int(result.get("status", 0)))
            self.objects.append({"path": table, "instance": number, "created": True})
            wanted = _typed([*obj.match, *obj.values])
            for v in wanted:
                v["name"] = f"{table}{number}.{v['name']}"
            self._queue.insert(0, ("SetParameterValues", self._spv(wanted), None))
            return
        # GetParameterValues of the table: instance number → {relative name: value}.
        found: dict[int, dict[str, str]] = {}
        for p in result.get("parameters", []):
            name = str(p["name"])
            if not name.startswith(table):
                continue
            head, _, rest = name[len(table) :].partition(".")
            if head.isdigit() and rest:
                found.setdefault(int(head), {})[rest] = str(p["value"])
        for number in sorted(found):
            have = found[number]
            if all(n in have and _same(t, have[n], v) for n, v, t in obj.match):
                self.objects.append({"path": table, "instance": number, "created": False})
                pending = [
                    {"name": f"{table}{number}.{n}", "value": v, "type": t}
                    for n, v, t in obj.values
                    if n not in have or not _same(t, have[n], v)
                ]
                if pending:
                    self._queue.insert(0, ("SetParameterValues", self._spv(pending), None))
                return
        self._queue.insert(
            0, ("AddObject", {"object_name": table, "parameter_key": self._key}, target)
        )


@dataclass(eq=False)
class _Apply:
    profile: Profile
    values: list[dict[str, str]]
    objects: list[tuple[str, ProfileObject]] = field(default_factory=list)
    key: str = field(default_factory=lambda: "pf" + os.urandom(8).hex())
    run: ProfileRun = field(init=False)
    sent: int = 0

    def __post_init__(self) -> None:
        self.run = ProfileRun(self.values, self.objects, self.key[:32])


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
            objects = p.objects_for(root)
            if values_ or objects:
                steps.append(_Apply(p, values_, objects))
                due["due:" + p.name] = str(p.version)
        if bootstrap or due:
            # A factory reset lost what was applied; what is due stays due until answered.
            await self._store.note(session.device_id, due, (), reset=bootstrap)
        return _State(steps)

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        state = self._sessions.get(session.session_id)
        if state is not None and not state.steps:
            # Planned, and nothing (left) to apply: the inner source's turn directly.
            return self._inner.next_request(session)
        return Deferred.fromCoroutine(self._next(session))

    async def _next(self, session: LiveSession) -> AcsRequest | None:
        state = self._sessions.get(session.session_id)
        if state is None:
            state = self._sessions[session.session_id] = await self._plan(session)
        while state.steps:
            step = state.steps[0]
            call = step.run.next_call()
            if call is None:  # pragma: no cover (a run is popped when done)
                state.steps.pop(0)
                continue
            method, args = call
            state.outstanding = step
            step.sent += 1
            request_id = f"prof.{step.key[-8:]}.{step.sent}"
            return acs_request(session, method, request_id, args, step)
        result: AcsRequest | None = await self._inner.next_request(session)
        return result

    def answered(
        self, session: LiveSession, request: AcsRequest, response: RpcResponse | CpeFault
    ) -> Deferred[None]:
        if not isinstance(request.ref, _Apply):
            return self._inner.answered(session, request, response)
        return Deferred.fromCoroutine(
            self._answered(session, request.method, request.ref, response)
        )

    async def _answered(
        self, session: LiveSession, method: str, step: _Apply, response: RpcResponse | CpeFault
    ) -> None:
        state = self._sessions.get(session.session_id)
        current = state is not None and bool(state.steps) and state.steps[0] is step
        if state is not None:
            state.outstanding = None
        if not isinstance(response, CpeFault):
            try:
                result = rpc.result(method, response)
            except rpc.ResponseError as e:
                if method != "SetParameterValues":
                    # Nothing to go on: the profile stays due, for the next session.
                    if current and state is not None:
                        state.steps.pop(0)
                    self._log.warn(
                        "{device_id}: the answer to profile {profile} could not be used: {reason}",
                        device_id=session.device_id,
                        profile=step.profile.name,
                        reason=str(e),
                    )
                    return
                result = {"status": 0}
            step.run.on_result(result)
            if not step.run.done:
                return
        if current and state is not None:
            state.steps.pop(0)
        p = step.profile
        applied = step.run.set if not isinstance(response, CpeFault) else step.values
        shown = [
            {"name": v["name"], "value": "***" if _SECRET_RE.search(v["name"]) else v["value"]}
            for v in applied
        ]
        data: dict[str, Any] = {"profile": p.name, "version": p.version, "parameters": shown}
        if p.objects:
            data["objects"] = step.run.objects
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
        status = step.run.status
        await self._store.note(session.device_id, {p.name: version}, ["due:" + p.name], reset=False)
        await self._devices.update_parameters(
            session.device_id, [(v["name"], v["value"], v["type"]) for v in step.run.set]
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

    def session_starting(self, device_id: str, owner: str | None) -> None:
        self._inner.session_starting(device_id, owner)

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
