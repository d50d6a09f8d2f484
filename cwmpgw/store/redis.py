"""Redis-backed device registry and credential store.

Key layout (all under the configured prefix, default ``cwmpgw:``):

- ``device:<id>`` hash: DeviceId fields, first_seen, last_inform, last_source,
  cwmp_version, cwmp_namespace, connection_request_url, last_events, inform_count
  (all text; read back typed by :func:`cwmpgw.store.memory.device_view`)
- ``device:<id>:params`` hash: parameter name -> JSON ``[value, xsi type]``
- ``device:<id>:transfers`` hash: transfer key -> JSON result
- ``devices`` sorted set: device id scored by last inform time
- the inventory's indexes (``idx:*``, ``device:<id>:tags``, ``tags``): see
  :mod:`cwmpgw.store.indexes`
- ``events`` stream (and ``events:<type>`` channels): ``device.registered`` and
  ``transfer.complete`` / ``du.complete`` are stored in the script that writes what they
  report (see ``cwmpgw.bus.redis.EMIT_LUA``), so a crash cannot keep one without the other
- ``cred:<username>`` hash: device_id and one HA1 per Digest algorithm
- ``cred-by-device`` hash: device id -> username
- ``cred-pending:<username>`` hash, ``cred-pending-by-device`` hash: a credential being
  given to a device, accepted beside the current one until first used
- ``device:<id>:names`` hash: parameter name -> what is known of it on the device
  (``writable``, ``read-only``, ``absent``; ``listed``/``unlisted`` for an object path),
  from GetParameterNames answers and SetParameterValues faults
- ``bootstrap-use:<id>`` hash: confirmed_at, sessions, reported: the sessions a device
  authenticated with the bootstrap credential after it confirmed its pending credential
  (deleted with the pending credential)
- ``crcred:<id>`` hash: connection-request username, password (encrypted), allow_basic;
  the STUN password (encrypted, its own context) and the pending ones being set

Each multi-key update is one Lua script: atomic, and one round trip on the hot path.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from cwmpgw.bus.events import Event
from cwmpgw.bus.redis import EMIT_LUA, EventStream
from cwmpgw.jsontext import value_pair
from cwmpgw.store.indexes import source_score
from cwmpgw.store.interfaces import (
    MAX_TAGS,
    BootstrapUse,
    ConnReqCredential,
    IConnReqCredentialStore,
    ICredentialStore,
    IDeviceStore,
    InformRecord,
    StoredCredential,
)
from cwmpgw.store.memory import device_fields, device_view
from cwmpgw.store.secretbox import SecretBox
from cwmpgw.store.sessionlock import PENDING_INFORM, owner_key

__all__ = ["RedisConnReqCredentialStore", "RedisCredentialStore", "RedisDeviceStore"]

# KEYS: device hash, params hash, devices zset, event stream[, session owner]
# ARGV: ts, device id, fields JSON, owner, owner TTL (ms), 6-9 the event if the device is
# new, 10-13 the event if it is known (EventStream.args), 14 key prefix, 15 source index
# version (4, 6 or ''), 16 its score, 17 the Inform's fingerprint ('' without its event),
# 18 '1' if it is a retry, 19-22 its inform event (EventStream.args), then parameter
# name/value pairs. Returns {1 if the device is new, 1 if the inform event was stored}:
# not for a retry of the Inform still pending (sessionlock.PENDING_INFORM) with the same
# events, whose answer was lost.
# The inventory's indexes (cwmpgw.store.indexes) are kept here, with the record: the old
# value's entry goes, the new one is (re)added every time, so an index cannot drift.
_RECORD_INFORM = (
    EMIT_LUA
    + """
