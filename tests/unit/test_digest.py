"""Tests for cwmpgw.web.digest: RFC 7616 Digest with SHA-256, replay protection, strict parsing."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernameDigestHash
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.guard import HTTPAuthSessionWrapper
from twisted.web.iweb import ICredentialFactory, IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.test._util import _render
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from cwmpgw.web.digest import (
    DigestCredentialFactory,
    DigestCredentials,
    _parse_auth_params,
    _parse_auth_params_strictly,
    compute_response,
    ha1,
    hash_hex,
)

REALM = "cwmpgw"
USER = "00D09E-Router-0001"
PASSWORD = "s3cret pa55"
URI = b"/acs"
SECRET = b"0123456789abcdef0123456789abcdef"


def make_request(uri: bytes = URI, method: bytes = b"POST") -> DummyRequest:
    request = DummyRequest([])
    request.uri = uri
    request.method = method
    return request


def parse_challenge(value: bytes) -> dict[str, str]:
    """A deliberately independent client-side reading of a WWW-Authenticate value."""
    assert value[:7].lower() == b"digest "
    pairs = re.findall(r'([a-z]+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]+))', value[7:].decode())
    return {k: (q if q else b) for k, q, b in pairs}


def client_response(
    algorithm: str,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    nc: str,
    cnonce: str,
    method: str,
    uri: str,
) -> str:
    """The CPE's side, with hashlib directly rather than the module under test."""
    h = hashlib.md5 if algorithm == "MD5" else hashlib.sha256
    a1 = h(f"{username}:{realm}:{password}".encode()).hexdigest()
    a2 = h(f"{method}:{uri}".encode()).hexdigest()
    return h(f"{a1}:{nonce}:{nc}:{cnonce}:auth:{a2}".encode()).hexdigest()


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(challenge: dict[str, str], **override: str | None) -> bytes:
    """An Authorization value (after the scheme) answering ``challenge``; None drops a field."""
    algorithm = challenge["algorithm"]
    fields: dict[str, str | None] = {
        "username": USER,
        "realm": challenge["realm"],
        "nonce": challenge["nonce"],
        "uri": URI.decode(),
        "algorithm": algorithm,
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "0a4f113b",
        "opaque": challenge["opaque"],
        "method": "POST",  # not sent; only used to compute the response
        "password": PASSWORD,  # not sent
    }
    fields.update(override)
    if "response" not in override:
        fields["response"] = client_response(
            algorithm,
            fields["username"] or "",
            fields["password"] or "",
            fields["realm"] or "",
            fields["nonce"] or "",
            fields["nc"] or "",
            fields["cnonce"] or "",
            fields["method"] or "",
            fields["uri"] or "",
        )
    parts = []
    for name in ("username", "realm", "nonce", "uri", "algorithm", "response", "opaque"):
        if fields.get(name) is not None:
            value = fields[name] or ""
            parts.append(f"{name}={value if name == 'algorithm' else quote(value)}")
    for name in ("qop", "nc", "cnonce"):
        if fields.get(name) is not None:
            value = fields[name] or ""
            parts.append(f"{name}={quote(value) if name == 'cnonce' else value}")
    return ", ".join(parts).encode()


@implementer(ICredentialsChecker)
class HA1Checker:
    """A minimal checker over stored HA1 values, as the credential store keeps them."""

    credentialInterfaces = (IUsernameDigestHash,)

    def __init__(self, ha1s: dict[tuple[str, str], str]) -> None:
        self.ha1s = ha1s

    def requestAvatarId(self, credentials: ICredentials) -> Deferred[str]:
        assert isinstance(credentials, DigestCredentials)
        stored = self.ha1s.get((credentials.username, credentials.algorithm))
        if stored is not None and credentials.checkHash(stored):
            return succeed(credentials.username)
        d: Deferred[str] = Deferred()
        d.errback(UnauthorizedLogin("bad digest"))
        return d


@implementer(IRealm)
class EchoRealm:
    def requestAvatar(
        self, avatarId: str, mind: object, *interfaces: type
    ) -> tuple[type, str, Callable[[], None]]:
        return interfaces[0], avatarId, lambda: None


