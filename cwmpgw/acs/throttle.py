"""Brute-force defence for CPE authentication: failure counts and temporary blocks.

Failures are counted per source address and per claimed identity (the HTTP username
and the DeviceId an Inform claims, which share one key space, ``device``). A counter
lives for ``window`` seconds from its first failure (a fixed window); reaching the
limit starts a block of ``block_for`` seconds. Blocks are not extended while they
last, so each block is reported exactly once, by the call that started it.

What a block means, and the rule that shapes it: **a block never refuses a correct
credential; it changes the answer to a failing attempt.** Both kinds are consulted
only *after* a request failed verification; such a request is then answered 429 with
Retry-After (closing the connection) instead of 401.

- A **source** block: a carrier-grade NAT puts thousands of CPEs behind one address,
  so one attacker (or a few misconfigured CPEs) there must not lock the honest ones
  out. Their requests are verified as any other; a correct credential gets in. What
  an attacker behind the blocked address keeps is what it had before: one verified
  guess per attempt, each counted against the device it claims, now paying a new
  connection per guess (every 429 closes it). A failing attempt from a blocked
  address costs the ACS what any failure costs (the credential lookup, the count,
  the ``auth.failed`` event), at most once per connection;
  ``acs.max_connections_per_source`` bounds how many connections run at once.
- A **device** block: the claimed identity's failures come from any number of
  addresses and nodes (the count is in Redis), so guesses spread over many addresses
  are still counted and answered 429 once the device is blocked, while the real device,
  with its right password, is accepted from any address. The device block does not
  stop a distributed guesser that ignores Retry-After (each guess is still verified):
  what does is a strong per-device password (the gateway provisions 192 random bits).
  The block is the alarm (an ``auth.blocked`` event) and slows clients that honour
  Retry-After.
- What verifies nothing is never counted: no credentials, a scheme not offered (a
  CPE's pre-emptive Basic, TR-069 §3.4.4), and a right Digest response under a stale
  or re-used nonce. A wrong response is counted whatever its nonce.
- A success clears the failure counters of the identities it proved, but never the
  source counter nor any block: an attacker behind the same address as good devices
  cannot launder its failures through their successes, and since a source block no
  longer refuses good devices, nothing needs lifting for them.

Nothing secret is stored: keys are addresses, usernames and device ids. Time comes
from the injected clock, not from Redis, so every node must keep NTP time; Redis
expiry only collects the keys afterwards.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

__all__ = ["AuthThrottle", "Block", "Claims", "IAuthThrottle", "MemoryAuthThrottle"]

# A claimed identity: one id, several (username and DeviceId), or none.
Claims = str | Iterable[str] | None

_MAX_KEY = 128  # longer keys (attacker-chosen usernames) are shortened with a hash


@dataclass(frozen=True, slots=True)
class Block:
    """A block that has just started; ``failures`` is the count that triggered it."""

    kind: Literal["source", "device"]
    key: str
    until: float
    failures: int


class IAuthThrottle(Interface):
    """Shared failure counts and blocks, consulted by the ACS endpoint."""

    def blocked(source: str, claimed: Claims) -> Deferred[float | None]:
        """Seconds until the longest active block of ``source`` or ``claimed`` ends, or None."""

    def failed(source: str, claimed: Claims) -> Deferred[list[Block]]:
        """Count one failed authentication; fires with the blocks it started."""

    def succeeded(source: str, claimed: Claims) -> Deferred[None]:
        """``claimed`` authenticated from ``source``: forget those identities' failures."""


def _key(value: str) -> str:
    if len(value) <= _MAX_KEY:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]
    return value[:64] + "#" + digest


def _claims(claimed: Claims) -> list[str]:
    if claimed is None:
        return []
    values = [claimed] if isinstance(claimed, str) else list(claimed)
    out: list[str] = []
    for value in values[:4]:
        if value:
            key = _key(value)
            if key not in out:
                out.append(key)
    return out


