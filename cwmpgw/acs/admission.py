"""Admission control: shed new sessions early and cheaply when they arrive too fast.

After a regional power cut every CPE boots at once. Serving them all at once would make
every session slow and many fail; TR-069 CPEs retry with back-off, so the right answer to
the excess is a quick 503 with a jittered Retry-After, while sessions already under way
stay fast.

Two limits, both per gateway process:
- connections: past ``max_connections`` open connections, a new one is closed at once,
  before any TLS work (the cheapest refusal there is);
- new sessions: a token bucket refilled at ``max_new_per_second``; an Inform that finds it
  empty is answered 503 before any Redis or credential work. A share of the bucket is kept
  for priority sessions — BOOTSTRAP (a device that must be configured) and
  "6 CONNECTION REQUEST" (the back office is waiting) — so they get in ahead of periodic
  informs.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from twisted.internet.interfaces import IReactorTime

__all__ = ["PRIORITY_EVENTS", "AdmissionControl"]

PRIORITY_EVENTS = frozenset({"0 BOOTSTRAP", "6 CONNECTION REQUEST"})


class AdmissionControl:
    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_new_per_second: float,
        max_sessions: int,
        priority_share: float = 0.25,
        retry_after: tuple[float, float] = (30.0, 120.0),
        rng: random.Random | None = None,
    ) -> None:
        if max_new_per_second <= 0 or max_sessions <= 0:
            raise ValueError("limits must be positive")
        self._clock = clock
        self._rate = max_new_per_second
        self._capacity = max_new_per_second  # one second's worth of burst
        self._reserve = self._capacity * priority_share
        self._tokens = self._capacity
        self._last = clock.seconds()
        self._max_sessions = max_sessions
        self._session_reserve = int(max_sessions * priority_share)
        self._retry_after = retry_after
        self._rng = rng or random.Random()
        self.rejected = 0
        self._next_slot = 0.0  # when the next shed CPE should come back

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def admit(self, event_codes: Iterable[str], live_sessions: int) -> int | None:
        """None if a new session may start; else the Retry-After to answer 503 with.

        Each shed CPE is given the next free slot at the admitted rate (never sooner than
        the window's minimum, never later than its maximum, with up to a second of
        jitter): a shed crowd comes back exactly as fast as the node can take it, instead
        of all at once or long after capacity was free again.
        """
        priority = any(code in PRIORITY_EVENTS for code in event_codes)
        self._refill()
        floor = 0.0 if priority else self._reserve
        session_cap = self._max_sessions if priority else self._max_sessions - self._session_reserve
        if self._tokens - 1 >= floor and live_sessions < session_cap:
            self._tokens -= 1
            return None
        self.rejected += 1
        low, high = self._retry_after
        now = self._clock.seconds()
        slot = max(now + low, self._next_slot)
        self._next_slot = slot + 1.0 / self._rate
        wait = min(slot - now, high) + self._rng.uniform(0.0, 1.0)
        return max(round(low), min(round(wait), round(high)))