local pending = redis.call('HGET', KEYS[1], '"""
    + PENDING_INFORM
    + """')
local new = redis.call('HSETNX', KEYS[1], 'first_seen', ARGV[1])
local fields = cjson.decode(ARGV[3])
local id, P = ARGV[2], ARGV[14]
local indexed = {'oui', 'product_class', 'software_version', 'hardware_version'}
local olds = redis.call('HMGET', KEYS[1], unpack(indexed))
local flat = {}
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('HINCRBY', KEYS[1], 'inform_count', 1)
for n, f in ipairs(indexed) do
  local v = fields[f]
  if v ~= nil then
    if olds[n] and olds[n] ~= v and olds[n] ~= '' then
      redis.call('ZREM', P .. 'idx:' .. f .. ':' .. olds[n], id)
    end
    if v ~= '' then redis.call('ZADD', P .. 'idx:' .. f .. ':' .. v, 0, id) end
  end
end
redis.call('ZADD', P .. 'idx:all', 0, id)
if ARGV[15] == '4' then
  redis.call('ZADD', P .. 'idx:src4', ARGV[16], id)
  redis.call('ZREM', P .. 'idx:src6', id)
elseif ARGV[15] == '6' then
  redis.call('ZADD', P .. 'idx:src6', ARGV[16], id)
  redis.call('ZREM', P .. 'idx:src4', id)
else
  redis.call('ZREM', P .. 'idx:src4', id)
  redis.call('ZREM', P .. 'idx:src6', id)
end
local i = 23
while i <= #ARGV do
  local last = math.min(i + 399, #ARGV)
  redis.call('HSET', KEYS[2], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
if KEYS[5] then redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[5]) end
if new == 1 then
  emit(KEYS[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
else
  emit(KEYS[4], ARGV[10], ARGV[11], ARGV[12], ARGV[13])
end
local announced = 0
if ARGV[17] ~= '' then
  if ARGV[18] ~= '1' or pending ~= ARGV[17] then
    emit(KEYS[4], ARGV[19], ARGV[20], ARGV[21], ARGV[22])
    announced = 1
  end
  redis.call('HSET', KEYS[1], '"""
    + PENDING_INFORM
    + """', ARGV[17])
end
return {new, announced}
"""
)

# KEYS: device hash, params hash; ARGV: parameter names. One round trip, and a device
# with thousands of cached parameters is not read whole to get three of them.
_GET_DEVICE = """
local out = {redis.call('HGETALL', KEYS[1])}
for _, name in ipairs(ARGV) do out[#out + 1] = redis.call('HGET', KEYS[2], name) end
return out
"""

# KEYS: transfers hash, event stream; ARGV: key, result JSON, 3-6 the event (stored the
# first time only; EventStream.args)
_RECORD_TRANSFER = (
    EMIT_LUA
    + """
local first = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if first then
  emit(KEYS[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
  return 1
end
return 0
"""
)

# KEYS: cred:<username>, cred-by-device; ARGV: device id, username, prefix, ha1 pairs...
_SET_CREDENTIAL = """
local owner = redis.call('HGET', KEYS[1], 'device_id')
if owner and owner ~= ARGV[1] then
  return redis.error_reply('username belongs to another device')
end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and old ~= ARGV[2] then redis.call('DEL', ARGV[3] .. 'cred:' .. old) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'device_id', ARGV[1], unpack(ARGV, 4))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: cred-pending:<username>, cred-pending-by-device, cred:<username>;
# ARGV: device id, username, prefix, ha1 pairs...
_SET_PENDING = """
local owner = redis.call('HGET', KEYS[3], 'device_id')
if owner and owner ~= ARGV[1] then
  return redis.error_reply('username belongs to another device')
