"""Log observers for ``twistd --logger``: ``twistd -n --logger=cwmpgw.logs.text cwmpgw``.

twistd chooses the observer at the edge; library code only emits events (twisted.logger).
twistd's own observer writes every event, debug included (one per connection request and
per RPC sent: ~10% of the connection-request client's CPU, measured with
bench/connreq.py); these write ``info`` and above unless ``CWMPGW_LOG_LEVEL`` says
otherwise (debug, info, warn, error, critical).
"""

from __future__ import annotations

import os
import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

__all__ = ["debug_wanted", "json", "text"]


_LEVELS: dict[str, LogLevel] = {level.name: level for level in LogLevel.iterconstants()}


def _level() -> LogLevel:
    name = os.environ.get("CWMPGW_LOG_LEVEL", "info").strip().lower()
    if name not in _LEVELS:
        raise SystemExit(f"CWMPGW_LOG_LEVEL={name!r}: not one of {', '.join(_LEVELS)}")
    return _LEVELS[name]


# Whether a debug event can reach an observer. The observers below set it: with twistd's
# --logger (or a .tac's ILogObserver) one of them is the only observer, so when it drops
# debug events the lines every session would emit need not be built (a filtered
# Logger.debug still costs ~8 µs: its event dict, the publisher, the filter; about 2% of a
# session's CPU for the three of them). Without them (twistd's own observer, tests) it
# stays True: every debug line is emitted.
_debug = [True]


def debug_wanted() -> bool:
    """False when the installed observer drops debug events (per-session lines skip)."""
    return _debug[0]


def _filtered(observer: ILogObserver) -> ILogObserver:
    level = _level()
    _debug[0] = level is LogLevel.debug
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=level)])


def text(out: IO[str] | None = None) -> ILogObserver:
    """twistd's text lines on stdout (or ``out``: the .tac files' rotated file), without
    debug events."""
    return _filtered(textFileLogObserver(out or sys.stdout))


def json() -> ILogObserver:
    """One JSON object per line on stdout, for log shippers (Loki, Elasticsearch, ...)."""
    return _filtered(jsonFileLogObserver(sys.stdout, recordSeparator=""))