class VectorTests(SynchronousTestCase):
    """RFC 7616 section 3.9.1."""

    NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"

    def vector(self, algorithm: str) -> str:
        h = ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
        return compute_response(
            algorithm, h, self.NONCE, "00000001", self.CNONCE, "auth", "GET", "/dir/index.html"
        )

    def test_md5(self) -> None:
        self.assertEqual(self.vector("MD5"), "8ca523f5e9506fed4657c9700eebdbec")

    def test_sha256(self) -> None:
        self.assertEqual(
            self.vector("SHA-256"),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        )

    def test_hash_hex(self) -> None:
        self.assertEqual(hash_hex("MD5", b"abc"), hashlib.md5(b"abc").hexdigest())
        self.assertEqual(hash_hex("sha-256", b"abc"), hashlib.sha256(b"abc").hexdigest())
        self.assertRaises(ValueError, hash_hex, "SHA-512-256", b"abc")

    def test_compute_response_refuses_other_qop(self) -> None:
        self.assertRaises(
            ValueError, compute_response, "MD5", "0" * 32, "n", "1", "c", "auth-int", "GET", "/"
        )


class FactoryTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.factory = DigestCredentialFactory(REALM, clock=self.clock, secret=SECRET)

    def challenge(
        self, factory: DigestCredentialFactory | None = None, algorithm: str = "MD5"
    ) -> dict[str, str]:
        f = factory or self.factory
        for value in f.challenges():
            parsed = parse_challenge(value)
            if parsed["algorithm"] == algorithm:
                return parsed
        raise AssertionError(f"{algorithm} not offered")

    def decode(
        self,
        header: bytes,
        request: DummyRequest | None = None,
        factory: DigestCredentialFactory | None = None,
    ) -> DigestCredentials:
        return (factory or self.factory).decode(header, request or make_request())

    def assertRefused(
        self, header: bytes, reason: str, request: DummyRequest | None = None
    ) -> None:
        exc = self.assertRaises(LoginFailed, self.decode, header, request)
        self.assertIn(reason, str(exc))

    def assertStale(
        self, header: bytes, unusable: str, factory: DigestCredentialFactory | None = None
    ) -> None:
        """An unusable nonce: refused; marked stale by the right HA1 only, never by a wrong one."""
        creds = self.decode(header, None, factory)
        self.assertEqual(creds.unusable, unusable)
        self.assertFalse(creds.checkPassword("a wrong guess"))
        self.assertFalse(creds.stale)
        self.assertFalse(creds.checkPassword(PASSWORD))
        self.assertTrue(creds.stale)
        self.assertFalse(creds.checkPassword(PASSWORD))  # and never accepted later


