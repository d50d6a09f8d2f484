"""One gateway process per Digest nonce, so a captured response cannot be replayed elsewhere.

Nonces are stateless and every process accepts every other's (a CPE that reconnects after
the 401 may land on another worker or node), but the nonce count that stops a replay is
tracked in each process's memory. Without more, a response captured on its way to one
process could be replayed to another within the nonce's lifetime. So the first process
to accept a nonce claims it in Redis; another process that sees it answers ``stale=true``
and the CPE simply retries with a fresh nonce of that process. The claim is made only on
a nonce's first use in a process (once per session, beside the credential lookup on the
same pipelined connection) and expires with the nonce.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

__all__ = ["INonceClaims", "MemoryNonceClaims", "RedisNonceClaims", "shared_nonce_secret"]


class INonceClaims(Interface):
    def claim(nonce: str, claimant: str, ttl_ms: int) -> Deferred[bool]:
        """True if ``claimant`` holds ``nonce`` now (it just took it, or held it already);
        False if another claimant holds it. A claim lasts ``ttl_ms``."""


# KEYS: the nonce's key; ARGV: claimant, ttl in ms. 1 if the claimant holds it, else 0.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 1 end
return 0
"""


@implementer(INonceClaims)
class RedisNonceClaims:
    """``<prefix>nonce:<nonce>`` = the claimant, expiring with the nonce."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix + "nonce:"

    def claim(self, nonce: str, claimant: str, ttl_ms: int) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.eval(
            _CLAIM, [self._prefix + nonce], [claimant, str(max(1, ttl_ms))]
        )
        return d.addCallback(lambda held: int(held) == 1)


@implementer(INonceClaims)
class MemoryNonceClaims:
    """The same, in one process's memory: for tests of several "processes" in one."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._holders: dict[str, tuple[str, float]] = {}

    def claim(self, nonce: str, claimant: str, ttl_ms: int) -> Deferred[bool]:
        now = self._clock.seconds()
        holder = self._holders.get(nonce)
        if holder is None or holder[1] <= now:
            self._holders[nonce] = (claimant, now + ttl_ms / 1000)
            return succeed(True)
        return succeed(holder[0] == claimant)


async def shared_nonce_secret(redis: Any, prefix: str) -> bytes:
    """The key nonces are made with, shared through Redis so every node accepts every
    nonce: the first process to start draws it, every later one reads it."""
    key = prefix + "secret:digest-nonce"
    await redis.execute_command("SET", key, os.urandom(32).hex(), "NX")
    value = await redis.get(key)
    return bytes.fromhex(value)
