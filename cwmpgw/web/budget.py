"""How many bytes of body from strangers one source address may make us parse.

Before anyone is authenticated, a request's body must be parsed (the Inform names the
device whose credentials are checked), and parsing is the dearest thing an anonymous client
can make us do: a 256 KiB body of many small elements costs ~10 ms of CPU, 40,000 times a
plain Inform's 0.05 ms of XML. A :class:`SourceBudget` gives every source address a token
bucket of such bytes — ``rate`` per second, up to ``burst`` at once — and the ACS answers a
body over budget with 503 and a Retry-After instead of parsing it. Requests on a connection
that already carries an authenticated session are never charged.

The defaults (2 MiB/s, burst 8 MiB) and the arithmetic behind them. Per session a CPE sends
two unauthenticated Informs (the one challenged with 401, then the one with credentials);
real Informs are 2 to 8 KiB, so a session costs at most ~16 KiB of budget:

* one address sustains 2 MiB/s ÷ 16 KiB = **128 sessions/s**: a carrier-grade NAT address
  with 10,000 CPEs informing hourly needs 2.8/s (45 KiB/s), 1/45 of it;
* a boot storm of everything behind that address: 8 MiB of burst is 512 sessions at once,
  and 10,000 CPEs booting within 80 s (125/s) still fit; admission control
  (``acs.max_new_sessions_per_second``, 300 per process) sheds such a storm long before;
* an attacker at one address gets at most 2 MiB/s of its worst bodies parsed: at the ~25
  MB/s lxml manages on them, **~8% of a core**, instead of all of it.

Memory is bounded: an entry is ~200 bytes, a bucket that has refilled is the same as no
entry and is dropped, and past ``max_sources`` the least recently charged is dropped (it
then starts full again, which only helps an attacker holding more addresses than that —
a per-address budget cannot stop that one; admission control and the connection caps
bound the node). IPv6 sources are charged per /64, what one subscriber is given.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.interfaces import IReactorTime

__all__ = ["SourceBudget", "source_key"]


def source_key(host: str) -> str:
    """The budget's key for a peer address: the address, or its /64 for IPv6."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


class SourceBudget:
    """A token bucket of bytes per source address, on an injected clock."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        rate: float = 2 * 1024 * 1024,
        burst: float = 8 * 1024 * 1024,
        max_sources: int = 65_536,
    ) -> None:
        if rate <= 0 or burst <= 0 or max_sources < 1:
            raise ValueError("rate and burst must be > 0, max_sources >= 1")
        self._clock = clock
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_sources = max_sources
        # source → [tokens, when they were counted]; in order of last charge (oldest first).
        self._buckets: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def charge(self, host: str, cost: int) -> float | None:
        """Take ``cost`` bytes from ``host``'s bucket: None if it had them, else the
        seconds until it will (nothing is taken then).

        A cost above the burst can never be paid in full: it is charged the whole burst
        instead (an empty bucket), so a body the size cap allows is never refused for
        ever by a budget configured smaller than it.
        """
        now = self._clock.seconds()
        key = source_key(host)
        price = min(float(cost), self.burst)
        bucket = self._buckets.pop(key, None)  # re-inserted at the end: most recent
        tokens = self.burst
        if bucket is not None:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        self._evict(now)
        if tokens < price:
            self._buckets[key] = [tokens, now]
            return (price - tokens) / self.rate
        self._buckets[key] = [tokens - price, now]
        return None

    def _evict(self, now: float) -> None:
        """Drop the oldest entries that have refilled (a few per call), then any past the cap."""
        buckets = self._buckets
        for _ in range(4):
            if not buckets:
                return
            key = next(iter(buckets))
            tokens, stamp = buckets[key]
            if tokens + (now - stamp) * self.rate < self.burst:
                break
            del buckets[key]
        while len(buckets) >= self.max_sources:
            del buckets[next(iter(buckets))]