end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then redis.call('DEL', ARGV[3] .. 'cred-pending:' .. old) end
redis.call('DEL', KEYS[1], ARGV[3] .. 'bootstrap-use:' .. ARGV[1])
redis.call('HSET', KEYS[1], 'device_id', ARGV[1], unpack(ARGV, 4))
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS: cred-pending:<username>, cred-pending-by-device, cred-by-device; ARGV: username, prefix
_PROMOTE = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return 0 end
local device = redis.call('HGET', KEYS[1], 'device_id')
local old = redis.call('HGET', KEYS[3], device)
if old and old ~= ARGV[1] then redis.call('DEL', ARGV[2] .. 'cred:' .. old) end
redis.call('DEL', ARGV[2] .. 'cred:' .. ARGV[1])
redis.call('HSET', ARGV[2] .. 'cred:' .. ARGV[1], unpack(fields))
redis.call('HSET', KEYS[3], device, ARGV[1])
redis.call('DEL', KEYS[1], ARGV[2] .. 'bootstrap-use:' .. device)
redis.call('HDEL', KEYS[2], device)
return 1
"""

_DROP_PENDING = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('DEL', ARGV[2] .. 'cred-pending:' .. old, ARGV[2] .. 'bootstrap-use:' .. ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS: cred-pending-by-device, bootstrap-use:<id>; ARGV: device id, confirmed at
_CONFIRM_PENDING = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'confirmed_at', ARGV[2], 'sessions', 0)
return 1
"""

# KEYS: bootstrap-use:<id>; ARGV: report after (0: never)
_BOOTSTRAP_USED = """
local at = redis.call('HGET', KEYS[1], 'confirmed_at')
if not at then return false end
local n = redis.call('HINCRBY', KEYS[1], 'sessions', 1)
local report = 0
local after = tonumber(ARGV[1])
if after > 0 and n >= after then report = redis.call('HSETNX', KEYS[1], 'reported', n) end
return {n, at, report}
"""

# KEYS: names hash, params hash; ARGV: names. What was noted, else present if cached.
_PARAMETER_NAMES = """
local out = {}
for i, name in ipairs(ARGV) do
  local noted = redis.call('HGET', KEYS[1], name)
  if noted then
    out[i] = noted
  elseif redis.call('HEXISTS', KEYS[2], name) == 1 then
    out[i] = 'present'
  else
    out[i] = ''
  end
end
return out
"""

_PROMOTE_CR = """
local u = redis.call('HGET', KEYS[1], 'pending_username')
if not u then return 0 end
local p = redis.call('HGET', KEYS[1], 'pending_password')
local b = redis.call('HGET', KEYS[1], 'pending_allow_basic')
redis.call('HSET', KEYS[1], 'username', u, 'password', p, 'allow_basic', b)
redis.call('HDEL', KEYS[1], 'pending_username', 'pending_password', 'pending_allow_basic')
return 1
"""

_PROMOTE_STUN = """
local p = redis.call('HGET', KEYS[1], 'pending_stun_password')
if not p then return 0 end
redis.call('HSET', KEYS[1], 'stun_password', p)
redis.call('HDEL', KEYS[1], 'pending_stun_password')
return 1
"""

_DELETE_CREDENTIAL = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('DEL', ARGV[2] .. 'cred:' .. old)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS: device hash, params, transfers, devices zset, tags set, names hash; ARGV: id, prefix
_DELETE_DEVICE = """
local id, P = ARGV[1], ARGV[2]
local indexed = {'oui', 'product_class', 'software_version', 'hardware_version'}
local olds = redis.call('HMGET', KEYS[1], unpack(indexed))
for n, f in ipairs(indexed) do
  if olds[n] then redis.call('ZREM', P .. 'idx:' .. f .. ':' .. olds[n], id) end
end
for _, t in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  redis.call('ZREM', P .. 'idx:tag:' .. t, id)
  if redis.call('HINCRBY', P .. 'tags', t, -1) <= 0 then redis.call('HDEL', P .. 'tags', t) end
end
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', P .. 'idx:all', id)
redis.call('ZREM', P .. 'idx:src4', id)
redis.call('ZREM', P .. 'idx:src6', id)
return existed
"""

