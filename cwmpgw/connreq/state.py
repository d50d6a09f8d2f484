"""Connection-request state shared by every node: STUN bindings and the per-device interval.

STUN bindings are learnt by whichever node's STUN server the CPE talks to, and used by
whichever node wakes the device; the minimum interval between two wake-ups of a device
must hold across nodes too. Both live in Redis (with an in-memory twin for unit tests).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from cwmpgw.connreq.stun import Binding
from cwmpgw.store.interfaces import ConnReqCredential

__all__ = ["MemoryConnreqState", "RedisConnreqState", "WakeState"]

# A CPE refreshes its binding at least every STUNMaximumKeepAlivePeriod; an hour-old one
# is not worth trying.
BINDING_TTL = 3600


@dataclass(frozen=True, slots=True)
class WakeState:
    """What a wake-up reads before it sends, read in one step.

    ``device`` is None for an unknown device; else at least its :data:`WAKE_FIELDS` (text)
    and ``parameters`` (the :data:`WAKE_PARAMETERS` it has), all a wake-up reads of it.
    ``claimed`` is None when the interval was not claimed with the reads (the caller
    claims it once it knows a request can be sent); True or False when it was: claimed
    only for a known device with a credential and something to send to.
    """

    device: dict[str, Any] | None
    credential: ConnReqCredential | None
    binding: tuple[str, int] | None
    claimed: bool | None


# The fields of the device hash a wake-up reads (the event's device reference, the target
# and the guard's last source), in the order of _WAKE_STATE's HMGET: not the whole hash,
# which a wake-up would only type and decode (tags, events) to throw away.
WAKE_FIELDS: tuple[str, ...] = (
    "oui",
    "product_class",
    "serial_number",
    "manufacturer",
    "connection_request_url",
    "last_source",
)

# KEYS: device hash, its params hash, crcred hash, connreq:recent:<id>, stun:<id>
# ARGV: interval (ms, 0 = none), UDP on (1/0), the STUN key prefix when bindings are
# looked up by the STUNUsername the device reported (unauthenticated STUN; '' = by id),
# then the parameter names (STUNUsername, UDPConnectionRequestAddress, NATDetected and
# ConnReqJabberID, each for both roots, in that order). One round trip for every read of
# a wake-up and its interval claim. An unknown device (no hash) returns {false}.
_WAKE_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {false} end
local device = redis.call('HMGET', KEYS[1], 'oui', 'product_class', 'serial_number',
  'manufacturer', 'connection_request_url', 'last_source')
local cred = redis.call('HGETALL', KEYS[3])
local out = {device, cred, false, 0}
for i = 4, #ARGV do out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i]) end
local function value(raw)
  if not raw then return '' end
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' and type(decoded[1]) == 'string' then
    return decoded[1]
  end
  return ''
end
local stun_key = KEYS[5]
if ARGV[3] ~= '' then
  local user = value(out[5]) ~= '' and value(out[5]) or value(out[6])
  if user ~= '' then stun_key = ARGV[3] .. user end
end
local binding = false
if ARGV[2] == '1' then binding = redis.call('GET', stun_key) end
out[3] = binding
local url = device[5] or ''
local has_password = false
for i = 1, #cred, 2 do
  if cred[i] == 'password' then has_password = true end
end
local udp = ARGV[2] == '1' and (binding or value(out[7]) ~= '' or value(out[8]) ~= '')
local jid = value(out[11]) ~= '' or value(out[12]) ~= ''
if not has_password or (url == '' and not udp and not jid) then return out end
if ARGV[1] == '0' then
  out[4] = 1
elseif redis.call('SET', KEYS[4], '1', 'PX', ARGV[1], 'NX') then
  out[4] = 1
else
  out[4] = -1
end
return out
"""

# The parameters a wake-up reads, in the order _WAKE_STATE expects them.
WAKE_PARAMETERS: tuple[str, ...] = tuple(
    f"{root}.ManagementServer.{leaf}"
    for leaf in ("STUNUsername", "UDPConnectionRequestAddress", "NATDetected", "ConnReqJabberID")
    for root in ("Device", "InternetGatewayDevice")
)


