"""Several worker processes on one ACS port: one process per core, sharing only Redis.

TLS handshakes dominate a session's cost and Python runs one core per process, so a node
with N cores runs N workers. Worker 0 is the gateway as usual (it owns the embedded Redis,
the northbound API, the STUN server and the command stream); it binds the ACS port with
SO_REUSEPORT and starts workers 1..N-1 as child processes (``python -m cwmpgw.workers``)
that bind the same port the same way, so the kernel spreads new connections over all of
them. A child gets the parent's effective configuration as JSON on its standard input,
with its own node name and the shared Redis. Children that die are restarted; they are
stopped (SIGTERM, then SIGKILL) when the parent stops.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from cwmpgw.config import Config

__all__ = ["WorkerPool", "child_config", "listen_reuseport"]

_RESTART_DELAY = 2.0
_STOP_TIMEOUT = 15.0


def listen_reuseport(reactor: Any, port: int, interface: str, factory: Any) -> IListeningPort:
    """Listen on ``port`` with SO_REUSEPORT, so sibling processes can bind it too."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))  # noqa: S104
        sock.listen(1024)
        sock.setblocking(False)
        listening: IListeningPort = reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # the reactor holds its own duplicate of the descriptor
    return listening


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def child_config(
    config: Config, *, index: int, port: int, redis_url: str, files_url: str = ""
) -> dict[str, Any]:
    """The configuration of worker ``index``: the parent's, minus what only worker 0 runs."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.name == "source":
            continue
        section = _plain(getattr(config, f.name))
        section.pop("target", None)  # derived from redis.url
        data[f.name] = section
    data["provision"]["values"] = [
        {"name": n, "value": v, "type": t} for n, v, t in config.provision.values
    ]
    data["gateway"]["node"] = f"{config.gateway.node_name}-w{index}"
    data["gateway"]["workers"] = 1
    data["acs"]["port"] = port
    data["redis"]["url"] = redis_url
    data["nbi"]["enabled"] = False
    data["connreq"]["enabled"] = False
    data["diagnostics"]["serve"] = False  # worker 0 serves it; the others sign its URLs
    # Worker 0 serves the files; the others hand out links to it.
    data["files"]["listen"] = False
    data["files"]["public_url"] = files_url or config.files.public_url
    metrics_port = config.metrics.port
    data["metrics"]["enabled"] = config.metrics.enabled and metrics_port != 0
    data["metrics"]["port"] = metrics_port + index if metrics_port else 0
    return data


class _Child(ProcessProtocol):
    _log = Logger(namespace="cwmpgw.workers.child")

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(self.pool.configs[self.index]).encode())
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._log.info(
                "worker {index}: {line}", index=self.index, line=line.decode(errors="replace")
            )

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool.ended(self, reason)


class WorkerPool(Service):
    """Starts and supervises workers 1..N-1 of this node."""

    _log = Logger()

    def __init__(self, reactor: Any, configs: dict[int, dict[str, Any]]) -> None:
        self._reactor = reactor
        self.configs = configs
        self._children: dict[int, _Child] = {}
        self._stopping = False

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        for index in self.configs:
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        child = _Child(self, index)
        self._children[index] = child
        env = dict(os.environ)
        self._reactor.spawnProcess(
            child, sys.executable, [sys.executable, "-m", "cwmpgw.worker"], env=env
        )
        self._log.info("started worker {index}", index=index)

    def ended(self, child: _Child, reason: Failure) -> None:
        if self._children.get(child.index) is child:
            del self._children[child.index]
        if self._stopping:
            return
        self._log.warn(
            "worker {index} ended ({reason}); restarting it",
            index=child.index,
            reason=reason.getErrorMessage(),
        )
        self._reactor.callLater(_RESTART_DELAY, self._respawn, child.index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self._children:
            self._spawn(index)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        self._stopping = True
        children = list(self._children.values())

        async def stop() -> None:
            for child in children:
                if child.transport is not None:
                    child.transport.signalProcess("TERM")
            for child in children:
                try:
                    await child.ended.addTimeout(_STOP_TIMEOUT, self._reactor)
                except Exception:
                    if child.transport is not None:
                        child.transport.signalProcess("KILL")

        return Deferred.fromCoroutine(stop())
