"""The inventory: devices found by a :class:`~cwmpgw.fleet.selector.Selector`, a page at
a time, in device-id order.

Pages are ordered by device id, and the cursor is the last id a page examined: a device
that informs while a client pages does not move, so nothing is skipped or returned twice
(ordering by last Inform, as the first API did, moved every informing device to the end).

In Redis one script answers a page (:data:`_QUERY`, one round trip). It walks the
smallest source of candidates in id order — the index of one of the selector's equality
or tag terms (a union of indexes for "any of" values), or every device — and checks each
candidate against the other terms with O(log n) index look-ups; when the time terms
select fewer devices than any index (say, those silent for a week), those are taken from
the ``devices`` sorted set and sorted instead. A page examines at most ``budget``
candidates, so no query holds Redis for long: a very selective query over a large index
may answer a short (even empty) page with a cursor to go on.
"""

from __future__ import annotations

import json
from typing import Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from cwmpgw.fleet.selector import Selector
from cwmpgw.store.indexes import (
    IPV6_SHIFT,
    field_key,
    source_key,
    tag_counts_key,
    tag_key,
)
from cwmpgw.store.memory import MemoryDeviceStore, device_view

__all__ = [
    "DEFAULT_BUDGET",
    "IInventory",
    "MemoryInventory",
    "Page",
    "RedisInventory",
]

#: Candidates one page may examine.
DEFAULT_BUDGET: Final = 20_000
#: Devices selected by the time terms alone that are sorted rather than walked by index.
_MATERIALIZE: Final = 20_000

Page = tuple[list[dict[str, Any]], str]


class IInventory(Interface):
    def query(
        selector: Selector, *, cursor: str = "", limit: int = 100, records: bool = True
    ) -> Deferred[Page]:
        """A page of the selected devices in id order (records without parameters, or
        ``{"id"}`` only when ``records`` is false) and the cursor of the next page ("" at
        the end). A page may be short, even empty, with a cursor: keep following it."""

    def tag_counts() -> Deferred[dict[str, int]]:
        """Every tag in use and how many devices carry it."""


def _lua_window(selector: Selector, now: float, online_window: float) -> dict[str, Any]:
    w = selector.window(now, online_window)
    out: dict[str, Any] = {}
    if w.low is not None:
        out["low"] = repr(w.low)
    if w.high is not None:
        out["high"] = repr(w.high)
    if w.empty:
        out["empty"] = True
    return out


# ARGV: 1 prefix, 2 spec (JSON, built by RedisInventory._spec), 3 cursor, 4 limit,
# 5 budget, 6 '1' to return the records' hashes. Returns {next cursor, id, hash, id,...}.
_QUERY = """
local P = ARGV[1]
local spec = cjson.decode(ARGV[2])
local cursor, limit, budget = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local want = ARGV[6] == '1'
local pfx = spec.prefix
local devices = P .. 'devices'
if spec.empty then return {''} end

local lo, hi = '-', '+'
if pfx ~= '' then lo = '[' .. pfx; hi = '[' .. pfx .. '\\255' end
if cursor ~= '' and (pfx == '' or cursor >= pfx) then lo = '(' .. cursor end

local terms = spec.terms
local driver, size = 0, redis.call('ZCARD', P .. 'idx:all')
for t, keys in ipairs(terms) do
  local n = 0
  for _, k in ipairs(keys) do n = n + redis.call('ZCARD', k) end
  if n < size then driver, size = t, n end
end
local tlow, thigh = spec.low or '-inf', '+inf'
if spec.high then thigh = '(' .. spec.high end
local timed = spec.low ~= nil or spec.high ~= nil
local by_time = false
if timed then
  local n = redis.call('ZCOUNT', devices, tlow, thigh)
  if n < size and n <= tonumber(spec.materialize) then by_time = true; driver = 0 end
end

local function check(id)
  for t, keys in ipairs(terms) do
    if t ~= driver then
      local ok = false
      for _, k in ipairs(keys) do
        if redis.call('ZSCORE', k, id) then ok = true; break end
      end
      if not ok then return false end
    end
  end
  for _, k in ipairs(spec.not_keys) do
    if redis.call('ZSCORE', k, id) then return false end
  end
  if timed and not by_time then
    local s = redis.call('ZSCORE', devices, id)
    if not s then return false end
    s = tonumber(s)
    if spec.low and s < tonumber(spec.low) then return false end
    if spec.high and s >= tonumber(spec.high) then return false end
  end
  if spec.src then
    local s = redis.call('ZSCORE', spec.src[1], id)
    if not s then return false end
    s = tonumber(s)
    if s < tonumber(spec.src[2]) or s > tonumber(spec.src[3]) then return false end
  end
  for _, p in ipairs(spec.params) do
    local raw = redis.call('HGET', P .. 'device:' .. id .. ':params', p[1])
    if not raw then return false end
    if cjson.decode(raw)[1] ~= p[2] then return false end
  end
  return true
end

-- The next candidates after ``after`` in id order, and whether the source is used up.
local keys = terms[driver] or {P .. 'idx:all'}
local sorted = nil
if by_time then
  sorted = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', devices, tlow, thigh)) do
    if string.sub(id, 1, #pfx) == pfx then sorted[#sorted + 1] = id end
  end
  table.sort(sorted)
end
local function chunk(after)
  if sorted then
    local out = {}
    for _, id in ipairs(sorted) do
      if after == '-' or (string.sub(after, 1, 1) == '(' and id > string.sub(after, 2))
         or (string.sub(after, 1, 1) == '[' and id >= string.sub(after, 2)) then
        out[#out + 1] = id
      end
    end
    return out, true
  end
  local n = math.max(50, math.floor(2000 / #keys))
  local all, bound = {}, nil
  for _, k in ipairs(keys) do
    local part = redis.call('ZRANGEBYLEX', k, after, hi, 'LIMIT', 0, n)
    for _, v in ipairs(part) do all[#all + 1] = v end
    if #part == n and (bound == nil or part[#part] < bound) then bound = part[#part] end
  end
  table.sort(all)
  local out, prev = {}, nil
  for _, v in ipairs(all) do
    if (bound == nil or v <= bound) and v ~= prev then out[#out + 1] = v; prev = v end
  end
  return out, bound == nil
end

local found, scanned, last, after = {}, 0, nil, lo
local finished = false
while #found < limit and scanned < budget do
  local ids, done = chunk(after)
  if #ids == 0 then finished = true; break end
  local stopped = false
  for i, id in ipairs(ids) do
    scanned = scanned + 1
    last = id
    if check(id) then found[#found + 1] = id end
    if #found >= limit or scanned >= budget then stopped = i < #ids or not done; break end
  end
  if not stopped and last == ids[#ids] and done then finished = true; break end
  if stopped then break end
  after = '(' .. last
end
local out = {''}
if not finished and last then out[1] = last end
for _, id in ipairs(found) do
  out[#out + 1] = id
  if want then out[#out + 1] = redis.call('HGETALL', P .. 'device:' .. id) end
end
return out
"""