class RoundTripTests(FactoryTestCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ICredentialFactory, self.factory))
        self.assertEqual(self.factory.scheme, b"digest")
        creds = self.decode(authorization(self.challenge()))
        self.assertTrue(verifyObject(IUsernameDigestHash, creds))

    def round_trip(self, algorithm: str) -> None:
        c = self.challenge(algorithm=algorithm)
        creds = self.decode(authorization(c))
        self.assertEqual(
            (creds.username, creds.realm, creds.algorithm, creds.nc, creds.qop, creds.uri),
            (USER, REALM, algorithm, "00000001", "auth", "/acs"),
        )
        self.assertEqual(creds.method, "POST")
        self.assertFalse(creds.checkHash(ha1(algorithm, USER, REALM, "wrong")))
        self.assertTrue(creds.checkHash(ha1(algorithm, USER, REALM, PASSWORD)))

    def test_md5(self) -> None:
        self.round_trip("MD5")

    def test_sha256(self) -> None:
        self.round_trip("SHA-256")

    def test_check_password(self) -> None:
        creds = self.decode(authorization(self.challenge(algorithm="SHA-256")))
        self.assertFalse(creds.checkPassword("nope"))
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_hash_as_bytes_or_uppercase(self) -> None:
        """Stored HA1 may come as bytes or upper-case hex from older stores."""
        creds = self.decode(authorization(self.challenge()))
        self.assertTrue(creds.checkHash(ha1("MD5", USER, REALM, PASSWORD).upper().encode()))
        creds2 = self.decode(authorization(self.challenge()))
        self.assertFalse(creds2.checkHash(b"\xff" * 32))

    def test_absent_algorithm_means_md5(self) -> None:
        creds = self.decode(authorization(self.challenge(), algorithm=None))
        self.assertEqual(creds.algorithm, "MD5")
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_absent_opaque_accepted(self) -> None:
        creds = self.decode(authorization(self.challenge(), opaque=None))
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_reconnect_answers_earlier_challenge(self) -> None:
        """The nonce is not bound to the connection or the request that got the 401."""
        c = self.challenge()
        self.clock.advance(30)
        creds = self.decode(authorization(c), make_request())
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_shared_secret(self) -> None:
        other = DigestCredentialFactory(REALM, clock=self.clock, secret=SECRET)
        creds = self.decode(authorization(self.challenge(factory=other)))
        self.assertTrue(creds.checkPassword(PASSWORD))
        creds = self.decode(authorization(self.challenge()), factory=other)
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_other_secret_refused(self) -> None:
        other = DigestCredentialFactory(REALM, clock=self.clock, secret=b"x" * 32)
        self.assertRefused(authorization(self.challenge(factory=other)), "invalid nonce")

    def test_random_secret_by_default(self) -> None:
        a = DigestCredentialFactory(REALM, clock=self.clock)
        b = DigestCredentialFactory(REALM, clock=self.clock)
        self.assertRaises(
            LoginFailed, self.decode, authorization(self.challenge(factory=a)), None, b
        )

    def test_quoted_username_with_escapes_and_commas(self) -> None:
        user = 'we"ird\\, user'
        c = self.challenge()
        creds = self.decode(authorization(c, username=user))
        self.assertEqual(creds.username, user)
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_lenient_syntax(self) -> None:
        """Case-insensitive names, odd whitespace, quoted qop/nc, unquoted uri."""
        c = self.challenge(algorithm="SHA-256")
        digest = client_response(
            "SHA-256", USER, PASSWORD, REALM, c["nonce"], "00000001", "abc", "POST", "/acs"
        )
        header = (
            f'UserName="{USER}" ,Realm = "{REALM}",,  NONCE="{c["nonce"]}", uri=/acs,'
            f'\tAlgorithm=sha-256, response="{digest.upper()}", qop="auth", nc="00000001", '
            f'cnonce=abc, opaque="{c["opaque"]}", extension="ignored",'
        ).encode()
        creds = self.decode(header)
        self.assertEqual(creds.algorithm, "SHA-256")
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_portal_login(self) -> None:
        checker = HA1Checker({(USER, a): ha1(a, USER, REALM, PASSWORD) for a in ("MD5", "SHA-256")})
        portal = Portal(EchoRealm(), [checker])
        creds = self.decode(authorization(self.challenge(algorithm="SHA-256")))
        _, avatar, _ = self.successResultOf(portal.login(creds, None, ICredentials))
        self.assertEqual(avatar, USER)


class AvatarPage(Resource):
    isLeaf = True

    def __init__(self, avatar_id: str) -> None:
        super().__init__()
        self.avatar_id = avatar_id

    def render_GET(self, request: IRequest) -> bytes:
        return self.avatar_id.encode()

    render_POST = render_GET


@implementer(IRealm)
class ResourceRealm:
    def requestAvatar(
        self, avatarId: str, mind: object, *interfaces: type
    ) -> tuple[type, IResource, Callable[[], None]]:
        return IResource, AvatarPage(avatarId), lambda: None


class GuardTests(FactoryTestCase):
    """The factory plugged into twisted.web.guard, challenge to authenticated page."""

    def test_guard(self) -> None:
        checker = HA1Checker({(USER, "MD5"): ha1("MD5", USER, REALM, PASSWORD)})
        guarded = HTTPAuthSessionWrapper(Portal(ResourceRealm(), [checker]), [self.factory])

        request = make_request()
        self.successResultOf(_render(guarded, request))
        self.assertEqual(request.responseCode, 401)
        [header] = request.responseHeaders.getRawHeaders(b"www-authenticate")
        challenge = parse_challenge(header)
        self.assertEqual(challenge["algorithm"], "MD5")

        request = make_request()
        request.requestHeaders.setRawHeaders(
            b"authorization", [b"Digest " + authorization(challenge)]
        )
        self.successResultOf(_render(guarded, request))
        self.assertEqual(b"".join(request.written), USER.encode())

        replay = make_request()
        replay.requestHeaders.setRawHeaders(
            b"authorization", request.requestHeaders.getRawHeaders(b"authorization")
        )
        self.successResultOf(_render(guarded, replay))
        self.assertEqual(replay.responseCode, 401)


