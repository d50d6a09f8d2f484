"""Deferreds waiting for one thing to happen (``whenReady``, ``whenDrained`` …).

Each waiter can be cancelled on its own (a caller that gives up leaves the others
waiting); firing hands the list over first, so a callback that waits again waits for the
next time.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["Waiters"]

T = TypeVar("T")


class Waiters(Generic[T]):
    def __init__(self) -> None:
        self._waiting: list[Deferred[T]] = []

    def wait(self) -> Deferred[T]:
        d: Deferred[T] = Deferred(self._waiting.remove)
        self._waiting.append(d)
        return d

    def fire(self, result: T) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(result)

    def fail(self, failure: Failure | BaseException) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)
