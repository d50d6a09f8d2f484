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

__all__ = ["json", "text"]


_LEVELS: dict[str, LogLevel] = {level.name: level for level in LogLevel.iterconstants()}


def _level() -> LogLevel:
    name = os.environ.get("CWMPGW_LOG_LEVEL", "info").strip().lower()
    if name not in _LEVELS:
        raise SystemExit(f"CWMPGW_LOG_LEVEL={name!r}: not one of {', '.join(_LEVELS)}")
    return _LEVELS[name]


def _filtered(observer: ILogObserver) -> ILogObserver:
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=_level())])


def text(out: IO[str] | None = None) -> ILogObserver:
    """twistd's text lines on stdout (or ``out``: the .tac files' rotated file), without
    debug events."""
    return _filtered(textFileLogObserver(out or sys.stdout))


def json() -> ILogObserver:
    """One JSON object per line on stdout, for log shippers (Loki, Elasticsearch, ...)."""
    return _filtered(jsonFileLogObserver(sys.stdout, recordSeparator=""))