class ReplayTests(FactoryTestCase):
    def test_next_nc_succeeds_same_nc_fails(self) -> None:
        c = self.challenge()
        self.assertTrue(self.decode(authorization(c)).checkPassword(PASSWORD))
        self.assertTrue(self.decode(authorization(c, nc="00000002")).checkPassword(PASSWORD))
        with capturedLogs() as events:
            replayed = self.decode(authorization(c, nc="00000002"))
            self.assertFalse(replayed.checkPassword(PASSWORD))
        # A right response whose count did not increase: stale, never accepted.
        self.assertTrue(replayed.stale)
        reused = self.decode(authorization(c, nc="00000001", cnonce="new-session"))
        self.assertIsNone(reused.unusable)  # only the HA1 can tell
        self.assertFalse(reused.checkPassword(PASSWORD))
        self.assertTrue(reused.stale)
        # A wrong response under that count is a plain failure, not stale.
        guess = self.decode(authorization(c, nc="00000001", password="guess"))
        self.assertFalse(guess.checkPassword(PASSWORD))
        self.assertFalse(guess.stale)
        self.assertTrue(self.decode(authorization(c, nc="0000000A")).checkPassword(PASSWORD))
        self.assertEqual([e.get("username") for e in events], [USER])
        self.assertIn("replay", events[0]["reason"])

    def test_bad_response_does_not_poison(self) -> None:
        c = self.challenge()
        forged = self.decode(authorization(c, nc="ffffffff", password="guess"))
        self.assertFalse(forged.checkPassword(PASSWORD))
        self.assertTrue(self.decode(authorization(c, nc="00000001")).checkPassword(PASSWORD))
        self.assertTrue(self.decode(authorization(c, nc="00000002")).checkPassword(PASSWORD))

    def test_concurrent_same_nc(self) -> None:
        """Two decoded copies of one response: only the first to verify wins."""
        c = self.challenge()
        first = self.decode(authorization(c))
        second = self.decode(authorization(c))
        self.assertTrue(first.checkPassword(PASSWORD))
        self.assertFalse(second.checkPassword(PASSWORD))

    def test_check_twice_on_same_object(self) -> None:
        creds = self.decode(authorization(self.challenge()))
        self.assertTrue(creds.checkPassword(PASSWORD))
        self.assertTrue(creds.checkPassword(PASSWORD))

    def test_portal_replay_is_unauthorized(self) -> None:
        checker = HA1Checker({(USER, "MD5"): ha1("MD5", USER, REALM, PASSWORD)})
        portal = Portal(EchoRealm(), [checker])
        header = authorization(self.challenge())
        self.successResultOf(portal.login(self.decode(header), None, ICredentials))
        failure = self.failureResultOf(portal.login(self.decode(header), None, ICredentials))
        self.assertIsInstance(failure.value, LoginFailed)

    def test_evicted_nonce_fails_closed(self) -> None:
        factory = DigestCredentialFactory(
            REALM, clock=self.clock, secret=SECRET, max_tracked_nonces=2
        )
        challenges = []
        for _ in range(3):
            c = self.challenge(factory=factory)
            challenges.append(c)
            self.clock.advance(1)
        pending = self.challenge(factory=factory)  # issued, not yet answered
        for c in challenges:
            creds = self.decode(authorization(c), factory=factory)
            self.assertTrue(creds.checkPassword(PASSWORD))
        # The first nonce fell out of the table while still valid: its replay is refused.
        self.assertStale(authorization(challenges[0]), "nonce no longer tracked", factory)
        # Tracked nonces keep working.
        creds = self.decode(authorization(challenges[2], nc="00000002"), factory=factory)
        self.assertTrue(creds.checkPassword(PASSWORD))
        # Nonces issued after the evicted one are still fine.
        creds = self.decode(authorization(pending), factory=factory)
        self.assertTrue(creds.checkPassword(PASSWORD))
        self.assertTrue(
            self.decode(
                authorization(self.challenge(factory=factory)), factory=factory
            ).checkPassword(PASSWORD)
        )

    def test_eviction_between_decode_and_check(self) -> None:
        """A nonce dropped from the table while its HA1 is being looked up is refused."""
        factory = DigestCredentialFactory(
            REALM, clock=self.clock, secret=SECRET, max_tracked_nonces=1
        )
        a = self.challenge(factory=factory)
        self.clock.advance(1)
        b = self.challenge(factory=factory)
        self.assertTrue(self.decode(authorization(a), factory=factory).checkPassword(PASSWORD))
        waiting = self.decode(authorization(a, nc="00000002"), factory=factory)
        self.assertTrue(self.decode(authorization(b), factory=factory).checkPassword(PASSWORD))
        self.assertFalse(waiting.checkPassword(PASSWORD))
        self.assertTrue(waiting.stale)
        self.assertStale(authorization(a, nc="00000003"), "nonce no longer tracked", factory)


