"""Tests for cwmpgw.connreq.guard: who a Connection Request may be sent to."""

from __future__ import annotations

from ipaddress import ip_network

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.connreq.guard import (
    GuardPolicy,
    Refusal,
    Target,
    check_http_target,
    check_udp_target,
    parse_http_url,
)

DEFAULT = GuardPolicy()
LAB = GuardPolicy(allowed_networks=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
LAB_OWN = GuardPolicy(allowed_networks=LAB.allowed_networks, own_ports=frozenset({7557, 9557}))
OFFICE = GuardPolicy(
    allowed_networks=(ip_network("10.20.0.0/16"), ip_network("2001:db8:aa::/48")),
    own_addresses=frozenset({"198.51.100.1", "2001:db8::ac5"}),
)
PORTS = GuardPolicy(allowed_ports=frozenset({7547, 30005}))
HTTP_ONLY = GuardPolicy(schemes=frozenset({"http"}))

SRC = "203.0.113.7"
SRC6 = "2001:db8:1::7"

# (url, last_source, policy, expected Target or refusal reason)
HTTP_CASES: list[tuple[str, str | None, GuardPolicy, Target | str]] = [
    # Accepted, normalised.
    ("http://203.0.113.7:7547/abc", SRC, DEFAULT, Target("http", SRC, 7547, "/abc")),
    ("HTTP://203.0.113.7", SRC, DEFAULT, Target("http", SRC, 80, "/")),
    ("https://203.0.113.7:", SRC, DEFAULT, Target("https", SRC, 443, "/")),
    ("http://203.0.113.7?x=1#frag", SRC, DEFAULT, Target("http", SRC, 80, "/?x=1")),
    (
        "http://203.0.113.7:7547/p/a?q=1&r=2#f",
        SRC,
        DEFAULT,
        Target("http", SRC, 7547, "/p/a?q=1&r=2"),
    ),
    ("http://[2001:DB8:1:0::7]:7547/x", SRC6, DEFAULT, Target("http", SRC6, 7547, "/x")),
    # IPv4-mapped IPv6, in the URL and in the source address, is compared as IPv4.
    ("http://[::ffff:203.0.113.7]:80/", SRC, DEFAULT, Target("http", SRC, 80, "/")),
    ("http://203.0.113.7/", "::ffff:203.0.113.7", DEFAULT, Target("http", SRC, 80, "/")),
    # A STUN binding never widens this: only the source address of an authenticated
    # session (or an allowed network) counts, so a binding's host is not accepted.
    (
        "http://198.51.100.9:7547/",
        SRC,
        DEFAULT,
        "address does not match the device's source address",
    ),
    ("http://198.51.100.9:7547/", None, DEFAULT, "device source address unknown"),
    # Allowed networks: accepted whatever the source, special addresses included.
    ("http://10.20.3.4:7547/", SRC, OFFICE, Target("http", "10.20.3.4", 7547, "/")),
    ("http://10.20.3.4:7547/", None, OFFICE, Target("http", "10.20.3.4", 7547, "/")),
    ("http://[2001:db8:aa::5]/", SRC, OFFICE, Target("http", "2001:db8:aa::5", 80, "/")),
    ("http://127.0.0.1:8080/cr", "127.0.0.1", LAB, Target("http", "127.0.0.1", 8080, "/cr")),
    ("http://127.9.9.9:8080/cr", None, LAB, Target("http", "127.9.9.9", 8080, "/cr")),
    ("http://[::1]:8080/", None, LAB, Target("http", "::1", 8080, "/")),
    ("http://[::ffff:127.0.0.1]:8080/", None, LAB, Target("http", "127.0.0.1", 8080, "/")),
    ("http://203.0.113.7:7547/", SRC, PORTS, Target("http", SRC, 7547, "/")),
    # Syntax.
    ("", SRC, DEFAULT, "missing URL"),
    ("http://203.0.113.7/" + "a" * 2100, SRC, DEFAULT, "URL too long"),
    ("http://203.0.113.7/a b", SRC, DEFAULT, "malformed URL"),
    ("http://203.0.113.7/\r\nX: y", SRC, DEFAULT, "malformed URL"),
    ("http://203.0.113.7/é", SRC, DEFAULT, "malformed URL"),
    ("http:/203.0.113.7/", SRC, DEFAULT, "malformed URL"),
    ("203.0.113.7:7547/", SRC, DEFAULT, "malformed URL"),
    ("ftp://203.0.113.7/", SRC, DEFAULT, "scheme not allowed"),
    ("file:///etc/passwd", SRC, DEFAULT, "scheme not allowed"),
    ("https://203.0.113.7/", SRC, HTTP_ONLY, "scheme not allowed"),
    ("http://user:pw@203.0.113.7/", SRC, DEFAULT, "userinfo not allowed"),
    ("http://203.0.113.7@10.0.0.1/", SRC, DEFAULT, "userinfo not allowed"),
    ("http://@203.0.113.7/", SRC, DEFAULT, "userinfo not allowed"),
    ("http:///path", SRC, DEFAULT, "missing host"),
    ("http://:7547/", SRC, DEFAULT, "missing host"),
    ("http://cpe.example.com:7547/", SRC, DEFAULT, "hostname not allowed"),
    ("http://localhost/", SRC, LAB, "hostname not allowed"),
    ("http://2130706433/", SRC, DEFAULT, "hostname not allowed"),
    ("http://0x7f.1/", SRC, DEFAULT, "hostname not allowed"),
    ("http://0203.0.113.7/", SRC, DEFAULT, "hostname not allowed"),
    ("http://203.0.113.7.:80/", SRC, DEFAULT, "hostname not allowed"),
    ("http://2001:db8:1::7/", SRC6, DEFAULT, "malformed host"),
    ("http://[2001:db8:1::7/", SRC6, DEFAULT, "malformed host"),
    ("http://[2001:db8:1::7]x/", SRC6, DEFAULT, "malformed host"),
    ("http://[203.0.113.7]/", SRC, DEFAULT, "malformed IPv6 address"),
    ("http://[fe80::1%25eth0]/", SRC, DEFAULT, "IPv6 zone identifiers not allowed"),
    ("http://203.0.113.7:0/", SRC, DEFAULT, "invalid port"),
    ("http://203.0.113.7:65536/", SRC, DEFAULT, "invalid port"),
    ("http://203.0.113.7:+80/", SRC, DEFAULT, "invalid port"),
    ("http://203.0.113.7:000080/", SRC, DEFAULT, "invalid port"),
    ("http://203.0.113.7:80:81/", SRC, DEFAULT, "malformed host"),
    ("http://203.0.113.7:8080/", SRC, PORTS, "port not allowed"),
    (
        "http://10.20.3.4:8080/",
        SRC,
        GuardPolicy(allowed_networks=OFFICE.allowed_networks, allowed_ports=frozenset({7547})),
        "port not allowed",
    ),
    # The gateway's own listeners, even where a lab allows loopback.
    ("http://127.0.0.1:7557/", SRC, LAB_OWN, "the gateway's own service not allowed"),
    ("http://[::1]:9557/", SRC, LAB_OWN, "the gateway's own service not allowed"),
    ("http://0.0.0.0:7557/", SRC, LAB_OWN, "the gateway's own service not allowed"),
    ("http://127.0.0.1:7548/", SRC, LAB_OWN, Target("http", "127.0.0.1", 7548, "/")),
    # Special addresses, refused even when they are the device's own source.
    ("http://127.0.0.1:7547/", "127.0.0.1", DEFAULT, "loopback address not allowed"),
    ("http://[::1]:7547/", "::1", DEFAULT, "loopback address not allowed"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1", DEFAULT, "loopback address not allowed"),
    ("http://0.0.0.0/", "0.0.0.0", DEFAULT, "unspecified address not allowed"),
    ("http://0.1.2.3/", "0.1.2.3", DEFAULT, "unspecified address not allowed"),
    ("http://[::]/", "::", DEFAULT, "unspecified address not allowed"),
    ("http://169.254.1.1/", "169.254.1.1", DEFAULT, "link-local address not allowed"),
    ("http://[fe80::1]/", "fe80::1", DEFAULT, "link-local address not allowed"),
    ("http://224.0.0.1/", "224.0.0.1", DEFAULT, "multicast address not allowed"),
    ("http://[ff02::1]/", "ff02::1", DEFAULT, "multicast address not allowed"),
    ("http://255.255.255.255/", SRC, DEFAULT, "broadcast address not allowed"),
    ("http://240.0.0.1/", "240.0.0.1", DEFAULT, "reserved address not allowed"),
    ("http://198.51.100.1/", "198.51.100.1", OFFICE, "gateway's own address not allowed"),
    ("http://[2001:db8::ac5]/", "2001:db8::ac5", OFFICE, "gateway's own address not allowed"),
    ("http://127.0.0.1:7547/", "127.0.0.1", OFFICE, "loopback address not allowed"),
    # Not the device's address.
    ("http://203.0.113.8/", SRC, DEFAULT, "address does not match the device's source address"),
    ("http://10.0.0.1/", SRC, DEFAULT, "address does not match the device's source address"),
    (
        "http://[2001:db8:1::8]/",
        SRC6,
        DEFAULT,
        "address does not match the device's source address",
    ),
    ("http://203.0.113.7/", None, DEFAULT, "device source address unknown"),
    ("http://203.0.113.7/", "not an address", DEFAULT, "device source address unknown"),
    ("http://10.20.3.4/", SRC, DEFAULT, "address does not match the device's source address"),
]


class HttpTargetTests(SynchronousTestCase):
    def test_table(self) -> None:
        for url, last_source, policy, expected in HTTP_CASES:
            with self.subTest(url=url[:60], last_source=last_source):
                result = check_http_target(url, last_source=last_source, policy=policy)
                want = Refusal(expected) if isinstance(expected, str) else expected
                self.assertEqual(result, want, url)

    def test_target_url_round_trip(self) -> None:
        cases = {
            "http://203.0.113.7:7547/abc?x=1": "http://203.0.113.7:7547/abc?x=1",
            "http://203.0.113.7:80/": "http://203.0.113.7/",
            "https://[2001:db8:1::7]:443/a": "https://[2001:db8:1::7]/a",
            "https://[2001:db8:1::7]:7548": "https://[2001:db8:1::7]:7548/",
        }
        for url, expected in cases.items():
            target = parse_http_url(url)
            assert isinstance(target, Target)
            self.assertEqual(target.url, expected)

    @settings(max_examples=500, deadline=None)
    @given(
        st.text(max_size=120),
        st.one_of(st.none(), st.text(max_size=40)),
    )
    def test_never_raises(self, url: str, last_source: str | None) -> None:
        result = check_http_target(url, last_source=last_source, policy=OFFICE)
        self.assertIsInstance(result, Refusal | Target)

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["http://", "https://", "HTTP://", "http://[", ""]),
        st.text(alphabet="0123456789abcdef.:[]@%/?#-", max_size=40),
    )
    def test_never_raises_on_url_like_strings(self, prefix: str, rest: str) -> None:
        url = prefix + rest
        result = check_http_target(url, last_source=SRC, policy=LAB)
        self.assertIsInstance(result, Refusal | Target)
        if isinstance(result, Target):
            # Anything accepted re-parses to itself.
            self.assertEqual(parse_http_url(result.url), result)


