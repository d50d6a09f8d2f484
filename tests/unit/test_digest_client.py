"""Tests for cwmpgw.web.digest_client: parsing challenges and answering them.

Expected digests come from the RFCs' own examples, or are computed here with hashlib
straight from the RFC formulas, never with the code under test.
"""

from __future__ import annotations

import base64
import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.web.digest_client import (
    Challenge,
    ChallengeError,
    authorization,
    choose,
    is_stale,
    parse_challenges,
)

# RFC 7616 section 3.9.1.
NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616 = [
    (
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        f'nonce="{NONCE}", opaque="{OPAQUE}"'
    ).encode(),
    (
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
        f'nonce="{NONCE}", opaque="{OPAQUE}"'
    ).encode(),
]


def params_of(header: bytes) -> dict[str, str]:
    """Parse an Authorization value we produced (test-side, independent of the module)."""
    scheme, _, rest = header.decode().partition(" ")
    assert scheme == "Digest"
    out: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.index("=", i)
        name = rest[i:eq].strip(" ,")
        j = eq + 1
        if rest[j] == '"':
            j += 1
            value = []
            while rest[j] != '"':
                if rest[j] == "\\":
                    j += 1
                value.append(rest[j])
                j += 1
            out[name] = "".join(value)
            j += 1
        else:
            end = rest.find(",", j)
            end = len(rest) if end < 0 else end
            out[name] = rest[j:end]
            j = end
        i = j + 1 if j < len(rest) and rest[j] == "," else j
        while i < len(rest) and rest[i] == " ":
            i += 1
    return out


def h(algorithm: str, text: str) -> str:
    factory = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]
    return factory(text.encode()).hexdigest()


class ParseTests(SynchronousTestCase):
    def test_rfc7616_two_headers(self) -> None:
        challenges = parse_challenges(RFC7616)
        self.assertEqual([c.algorithm for c in challenges], ["SHA-256", "MD5"])
        self.assertEqual(challenges[0].realm, "http-auth@example.org")
        self.assertEqual(challenges[0].qop_options, frozenset({"auth", "auth-int"}))
        self.assertEqual(challenges[1].params["opaque"], OPAQUE)

    def test_several_challenges_in_one_header(self) -> None:
        challenges = parse_challenges(
            [
                b'Newauth realm="apps", type=1, title="Login to \\"apps\\"", '
                b'Basic realm="simple", Negotiate abc==, , NTLM, '
                b"Digest realm=r2, nonce=YWJj==, qop=auth"
            ]
        )
        self.assertEqual(
            [c.scheme for c in challenges], ["newauth", "basic", "negotiate", "ntlm", "digest"]
        )
        self.assertEqual(challenges[0].params["title"], 'Login to "apps"')
        self.assertEqual(challenges[0].params["type"], "1")
        self.assertEqual(challenges[2].token68, "abc==")
        self.assertEqual(challenges[3].params, {})
        self.assertEqual(challenges[4].params["nonce"], "YWJj==")

    def test_case_insensitive_names_and_whitespace(self) -> None:
        (c,) = parse_challenges([b'DIGEST  Realm = "x" ,NONCE="n",Algorithm=sha-256 ,QOP="AUTH"'])
        self.assertEqual(c.scheme, "digest")
        self.assertEqual(
            c.params, {"realm": "x", "nonce": "n", "algorithm": "sha-256", "qop": "AUTH"}
        )
        self.assertEqual(c.algorithm, "SHA-256")
        self.assertEqual(c.qop_options, frozenset({"auth"}))

    def test_stale(self) -> None:
        stale, fresh, basic = parse_challenges(
            [
                b'Digest realm="r", nonce="a", stale=TRUE',
                b'Digest realm="r", nonce="b"',
                b"Basic stale=true",
            ]
        )
        self.assertTrue(is_stale(stale))
        self.assertTrue(stale.stale)
        self.assertFalse(is_stale(fresh))
        self.assertFalse(is_stale(basic))

    def test_malformed_values_raise_challenge_error(self) -> None:
        for raw in [
            b'Digest realm="unterminated',
            b'Digest realm="x\\',
            b"Digest realm=x y",
            b"Digest abc, b=c",
            b'Digest realm="x" nonce="y"',
            b'Digest realm="a", realm="b"',
            b'Digest realm="a\x01"',
            b"Digest\x00",
            b"=x",
            b'Digest realm="\xff"',
            b"Digest " + b", ".join(b"p%d=1" % i for i in range(40)),
            b", ".join(b"Basic" for _ in range(20)),
            b"Digest realm=" + b"x" * 9000,
        ]:
            with self.subTest(raw=raw[:40]):
                self.assertRaises(ChallengeError, parse_challenges, [raw])

    def test_one_bad_header_fails_the_lot(self) -> None:
        with self.assertRaises(ChallengeError):
            parse_challenges([RFC7616[0], b'Digest realm="'])

    def test_token68_is_not_a_parameter(self) -> None:
        (c,) = parse_challenges([b"Digest realm="])
        self.assertEqual((c.token68, dict(c.params)), ("realm=", {}))
        self.assertIsNone(choose([c], allow_basic=True))

    def test_empty(self) -> None:
        self.assertEqual(parse_challenges([]), [])
        self.assertEqual(parse_challenges([b"", b" , "]), [])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=4))
    def test_arbitrary_bytes_only_raise_challenge_error(self, values: list[bytes]) -> None:
        try:
            challenges = parse_challenges(values)
        except ChallengeError:
            return
        chosen = choose(challenges, allow_basic=True)
        if chosen is not None:
            try:
                value = authorization(chosen, "user", "pw", "GET", "/x")
            except ChallengeError:
                return
            self.assertNotIn(b"\r", value)
            self.assertNotIn(b"\n", value)

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["realm", "nonce", "qop", "algorithm", "opaque", "stale", "x"]),
                st.text(max_size=20),
            ),
            max_size=8,
        )
    )
    def test_structured_values(self, params: list[tuple[str, str]]) -> None:
        body = ", ".join(
            f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
            for name, value in params
        )
        try:
            challenges = parse_challenges([("Digest " + body).encode()])
        except ChallengeError:
            return
        self.assertEqual(len(challenges), 1)
        # Whatever parsed must round-trip the quoted values exactly.
        self.assertEqual(dict(challenges[0].params), {n: v for n, v in params})