class ExpiryTests(FactoryTestCase):
    def test_within_lifetime(self) -> None:
        c = self.challenge()
        self.clock.advance(300)
        self.assertTrue(self.decode(authorization(c)).checkPassword(PASSWORD))

    def test_expired_is_stale(self) -> None:
        c = self.challenge()
        self.clock.advance(300.5)
        self.assertStale(authorization(c), "nonce expired")

    def test_expired_with_a_wrong_password_is_a_failure_not_stale(self) -> None:
        c = self.challenge()
        self.clock.advance(301)
        creds = self.decode(authorization(c, password="x"))
        self.assertFalse(creds.checkPassword(PASSWORD))
        self.assertFalse(creds.stale)  # stale=true would excuse a guess from being counted
        tampered = dict(c, nonce=c["nonce"][:-1] + ("A" if c["nonce"][-1] != "A" else "B"))
        self.assertRefused(authorization(tampered), "invalid nonce")

    def test_future_nonce_from_skewed_peer(self) -> None:
        peer_clock = Clock()
        peer_clock.advance(self.clock.seconds() + 1000)
        peer = DigestCredentialFactory(REALM, clock=peer_clock, secret=SECRET)
        self.assertStale(authorization(self.challenge(factory=peer)), "nonce expired")

    def test_custom_lifetime(self) -> None:
        factory = DigestCredentialFactory(REALM, clock=self.clock, nonce_lifetime=10)
        c = self.challenge(factory=factory)
        self.clock.advance(11)
        self.assertStale(authorization(c), "nonce expired", factory)

    def test_expired_entries_are_dropped(self) -> None:
        factory = DigestCredentialFactory(REALM, clock=self.clock, secret=SECRET)
        c = self.challenge(factory=factory)
        self.assertTrue(self.decode(authorization(c), factory=factory).checkPassword(PASSWORD))
        self.clock.advance(301)
        c2 = self.challenge(factory=factory)
        self.assertTrue(self.decode(authorization(c2), factory=factory).checkPassword(PASSWORD))
        self.assertEqual(len(factory._tracker), 1)


