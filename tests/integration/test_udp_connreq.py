"""Tests for cwmpgw.connreq.udp: Annex G UDP connection requests, checked by a receiver
written here from the spec (request line, HMAC-SHA1 over ts ‖ id ‖ un ‖ cn)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any
from urllib.parse import unquote

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.connreq.stun import StunServer
from cwmpgw.connreq.udp import UdpConnectionRequester, sign, udp_message

_REQUEST = re.compile(
    rb"GET http://(?P<authority>[^?\s]+)\?(?P<query>\S+) HTTP/1\.1\r\n"
    rb"Host: (?P<host>[^\r\n]+)\r\n\r\n"
)


def check(datagram: bytes, username: str, password: str) -> dict[str, str] | None:
    """What a CPE does (Annex G / icwmp): parse, require every field, compare un, verify sig."""
    m = _REQUEST.fullmatch(datagram)
    if m is None or m["authority"] != m["host"]:
        return None
    fields: dict[str, str] = {}
    for part in m["query"].decode("ascii").split("&"):
        name, sep, value = part.partition("=")
        if not sep:
            return None
        fields[name] = unquote(value)
    if set(fields) != {"ts", "id", "un", "cn", "sig"}:
        return None
    if fields["un"] != username:
        return None
    text = (fields["ts"] + fields["id"] + fields["un"] + fields["cn"]).encode()
    expected = hmac.new(password.encode(), text, hashlib.sha1).hexdigest()
    if not hmac.compare_digest(expected, fields["sig"].lower()):
        return None
    fields["authority"] = m["authority"].decode()
    return fields


class MessageTests(SynchronousTestCase):
    def test_known_answer(self) -> None:
        """sig computed outside Python: printf '%s' 1700000000305419896cpe-00D09E0123456789abcdef
        | openssl dgst -sha1 -hmac s3cret"""
        data = udp_message(
            "192.0.2.10",
            7547,
            ts=1700000000,
            message_id=305419896,
            username="cpe-00D09E",
            cnonce="0123456789abcdef",
            password="s3cret",
        )
        self.assertEqual(
            data,
            b"GET http://192.0.2.10:7547?ts=1700000000&id=305419896&un=cpe-00D09E"
            b"&cn=0123456789abcdef&sig=e2158adf4bb647a215ff5cbdde126fa11d6873bd HTTP/1.1\r\n"
            b"Host: 192.0.2.10:7547\r\n\r\n",
        )
        self.assertEqual(
            sign(1700000000, 305419896, "cpe-00D09E", "0123456789abcdef", "s3cret"),
            "e2158adf4bb647a215ff5cbdde126fa11d6873bd",
        )

    def test_special_characters_are_encoded_but_signed_raw(self) -> None:
        """openssl over the UTF-8 of 1700000000305419896 + 'a b&c+d/ü' + cnonce, key 'pässword'."""
        data = udp_message(
            "192.0.2.10",
            7547,
            ts=1700000000,
            message_id=305419896,
            username="a b&c+d/ü",
            cnonce="0123456789abcdef",
            password="pässword",
        )
        self.assertIn(b"&un=a%20b%26c%2Bd/%C3%BC&", data)
        self.assertIn(b"&sig=c40e5c8d85379a09776b20b3500c2140c672bec2 ", data)
        fields = check(data, "a b&c+d/ü", "pässword")
        assert fields is not None
        self.assertEqual(fields["un"], "a b&c+d/ü")

    def test_usual_usernames_go_raw(self) -> None:
        data = udp_message(
            "192.0.2.1",
            1,
            ts=1,
            message_id=2,
            username="user@isp.example:x",
            cnonce="c",
            password="p",
        )
        self.assertIn(b"&un=user@isp.example:x&", data)

    def test_ipv6_is_bracketed(self) -> None:
        data = udp_message(
            "2001:DB8:0::1", 7547, ts=5, message_id=6, username="u", cnonce="c", password="p"
        )
        self.assertTrue(data.startswith(b"GET http://[2001:db8::1]:7547?ts=5&id=6&un=u&cn=c&sig="))
        self.assertTrue(data.endswith(b" HTTP/1.1\r\nHost: [2001:db8::1]:7547\r\n\r\n"))
        fields = check(data, "u", "p")
        assert fields is not None
        self.assertEqual(fields["authority"], "[2001:db8::1]:7547")

    def test_wrong_password_or_username_is_rejected(self) -> None:
        data = udp_message(
            "192.0.2.1", 80, ts=1, message_id=2, username="u", cnonce="c", password="p"
        )
        self.assertIsNotNone(check(data, "u", "p"))
        self.assertIsNone(check(data, "u", "q"))
        self.assertIsNone(check(data, "v", "p"))
        self.assertIsNone(check(data.replace(b"ts=1&", b"ts=2&"), "u", "p"))

    def test_invalid_input(self) -> None:
        kwargs: dict[str, Any] = dict(ts=1, message_id=2, username="u", cnonce="c", password="p")
        for host, port in (
            ("192.0.2.1\r\nX: y", 1),
            ("bad host", 1),
            ("fe80::1%eth0", 1),
            ("192.0.2.1", 0),
            ("192.0.2.1", 65536),
        ):
            with self.subTest(host=host, port=port):
                with self.assertRaises(ValueError):
                    udp_message(host, port, **kwargs)
        with self.assertRaises(ValueError):
            udp_message("192.0.2.1", 1, **{**kwargs, "message_id": 2**32})
        with self.assertRaises(ValueError):
            udp_message("192.0.2.1", 1, **{**kwargs, "ts": -1})
        self.assertIn(b"Host: cpe.example.net:1\r\n", udp_message("cpe.example.net", 1, **kwargs))


class RequesterTests(SynchronousTestCase):
    def make(
        self, **kwargs: Any
    ) -> tuple[UdpConnectionRequester, list[tuple[bytes, tuple[str, int]]], Clock]:
        sent: list[tuple[bytes, tuple[str, int]]] = []
        clock = Clock()
        clock.advance(1_700_000_123.9)
        return (
            UdpConnectionRequester(lambda d, a: sent.append((d, a)), clock=clock, **kwargs),
            sent,
            clock,
        )

    def test_copies_and_spacing(self) -> None:
        requester, sent, clock = self.make()
        d = requester.request("198.51.100.7", 40000, "cpe1", "pw")
        self.assertEqual(len(sent), 1)  # the first goes out at once
        self.assertNoResult(d)
        clock.advance(0.49)
        self.assertEqual(len(sent), 1)
        clock.advance(0.01)
        self.assertEqual(len(sent), 2)
        clock.advance(0.49)
        self.assertEqual(len(sent), 2)
        self.assertNoResult(d)
        clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), 3)
        clock.advance(10)
        self.assertEqual(len(sent), 3)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual({data for data, _ in sent}, {sent[0][0]})  # identical copies
        self.assertEqual({addr for _, addr in sent}, {("198.51.100.7", 40000)})
        fields = check(sent[0][0], "cpe1", "pw")
        assert fields is not None
        self.assertEqual(fields["ts"], "1700000123")
        self.assertTrue(1 <= int(fields["id"]) < 2**32)
        self.assertRegex(fields["cn"], r"\A[0-9a-f]{16}\Z")

    def test_each_request_is_fresh(self) -> None:
        requester, sent, _ = self.make(copies=1)
        self.assertEqual(self.successResultOf(requester.request("192.0.2.1", 1, "u", "p")), 1)
        self.assertEqual(self.successResultOf(requester.request("192.0.2.1", 1, "u", "p")), 1)
        first, second = (check(data, "u", "p") for data, _ in sent)
        assert first is not None and second is not None
        self.assertNotEqual(first["id"], second["id"])
        self.assertNotEqual(first["cn"], second["cn"])

    def test_custom_copies_and_interval(self) -> None:
        requester, sent, clock = self.make(copies=5, interval=2.0)
        d = requester.request("192.0.2.1", 1, "u", "p")
        clock.pump([2.0] * 3)
        self.assertEqual(len(sent), 4)
        self.assertNoResult(d)
        clock.advance(2.0)
        self.assertEqual(self.successResultOf(d), 5)

    def test_cancel_stops_the_remaining_copies(self) -> None:
        requester, sent, clock = self.make()
        d = requester.request("192.0.2.1", 1, "u", "p")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        clock.advance(5)
        self.assertEqual(len(sent), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_send_error_fails_the_request(self) -> None:
        clock = Clock()
        calls: list[bytes] = []

        def send(data: bytes, addr: tuple[str, int]) -> None:
            calls.append(data)
            if len(calls) == 2:
                raise OSError("network unreachable")

        d = UdpConnectionRequester(send, clock=clock).request("192.0.2.1", 1, "u", "p")
        clock.advance(0.5)
        self.failureResultOf(d, OSError)
        clock.advance(5)
        self.assertEqual(len(calls), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_constructor_validates(self) -> None:
        with self.assertRaises(ValueError):
            UdpConnectionRequester(lambda d, a: None, clock=Clock(), copies=0)
        with self.assertRaises(ValueError):
            UdpConnectionRequester(lambda d, a: None, clock=Clock(), interval=-1)


class _Receiver(DatagramProtocol):
    def __init__(self, expected: int) -> None:
        self.datagrams: list[tuple[bytes, Any]] = []
        self.done: Deferred[None] = Deferred()
        self._expected = expected

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.datagrams.append((datagram, addr))
        if len(self.datagrams) == self._expected and not self.done.called:
            self.done.callback(None)


class LoopbackTests(TestCase):
    async def test_request_from_the_stun_socket(self) -> None:
        """Sent through StunServer.send, so it comes from the STUN port as Annex G needs."""
        stun = StunServer(clock=reactor, on_binding=lambda b: None)
        stun_port = reactor.listenUDP(0, stun, interface="127.0.0.1")
        self.addCleanup(stun_port.stopListening)
        receiver = _Receiver(3)
        cpe_port = reactor.listenUDP(0, receiver, interface="127.0.0.1")
        self.addCleanup(cpe_port.stopListening)
        cpe = cpe_port.getHost().port

        requester = UdpConnectionRequester(stun.send, clock=reactor, interval=0.02)
        sent = await requester.request("127.0.0.1", cpe, "cpe-00D09E", "cr-password")
        self.assertEqual(sent, 3)
        await receiver.done.addTimeout(10, reactor)

        self.assertEqual(
            {addr for _, addr in receiver.datagrams}, {("127.0.0.1", stun_port.getHost().port)}
        )
        payloads = {data for data, _ in receiver.datagrams}
        self.assertEqual(len(payloads), 1)
        (data,) = payloads
        fields = check(data, "cpe-00D09E", "cr-password")
        assert fields is not None
        self.assertEqual(fields["authority"], f"127.0.0.1:{cpe}")
        self.assertIsNone(check(data, "cpe-00D09E", "wrong-password"))