def _check(max_source: int, max_device: int, window: float, block_for: float) -> None:
    if max_source < 1 or max_device < 1:
        raise ValueError("failure limits must be at least 1")
    if window <= 0 or block_for <= 0:
        raise ValueError("window and block_for must be positive")


@implementer(IAuthThrottle)
class MemoryAuthThrottle:
    """One process's counts: the twin of :class:`AuthThrottle` for tests and single nodes."""

    def __init__(
        self,
        *,
        clock: IReactorTime,
        max_failures_per_source: int = 20,
        max_failures_per_device: int = 10,
        window: float = 300,
        block_for: float = 900,
    ) -> None:
        _check(max_failures_per_source, max_failures_per_device, window, block_for)
        self._clock = clock
        self._limits = {"source": max_failures_per_source, "device": max_failures_per_device}
        self._window = window
        self._block_for = block_for
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}
        self._blocks: dict[tuple[str, str], float] = {}
        self._next_prune = 0.0

    def _keys(self, source: str, claimed: Claims) -> list[tuple[Literal["source", "device"], str]]:
        keys: list[tuple[Literal["source", "device"], str]] = [("source", _key(source))]
        return keys + [("device", c) for c in _claims(claimed)]

    def blocked(self, source: str, claimed: Claims) -> Deferred[float | None]:
        now = self._clock.seconds()
        left = [
            until - now
            for k in self._keys(source, claimed)
            if (until := self._blocks.get(k, 0.0)) > now
        ]
        return succeed(max(left) if left else None)

    def failed(self, source: str, claimed: Claims) -> Deferred[list[Block]]:
        now = self._clock.seconds()
        self._prune(now)
        started: list[Block] = []
        for kind, key in self._keys(source, claimed):
            start, count = self._counts.get((kind, key), (now, 0))
            if now - start >= self._window:
                start, count = now, 0
            count += 1
            self._counts[(kind, key)] = (start, count)
            if count >= self._limits[kind] and self._blocks.get((kind, key), 0.0) <= now:
                until = now + self._block_for
                self._blocks[(kind, key)] = until
                started.append(Block(kind, key, until, count))
        return succeed(started)

    def succeeded(self, source: str, claimed: Claims) -> Deferred[None]:
        for key in _claims(claimed):
            self._counts.pop(("device", key), None)
        return succeed(None)

    def _prune(self, now: float) -> None:
        """Forget expired counters and blocks, at most once per window: memory stays bounded."""
        if now < self._next_prune:
            return
        self._next_prune = now + self._window
        self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self._window}
        self._blocks = {k: v for k, v in self._blocks.items() if v > now}