class RefusalTests(FactoryTestCase):
    def test_tampered_nonce(self) -> None:
        c = self.challenge()
        n = c["nonce"]
        for bad in (
            n[:10] + ("x" if n[10] != "x" else "y") + n[11:],
            n[:-1],
            n + "A",
            n[:-1] + "=",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        ):
            self.assertRefused(authorization(dict(c, nonce=bad)), "invalid nonce")

    def test_wrong_opaque(self) -> None:
        c = self.challenge()
        self.assertRefused(authorization(c, opaque="0" * 32), "opaque")
        self.assertRefused(authorization(c, opaque=self.challenge()["opaque"]), "opaque")

    def test_wrong_realm(self) -> None:
        self.assertRefused(authorization(self.challenge(), realm="other"), "realm")
        other = DigestCredentialFactory("other", clock=self.clock, secret=SECRET)
        self.assertRefused(authorization(self.challenge(factory=other)), "realm")

    def test_wrong_uri(self) -> None:
        header = authorization(self.challenge(), uri="/other")
        self.assertRefused(header, "uri", make_request(uri=URI))
        header = authorization(self.challenge(), uri="/acs")
        self.assertRefused(header, "uri", make_request(uri=b"/acs?x=1"))

    def test_absolute_uri_of_the_same_resource(self) -> None:
        """RFC 7616 §3.4.6: the uri may be the absolute form of the request-target; a CPE
        that sends the ACS URL it was given was refused for ever before (issue 13)."""

        def request(
            target: bytes = URI, host: bytes | None = b"acs.example", secure: bool = True
        ) -> DummyRequest:
            r = make_request(uri=target)
            if host is not None:
                r.requestHeaders.setRawHeaders(b"host", [host])
            r.isSecure = lambda: secure  # type: ignore[attr-defined]
            return r

        for uri, req in (
            ("https://acs.example/acs", request()),
            ("HTTPS://ACS.example:443/acs", request()),
            ("https://acs.example:443/acs", request(host=b"ACS.EXAMPLE")),
            ("https://acs.example:7547/acs", request(host=b"acs.example:7547")),
            ("http://acs.example/acs", request(secure=False)),
            ("http://acs.example:80/acs", request(secure=False)),
            ("https://acs.example/acs?x=1", request(b"/acs?x=1")),
            ("https://acs.example", request(b"/")),
            ("https://[2001:db8::1]:7547/acs", request(host=b"[2001:db8::1]:7547")),
        ):
            creds = self.decode(authorization(self.challenge(), uri=uri), req)
            self.assertEqual(creds.uri, uri)  # the hash is over what the CPE sent
            self.assertTrue(creds.checkPassword(PASSWORD), uri)
        for uri, req in (
            ("https://acs.example/other", request()),  # another path
            ("https://acs.example/acs", request(b"/acs?x=1")),  # another query
            ("https://acs.example/acs?x=1", request()),
            ("https://evil.example/acs", request()),  # another host
            ("https://acs.example:8443/acs", request()),  # another port
            ("https://acs.example:7547/acs", request(host=b"acs.example")),
            ("http://acs.example/acs", request()),  # http named on a TLS connection
            ("https://acs.example/acs", request(secure=False)),
            ("https://acs.example/acs", request(host=None)),  # no Host to compare with
            ("https://user@acs.example/acs", request()),  # userinfo
            ("ftp://acs.example/acs", request()),
            ("//acs.example/acs", request()),
            ("https://acs.example/acs#frag", request()),
        ):
            self.assertRefused(authorization(self.challenge(), uri=uri), "uri", req)

    def test_wrong_method(self) -> None:
        """The response was computed for GET but the request is a POST: the digest fails."""
        creds = self.decode(authorization(self.challenge(), method="GET"))
        self.assertEqual(creds.method, "POST")
        self.assertFalse(creds.checkPassword(PASSWORD))
        checker = HA1Checker({(USER, "MD5"): ha1("MD5", USER, REALM, PASSWORD)})
        portal = Portal(EchoRealm(), [checker])
        creds = self.decode(authorization(self.challenge(), method="GET"))
        failure = self.failureResultOf(portal.login(creds, None, ICredentials))
        self.assertIsInstance(failure.value, LoginFailed)

    def test_unknown_algorithm(self) -> None:
        c = self.challenge()
        for algorithm in ("SHA-512-256", "MD5-sess", "SHA-256-sess", "sha"):
            self.assertRefused(
                authorization(c, algorithm=algorithm, response="0" * 32), "algorithm"
            )

    def test_algorithm_not_offered(self) -> None:
        md5_only = DigestCredentialFactory(REALM, clock=self.clock, algorithms=["MD5"])
        c = self.challenge(factory=md5_only)
        header = authorization(dict(c, algorithm="SHA-256"))
        exc = self.assertRaises(LoginFailed, self.decode, header, None, md5_only)
        self.assertIn("algorithm", str(exc))
        sha_only = DigestCredentialFactory(REALM, clock=self.clock, algorithms=["SHA-256"])
        c = self.challenge(factory=sha_only, algorithm="SHA-256")
        exc = self.assertRaises(
            LoginFailed,
            self.decode,
            authorization(dict(c, algorithm="MD5"), algorithm=None),
            None,
            sha_only,
        )
        self.assertIn("algorithm", str(exc))

    def test_qop(self) -> None:
        c = self.challenge()
        self.assertRefused(authorization(c, qop=None), "qop")
        self.assertRefused(authorization(c, qop="auth-int"), "qop")
        self.assertRefused(authorization(c, qop="AUTH"), "qop")

    def test_missing_fields(self) -> None:
        c = self.challenge()
        for name in ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce"):
            self.assertRefused(authorization(c, **{name: None}), f"missing {name}")
            # Empty: "missing" when quoted (""), a syntax error when bare (qop=).
            self.assertRaises(LoginFailed, self.decode, authorization(c, **{name: ""}))

    def test_bad_nc(self) -> None:
        c = self.challenge()
        for nc in ("1", "0000001", "000000001", "0000000g", "+0000001", " 0000001"):
            self.assertRefused(authorization(c, nc=nc), "nc")
        self.assertRefused(authorization(c, nc="00000000"), "nc")

    def test_bad_response_format(self) -> None:
        c = self.challenge()
        self.assertRefused(authorization(c, response="0" * 31), "response")
        self.assertRefused(authorization(c, response="z" * 32), "response")
        sha = self.challenge(algorithm="SHA-256")
        self.assertRefused(authorization(sha, response="0" * 32), "response")

    def test_userhash_refused(self) -> None:
        header = authorization(self.challenge()) + b", userhash=true"
        self.assertRefused(header, "userhash")

    def test_malformed(self) -> None:
        good = authorization(self.challenge())
        for header in (
            b"",
            b"dXNlcjpwYXNz",  # token68 (Basic-like)
            b"username",
            b'username="unterminated',
            b'username="trailing backslash\\',
            b"=value",
            b'username="a" realm="b"',  # missing comma
            b'username="a"x, realm="b"',
            b"username=, realm=x",
            b'username="a\x01b"',
            b'username="a\nb"',
            b"username=a b",
            good + b', username="again"',
            good + b', USERNAME="again"',
            b"\xff\xfe" + good,
            good + b", x=" + b"a" * 4096,
            b", ".join(b"p%d=1" % i for i in range(40)),
        ):
            self.assertRaises(LoginFailed, self.decode, header)

    def test_reasons_do_not_echo_secrets(self) -> None:
        c = self.challenge()
        header = authorization(c, opaque="0" * 32)
        digest = re.search(rb'response="([0-9a-f]+)"', header)
        assert digest is not None
        exc = self.assertRaises(LoginFailed, self.decode, header)
        self.assertNotIn(digest.group(1).decode(), str(exc))
        self.assertNotIn(c["nonce"], str(exc))
        creds = self.decode(authorization(c))
        self.assertNotIn(creds.response, repr(creds))