@implementer(IInventory)
class RedisInventory:
    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        clock: IReactorTime,
        online_window: float,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._clock = clock
        self._online_window = online_window
        self._budget = budget

    def _spec(self, selector: Selector) -> dict[str, Any]:
        p = self._prefix
        terms = [[field_key(p, name, v) for v in values] for name, values in selector.equality()]
        terms += [[tag_key(p, t)] for t in selector.tags]
        spec: dict[str, Any] = {
            "prefix": selector.id_prefix,
            "terms": terms,
            "not_keys": [tag_key(p, t) for t in selector.not_tags],
            "params": [list(pair) for pair in selector.parameters],
            "materialize": _MATERIALIZE,
            **_lua_window(selector, self._clock.seconds(), self._online_window),
        }
        net = selector.source
        if net is not None:
            shift = IPV6_SHIFT if net.version == 6 else 0
            spec["src"] = [source_key(p, net.version), net.first >> shift, net.last >> shift]
        return spec

    def query(
        self, selector: Selector, *, cursor: str = "", limit: int = 100, records: bool = True
    ) -> Deferred[Page]:
        async def run() -> Page:
            reply = await self._redis.eval(
                _QUERY,
                [],
                [
                    self._prefix,
                    json.dumps(self._spec(selector)),
                    cursor,
                    str(limit),
                    str(self._budget),
                    "1" if records else "0",
                ],
            )
            next_cursor = str(reply[0] or "")
            found: list[dict[str, Any]] = []
            step = 2 if records else 1
            for i in range(1, len(reply), step):
                if not records:
                    found.append({"id": str(reply[i])})
                    continue
                flat = reply[i + 1] or []
                fields = dict(zip(flat[0::2], flat[1::2], strict=True))
                if fields:
                    found.append(device_view(fields))
            net = selector.source
            if records and net is not None and net.version == 6:
                # The index holds the first 52 bits: a longer prefix is checked here.
                found = [r for r in found if net.contains(r["last_source"])]
            return found, next_cursor

        return Deferred.fromCoroutine(run())

    def tag_counts(self) -> Deferred[dict[str, int]]:
        d: Deferred[Any] = self._redis.hgetall(tag_counts_key(self._prefix))
        return d.addCallback(lambda raw: {str(k): int(v) for k, v in sorted(raw.items())})


@implementer(IInventory)
class MemoryInventory:
    """The reference: every device checked with :meth:`Selector.matches`."""

    def __init__(
        self,
        devices: MemoryDeviceStore,
        *,
        clock: IReactorTime,
        online_window: float,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self._devices = devices
        self._clock = clock
        self._online_window = online_window
        self._budget = budget

    def query(
        self, selector: Selector, *, cursor: str = "", limit: int = 100, records: bool = True
    ) -> Deferred[Page]:
        now = self._clock.seconds()
        found: list[dict[str, Any]] = []
        ids = sorted(i for i in self._devices.devices if i > cursor)
        for n, device_id in enumerate(ids):
            stored = self._devices.devices[device_id]
            record = device_view(stored)
            if selector.matches(
                record,
                tags=record["tags"],
                parameters=stored["parameters"],
                now=now,
                online_window=self._online_window,
            ):
                found.append(record if records else {"id": device_id})
                if len(found) == limit:
                    more = n + 1 < len(ids)
                    return succeed((found, device_id if more else ""))
        return succeed((found, ""))

    def tag_counts(self) -> Deferred[dict[str, int]]:
        counts: dict[str, int] = {}
        for device_id in self._devices.devices:
            for tag in self._devices.tags_of(device_id):
                counts[tag] = counts.get(tag, 0) + 1
        return succeed(dict(sorted(counts.items())))
