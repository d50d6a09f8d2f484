"""Timeouts all of one length, on one reactor timer.

A DelayedCall per timeout costs its making, a heap insertion ordered by a Python
``__lt__``, and its cancellation: per Redis command in the availability guard, per
connection and per request in the connection-request client (there ~10% of its CPU,
py-spy on bench/connreq.py). Timeouts of one fixed length come due in the order they
were started, so they need no heap: they wait in an insertion-ordered dict, and one timer
is armed at the oldest deadline. Cancelling one is a dict removal; the timer may then come
for nothing and is armed again at the oldest left.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["FixedTimeouts"]

K = TypeVar("K", bound=Hashable)


class FixedTimeouts(Generic[K]):
    """``start(key)``: ``on_timeout(key)`` in ``seconds`` unless ``cancel(key)`` comes first.

    ``cancel`` says whether the key was still waiting: False once its timeout came (or it
    was never started), which is how an owner tells a timeout from an answer.
    """

    def __init__(self, clock: IReactorTime, seconds: float, on_timeout: Callable[[K], object]):
        if not seconds > 0:
            raise ValueError("a timeout must be positive")
        self.seconds = seconds
        self._clock = clock
        self._on_timeout = on_timeout
        self._pending: dict[K, float] = {}  # key -> deadline, oldest first
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, key: K) -> None:
        self._pending[key] = self._clock.seconds() + self.seconds
        if self._timer is None:
            self._timer = self._clock.callLater(self.seconds, self._fire)

    def cancel(self, key: K) -> bool:
        return self._pending.pop(key, None) is not None

    def disarm(self) -> None:
        """Cancel the timer if nothing waits (an owner that stops leaves none behind)."""
        if not self._pending and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def stop(self) -> None:
        """Forget every timeout and the timer (the owner is closing)."""
        self._pending.clear()
        self.disarm()

    def _fire(self) -> None:
        self._timer = None
        # A hair of tolerance: a timer armed at (deadline - now) from now may come due a
        # rounding error before the deadline itself.
        now = self._clock.seconds() + 1e-6
        pending = self._pending
        due = []
        for key, deadline in pending.items():
            if deadline > now:
                break
            due.append(key)
        for key in due:
            # One's timeout may settle another (its owner's callbacks run now).
            if pending.pop(key, None) is not None:
                self._on_timeout(key)
        if self._timer is None and pending:
            oldest = next(iter(pending.values()))
            self._timer = self._clock.callLater(
                max(0.0, oldest - self._clock.seconds()), self._fire
            )
