"""The simulated CPE's diagnostics: run after the session that requested them, for real
where that needs no privilege, then reported with ``8 DIAGNOSTICS COMPLETE``.

- IPPing, ServerSelection, TraceRoute: an ICMP echo needs a raw socket (root), so each
  "echo" is a TCP connect to port 7 (echo) of the host, timed to its answer: a SYN-ACK or
  a RST both prove the host answered, as an echo reply would; no answer within Timeout is
  a lost echo. TraceRoute reports one hop, the host itself, with those times.
- DownloadDiagnostics / UploadDiagnostics: a real HTTP GET of DownloadURL (body read and
  counted) and a real HTTP PUT of TestFileLength bytes to UploadURL, timed as TR-143 says
  (ROMTime, BOMTime, EOMTime, TCPOpen*Time).
- NSLookup: never a real DNS query. ``localhost`` (and names under ``.localhost``), IP
  literals and the names of :data:`FAKE_HOSTS` resolve; anything else is "not resolved".

Hosts are resolved the same way everywhere: nothing here reaches an external resolver.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any, Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from cwmpgw.cwmp import diagnostics
from cwmpgw.sim.datamodel import DeviceModel

__all__ = ["FAKE_HOSTS", "resolve", "run_diagnostic"]

#: Names the simulated resolver knows besides localhost (tests may add to it).
FAKE_HOSTS: dict[str, str] = {"gateway.sim": "127.0.0.1"}
_ECHO_PORT: Final = 7
_log = Logger()


def resolve(name: str) -> str | None:
    """The address of ``name`` without any DNS query, or None."""
    name = name.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost"):
        return "127.0.0.1"
    return FAKE_HOSTS.get(name)


def _time(seconds: float) -> str:
    """An xsd:dateTime with microseconds, as TR-143 times are."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _uint(model: DeviceModel, name: str, default: int) -> int:
    try:
        return int(model.value(name, str(default)) or default)
    except ValueError:
        return default


async def _echo(reactor: Any, address: str, timeout: float) -> float | None:
    """Seconds until ``address`` answered a TCP connect to the echo port, or None."""
    cls = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
    endpoint = cls(reactor, address, _ECHO_PORT, timeout=max(timeout, 0.001))
    start: float = reactor.seconds()
    try:
        protocol: Any = await endpoint.connect(Factory.forProtocol(Protocol))
    except ConnectionRefusedError:
        refused: float = reactor.seconds() - start  # a RST is an answer
        return refused
    except (ConnectError, OSError):
        return None
    elapsed: float = reactor.seconds() - start
    if protocol.transport is not None:
        protocol.transport.abortConnection()
    return elapsed


async def _echoes(reactor: Any, address: str, count: int, timeout: float) -> list[float | None]:
    return [await _echo(reactor, address, timeout) for _ in range(max(count, 1))]


def _set(model: DeviceModel, obj: str, **values: object) -> None:
    for name, value in values.items():
        if model.param(obj + name) is not None:
            model.set(obj + name, str(value))


async def run_diagnostic(reactor: Any, model: DeviceModel, obj: str, agent: Agent) -> str:
    """Run the diagnostic at ``obj``; sets its results and DiagnosticsState, returns it."""
    kind = diagnostics.kind_of_object(obj)
    if kind is None:
        return "Error_Internal"
    try:
        state = await _RUNNERS[kind.name](reactor, model, obj, agent)
    except Exception:
        _log.failure("simulated diagnostic {object} failed", object=obj)
        state = "Error_Internal"
    model.set(obj + diagnostics.STATE, state)
    return state


async def _ping(reactor: Any, model: DeviceModel, obj: str, agent: Agent) -> str:
    address = resolve(model.value(obj + "Host"))
    if address is None:
        return "Error_CannotResolveHostName"
    timeout = _uint(model, obj + "Timeout", 1000) / 1000
    times = await _echoes(reactor, address, _uint(model, obj + "NumberOfRepetitions", 3), timeout)
    ok = [t for t in times if t is not None]
    us = [round(t * 1e6) for t in ok] or [0]
    _set(
        model,
        obj,
        IPAddressUsed="127.0.0.1",
        SuccessCount=len(ok),
        FailureCount=len(times) - len(ok),
        AverageResponseTime=round(sum(us) / len(us) / 1000),
        MinimumResponseTime=round(min(us) / 1000),
        MaximumResponseTime=round(max(us) / 1000),
        AverageResponseTimeDetailed=round(sum(us) / len(us)),
        MinimumResponseTimeDetailed=min(us),
        MaximumResponseTimeDetailed=max(us),
    )
    return "Complete"


async def _trace(reactor: Any, model: DeviceModel, obj: str, agent: Agent) -> str:
    host = model.value(obj + "Host")
    address = resolve(host)
    if address is None:
        return "Error_CannotResolveHostName"
    timeout = _uint(model, obj + "Timeout", 5000) / 1000
    times = await _echoes(reactor, address, _uint(model, obj + "NumberOfTries", 3), timeout)
    ms = [round(t * 1000) for t in times if t is not None]
    if not ms:
        return "Error_MaxHopCountExceeded"
    _set(
        model,
        obj,
        IPAddressUsed="127.0.0.1",
        ResponseTime=round(sum(ms) / len(ms)),
        RouteHopsNumberOfEntries=1,
        **{
            "RouteHops.1.Host": host,
            "RouteHops.1.HostAddress": address,
            "RouteHops.1.ErrorCode": 0,
            "RouteHops.1.RTTimes": ",".join(str(m) for m in ms),
        },
    )
    return "Complete"


