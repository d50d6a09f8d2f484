"""The whole ACS HTTP stack in memory: real Site, channel, resource and engine, no sockets.

Stores and the event bus are the in-memory providers; time is a Clock. Each
``Connection`` is one TCP connection (a StringTransport) speaking raw HTTP/1.1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from cwmpgw.acs.auth import CpeAuthenticator, DeviceCredentialsChecker
from cwmpgw.acs.engine import AcsEngine
from cwmpgw.acs.resource import AcsChannel, AcsResource, AcsSite
from cwmpgw.acs.throttle import IAuthThrottle
from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.session import AcsRequest
from cwmpgw.sessions import IRequestSource, LiveSession, NoRequests
from cwmpgw.store.memory import MemoryCredentialStore, MemoryDeviceStore
from cwmpgw.web.digest import DigestCredentialFactory, ha1
from tests.support import digest_client

REALM = "cwmpgw"


@implementer(ISSLTransport)
class SecureStringTransport(StringTransport):
    """A StringTransport that says it is TLS, so request.isSecure() is True."""

    def getPeerCertificate(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def parse_responses(data: bytes) -> list[Response]:
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response: {data!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, list[str]] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), []).append(v.strip())
        length = int(headers.get("content-length", ["0"])[0])
        out.append(Response(status, headers, rest[:length]))
        data = rest[length:]
    return out


class Connection:
    def __init__(self, site: AcsSite, *, secure: bool, peer: str = "192.0.2.10") -> None:
        self.protocol = site.buildProtocol(IPv4Address("TCP", peer, 40000))
        self.transport = SecureStringTransport() if secure else StringTransport()
        self.transport.peerAddr = IPv4Address("TCP", peer, 40000)
        self.protocol.makeConnection(self.transport)
        self.cookie: str | None = None

    def post(
        self,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        path: str = "/",
        method: str = "POST",
    ) -> Response:
        hdrs = {"Host": "acs.test", "Content-Length": str(len(body))}
        if body:
            hdrs["Content-Type"] = 'text/xml; charset="utf-8"'
        if self.cookie:
            hdrs["Cookie"] = self.cookie
        hdrs.update(headers or {})
        raw = (
            f"{method} {path} HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
            + "\r\n"
        )
        self.transport.clear()
        self.protocol.dataReceived(raw.encode() + body)
        responses = parse_responses(self.transport.value())
        assert len(responses) == 1, responses
        response = responses[0]
        set_cookie = response.header("set-cookie")
        if set_cookie:
            self.cookie = set_cookie.split(";")[0]
        return response

    def send(self, raw: bytes) -> bytes:
        """Feed raw bytes to the connection; returns what it wrote back since the last send."""
        self.transport.clear()
        self.protocol.dataReceived(raw)
        return self.transport.value()

    @property
    def closing(self) -> bool:
        """The server closed (or aborted) the connection."""
        return bool(self.transport.disconnecting)

    def close(self) -> None:
        self.protocol.connectionLost(
            __import__("twisted.python.failure").python.failure.Failure(ConnectionError("closed"))
        )


@dataclass
class MemoryAcs:
    schemes: tuple[str, ...] = ("digest",)
    algorithms: tuple[str, ...] = ("MD5", "SHA-256")
    enroll: bool = False
    basic_without_tls: bool = False
    hold_requests: bool = False
    requests: IRequestSource | None = None
    admission: Any = None
    budget: Any = None  # SourceBudget of unauthenticated bytes
    lock: Any = None
    node: str = "test-node"
    max_body_bytes: int = 262_144
    session_timeout: float = 30.0
    throttle: IAuthThrottle | None = None
    nonce_claims: Any = None  # INonceClaims shared by "processes" of one fleet
    site_options: dict[str, Any] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)
    devices: MemoryDeviceStore = field(default_factory=MemoryDeviceStore)
    credentials: MemoryCredentialStore = field(default_factory=MemoryCredentialStore)
    bus: MemoryEventBus = field(default_factory=MemoryEventBus)

    def __post_init__(self) -> None:
        self.clock.advance(1_700_000_000)
        self.engine = AcsEngine(
            clock=self.clock,
            devices=self.devices,
            events=self.bus,
            requests=self.requests,
            node=self.node,
            lock=self.lock,
            session_timeout=self.session_timeout,
            hold_requests=self.hold_requests,
        )
        checker = DeviceCredentialsChecker(
            self.credentials,
            REALM,
            bootstrap_username="bootstrap" if self.enroll else None,
            bootstrap_password="bootstrap-secret" if self.enroll else None,
        )
        digest = DigestCredentialFactory(
            REALM, clock=self.clock, algorithms=self.algorithms, secret=b"k" * 32
        )
        self.authenticator = CpeAuthenticator(
            checker,
            digest,
            schemes=self.schemes,
            realm=REALM,
            basic_without_tls=self.basic_without_tls,
            nonce_claims=self.nonce_claims,
        )
        self.resource = AcsResource(
            self.engine,
            self.authenticator,
            self.credentials,
            max_body_bytes=self.max_body_bytes,
            throttle=self.throttle,
            admission=self.admission,
            budget=self.budget,
        )
        self.site = AcsSite(self.resource, reactor=self.clock, **self.site_options)

    def add_device(self, device_id: str, username: str, password: str) -> None:
        self.credentials.set(
            device_id, username, {a: ha1(a, username, REALM, password) for a in ("MD5", "SHA-256")}
        )

    def connect(self, *, secure: bool = False, peer: str = "192.0.2.10") -> Connection:
        return Connection(self.site, secure=secure, peer=peer)


def digest_post(
    conn: Connection,
    body: bytes,
    username: str,
    password: str,
    *,
    algorithm: str = "MD5",
    nc: int = 1,
) -> Response:
    """POST with no credentials, answer the Digest challenge, POST again on the same connection."""
    first = conn.post(body)
    assert first.status == 401, first
    challenge = digest_client.pick(first.headers["www-authenticate"], algorithm)
    auth = digest_client.authorization(challenge, username, password, nc=nc)
    return conn.post(body, {"Authorization": auth})


def assert_refused(case: Any, site: Any, addr: IPv4Address) -> None:
    """A connection over a cap is closed the moment it is made: no channel, nothing sent."""
    protocol = site.buildProtocol(addr)
    case.assertNotIsInstance(protocol, AcsChannel)
    transport = StringTransport()
    protocol.makeConnection(transport)
    case.assertTrue(transport.disconnecting)
    case.assertEqual(transport.value(), b"")


DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"


USER = DEVICE_ID


PASSWORD = "s3cret-Pa55word"


class OneRequest(NoRequests):
    """A request source with one GetParameterValues, to exercise the ACS's turn."""

    def __init__(self) -> None:
        self.sent = False
        self.answers: list[object] = []

    def next_request(self, session: LiveSession) -> Deferred[AcsRequest | None]:
        if self.sent:
            return succeed(None)
        self.sent = True
        body = soap.get_parameter_values(session.machine.namespace, "acs-1", ["Device.DeviceInfo."])
        return succeed(AcsRequest("GetParameterValues", "acs-1", body))

    def answered(
        self, session: LiveSession, request: AcsRequest, response: object
    ) -> Deferred[None]:
        self.answers.append(response)
        return succeed(None)
