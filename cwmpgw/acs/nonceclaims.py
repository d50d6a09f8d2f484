"""Nonce counts shared by every gateway process, so a response cannot be replayed elsewhere.

Nonces are stateless and every process accepts every other's (a CPE may reconnect after
the 401 to another worker or node, or come back for its next session with the nonce it
used last time and a higher nonce count). Each process also keeps the nonce counts it
accepted in memory, but that alone would let a response captured on its way to one
process be replayed to another within the nonce's lifetime. So each acceptance also
advances the nonce's count in Redis, atomically: a response is accepted only if its
``nc`` is above every count accepted for that nonce by any process. A replay carries a
count that was accepted already, so it is refused everywhere (``stale=true``: the CPE
retries with a fresh nonce). This is one script per authentication (once per connection:
later requests on an authenticated connection are not authenticated again), sent beside
the credential lookup on the same pipelined connection, and the record expires with the
nonce.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

__all__ = ["INonceClaims", "MemoryNonceClaims", "RedisNonceClaims", "shared_nonce_secret"]


class INonceClaims(Interface):
    def claim(nonce: str, nc: int, ttl_ms: int) -> Deferred[bool]:
        """True if ``nc`` is above every count accepted for ``nonce`` by any process
        (it is then recorded as the highest); False otherwise. A record lasts ``ttl_ms``."""


# KEYS: the nonce's key; ARGV: nonce count, ttl in ms. 1 if the count was above the
# highest recorded (and is now the highest), else 0.
_CLAIM = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


@implementer(INonceClaims)
class RedisNonceClaims:
    """``<prefix>nonce:<nonce>`` = the highest nonce count accepted, expiring with the nonce."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix + "nonce:"

    def claim(self, nonce: str, nc: int, ttl_ms: int) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _CLAIM, [self._prefix + nonce], [str(nc), str(max(1, ttl_ms))]
        )
        return d.addCallback(lambda held: int(held) == 1)


@implementer(INonceClaims)
class MemoryNonceClaims:
    """The same, in one process's memory: for tests of several "processes" in one."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.counts: dict[str, tuple[int, float]] = {}  # nonce -> (highest nc, until)

    def claim(self, nonce: str, nc: int, ttl_ms: int) -> Deferred[bool]:
        now = self._clock.seconds()
        last = self.counts.get(nonce)
        if last is not None and last[1] > now and nc <= last[0]:
            return succeed(False)
        self.counts[nonce] = (nc, now + ttl_ms / 1000)
        return succeed(True)


async def shared_nonce_secret(redis: Any, prefix: str) -> bytes:
    """The key nonces are made with, shared through Redis so every node accepts every
    nonce: the first process to start draws it, every later one reads it."""
    key = prefix + "secret:digest-nonce"
    await redis.execute_command("SET", key, os.urandom(32).hex(), "NX")
    value = await redis.get(key)
    return bytes.fromhex(value)
