"""Timeouts all of one length, on one reactor timer.

A DelayedCall per timeout costs its making, a heap insertion ordered by a Python
``__lt__``, and its cancellation; with a client that starts a thousand connection requests
a second, each with a connect timeout per connection and a total one, the reactor's timers
were ~10% of its CPU (py-spy, bench/connreq.py). Timeouts of one fixed length come due in
the order they were started, so they need no heap: they wait in an insertion-ordered dict
and one timer is armed at the oldest deadline. Cancelling one is a dict removal; the
timer may then come for nothing and is armed again at the oldest left.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["FixedTimeouts"]


class FixedTimeouts:
    """``start(fn)`` calls ``fn`` ``seconds`` from now unless ``cancel`` is called first."""

    def __init__(self, clock: IReactorTime, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError("a timeout must be positive")
        self.seconds = seconds
        self._clock = clock
        self._pending: dict[int, tuple[float, Callable[[], object]]] = {}
        self._tokens = count()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, fn: Callable[[], object]) -> int:
        """A token for :meth:`cancel`."""
        token = next(self._tokens)
        self._pending[token] = (self._clock.seconds() + self.seconds, fn)
        if self._timer is None:
            self._timer = self._clock.callLater(self.seconds, self._fire)
        return token

    def cancel(self, token: int) -> None:
        self._pending.pop(token, None)

    def stop(self) -> None:
        """Forget every timeout and the timer (the owner is closing)."""
        self._pending.clear()
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self) -> None:
        self._timer = None
        # A hair of tolerance: a timer armed at (deadline - now) from now may come due a
        # rounding error before the deadline itself.
        now = self._clock.seconds() + 1e-6
        pending = self._pending
        due = []
        for token, (deadline, _) in pending.items():
            if deadline > now:
                break
            due.append(token)
        for token in due:
            entry = pending.pop(token, None)  # an earlier one's fn may have cancelled it
            if entry is not None:
                entry[1]()
        if self._timer is None and pending:
            oldest = next(iter(pending.values()))[0]
            self._timer = self._clock.callLater(
                max(0.0, oldest - self._clock.seconds()), self._fire
            )
