"""The garbage collector's young-generation threshold, raised while a gateway runs.

CPython collects its youngest generation every 700 net allocations of container
objects. A gateway keeps the objects of every session in flight (Deferreds, coroutines,
requests, parsed documents) alive for the session's length, so nearly every young
collection finds them alive, scans them and promotes them, only for the older
generations to scan them again: 8.6% of the gateway's CPU per session went to the
collector on bench/sessions.py (measured with ``gc.callbacks``), nearly all of it in
young and middle collections. With a threshold of 10,000, it was 0.3-1.2%. What the
collector is there for (cycles that reference counting cannot free) is still freed,
after at most 10,000 net allocations instead of 700: a few megabytes at worst.

The threshold is the process's: the first gateway to start in a process raises it, the
last to stop puts back what it found (tests start many gateways in one process).
``gateway.gc_threshold = 0`` leaves CPython's own.
"""

from __future__ import annotations

import gc

from twisted.application.service import Service

__all__ = ["CollectorThreshold"]

_running: list[CollectorThreshold] = []  # started and not yet stopped, in this process
_found: list[tuple[int, int, int]] = []  # the thresholds the first of them found


class CollectorThreshold(Service):
    """Raises the young generation's threshold while it runs (module docstring)."""

    name = "collector"

    def __init__(self, young: int) -> None:
        self.young = young

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        if not _running:
            _found[:] = [gc.get_threshold()]
        _running.append(self)
        _, middle, old = _found[0]
        gc.set_threshold(max(self.young, *(s.young for s in _running)), middle, old)

    def stopService(self) -> None:
        if self in _running:
            _running.remove(self)
            if _running:
                _, middle, old = _found[0]
                gc.set_threshold(max(s.young for s in _running), middle, old)
            else:
                gc.set_threshold(*_found[0])
        super().stopService()  # type: ignore[no-untyped-call]