class UdpTargetTests(SynchronousTestCase):
    def test_table(self) -> None:
        cases: list[tuple[str, int, str | None, GuardPolicy, Target | str]] = [
            # The binding's host is not the device's source: refused (never widened).
            (
                "198.51.100.9",
                40000,
                SRC,
                DEFAULT,
                "address does not match the device's source address",
            ),
            (SRC, 7547, SRC, DEFAULT, Target("udp", SRC, 7547, "")),
            ("::ffff:203.0.113.7", 7547, SRC, DEFAULT, Target("udp", SRC, 7547, "")),
            (f"[{SRC6}]", 7547, SRC6, DEFAULT, Target("udp", SRC6, 7547, "")),
            (SRC6, 7547, SRC6, DEFAULT, Target("udp", SRC6, 7547, "")),
            ("127.0.0.1", 9999, None, LAB, Target("udp", "127.0.0.1", 9999, "")),
            ("cpe.example.com", 7547, SRC, DEFAULT, "hostname not allowed"),
            ("", 7547, SRC, DEFAULT, "missing host"),
            (SRC, 0, SRC, DEFAULT, "invalid port"),
            (SRC, 70000, SRC, DEFAULT, "invalid port"),
            (SRC, True, SRC, DEFAULT, "invalid port"),
            (SRC, 8080, SRC, PORTS, "port not allowed"),
            ("127.0.0.1", 7547, "127.0.0.1", DEFAULT, "loopback address not allowed"),
            ("255.255.255.255", 7547, SRC, DEFAULT, "broadcast address not allowed"),
            (
                "203.0.113.8",
                7547,
                SRC,
                DEFAULT,
                "address does not match the device's source address",
            ),
            (SRC, 7547, None, DEFAULT, "device source address unknown"),
        ]
        for host, port, last_source, policy, expected in cases:
            with self.subTest(host=host, port=port):
                result = check_udp_target(host, port, last_source=last_source, policy=policy)
                if isinstance(expected, str):
                    self.assertEqual(result, Refusal(expected))
                else:
                    self.assertEqual(result, expected)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=80), st.integers())
    def test_never_raises(self, host: str, port: int) -> None:
        result = check_udp_target(host, port, last_source=SRC, policy=OFFICE)
        self.assertIsInstance(result, Refusal | Target)


