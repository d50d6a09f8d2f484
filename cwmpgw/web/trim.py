"""Give the memory of a connection flood back to the system once the crowd has gone.

Each TLS connection costs ~35 KB (OpenSSL's buffers and state, the channel, the request);
freed, it goes back to glibc's malloc, which keeps it in the heap for reuse: a flood of a
few thousand connections left a gateway 20 to 50 MiB larger for good (docs/performance.md,
"Memory after a flood"). ``malloc_trim(0)`` returns the free pages; it costs a few ms on a
heap of a hundred MiB, so it runs only when the open connections have dropped well below a
high-water mark, at most once per ``interval``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["FloodMemory", "malloc_trim"]


def _load_trim() -> Callable[[], object] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return None
    if trim is None:
        return None  # not glibc (musl, macOS): nothing to do
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_TRIM = _load_trim()


def malloc_trim() -> None:
    """Return glibc's free heap pages to the system; nothing elsewhere."""
    if _TRIM is not None:
        _TRIM()


class FloodMemory:
    """Watches a count of open connections and trims once a flood has drained.

    A flood is ``threshold`` connections above the lowest count seen since the last trim;
    it has drained when the count is back within a quarter of that rise.
    """

    def __init__(
        self,
        trim: Callable[[], None] = malloc_trim,
        *,
        threshold: int = 500,
        interval: float = 30.0,
    ) -> None:
        self._trim = trim
        self.threshold = threshold
        self.interval = interval
        self._low = 0
        self._high = 0
        self._last = float("-inf")
        self.trims = 0

    def note(self, open_connections: int, now: float) -> None:
        if open_connections > self._high:
            self._high = open_connections
            return
        if open_connections < self._low:
            self._low = open_connections
        rise = self._high - self._low
        if rise < self.threshold or open_connections > self._low + rise // 4:
            return
        if now - self._last < self.interval:
            return
        self._last = now
        self.trims += 1
        self._trim()
        self._low = self._high = open_connections
