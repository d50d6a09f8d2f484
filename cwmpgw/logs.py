"""Log observers for ``twistd --logger``: ``twistd -n --logger=cwmpgw.logs.json cwmpgw``.

twistd chooses the observer at the edge; library code only emits events (twisted.logger).
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["json"]


def json() -> ILogObserver:
    """One JSON object per line on stdout, for log shippers (Loki, Elasticsearch, ...)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
