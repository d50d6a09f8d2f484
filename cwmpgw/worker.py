"""A worker process of a multi-process node (``python -m cwmpgw.worker``).

Worker 0 (:class:`cwmpgw.workers.WorkerPool`) starts it with its configuration as JSON
on stdin; it serves CWMP sessions on the shared ACS port and logs as text on stdout.
A module of its own, so that the pool does not import the composition root back.
"""

from __future__ import annotations

import json
import signal
import sys


def main() -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from cwmpgw.config import parse_config
    from cwmpgw.service import GatewayService

    config = parse_config(json.loads(sys.stdin.read()))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    service = GatewayService(config, reactor, reuse_port=True)
    service.startService()

    def stop(*_: object) -> None:
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, stop)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