class ChallengeTests(FactoryTestCase):
    def test_order_and_fields(self) -> None:
        factory = DigestCredentialFactory(
            'my "realm"', clock=self.clock, algorithms=("SHA-256", "md5")
        )
        values = factory.challenges()
        parsed = [parse_challenge(v) for v in values]
        self.assertEqual([p["algorithm"] for p in parsed], ["SHA-256", "MD5"])
        for value, p in zip(values, parsed):
            self.assertTrue(value.startswith(b'Digest realm="my \\"realm\\"", qop="auth", '))
            self.assertIn(b"algorithm=" + p["algorithm"].encode() + b",", value)
            self.assertNotIn(b"stale", value)
            self.assertEqual(p["qop"], "auth")
        self.assertEqual(parsed[0]["nonce"], parsed[1]["nonce"])
        self.assertEqual(factory.algorithms, ("SHA-256", "MD5"))

    def test_stale(self) -> None:
        values = self.factory.challenges(stale=True)
        self.assertEqual(len(values), 2)
        for value in values:
            self.assertTrue(value.endswith(b", stale=true"))

    def test_fresh_nonce_per_call(self) -> None:
        nonces = {parse_challenge(self.factory.challenges()[0])["nonce"] for _ in range(5)}
        self.assertEqual(len(nonces), 5)

    def test_get_challenge(self) -> None:
        challenge = self.factory.getChallenge(make_request())
        self.assertEqual(
            {k: challenge[k] for k in ("realm", "qop", "algorithm")},
            {"realm": REALM, "qop": "auth", "algorithm": "MD5"},
        )
        c = {k: str(v) for k, v in challenge.items()}
        self.assertTrue(self.decode(authorization(c)).checkPassword(PASSWORD))

    def test_constructor_validation(self) -> None:
        for kwargs in (
            {"algorithms": ()},
            {"algorithms": ("MD5", "md5")},
            {"algorithms": ("SHA-1",)},
            {"nonce_lifetime": 0},
            {"max_tracked_nonces": 0},
            {"secret": b"short"},
        ):
            self.assertRaises(
                ValueError, DigestCredentialFactory, REALM, clock=self.clock, **kwargs
            )
        self.assertRaises(ValueError, DigestCredentialFactory, "", clock=self.clock)
        self.assertRaises(ValueError, DigestCredentialFactory, "a\nb", clock=self.clock)