# KEYS: (counter, block) pairs; ARGV: now, window, until, counter ttl ms, block ttl ms,
# then one limit per pair. Returns {pair index, failures} for each block started now.
_FAILED = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS, 2 do
  local pair = (i + 1) / 2
  local counter, block = KEYS[i], KEYS[i + 1]
  local start = tonumber(redis.call('HGET', counter, 'start'))
  local n
  if start == nil or now - start >= window then
    redis.call('HSET', counter, 'start', ARGV[1], 'n', 1)
    n = 1
  else
    n = redis.call('HINCRBY', counter, 'n', 1)
  end
  redis.call('PEXPIRE', counter, ARGV[4])
  if n >= tonumber(ARGV[5 + pair]) then
    local until_ = tonumber(redis.call('GET', block))
    if until_ == nil or until_ <= now then
      redis.call('SET', block, ARGV[3], 'PX', ARGV[5])
      out[#out + 1] = pair
      out[#out + 1] = n
    end
  end
end
return out
"""


@implementer(IAuthThrottle)
class AuthThrottle:
    """Counts and blocks in Redis, shared by every gateway node.

    Key layout (under the prefix): ``authfail:<kind>:<key>`` hash {start, n} and
    ``authblock:<kind>:<key>`` string (the end of the block, epoch seconds), with
    ``kind`` ``src`` or ``dev``. ``failed`` is one Lua script; ``blocked`` one MGET.

    Active blocks are remembered locally for at most ``cache_for`` seconds, so the
    failures of a blocked address cost no extra round trip to look the block up, while
    a block an operator deletes from Redis stops applying within that time.
    """

    def __init__(
        self,
        redis: Any,
        prefix: str,
        *,
        clock: IReactorTime,
        max_failures_per_source: int = 20,
        max_failures_per_device: int = 10,
        window: float = 300,
        block_for: float = 900,
        cache_for: float = 5.0,
    ) -> None:
        _check(max_failures_per_source, max_failures_per_device, window, block_for)
        self._redis = redis
        self._prefix = prefix
        self._clock = clock
        self._limits = {"source": max_failures_per_source, "device": max_failures_per_device}
        self._window = window
        self._block_for = block_for
        self._cache_for = cache_for
        # (kind, key) -> (block end, cache entry expiry)
        self._cache: dict[tuple[str, str], tuple[float, float]] = {}

    def _keys(self, source: str, claimed: Claims) -> list[tuple[Literal["source", "device"], str]]:
        keys: list[tuple[Literal["source", "device"], str]] = [("source", _key(source))]
        return keys + [("device", c) for c in _claims(claimed)]

    def _redis_key(self, what: str, kind: str, key: str) -> str:
        return f"{self._prefix}{what}:{'src' if kind == 'source' else 'dev'}:{key}"

    def _remember(self, kind: str, key: str, until: float, now: float) -> None:
        if len(self._cache) >= 10_000:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            if len(self._cache) >= 10_000:
                self._cache.clear()
        self._cache[(kind, key)] = (until, min(until, now + self._cache_for))

    def blocked(self, source: str, claimed: Claims) -> Deferred[float | None]:
        now = self._clock.seconds()
        keys = self._keys(source, claimed)
        cached = self._cache.get(keys[0])
        if cached is not None and cached[1] > now:
            return succeed(cached[0] - now)

        def remaining(values: list[str | None]) -> float | None:
            left: list[float] = []
            for (kind, key), value in zip(keys, values, strict=True):
                until = _float(value)
                if until > now:
                    self._remember(kind, key, until, now)
                    left.append(until - now)
            return max(left) if left else None

        d: Deferred[Any] = self._redis.mget([self._redis_key("authblock", *k) for k in keys])
        return d.addCallback(remaining)

    def failed(self, source: str, claimed: Claims) -> Deferred[list[Block]]:
        now = self._clock.seconds()
        until = now + self._block_for
        keys = self._keys(source, claimed)
        redis_keys: list[str] = []
        for kind, key in keys:
            redis_keys += [self._redis_key("authfail", kind, key)]
            redis_keys += [self._redis_key("authblock", kind, key)]
        args = [
            repr(now),
            repr(float(self._window)),
            repr(until),
            str(_ms(self._window)),
            str(_ms(self._block_for)),
        ] + [str(self._limits[kind]) for kind, _ in keys]

        def blocks(out: list[Any]) -> list[Block]:
            started = []
            for i in range(0, len(out), 2):
                kind, key = keys[int(out[i]) - 1]
                self._remember(kind, key, until, now)
                started.append(Block(kind, key, until, int(out[i + 1])))
            return started

        d: Deferred[Any] = self._redis.eval(_FAILED, redis_keys, args)
        return d.addCallback(blocks)

    def succeeded(self, source: str, claimed: Claims) -> Deferred[None]:
        keys = [self._redis_key("authfail", "device", c) for c in _claims(claimed)]
        if not keys:
            return succeed(None)
        d: Deferred[Any] = self._redis.delete(keys)
        return d.addCallback(lambda _: None)


def _ms(seconds: float) -> int:
    """A Redis expiry comfortably past the logical end (node clocks differ a little)."""
    return math.ceil(seconds * 1000) + 60_000


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