class PolicyTests(SynchronousTestCase):
    def test_invalid_policy_values(self) -> None:
        with self.assertRaises(ValueError):
            GuardPolicy(own_addresses=frozenset({"gateway.example"}))
        with self.assertRaises(ValueError):
            GuardPolicy(allowed_ports=frozenset({0}))
        with self.assertRaises(ValueError):
            GuardPolicy(allowed_networks=("10.0.0.0/8",))  # type: ignore[arg-type]

    def test_own_addresses_normalised(self) -> None:
        policy = GuardPolicy(own_addresses=frozenset({"::ffff:203.0.113.7"}))
        self.assertEqual(
            check_http_target("http://203.0.113.7/", last_source=SRC, policy=policy),
            Refusal("gateway's own address not allowed"),
        )

    def test_the_gateways_policy_keeps_its_own_listeners_out_of_reach(self) -> None:
        from cwmpgw.app.connreq import guard_policy
        from cwmpgw.config import parse_config

        config = parse_config(
            {
                "acs": {"port": 7547},
                "nbi": {"port": 7557},
                "metrics": {"port": 9557},
                "connreq": {"allowed_networks": ["127.0.0.0/8"]},
            }
        )
        policy = guard_policy(config)
        self.assertEqual(policy.own_ports, frozenset({7547, 7557, 9557}))
        for port in (7547, 7557, 9557):
            self.assertEqual(
                check_http_target(f"http://127.0.0.1:{port}/", last_source=None, policy=policy),
                Refusal("the gateway's own service not allowed"),
            )
        allowed = check_http_target("http://127.0.0.1:8080/cr", last_source=None, policy=policy)
        self.assertEqual(allowed, Target("http", "127.0.0.1", 8080, "/cr"))  # the lab's CPE
        off = parse_config({"metrics": {"enabled": False, "port": 9557}, "nbi": {"port": 0}})
        self.assertEqual(guard_policy(off).own_ports, frozenset({7547}))