async def _server_selection(reactor: Any, model: DeviceModel, obj: str, agent: Agent) -> str:
    hosts = [h.strip() for h in model.value(obj + "HostList").split(",") if h.strip()]
    timeout = _uint(model, obj + "Timeout", 1000) / 1000
    count = _uint(model, obj + "NumberOfRepetitions", 3)
    best: tuple[float, str, list[float]] | None = None
    for host in hosts:
        address = resolve(host)
        if address is None:
            continue
        ok = [t for t in await _echoes(reactor, address, count, timeout) if t is not None]
        if ok and (best is None or sum(ok) / len(ok) < best[0]):
            best = (sum(ok) / len(ok), host, ok)
    if best is None:
        return "Error_CannotResolveHostName"
    average, host, ok = best
    _set(
        model,
        obj,
        FastestHost=host,
        IPAddressUsed="127.0.0.1",
        AverageResponseTime=round(average * 1e6),
        MinimumResponseTime=round(min(ok) * 1e6),
        MaximumResponseTime=round(max(ok) * 1e6),
    )
    return "Complete"


async def _nslookup(reactor: Any, model: DeviceModel, obj: str, agent: Agent) -> str:
    name = model.value(obj + "HostName")
    address = resolve(name)
    found = address is not None
    _set(
        model,
        obj,
        SuccessCount=1 if found else 0,
        ResultNumberOfEntries=1,
        **{
            "Result.1.Status": "Success" if found else "Error_HostNameNotResolved",
            "Result.1.AnswerType": "NonAuthoritative" if found else "None",
            "Result.1.HostNameReturned": name if found else "",
            "Result.1.IPAddresses": address or "",
            "Result.1.DNSServerIP": "127.0.0.1",
            "Result.1.ResponseTime": 0,
        },
    )
    return "Complete"


class _Count(Protocol):
    def __init__(self, reactor: Any, done: Deferred[tuple[int, float]]) -> None:
        self._reactor = reactor
        self._done = done
        self.bytes = 0
        self.first: float | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.first is None:
            self.first = self._reactor.seconds()
        self.bytes += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self._done.callback((self.bytes, self.first or self._reactor.seconds()))
        else:
            self._done.errback(reason)


async def _download(reactor: Any, model: DeviceModel, obj: str, agent: Agent) -> str:
    url = model.value(obj + "DownloadURL")
    rom = reactor.seconds()
    try:
        response: IResponse = await agent.request(b"GET", url.encode())
    except Exception:
        return "Error_InitConnectionFailed"
    opened = reactor.seconds()
    if response.code != 200:
        response.deliverBody(Protocol())
        return "Error_NoResponse" if response.code >= 500 else "Error_TransferFailed"
    done: Deferred[tuple[int, float]] = Deferred()
    counter = _Count(reactor, done)
    response.deliverBody(counter)
    try:
        size, bom = await done
    except Exception:
        return "Error_TransferFailed"
    eom = reactor.seconds()
    expected = response.length
    if isinstance(expected, int) and expected != size:
        return "Error_IncorrectSize"
    _set(
        model,
        obj,
        IPAddressUsed="127.0.0.1",
        ROMTime=_time(rom),
        BOMTime=_time(bom),
        EOMTime=_time(eom),
        TestBytesReceived=size,
        TotalBytesReceived=size,
        TotalBytesSent=0,
        TCPOpenRequestTime=_time(rom),
        TCPOpenResponseTime=_time(opened),
    )
    return "Complete"


@implementer(IBodyProducer)
class _Zeros:
    def __init__(self, reactor: Any, size: int) -> None:
        self.length = size
        self._reactor = reactor
        self.started: float | None = None

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self.started = self._reactor.seconds()
        left, chunk = self.length, bytes(65536)
        while left:  # the transport buffers; TR-143 counts from the first byte sent
            n = min(left, len(chunk))
            consumer.write(chunk if n == len(chunk) else chunk[:n])
            left -= n
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


async def _upload(reactor: Any, model: DeviceModel, obj: str, agent: Agent) -> str:
    url = model.value(obj + "UploadURL")
    size = _uint(model, obj + "TestFileLength", 0)
    body = _Zeros(reactor, size)
    rom = reactor.seconds()
    try:
        response: IResponse = await agent.request(
            b"PUT",
            url.encode(),
            Headers({b"content-type": [b"application/octet-stream"]}),
            body,
        )
    except Exception:
        return "Error_InitConnectionFailed"
    eom = reactor.seconds()
    response.deliverBody(Protocol())
    if response.code not in (200, 201, 204):
        return "Error_NoResponse" if response.code >= 500 else "Error_TransferFailed"
    _set(
        model,
        obj,
        IPAddressUsed="127.0.0.1",
        ROMTime=_time(rom),
        BOMTime=_time(body.started or rom),
        EOMTime=_time(eom),
        TestBytesSent=size,
        TotalBytesSent=size,
        TotalBytesReceived=0,
        TCPOpenRequestTime=_time(rom),
        TCPOpenResponseTime=_time(body.started or rom),
    )
    return "Complete"


_RUNNERS: Final = {
    "IPPing": _ping,
    "TraceRoute": _trace,
    "ServerSelection": _server_selection,
    "NSLookup": _nslookup,
    "DownloadDiagnostics": _download,
    "UploadDiagnostics": _upload,
}


def make_agent(reactor: Any, tls: Any, timeout: float) -> tuple[Agent, HTTPConnectionPool]:
    """An HTTP client for the throughput tests: a connection per test (as a CPE opens one)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    return Agent(reactor, contextFactory=tls, connectTimeout=timeout, pool=pool), pool