# KEYS: device hash, tags set; ARGV: id, prefix, max tags, number of additions, the
# additions, then the removals. Returns the tags (JSON), 0 for an unknown device, or an
# error past the limit (nothing changed).
_CHANGE_TAGS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local id, P, n = ARGV[1], ARGV[2], tonumber(ARGV[4])
local adds, removes = {}, {}
for i = 5, 4 + n do adds[#adds + 1] = ARGV[i] end
for i = 5 + n, #ARGV do removes[#removes + 1] = ARGV[i] end
local after = {}
for _, t in ipairs(redis.call('SMEMBERS', KEYS[2])) do after[t] = true end
for _, t in ipairs(removes) do after[t] = nil end
for _, t in ipairs(adds) do after[t] = true end
local count = 0
for _ in pairs(after) do count = count + 1 end
if count > tonumber(ARGV[3]) then
  return redis.error_reply('a device has at most ' .. ARGV[3] .. ' tags')
end
for _, t in ipairs(removes) do
  if redis.call('SREM', KEYS[2], t) == 1 then
    redis.call('ZREM', P .. 'idx:tag:' .. t, id)
    if redis.call('HINCRBY', P .. 'tags', t, -1) <= 0 then redis.call('HDEL', P .. 'tags', t) end
  end
end
for _, t in ipairs(adds) do
  if redis.call('SADD', KEYS[2], t) == 1 then
    redis.call('ZADD', P .. 'idx:tag:' .. t, 0, id)
    redis.call('HINCRBY', P .. 'tags', t, 1)
  end
end
local tags = redis.call('SMEMBERS', KEYS[2])
table.sort(tags)
local text = '[]'
if #tags > 0 then text = cjson.encode(tags) end
redis.call('HSET', KEYS[1], 'tags', text)
return text
"""

_HA1_FIELD = "ha1:"


def inform_fingerprint(record: InformRecord) -> str:
    """What a CPE's retry of an Inform repeats: its events and their command keys."""
    text = "\x00".join(f"{e.code}\x01{e.command_key}" for e in record.events)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


_STUN_CONTEXT = "stun\x00"


@implementer(IDeviceStore)
class RedisDeviceStore:
    def __init__(self, redis: Any, prefix: str, *, stream_maxlen: int = 100_000) -> None:
        self._redis = redis
        self._prefix = prefix
        self._stream = EventStream(prefix, stream_maxlen)

    def _key(self, device_id: str) -> str:
        return f"{self._prefix}device:{device_id}"

    takes_session = True
    stores_events = True

    def record_inform(
        self, record: InformRecord, if_new: Event | None = None, if_known: Event | None = None
    ) -> Deferred[bool]:
        return self._record(record, if_new, if_known).addCallback(lambda out: out[0])

    def record_session_inform(
        self,
        record: InformRecord,
        if_new: Event | None,
        if_known: Event | None,
        inform: Event,
        retry_count: int,
    ) -> Deferred[tuple[bool, bool | None]]:
        return self._record(record, if_new, if_known, inform, retry_count)

    def _record(
        self,
        record: InformRecord,
        if_new: Event | None,
        if_known: Event | None,
        inform: Event | None = None,
        retry_count: int = 0,
    ) -> Deferred[tuple[bool, bool | None]]:
        key = self._key(record.device_id)
        keys = [key, key + ":params", self._prefix + "devices", self._stream.key]
        if record.session_owner is not None:
            keys.append(owner_key(self._prefix, record.device_id))
        args: list[str] = [
            repr(record.ts),
            record.device_id,
            json.dumps(device_fields(record)),
            record.session_owner or "",
            str(int(record.session_ttl * 1000)),
            *self._stream.args(if_new),
            *self._stream.args(if_known),
            self._prefix,
            *_source_args(record.source),
            inform_fingerprint(record) if inform is not None else "",
            "1" if retry_count > 0 else "0",
            *self._stream.args(inform),
        ]
        for p in record.parameters:
            args += [p.name, value_pair(p.value, p.type)]
        d: Deferred[Any] = self._redis.eval(_RECORD_INFORM, keys, args)

        def written(out: list[Any]) -> tuple[bool, bool | None]:
            return bool(out[0]), bool(out[1]) if inform is not None else None

        return d.addCallback(written)

    def record_transfer(
        self, device_id: str, key: str, data: dict[str, Any], event: Event | None = None
    ) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _RECORD_TRANSFER,
            [self._key(device_id) + ":transfers", self._stream.key],
            [key, json.dumps(data), *self._stream.args(event)],
        )
        return d.addCallback(lambda first: bool(first))

    def get_device(
        self, device_id: str, parameters: Sequence[str] | None = None
    ) -> Deferred[dict[str, Any] | None]:
        key = self._key(device_id)

        async def get() -> dict[str, Any] | None:
            if parameters is None:
                fields = await self._redis.hgetall(key)
                params = await self._redis.hgetall(key + ":params") if fields else {}
            else:
                reply = await self._redis.eval(_GET_DEVICE, [key, key + ":params"], parameters)
                fields = dict(zip(reply[0][0::2], reply[0][1::2], strict=True))
                params = {n: raw for n, raw in zip(parameters, reply[1:], strict=True) if raw}
            if not fields:
                return None
            out = device_view(fields)
            out["parameters"] = {
                name: dict(zip(("value", "type"), json.loads(raw), strict=True))
                for name, raw in params.items()
            }
            return out

        return Deferred.fromCoroutine(get())

    def update_parameters(
        self, device_id: str, values: list[tuple[str, str, str]]
    ) -> Deferred[None]:
        if not values:
            return succeed(None)
        key = self._key(device_id)
        args: list[str] = []
        for name, value, type_ in values:
            args += [name, value_pair(value, type_)]
        d: Deferred[Any] = self._redis.execute_command("HSET", key + ":params", *args)
        return d.addCallback(lambda _: None)

    def parameter_names(self, device_id: str, names: Sequence[str]) -> Deferred[dict[str, str]]:
        if not names:
            return succeed({})
        key = self._key(device_id)
        d: Deferred[Any] = self._redis.eval(
            _PARAMETER_NAMES, [key + ":names", key + ":params"], list(names)
        )
        return d.addCallback(lambda known: {n: k for n, k in zip(names, known, strict=True) if k})

    def note_parameter_names(self, device_id: str, names: Mapping[str, str]) -> Deferred[None]:
        if not names:
            return succeed(None)
        args: list[str] = []
        for name, known in names.items():
            args += [name, known]
        d: Deferred[Any] = self._redis.execute_command(
            "HSET", self._key(device_id) + ":names", *args
        )
        return d.addCallback(lambda _: None)

    def list_devices(
        self, *, after: float | None, before: float | None, offset: int, count: int
    ) -> Deferred[list[dict[str, Any]]]:
        low = "-inf" if after is None else repr(after)
        high = "+inf" if before is None else repr(before)

        async def page() -> list[dict[str, Any]]:
            ids = await self._redis.execute_command(
                "ZRANGEBYSCORE", self._prefix + "devices", low, high, "LIMIT", offset, count
            )
            records = []
            for device_id in ids:
                fields = await self._redis.hgetall(self._key(device_id))
                if fields:
                    records.append(device_view(fields))
            return records

        return Deferred.fromCoroutine(page())

    def delete_device(self, device_id: str) -> Deferred[bool]:
        key = self._key(device_id)
        d: Deferred[Any] = self._redis.eval(
            _DELETE_DEVICE,
            [
                key,
                key + ":params",
                key + ":transfers",
                self._prefix + "devices",
                key + ":tags",
                key + ":names",
            ],
            [device_id, self._prefix],
        )
        return d.addCallback(lambda n: bool(n))

    def change_tags(
        self, device_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Deferred[list[str] | None]:
        key = self._key(device_id)
        d: Deferred[Any] = self._redis.eval(
            _CHANGE_TAGS,
            [key, key + ":tags"],
            [device_id, self._prefix, str(MAX_TAGS), str(len(add)), *add, *remove],
        )

        def done(reply: Any) -> list[str] | None:
            return None if reply in (0, "0") else list(json.loads(reply))

        def refused(failure: Any) -> None:
            if "at most" in str(failure.value):
                raise ValueError(f"a device has at most {MAX_TAGS} tags")
            failure.raiseException()

        return d.addCallbacks(done, refused)


def _source_args(source: str) -> list[str]:
    indexed = source_score(source)
    return ["", ""] if indexed is None else [str(indexed[0]), str(indexed[1])]


def _owner_error(failure: Any, username: str) -> None:
    """The Lua scripts refuse a username another device owns: say so as a ValueError."""
    if "belongs to another device" in str(failure.value):
        raise ValueError(f"username {username!r} belongs to another device")
    failure.raiseException()


def _credential(username: str, fields: dict[str, str]) -> StoredCredential | None:
    if not fields or "device_id" not in fields:
        return None
    ha1 = {k[len(_HA1_FIELD) :]: v for k, v in fields.items() if k.startswith(_HA1_FIELD)}
    return StoredCredential(username, fields["device_id"], ha1)


@implementer(ICredentialStore)
class RedisCredentialStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._by_device = prefix + "cred-by-device"

    def get(self, username: str) -> Deferred[StoredCredential | None]:
        d: Deferred[Any] = self._redis.hgetall(f"{self._prefix}cred:{username}")
        return d.addCallback(lambda fields: _credential(username, fields))

    def username_for(self, device_id: str) -> Deferred[str | None]:
        d: Deferred[str | None] = self._redis.hget(self._by_device, device_id)
        return d

    def set(self, device_id: str, username: str, ha1: dict[str, str]) -> Deferred[None]:
        args = [device_id, username, self._prefix]
        for algorithm, value in ha1.items():
            args += [_HA1_FIELD + algorithm, value]
        d: Deferred[Any] = self._redis.eval(
            _SET_CREDENTIAL, [f"{self._prefix}cred:{username}", self._by_device], args
        )

        return d.addCallbacks(lambda _: None, _owner_error, errbackArgs=(username,))

    def delete(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _DELETE_CREDENTIAL, [self._by_device], [device_id, self._prefix]
        )
        return d.addCallback(lambda n: bool(n))

    def set_pending(self, device_id: str, username: str, ha1: dict[str, str]) -> Deferred[None]:
        args = [device_id, username, self._prefix]
        for algorithm, value in ha1.items():
            args += [_HA1_FIELD + algorithm, value]
        d: Deferred[Any] = self._redis.eval(
            _SET_PENDING,
            [
                f"{self._prefix}cred-pending:{username}",
                self._prefix + "cred-pending-by-device",
                f"{self._prefix}cred:{username}",
            ],
            args,
        )

        return d.addCallbacks(lambda _: None, _owner_error, errbackArgs=(username,))

    def get_pending(self, username: str) -> Deferred[StoredCredential | None]:
        d: Deferred[Any] = self._redis.hgetall(f"{self._prefix}cred-pending:{username}")
        return d.addCallback(lambda fields: _credential(username, fields))

    def promote(self, username: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _PROMOTE,
            [
                f"{self._prefix}cred-pending:{username}",
                self._prefix + "cred-pending-by-device",
                self._by_device,
            ],
            [username, self._prefix],
        )
        return d.addCallback(lambda n: bool(n))

    def drop_pending(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _DROP_PENDING, [self._prefix + "cred-pending-by-device"], [device_id, self._prefix]
        )
        return d.addCallback(lambda n: bool(n))

    def confirm_pending(self, device_id: str, at: float) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _CONFIRM_PENDING,
            [self._prefix + "cred-pending-by-device", f"{self._prefix}bootstrap-use:{device_id}"],
            [device_id, repr(at)],
        )
        return d.addCallback(lambda n: bool(n))

    def bootstrap_used(self, device_id: str, report_after: int) -> Deferred[BootstrapUse | None]:
        def use(reply: Any) -> BootstrapUse | None:
            if not reply:
                return None
            sessions, at, report = reply
            return BootstrapUse(int(sessions), float(at), bool(report))

        d: Deferred[Any] = self._redis.eval(
            _BOOTSTRAP_USED,
            [f"{self._prefix}bootstrap-use:{device_id}"],
            [str(max(0, report_after))],
        )
        return d.addCallback(use)