class RedisConnreqState:
    def __init__(self, redis: Any, prefix: str, *, ttl: int = BINDING_TTL) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def record_binding(self, binding: Binding) -> Deferred[None]:
        if not binding.username:
            return succeed(None)
        value = json.dumps({"host": binding.host, "port": binding.port, "ts": binding.ts})
        d: Deferred[Any] = self._redis.execute_command(
            "SET", f"{self._prefix}stun:{binding.username}", value, "EX", self._ttl
        )
        return d.addCallback(lambda _: None)

    def binding(self, username: str) -> Deferred[tuple[str, int] | None]:
        def parse(raw: str | None) -> tuple[str, int] | None:
            if not raw:
                return None
            data = json.loads(raw)
            return str(data["host"]), int(data["port"])

        d: Deferred[Any] = self._redis.get(f"{self._prefix}stun:{username}")
        return d.addCallback(parse)

    def claim_interval(self, device_id: str, seconds: float) -> Deferred[bool]:
        """True if no wake-up of this device started in the last ``seconds`` (and claim it)."""
        if seconds <= 0:
            return succeed(True)
        d: Deferred[Any] = self._redis.execute_command(
            "SET", f"{self._prefix}connreq:recent:{device_id}", "1", "PX", int(seconds * 1000), "NX"
        )
        return d.addCallback(lambda reply: reply is not None)

    def release_interval(self, device_id: str) -> Deferred[None]:
        """Undo a claim made by :meth:`wake_state` for a wake-up that sends nothing."""
        d: Deferred[Any] = self._redis.delete(f"{self._prefix}connreq:recent:{device_id}")
        return d.addCallback(lambda _: None)

    def wake_state(
        self,
        device_id: str,
        *,
        credentials: Any,
        interval: float,
        udp: bool,
        binding_by_reported_name: bool,
        parameters: Sequence[str] = WAKE_PARAMETERS,
    ) -> Deferred[WakeState]:
        """Device, credential, STUN binding and the interval claim in one script.

        ``credentials`` is the Redis connection-request credential store (it knows the
        hash and unseals the password). The interval is claimed only when the wake-up
        will try to send (see :class:`WakeState`).
        """
        device_key = f"{self._prefix}device:{device_id}"
        keys = [
            device_key,
            device_key + ":params",
            credentials.key(device_id),
            f"{self._prefix}connreq:recent:{device_id}",
            f"{self._prefix}stun:{device_id}",
        ]
        args = [
            str(int(interval * 1000)) if interval > 0 else "0",
            "1" if udp else "0",
            f"{self._prefix}stun:" if binding_by_reported_name else "",
            *parameters,
        ]

        def parse(reply: list[Any]) -> WakeState:
            if reply[0] is None:
                return WakeState(None, None, None, None)
            # Text, as device_view would type these fields; a missing one is "".
            device: dict[str, Any] = {
                name: "" if value is None else str(value)
                for name, value in zip(WAKE_FIELDS, reply[0], strict=True)
            }
            device["parameters"] = {
                name: dict(zip(("value", "type"), json.loads(raw), strict=True))
                for name, raw in zip(parameters, reply[4:], strict=True)
                if raw
            }
            binding = None
            if reply[2]:
                data = json.loads(reply[2])
                binding = (str(data["host"]), int(data["port"]))
            claim = int(reply[3])
            return WakeState(
                device,
                credentials.unseal(device_id, _pairs(reply[1])),
                binding,
                None if claim == 0 else claim > 0,
            )

        d: Deferred[Any] = self._redis.eval(_WAKE_STATE, keys, args)
        return d.addCallback(parse)


def _pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[0::2], flat[1::2], strict=True))


class MemoryConnreqState:
    def __init__(self, clock: IReactorTime, *, ttl: int = BINDING_TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self.bindings: dict[str, tuple[str, int, float]] = {}
        self._recent: dict[str, float] = {}

    def record_binding(self, binding: Binding) -> Deferred[None]:
        if binding.username:
            self.bindings[binding.username] = (binding.host, binding.port, self._clock.seconds())
        return succeed(None)

    def binding(self, username: str) -> Deferred[tuple[str, int] | None]:
        found = self.bindings.get(username)
        if found is None or self._clock.seconds() - found[2] > self._ttl:
            return succeed(None)
        return succeed((found[0], found[1]))

    def claim_interval(self, device_id: str, seconds: float) -> Deferred[bool]:
        now = self._clock.seconds()
        if now < self._recent.get(device_id, float("-inf")):
            return succeed(False)
        self._recent[device_id] = now + seconds
        return succeed(True)

    def release_interval(self, device_id: str) -> Deferred[None]:
        self._recent.pop(device_id, None)
        return succeed(None)