class ChooseTests(SynchronousTestCase):
    def parse(self, *values: str) -> list[Challenge]:
        return parse_challenges([v.encode() for v in values])

    def test_sha256_over_md5_whatever_the_order(self) -> None:
        for values in (RFC7616, list(reversed(RFC7616))):
            chosen = choose(parse_challenges(values), allow_basic=False)
            assert chosen is not None
            self.assertEqual(chosen.algorithm, "SHA-256")

    def test_order_of_preference(self) -> None:
        cs = self.parse(
            "Basic realm=b",
            'Digest realm=r, nonce=n, qop="auth", algorithm=MD5-sess',
            'Digest realm=r, nonce=n, qop="auth", algorithm=MD5',
            'Digest realm=r, nonce=n, qop="auth", algorithm=SHA-256-sess',
            'Digest realm=r, nonce=n, qop="auth", algorithm=SHA-256',
        )
        order = []
        while cs:
            chosen = choose(cs, allow_basic=True)
            assert chosen is not None
            order.append(f"{chosen.scheme}:{chosen.algorithm}")
            cs.remove(chosen)
        self.assertEqual(
            order,
            ["digest:SHA-256", "digest:SHA-256-SESS", "digest:MD5", "digest:MD5-SESS", "basic:MD5"],
        )

    def test_basic_only_when_allowed(self) -> None:
        cs = self.parse('Basic realm="cpe"')
        self.assertIsNone(choose(cs, allow_basic=False))
        chosen = choose(cs, allow_basic=True)
        assert chosen is not None
        self.assertEqual(chosen.scheme, "basic")

    def test_unanswerable_challenges_are_skipped(self) -> None:
        cs = self.parse(
            "Digest realm=r, nonce=n, algorithm=SHA-512-256",
            "Digest realm=r, nonce=n, qop=auth-conf",
            "Digest nonce=n",
            "Digest realm=r",
            "Digest realm=r, nonce=n, algorithm=MD5-sess",  # -sess needs qop
            "Negotiate abc",
            "Basic abc==",
        )
        self.assertIsNone(choose(cs, allow_basic=True))

    def test_realm_of_the_chosen_challenge(self) -> None:
        cs = self.parse(
            'Digest realm="md5 realm", nonce=n1, qop=auth, algorithm=MD5',
            'Digest realm="sha realm", nonce=n2, qop=auth, algorithm=SHA-256',
        )
        chosen = choose(cs, allow_basic=False)
        assert chosen is not None
        p = params_of(authorization(chosen, "u", "p", "GET", "/"))
        self.assertEqual((p["realm"], p["nonce"]), ("sha realm", "n2"))


