"""Memory per open, idle TLS session on the ACS endpoint (RSS delta / connections).

    python bench/idle.py [--connections 10000]

Starts a gateway (twistd, external redis-server), measures its RSS, opens N TLS
connections that complete their handshake and then stay silent, measures again.
Target (issue): <= 50 KB per idle session.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import Gateway, report, rss
from twisted.internet import defer, ssl, task
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer


@implementer(IHandshakeListener)
class Idle(Protocol):
    def __init__(self) -> None:
        self.ready: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        # TLS: connectionMade fires before the handshake; writing nothing and waiting
        # for handshakeCompleted is what an idle CPE connection is.
        pass

    def handshakeCompleted(self) -> None:
        if not self.ready.called:
            self.ready.callback(None)


async def main(reactor: Any, connections: int, batch: int) -> None:
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    redis = RedisServer().start()
    # Idle connections must outlive the opening of all of them: the gateway's defences
    # (a first request within acs.first_byte_timeout, at most 1000 connections per
    # address) would close or refuse them and the figure would count fewer sessions.
    gateway = Gateway(
        work,
        redis.url,
        acs_extra="max_new_sessions_per_second = 0\nfirst_byte_timeout = 3600\n"
        "max_connections_per_source = 0",
    ).start()
    protocols: list[Idle] = []
    try:
        options = ssl.optionsForClientTLS(
            "localhost", trustRoot=ssl.Certificate.loadPEM(Path(gateway.cafile).read_bytes())
        )
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", gateway.acs_port, options)
        await task.deferLater(reactor, 1.0, lambda: None)
        before = rss(gateway.pid)
        for start in range(0, connections, batch):
            opened = []
            for _ in range(min(batch, connections - start)):
                p = Idle()
                protocols.append(p)
                opened.append(
                    endpoint.connect(Factory.forProtocol(lambda p=p: p)).addCallback(
                        lambda _p: _p.ready
                    )
                )
            await defer.gatherResults(opened)
        await task.deferLater(reactor, 2.0, lambda: None)
        after = rss(gateway.pid)
        still_open = sum(1 for p in protocols if p.connected)
        assert still_open == connections, f"only {still_open} of {connections} still open"
        per = (after - before) / connections
        report(
            "idle",
            [
                ("idle TLS connections", connections),
                ("gateway RSS before", f"{before / 2**20:.1f} MiB"),
                ("gateway RSS after", f"{after / 2**20:.1f} MiB"),
                ("per idle session", f"{per / 1024:.1f} KB (target <= 50 KB)"),
            ],
            {
                "connections": connections,
                "rss_before": before,
                "rss_after": after,
                "bytes_per_session": round(per),
            },
        )
    finally:
        for p in protocols:
            if p.connected and p.transport is not None:
                p.transport.abortConnection()
        gateway.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    task.react(
        lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args.connections, args.batch))
    )
