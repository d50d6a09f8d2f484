"""Shared test support."""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from cwmpgw.acs.certs import peer_certificate
from cwmpgw.acs.tls import (
    fingerprint_sha256,
)
from tests.support.certfactory import pem


def make_tempdir(case: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="cwmpgw-tls-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


async def listen(case: TestCase, tls: Any) -> tuple[int, ProbeFactory]:
    """A probe server on 127.0.0.1:0 with tls (options or a ReloadableServerTLS)."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint

    factory = ProbeFactory()
    port = await SSL4ServerEndpoint(reactor, 0, tls, interface="127.0.0.1").listen(factory)
    case.addCleanup(port.stopListening)
    # Cleanups run last-in first-out: clients close first, then every server side is waited for.
    case.addCleanup(lambda: gatherResults(factory.lost))
    return port.getHost().port, factory


def client_context(
    cafile: str | None,
    version: ssl.TLSVersion | None = None,
    *,
    cert: tuple[str, str] | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if version is not None:
        ctx.minimum_version = version
        ctx.maximum_version = version
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


def converse(port: int, ctx: ssl.SSLContext) -> dict[str, Any]:
    """Connect, ask once, close; what the client saw, or why it was refused."""
    try:
        client = Client(port, ctx)
    except (ssl.SSLError, ConnectionError) as e:
        return {"refused": str(e)}
    try:
        answer = client.ask()
        return {
            "answer": answer,
            "version": client.tls.version(),
            "cipher": (client.tls.cipher() or ("",))[0],
            "peer": client.peer(),
        }
    except (ssl.SSLError, ConnectionError) as e:
        # TLS 1.3: the client's certificate is judged after the client thinks it is done,
        # so a refusal arrives as an alert on the first read.
        return {"refused": str(e)}
    finally:
        client.close()


@implementer(IHandshakeListener)
class Probe(Protocol):
    """Records each completed handshake; answers every line with its own certificate's
    fingerprint, so a client learns which context its connection was made from."""

    def __init__(self, factory: ProbeFactory, lost: Deferred[None]) -> None:
        self.factory = factory
        self.lost = lost
        self.local_fingerprint = b"?"

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        connection: SSL.Connection = self.transport.getHandle()  # type: ignore[attr-defined]
        local = connection.get_certificate(as_cryptography=True)
        if local is not None:
            self.local_fingerprint = fingerprint_sha256(pem(local)).encode()
        self.factory.handshakes.append(Handshake(peer_certificate(self.transport), local))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.factory.received.append(data)
        for _ in range(data.count(b"\n")):
            self.transport.write(self.local_fingerprint + b"\n")

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.callback(None)


class ProbeFactory(Factory):
    def __init__(self) -> None:
        self.handshakes: list[Handshake] = []
        self.received: list[bytes] = []
        self.lost: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Probe:
        d: Deferred[None] = Deferred()
        self.lost.append(d)
        return Probe(self, d)


class Client:
    """A blocking stdlib TLS client; every method runs in a worker thread (deferToThread)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            self.tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
        except BaseException:
            raw.close()
            raise
        self.buffer = b""

    def ask(self) -> str:
        """One line out, one line back: the server's certificate fingerprint for this link."""
        self.tls.sendall(b"?\n")
        while b"\n" not in self.buffer:
            chunk = self.tls.recv(1024)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def peer(self) -> x509.Certificate:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def close(self) -> None:
        self.tls.close()


@dataclass(frozen=True)
class Handshake:
    """What the server side saw once a handshake completed."""

    peer: x509.Certificate | None  # through cwmpgw.acs.certs.peer_certificate
    local: x509.Certificate | None  # the certificate this connection's context served