@implementer(IConnReqCredentialStore)
class RedisConnReqCredentialStore:
    """Connection-request credentials; the password is sealed with the gateway's key."""

    def __init__(self, redis: Any, prefix: str, box: SecretBox) -> None:
        self._redis = redis
        self._prefix = prefix
        self._box = box

    def _key(self, device_id: str) -> str:
        return f"{self._prefix}crcred:{device_id}"

    def get(self, device_id: str) -> Deferred[ConnReqCredential | None]:
        d: Deferred[Any] = self._redis.hgetall(self._key(device_id))
        return d.addCallback(lambda fields: self.unseal(device_id, fields))

    def key(self, device_id: str) -> str:
        """The hash a device's credential is in (for scripts that read it with more)."""
        return self._key(device_id)

    def unseal(self, device_id: str, fields: dict[str, str]) -> ConnReqCredential | None:
        """The credential in the fields of :meth:`key` as read from Redis, or None."""
        if not fields or "password" not in fields:
            return None
        return ConnReqCredential(
            fields.get("username", ""),
            self._box.decrypt(fields["password"], device_id),
            fields.get("allow_basic") == "1",
        )

    def set(self, device_id: str, credential: ConnReqCredential) -> Deferred[None]:
        d: Deferred[Any] = self._redis.execute_command(
            "HSET",
            self._key(device_id),
            "username",
            credential.username,
            "password",
            self._box.encrypt(credential.password, device_id),
            "allow_basic",
            "1" if credential.allow_basic else "0",
        )
        return d.addCallback(lambda _: None)

    def delete(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.delete(self._key(device_id))
        return d.addCallback(lambda n: bool(n))

    def set_pending(self, device_id: str, credential: ConnReqCredential) -> Deferred[None]:
        d: Deferred[Any] = self._redis.execute_command(
            "HSET",
            self._key(device_id),
            "pending_username",
            credential.username,
            "pending_password",
            self._box.encrypt(credential.password, device_id),
            "pending_allow_basic",
            "1" if credential.allow_basic else "0",
        )
        return d.addCallback(lambda _: None)

    def promote(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(_PROMOTE_CR, [self._key(device_id)], [])
        return d.addCallback(lambda n: bool(n))

    # The STUN password has its own encryption context, so that neither ciphertext can
    # stand in for the other (device ids come from XML and cannot hold a NUL).

    def stun_passwords(self, device_id: str) -> Deferred[tuple[str, ...]]:
        context = _STUN_CONTEXT + device_id

        def decrypt(values: list[str | None]) -> tuple[str, ...]:
            return tuple(self._box.decrypt(v, context) for v in values if v)

        d: Deferred[Any] = self._redis.execute_command(
            "HMGET", self._key(device_id), "stun_password", "pending_stun_password"
        )
        return d.addCallback(decrypt)

    def set_stun_pending(self, device_id: str, password: str) -> Deferred[None]:
        sealed = self._box.encrypt(password, _STUN_CONTEXT + device_id)
        d: Deferred[Any] = self._redis.execute_command(
            "HSET", self._key(device_id), "pending_stun_password", sealed
        )
        return d.addCallback(lambda _: None)

    def promote_stun(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(_PROMOTE_STUN, [self._key(device_id)], [])
        return d.addCallback(lambda n: bool(n))

    def drop_stun_pending(self, device_id: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.execute_command(
            "HDEL", self._key(device_id), "pending_stun_password"
        )
        return d.addCallback(lambda n: bool(n))
