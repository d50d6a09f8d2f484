"""HttpConnectionRequester against scripted CPEs on real loopback sockets.

The scripted CPE checks Digest responses itself, with hashlib and the RFC formulas,
never with the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from cwmpgw.acs.tls import ensure_self_signed, server_options
from cwmpgw.connreq.guard import Target, parse_http_url
from cwmpgw.connreq.http import HttpAttempt, HttpConnectionRequester

reactor: Any = _reactor

USER, PASSWORD = "acs-user", "Cr-Pa55w0rd!"
PATH = "/cr/8f3a1c"

_PARAM = re.compile(r'(\w+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))')
_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def _auth_params(value: str) -> dict[str, str]:
    return {
        m.group(1).lower(): (
            re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
        )
        for m in _PARAM.finditer(value)
    }


@dataclass
class Seen:
    host: str
    port: int
    uri: str
    authorization: str | None


class ScriptedCPE(Resource):
    """A CPE's connection-request handler: challenges, checks, answers as scripted."""

    isLeaf = True

    def __init__(
        self,
        *,
        scheme: str = "digest",
        algorithms: tuple[str, ...] = ("MD5",),
        qop: bool = True,
        stale: int = 0,
        status: int = 200,
        body: bytes = b"",
        challenge_body: bytes = b"",
        extra_headers: dict[bytes, bytes] | None = None,
        raw_challenges: list[bytes] | None = None,
    ) -> None:
        super().__init__()
        self.scheme = scheme
        self.algorithms = algorithms
        self.qop = qop
        self.stale_left = stale  # how many valid responses still get stale=true
        self.status = status
        self.body = body
        self.challenge_body = challenge_body
        self.extra_headers = extra_headers or {}
        self.raw_challenges = raw_challenges
        self.realm = "CPE realm"
        self.opaque = os.urandom(8).hex()
        self.nonce = ""
        self.seen: list[Seen] = []
        self.accepted: list[dict[str, str]] = []

    def render_GET(self, request: Any) -> bytes:
        addr = request.getClientAddress()
        auth = request.getHeader(b"authorization")
        self.seen.append(
            Seen(addr.host, addr.port, request.uri.decode(), auth.decode() if auth else None)
        )
        for name, value in self.extra_headers.items():
            request.setHeader(name, value)
        if self.scheme == "none":
            return self.answer(request)
        if auth is None:
            return self.challenge(request)
        text = auth.decode()
        if self.scheme == "basic":
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            return self.answer(request) if text == expected else self.challenge(request)
        params = _auth_params(text.partition(" ")[2])
        if not text.startswith("Digest ") or not self.valid(params, request.uri.decode()):
            return self.challenge(request)
        self.accepted.append(params)
        if self.stale_left:
            self.stale_left -= 1
            return self.challenge(request, stale=True)
        return self.answer(request)

    def answer(self, request: Any) -> bytes:
        request.setResponseCode(self.status)
        if self.status in (301, 302, 307):
            request.setHeader(b"location", self.body)
            return b""
        return self.body

    def challenge(self, request: Any, *, stale: bool = False) -> bytes:
        request.setResponseCode(401)
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        if self.raw_challenges is not None:
            values = self.raw_challenges
        elif self.scheme == "basic":
            values = [f'Basic realm="{self.realm}"'.encode()]
        else:
            values = []
            for algorithm in self.algorithms:
                value = f'Digest realm="{self.realm}", nonce="{self.nonce}", opaque="{self.opaque}"'
                if self.qop:
                    value += f', qop="auth", algorithm={algorithm}'
                if stale:
                    value += ", stale=true"
                values.append(value.encode())
        for value in values:
            request.responseHeaders.addRawHeader(b"www-authenticate", value)
        return self.challenge_body

    def valid(self, p: dict[str, str], uri: str) -> bool:
        """RFC 7616 / RFC 2069 verification, written out with hashlib."""
        algorithm = p.get("algorithm", "MD5")
        sess = algorithm.upper().endswith("-SESS")
        base = algorithm.upper().removesuffix("-SESS")
        if base not in _HASH or (algorithm not in self.algorithms and self.qop):
            return False

        def H(s: str) -> str:
            return _HASH[base](s.encode()).hexdigest()

        if (p.get("username"), p.get("realm"), p.get("nonce"), p.get("uri")) != (
            USER,
            self.realm,
            self.nonce,
            uri,
        ) or p.get("opaque") != self.opaque:
            return False
        ha1 = H(f"{USER}:{self.realm}:{PASSWORD}")
        ha2 = H(f"GET:{uri}")
        if self.qop:
            if p.get("qop") != "auth" or not re.fullmatch("[0-9a-f]{8}", p.get("nc", "")):
                return False
            if sess:
                ha1 = H(f"{ha1}:{self.nonce}:{p['cnonce']}")
            expected = H(f"{ha1}:{self.nonce}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
        else:
            if "qop" in p or "nc" in p:
                return False
            expected = H(f"{ha1}:{self.nonce}:{ha2}")
        return hmac.compare_digest(expected, p.get("response", ""))


class TrackingSite(Site):
    """A Site whose every connection reports its end, so tests leave a clean reactor."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.lost: list[Deferred[None]] = []
        self.noisy = False

    def log(self, request: Any) -> None:
        """No access log: it would name the URL path in the captured log events."""

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        lost: Deferred[None] = Deferred()
        self.lost.append(lost)
        original = channel.connectionLost

        def connection_lost(reason: Failure) -> None:
            original(reason)
            lost.callback(None)

        channel.connectionLost = connection_lost
        return channel


class Silent(Protocol):
    """Accepts and never answers (or closes at once, if asked)."""

    def __init__(self, lost: Deferred[None], close: bool) -> None:
        self.lost = lost
        self.close = close

    def dataReceived(self, data: bytes) -> None:
        if self.close:
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.callback(None)


class SilentFactory(Factory):
    def __init__(self, close: bool = False) -> None:
        self.lost: list[Deferred[None]] = []
        self.close = close

    def buildProtocol(self, addr: Any) -> Silent:
        d: Deferred[None] = Deferred()
        self.lost.append(d)
        return Silent(d, self.close)


class Base(TestCase):
    timeout = 20

    def listen(self, factory: Any, *, tls: Any = None) -> int:
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        # Cleanups run last-in first-out: server connections end before the port closes.
        self.addCleanup(lambda: gatherResults(list(factory.lost)))
        return int(port.getHost().port)

    def cpe(self, resource: ScriptedCPE, *, tls: Any = None) -> tuple[str, ScriptedCPE]:
        port = self.listen(TrackingSite(resource), tls=tls)
        scheme = "https" if tls is not None else "http"
        return f"{scheme}://127.0.0.1:{port}{PATH}?k=1", resource

    def requester(self, **kw: Any) -> HttpConnectionRequester:
        kw.setdefault("connect_timeout", 2.0)
        kw.setdefault("total_timeout", 5.0)
        r = HttpConnectionRequester(reactor, **kw)
        self.addCleanup(r.close)
        return r

    async def attempt(
        self, url: str, *, password: str = PASSWORD, allow_basic: bool = False, **kw: Any
    ) -> HttpAttempt:
        attempt = await self.requester(**kw).request(url, USER, password, allow_basic=allow_basic)
        self.assertNotIn(PASSWORD, attempt.detail)
        self.assertNotIn("Digest", attempt.detail)
        self.assertNotIn(PATH, attempt.detail)
        return attempt

    def assertNewConnectionEachTime(self, cpe: ScriptedCPE) -> None:
        ports = [s.port for s in cpe.seen]
        self.assertEqual(len(set(ports)), len(ports), ports)


class AuthTests(Base):
    async def test_digest_md5(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(algorithms=("MD5",)))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("ok", 200))
        self.assertEqual(len(cpe.seen), 2)
        self.assertIsNone(cpe.seen[0].authorization)
        self.assertEqual(cpe.accepted[0]["algorithm"], "MD5")
        self.assertEqual(cpe.accepted[0]["uri"], f"{PATH}?k=1")
        self.assertEqual(cpe.accepted[0]["nc"], "00000001")
        self.assertNewConnectionEachTime(cpe)

    async def test_the_target_the_guard_parsed(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(algorithms=("MD5",)))
        target = parse_http_url(url)
        assert isinstance(target, Target)
        attempt = await self.requester().request(target, USER, PASSWORD)
        self.assertEqual((attempt.outcome, attempt.status), ("ok", 200))
        self.assertEqual(cpe.accepted[0]["uri"], f"{PATH}?k=1")

    async def test_digest_sha256_preferred(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(algorithms=("MD5", "SHA-256"), status=204))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("ok", 204))
        self.assertEqual([p["algorithm"] for p in cpe.accepted], ["SHA-256"])

    async def test_digest_md5_sess(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(algorithms=("MD5-sess",)))
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "ok")
        self.assertEqual(cpe.accepted[0]["algorithm"], "MD5-sess")

    async def test_digest_rfc2069_without_qop(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(qop=False))
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "ok")
        self.assertNotIn("qop", cpe.accepted[0])
        self.assertNotIn("cnonce", cpe.accepted[0])

    async def test_basic_only_when_allowed(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(scheme="basic"))
        refused = await self.attempt(url)
        self.assertEqual((refused.outcome, refused.status), ("auth_failed", 401))
        self.assertIn("Basic not allowed", refused.detail)
        self.assertEqual(len(cpe.seen), 1)  # the password never went out

        accepted = await self.attempt(url, allow_basic=True)
        self.assertEqual(accepted.outcome, "ok")
        self.assertEqual(len(cpe.seen), 3)
        self.assertTrue((cpe.seen[2].authorization or "").startswith("Basic "))

    async def test_unanswerable_username(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(scheme="basic"))
        attempt = await self.requester().request(url, "a:b", PASSWORD, allow_basic=True)
        self.assertEqual((attempt.outcome, attempt.status), ("error", 401))
        self.assertEqual(
            attempt.detail, "cannot answer the challenge: a Basic username cannot contain ':'"
        )
        self.assertEqual(len(cpe.seen), 1)

    async def test_wrong_password(self) -> None:
        url, cpe = self.cpe(ScriptedCPE())
        attempt = await self.attempt(url, password="wrong")
        self.assertEqual((attempt.outcome, attempt.status), ("auth_failed", 401))
        self.assertEqual(len(cpe.seen), 2)

    async def test_stale_once_then_ok(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(algorithms=("SHA-256",), stale=1))
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "ok")
        self.assertEqual(len(cpe.seen), 3)
        self.assertEqual(len(cpe.accepted), 2)
        self.assertNotEqual(cpe.accepted[0]["nonce"], cpe.accepted[1]["nonce"])
        self.assertNewConnectionEachTime(cpe)

    async def test_stale_twice_gives_up(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(stale=5))
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "auth_failed")
        self.assertEqual(len(cpe.seen), 3)

    async def test_cpe_closes_after_challenge(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(extra_headers={b"connection": b"close"}))
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "ok")
        self.assertNewConnectionEachTime(cpe)

    async def test_no_auth_asked(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(scheme="none"))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("ok", 200))
        self.assertEqual(len(cpe.seen), 1)

    async def test_malformed_challenge(self) -> None:
        url, _ = self.cpe(ScriptedCPE(raw_challenges=[b'Digest realm="unterminated']))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("error", 401))
        self.assertIn("malformed WWW-Authenticate", attempt.detail)

    async def test_unsupported_challenge(self) -> None:
        url, _ = self.cpe(
            ScriptedCPE(
                raw_challenges=[b"Negotiate", b"Digest realm=r, nonce=n, algorithm=SHA-512"]
            )
        )
        attempt = await self.attempt(url, allow_basic=True)
        self.assertEqual(attempt.outcome, "auth_failed")

    async def test_large_bodies_are_cut(self) -> None:
        big = b"x" * 300_000
        url, cpe = self.cpe(ScriptedCPE(body=big, challenge_body=big))
        attempt = await self.attempt(url, max_body=1024)
        self.assertEqual(attempt.outcome, "ok")
        self.assertEqual(len(cpe.seen), 2)

    async def test_no_secret_in_logs(self) -> None:
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        url, _ = self.cpe(ScriptedCPE())
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "ok")
        text = "\n".join(str(formatEvent(e)) + repr(e) for e in events)
        self.assertIn("Connection request to 127.0.0.1", text)
        for secret in (PASSWORD, "response=", PATH, "Starting factory"):
            self.assertNotIn(secret, text)


class StatusTests(Base):
    async def test_503_is_busy(self) -> None:
        url, _ = self.cpe(ScriptedCPE(status=503))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("busy", 503))

    async def test_503_before_auth_is_busy(self) -> None:
        url, _ = self.cpe(ScriptedCPE(scheme="none", status=503))
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "busy")

    async def test_redirect_not_followed(self) -> None:
        elsewhere = ScriptedCPE(scheme="none")
        target, _ = self.cpe(elsewhere)
        url, cpe = self.cpe(ScriptedCPE(scheme="none", status=302, body=target.encode()))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("error", 302))
        self.assertIn("redirect not followed", attempt.detail)
        self.assertEqual(len(cpe.seen), 1)
        self.assertEqual(elsewhere.seen, [])

    async def test_redirect_after_auth_not_followed(self) -> None:
        elsewhere = ScriptedCPE(scheme="none")
        target, _ = self.cpe(elsewhere)
        url, _ = self.cpe(ScriptedCPE(status=307, body=target.encode()))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("error", 307))
        self.assertEqual(elsewhere.seen, [])

    async def test_other_status(self) -> None:
        url, _ = self.cpe(ScriptedCPE(status=404))
        attempt = await self.attempt(url)
        self.assertEqual((attempt.outcome, attempt.status), ("error", 404))


class NetworkTests(Base):
    async def test_never_answers_times_out(self) -> None:
        factory = SilentFactory()
        port = self.listen(factory)
        attempt = await self.attempt(f"http://127.0.0.1:{port}/", total_timeout=0.3)
        self.assertEqual((attempt.outcome, attempt.status), ("timeout", None))
        self.assertEqual(len(factory.lost), 1)

    async def test_slow_body_after_final_status_is_still_ok(self) -> None:
        class Stall(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> int:
                request.setHeader(b"content-length", b"100")
                request.write(b"partial")
                return 1  # NOT_DONE_YET: the body never completes

        site = TrackingSite(Stall())
        port = self.listen(site)
        attempt = await self.attempt(f"http://127.0.0.1:{port}/", total_timeout=0.3)
        self.assertEqual((attempt.outcome, attempt.status), ("ok", 200))

    async def test_closed_without_answer(self) -> None:
        port = self.listen(SilentFactory(close=True))
        attempt = await self.attempt(f"http://127.0.0.1:{port}/")
        self.assertEqual(attempt.outcome, "error")
        self.assertEqual(attempt.detail, "connection closed before a response")

    async def test_closed_port_is_unreachable(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
            port = s.getsockname()[1]
            attempt = await self.attempt(f"http://127.0.0.1:{port}/")
        self.assertEqual((attempt.outcome, attempt.detail), ("unreachable", "connection refused"))

    async def test_bind_address(self) -> None:
        url, cpe = self.cpe(ScriptedCPE())
        attempt = await self.attempt(url, bind_address="127.0.0.2")
        self.assertEqual(attempt.outcome, "ok")
        self.assertEqual({s.host for s in cpe.seen}, {"127.0.0.2"})

    async def test_ipv6_loopback(self) -> None:
        cpe = ScriptedCPE()
        site = TrackingSite(cpe)
        try:
            port = reactor.listenTCP(0, site, interface="::1")
        except CannotListenError as e:
            raise SkipTest(f"no IPv6 loopback here: {e}") from e
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: gatherResults(list(site.lost)))
        attempt = await self.attempt(f"http://[::1]:{port.getHost().port}{PATH}")
        self.assertEqual(attempt.outcome, "ok")
        self.assertEqual({s.host for s in cpe.seen}, {"::1"})

    async def test_bind_family_mismatch(self) -> None:
        attempt = await self.attempt("http://[::1]:7547/", bind_address="127.0.0.1")
        self.assertEqual(attempt.outcome, "error")
        self.assertIn("bind address", attempt.detail)

    async def test_refused_urls_do_no_io(self) -> None:
        for url, reason in [
            ("http://localhost:7547/", "hostname not allowed"),
            ("ftp://127.0.0.1/", "scheme not allowed"),
            ("http://u:p@127.0.0.1/", "userinfo not allowed"),
            ("not a url", "malformed URL"),
        ]:
            attempt = await self.attempt(url)
            self.assertEqual(
                (attempt.outcome, attempt.status, attempt.detail), ("error", None, reason)
            )

    async def test_close_cancels_in_flight(self) -> None:
        factory = SilentFactory()
        port = self.listen(factory)
        requester = self.requester(total_timeout=10)
        d = requester.request(f"http://127.0.0.1:{port}/", USER, PASSWORD)
        while not factory.lost:  # wait until connected
            await _tick()
        await requester.close()
        attempt = await d
        self.assertEqual((attempt.outcome, attempt.detail), ("error", "cancelled"))
        after = await requester.request(f"http://127.0.0.1:{port}/", USER, PASSWORD)
        self.assertEqual(after.detail, "requester closed")


class TLSTests(Base):
    def tls(self) -> Any:
        directory = tempfile.mkdtemp(prefix="cwmpgw-cr-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        (cert_path, key_path), _ = ensure_self_signed(directory)
        return server_options(cert_path, key_path)

    async def test_https_self_signed_accepted_by_default(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(algorithms=("SHA-256",)), tls=self.tls())
        self.assertTrue(url.startswith("https://"))
        attempt = await self.attempt(url)
        self.assertEqual(attempt.outcome, "ok")
        self.assertEqual(len(cpe.accepted), 1)

    async def test_https_verified_refuses_self_signed(self) -> None:
        url, cpe = self.cpe(ScriptedCPE(), tls=self.tls())
        attempt = await self.attempt(url, verify_tls=True)
        self.assertEqual(attempt.outcome, "error")
        self.assertEqual(attempt.detail, "TLS certificate verification failed")
        self.assertEqual(cpe.seen, [])


def _tick() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d