_names = st.sampled_from(
    [
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "qop",
        "nc",
        "cnonce",
        "algorithm",
        "opaque",
        "userhash",
        "Username",
        "x",
    ]
)
_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["auth", "MD5", "SHA-256", "00000001", "/acs", REALM, "0" * 32, "0" * 64]),
)


class FuzzTests(FactoryTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_arbitrary_bytes(self, header: bytes) -> None:
        try:
            creds = self.decode(header)
        except LoginFailed:
            return
        self.assertIsInstance(creds, DigestCredentials)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(_names, _values, st.booleans()), max_size=12), st.booleans())
    def test_structured(self, params: list[tuple[str, str, bool]], real_nonce: bool) -> None:
        c = self.challenge()
        parts = []
        for name, value, quoted in params:
            if name == "nonce" and real_nonce:
                value = c["nonce"]
            parts.append(f"{name}={quote(value) if quoted else value}")
        try:
            creds = self.decode(", ".join(parts).encode("utf-8"))
        except LoginFailed:
            return
        self.assertFalse(creds.checkPassword(PASSWORD))


def _parsed(parse: Callable[[Any], dict[str, str]], arg: Any) -> dict[str, str] | str:
    try:
        return parse(arg)
    except LoginFailed as e:
        return f"refused: {e}"


# Headers from the characters that matter to the grammar, and well-formed ones built from
# parts (so that the fast path is taken often, not only the fallback).
_GRAMMAR_CHARS = st.text(alphabet=' \t,="\\\x00\x01\x7f\x80éaZ9-_/.:', max_size=60)
_NAMES = st.sampled_from(["username", "realm", "Nonce", "uri", "qop", "nc", "x-y", "a"])
_VALUES = st.one_of(
    st.text(alphabet='abcXYZ019-/.:= \t,é\\"\x01', max_size=12).map(lambda v: f'"{v}"'),
    st.text(alphabet="abcXYZ019-/.:=", min_size=1, max_size=12),
)
_SEPARATORS = st.sampled_from([",", ", ", " ,", ",,", " , ,\t", "  ", ""])
_BUILT = st.lists(
    st.tuples(_NAMES, st.sampled_from(["=", " = ", "\t="]), _VALUES, _SEPARATORS), max_size=8
).map(lambda items: "".join(n + eq + v + sep for n, eq, v, sep in items))


class AuthParamsParserTests(SynchronousTestCase):
    """The regular-expression path reads exactly what the character loop reads, and
    leaves every error (and its message) to it."""

    @given(st.one_of(_GRAMMAR_CHARS, _BUILT))
    @settings(max_examples=500)
    def test_both_parsers_agree(self, text: str) -> None:
        self.assertEqual(
            _parsed(_parse_auth_params, text.encode()),
            _parsed(_parse_auth_params_strictly, text),
        )

    def test_a_typical_header(self) -> None:
        header = (
            b'username="00CAFE-SimCPE-SIM1", realm="cwmpgw", nonce="AAAB-x", uri="/", '
            b'response="6629fae4", qop=auth, nc=00000001, cnonce="0a4f", algorithm=MD5'
        )
        self.assertEqual(
            _parse_auth_params(header),
            {
                "username": "00CAFE-SimCPE-SIM1",
                "realm": "cwmpgw",
                "nonce": "AAAB-x",
                "uri": "/",
                "response": "6629fae4",
                "qop": "auth",
                "nc": "00000001",
                "cnonce": "0a4f",
                "algorithm": "MD5",
            },
        )

    def test_an_escape_a_duplicate_and_a_stray_character(self) -> None:
        self.assertEqual(_parse_auth_params(b'a="x\\"y", b=1'), {"a": 'x"y', "b": "1"})
        self.assertRaises(LoginFailed, _parse_auth_params, b"a=1, A=2")
        self.assertRaises(LoginFailed, _parse_auth_params, b"a=1 b=2")
        self.assertRaises(LoginFailed, _parse_auth_params, b'a="x\x01"')