class AuthorizationTests(SynchronousTestCase):
    def test_rfc7616_vectors(self) -> None:
        expected = {
            "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            "MD5": "8ca523f5e9506fed4657c9700eebdbec",
        }
        for challenge in parse_challenges(RFC7616):
            value = authorization(
                challenge, "Mufasa", "Circle of Life", "GET", "/dir/index.html", cnonce=CNONCE
            )
            p = params_of(value)
            self.assertEqual(p["response"], expected[challenge.algorithm])
            self.assertEqual(p["username"], "Mufasa")
            self.assertEqual(p["realm"], "http-auth@example.org")
            self.assertEqual(p["uri"], "/dir/index.html")
            self.assertEqual(p["qop"], "auth")
            self.assertEqual(p["nc"], "00000001")
            self.assertEqual(p["cnonce"], CNONCE)
            self.assertEqual(p["opaque"], OPAQUE)
            self.assertEqual(p["algorithm"], challenge.algorithm)

    def test_rfc2617_vector(self) -> None:
        (c,) = parse_challenges(
            [
                b'Digest realm="testrealm@host.com", qop="auth,auth-int", '
                b'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                b'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
            ]
        )
        p = params_of(
            authorization(
                c, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", cnonce="0a4f113b"
            )
        )
        self.assertEqual(p["response"], "6629fae49393a05397450978507c4ef1")
        self.assertNotIn("algorithm", p)  # not offered, so not echoed

    def test_rfc2069_without_qop(self) -> None:
        (c,) = parse_challenges(
            [
                b'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
                b'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
            ]
        )
        value = authorization(c, "Mufasa", "CircleOfLife", "GET", "/dir/index.html")
        p = params_of(value)
        # RFC 2069 section 2.4's example, and the formula H(H(A1):nonce:H(A2)).
        self.assertEqual(p["response"], "1949323746fe6a43ef61f9606e7febea")
        ha1 = h("MD5", "Mufasa:testrealm@host.com:CircleOfLife")
        ha2 = h("MD5", "GET:/dir/index.html")
        self.assertEqual(p["response"], h("MD5", f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}"))
        for absent in ("qop", "nc", "cnonce", "algorithm"):
            self.assertNotIn(absent, p)

    def test_sess_variants(self) -> None:
        for algorithm, base in (("MD5-sess", "MD5"), ("SHA-256-sess", "SHA-256")):
            (c,) = parse_challenges(
                [f'Digest realm="r", nonce="n", qop="auth", algorithm={algorithm}'.encode()]
            )
            p = params_of(authorization(c, "u", "pw", "GET", "/cr?x=1", nc=3, cnonce="cn"))
            ha1 = h(base, f"{h(base, 'u:r:pw')}:n:cn")
            ha2 = h(base, "GET:/cr?x=1")
            self.assertEqual(p["response"], h(base, f"{ha1}:n:00000003:cn:auth:{ha2}"))
            self.assertEqual(p["algorithm"], algorithm)
            self.assertEqual(p["nc"], "00000003")

    def test_auth_int_when_auth_not_offered(self) -> None:
        (c,) = parse_challenges([b'Digest realm="r", nonce="n", qop="auth-int"'])
        p = params_of(authorization(c, "u", "pw", "GET", "/", cnonce="cn"))
        ha2 = h("MD5", f"GET:/:{h('MD5', '')}")
        self.assertEqual(p["qop"], "auth-int")
        self.assertEqual(
            p["response"], h("MD5", f"{h('MD5', 'u:r:pw')}:n:00000001:cn:auth-int:{ha2}")
        )

    def test_random_cnonce(self) -> None:
        (c,) = parse_challenges([RFC7616[1]])
        a = params_of(authorization(c, "u", "p", "GET", "/"))
        b = params_of(authorization(c, "u", "p", "GET", "/"))
        self.assertNotEqual(a["cnonce"], b["cnonce"])
        self.assertGreaterEqual(len(a["cnonce"]), 16)

    def test_quoting(self) -> None:
        (c,) = parse_challenges([b'Digest realm="a \\"b\\" \\\\c", nonce="n", qop=auth'])
        self.assertEqual(c.realm, 'a "b" \\c')
        value = authorization(c, 'us"er', "p", "GET", "/", cnonce="cn")
        p = params_of(value)
        self.assertEqual(p["realm"], 'a "b" \\c')
        self.assertEqual(p["username"], 'us"er')
        ha1 = h("MD5", 'us"er:a "b" \\c:p')
        self.assertEqual(p["response"], h("MD5", f"{ha1}:n:00000001:cn:auth:{h('MD5', 'GET:/')}"))

    def test_basic(self) -> None:
        (c,) = parse_challenges([b'Basic realm="cpe"'])
        value = authorization(c, "Aladdin", "open sesame", "GET", "/")
        self.assertEqual(value, b"Basic " + base64.b64encode(b"Aladdin:open sesame"))
        self.assertEqual(value, b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")  # RFC 7617 section 2
        with self.assertRaises(ChallengeError):
            authorization(c, "a:b", "p", "GET", "/")

    def test_refuses_header_injection_and_unanswerable(self) -> None:
        (c,) = parse_challenges([RFC7616[1]])
        with self.assertRaises(ChallengeError):
            authorization(c, "u\r\nX-Evil: 1", "p", "GET", "/")
        with self.assertRaises(ChallengeError):
            authorization(c, "u", "p", "GET", "/\n")
        (neg,) = parse_challenges([b"Negotiate abc"])
        with self.assertRaises(ChallengeError):
            authorization(neg, "u", "p", "GET", "/")
        with self.assertRaises(ValueError):
            authorization(c, "u", "p", "GET", "/", nc=0)
