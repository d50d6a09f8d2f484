"""Tests for cwmpgw.connreq.stun: RFC 5769 vectors, classic RFC 3489, the Annex G server."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.connreq.stun import (
    BINDING,
    BINDING_CHANGE,
    CHANGE_REQUEST,
    CLASS_ERROR,
    CLASS_INDICATION,
    CLASS_REQUEST,
    CLASS_SUCCESS,
    CONNECTION_REQUEST_BINDING,
    CONNECTION_REQUEST_BINDING_VALUE,
    ERROR_CODE,
    FINGERPRINT,
    MAPPED_ADDRESS,
    MAX_ATTRIBUTES,
    MESSAGE_INTEGRITY,
    RESPONSE_ADDRESS,
    SOFTWARE,
    UNKNOWN_ATTRIBUTES,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    Binding,
    StunError,
    StunMessage,
    StunServer,
    build,
    decode_error_code,
    decode_mapped_address,
    decode_unknown_attributes,
    decode_username,
    decode_xor_mapped_address,
    encode_error_code,
    encode_mapped_address,
    encode_unknown_attributes,
    encode_username,
    encode_xor_mapped_address,
    parse,
    password_keys,
    verify_fingerprint,
    verify_message_integrity,
)


def unhex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 5769 test vectors, typed in from the RFC (padding bytes there are 0x20 on purpose).
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
RFC5769_TXID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")

# §2.1 Sample Request
RFC5769_REQUEST = unhex("""
    00 01 00 58  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 10  53 54 55 4e  20 74 65 73  74 20 63 6c  69 65 6e 74
    00 24 00 04  6e 00 01 ff
    80 29 00 08  93 2f f9 b1  51 26 3b 36
    00 06 00 09  65 76 74 6a  3a 68 36 76  59 20 20 20
    00 08 00 14  9a ea a7 0c  bf d8 cb 56  78 1e f2 b5  b2 d3 f2 49  c1 b5 71 a2
    80 28 00 04  e5 7a 3b cf
""")

# §2.2 Sample IPv4 Response
RFC5769_RESPONSE_V4 = unhex("""
    01 01 00 3c  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
    00 20 00 08  00 01 a1 47  e1 12 a6 43
    00 08 00 14  2b 91 f5 99  fd 9e 90 c3  8c 74 89 f9  2a f9 ba 53  f0 6b e7 d7
    80 28 00 04  c0 7d 4c 96
""")

# §2.3 Sample IPv6 Response
RFC5769_RESPONSE_V6 = unhex("""
    01 01 00 48  21 12 a4 42  b7 e7 a7 01  bc 34 d6 86  fa 87 df ae
    80 22 00 0b  74 65 73 74  20 76 65 63  74 6f 72 20
    00 20 00 14  00 02 a1 47  01 13 a9 fa  a5 d3 f1 79  bc 25 f4 b5  be d2 b9 d9
    00 08 00 14  a3 82 95 4e  4b e6 7b f1  17 84 c9 7c  82 92 c2 75  bf e3 ed 41
    80 28 00 04  c8 fb 0b 4c
""")


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


class RFC5769Tests(SynchronousTestCase):
    def test_sample_request_parses(self) -> None:
        msg = parse(RFC5769_REQUEST)
        self.assertEqual((msg.method, msg.cls), (BINDING, CLASS_REQUEST))
        self.assertTrue(msg.magic_cookie)
        self.assertEqual(msg.transaction_id, RFC5769_TXID)
        self.assertEqual(
            [t for t, _ in msg.attributes],
            [SOFTWARE, 0x0024, 0x8029, USERNAME, MESSAGE_INTEGRITY, FINGERPRINT],
        )
        self.assertEqual(msg.get(SOFTWARE), b"STUN test client")
        self.assertEqual(msg.get(0x0024), unhex("6e 00 01 ff"))
        self.assertEqual(decode_username(msg.get(USERNAME) or b""), "evtj:h6vY")

    def test_sample_request_integrity_and_fingerprint(self) -> None:
        self.assertTrue(verify_message_integrity(RFC5769_REQUEST, RFC5769_PASSWORD))
        self.assertTrue(verify_fingerprint(RFC5769_REQUEST))
        self.assertFalse(verify_message_integrity(RFC5769_REQUEST, b"VOkJxbRl1RmTxUk/WvJxBu"))

    def test_flipped_byte_fails_integrity_and_fingerprint(self) -> None:
        tampered = flip(RFC5769_REQUEST, 30)  # inside SOFTWARE, covered by both
        self.assertEqual(parse(tampered).get(SOFTWARE), b"STUN tdst client")
        self.assertFalse(verify_message_integrity(tampered, RFC5769_PASSWORD))
        self.assertFalse(verify_fingerprint(tampered))
        # A flipped bit in the MAC itself also fails, while the CRC (over it) fails too.
        in_mac = flip(RFC5769_REQUEST, 84)
        self.assertFalse(verify_message_integrity(in_mac, RFC5769_PASSWORD))
        self.assertFalse(verify_fingerprint(in_mac))

    def test_ipv4_response(self) -> None:
        msg = parse(RFC5769_RESPONSE_V4)
        self.assertEqual((msg.method, msg.cls), (BINDING, CLASS_SUCCESS))
        self.assertEqual(msg.get(SOFTWARE), b"test vector")
        value = msg.get(XOR_MAPPED_ADDRESS)
        assert value is not None
        self.assertEqual(decode_xor_mapped_address(value, msg.transaction_id), ("192.0.2.1", 32853))
        self.assertEqual(encode_xor_mapped_address("192.0.2.1", 32853, RFC5769_TXID), value)
        self.assertTrue(verify_message_integrity(RFC5769_RESPONSE_V4, RFC5769_PASSWORD))
        self.assertTrue(verify_fingerprint(RFC5769_RESPONSE_V4))
        self.assertFalse(verify_message_integrity(flip(RFC5769_RESPONSE_V4, 40), RFC5769_PASSWORD))

    def test_ipv6_response(self) -> None:
        msg = parse(RFC5769_RESPONSE_V6)
        value = msg.get(XOR_MAPPED_ADDRESS)
        assert value is not None
        self.assertEqual(
            decode_xor_mapped_address(value, msg.transaction_id),
            ("2001:db8:1234:5678:11:2233:4455:6677", 32853),
        )
        self.assertEqual(
            encode_xor_mapped_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, RFC5769_TXID),
            value,
        )
        self.assertTrue(verify_message_integrity(RFC5769_RESPONSE_V6, RFC5769_PASSWORD))
        self.assertTrue(verify_fingerprint(RFC5769_RESPONSE_V6))
        self.assertFalse(verify_fingerprint(flip(RFC5769_RESPONSE_V6, 50)))

    def test_build_reproduces_the_vector_up_to_padding(self) -> None:
        """build() pads with zeros, the RFC with spaces; with the same bytes it is identical."""
        msg = parse(RFC5769_RESPONSE_V4)
        body = tuple((t, v) for t, v in msg.attributes if t not in (MESSAGE_INTEGRITY, FINGERPRINT))
        # "test vector" + the RFC's one space of padding as part of the value keeps the
        # layout (length 12 instead of 11), so compare structure and verification instead.
        out = build(
            StunMessage(BINDING, CLASS_SUCCESS, RFC5769_TXID, body, True),
            integrity_key=RFC5769_PASSWORD,
            fingerprint=True,
        )
        self.assertEqual(len(out), len(RFC5769_RESPONSE_V4))
        self.assertEqual(out[:20], RFC5769_RESPONSE_V4[:20])
        self.assertEqual(out[20:35], RFC5769_RESPONSE_V4[20:35])  # up to the padding byte
        self.assertEqual(out[36:44], RFC5769_RESPONSE_V4[36:44])
        self.assertTrue(verify_message_integrity(out, RFC5769_PASSWORD))
        self.assertTrue(verify_fingerprint(out))
        self.assertEqual(parse(out).attributes[:2], parse(RFC5769_RESPONSE_V4).attributes[:2])


class CodecTests(SynchronousTestCase):
    def test_round_trip_5389(self) -> None:
        txid = os.urandom(12)
        attrs = ((USERNAME, b"cpe1"), (0x8022, b"x"))
        data = build(StunMessage(BINDING, CLASS_REQUEST, txid, attrs, True))
        self.assertEqual(len(data) % 4, 0)
        self.assertEqual(parse(data), StunMessage(BINDING, CLASS_REQUEST, txid, attrs, True))

    def test_message_type_bits(self) -> None:
        """Class bits are interleaved with the method (RFC 5389 §6)."""
        txid = bytes(12)
        for cls, type_ in ((0, 0x0001), (1, 0x0011), (2, 0x0101), (3, 0x0111)):
            data = build(StunMessage(BINDING, cls, txid, (), True))
            self.assertEqual(struct.unpack("!H", data[:2])[0], type_)
            self.assertEqual(parse(data).cls, cls)
        data = build(StunMessage(0xFFF, CLASS_INDICATION, txid, (), True))
        self.assertEqual(struct.unpack("!H", data[:2])[0], 0x3EFF)
        self.assertEqual(parse(data).method, 0xFFF)

    def test_classic_message(self) -> None:
        txid = b"\x01" * 16
        data = build(StunMessage(BINDING, CLASS_REQUEST, txid, ((USERNAME, b"abcd"),), False))
        self.assertEqual(data[:2], b"\x00\x01")
        self.assertEqual(data[4:20], txid)
        msg = parse(data)
        self.assertFalse(msg.magic_cookie)
        self.assertEqual(msg.transaction_id, txid)
        with self.assertRaises(ValueError):
            build(StunMessage(BINDING, CLASS_REQUEST, txid, (), False), fingerprint=True)
        with self.assertRaises(ValueError):
            build(StunMessage(BINDING, CLASS_REQUEST, bytes(12), (), False))
        with self.assertRaises(ValueError):
            build(StunMessage(BINDING, CLASS_REQUEST, txid, (), True))

    def test_classic_integrity_is_padded_to_64_bytes(self) -> None:
        """RFC 3489 §11.2.8: the HMAC input is zero-padded to a multiple of 64 bytes."""
        key = b"stun password"
        txid = bytes(range(16))
        data = build(
            StunMessage(BINDING, CLASS_REQUEST, txid, ((USERNAME, b"cpe "),), False),
            integrity_key=key,
        )
        prefix = data[:-24]
        text = prefix[:2] + struct.pack("!H", len(data) - 20) + prefix[4:]
        expected = hmac.new(key, text + bytes(-len(text) % 64), hashlib.sha1).digest()
        self.assertEqual(data[-20:], expected)
        self.assertTrue(verify_message_integrity(data, key))
        self.assertFalse(verify_message_integrity(data, b"other"))

    def test_classic_message_with_5389_style_integrity_is_accepted(self) -> None:
        key = b"k"
        txid = bytes(range(1, 17))
        header_and_attr = (
            struct.pack("!HH", 0x0001, 8 + 24) + txid + struct.pack("!HH", USERNAME, 4) + b"user"
        )
        mac = hmac.new(key, header_and_attr, hashlib.sha1).digest()
        data = header_and_attr + struct.pack("!HH", MESSAGE_INTEGRITY, 20) + mac
        self.assertTrue(verify_message_integrity(data, key))
        # The same unpadded computation on an RFC 5389 message is the only one accepted there.
        self.assertFalse(verify_message_integrity(RFC5769_REQUEST, b""))

    def test_integrity_absent_or_short(self) -> None:
        data = build(StunMessage(BINDING, CLASS_REQUEST, bytes(12), (), True))
        self.assertFalse(verify_message_integrity(data, b"k"))
        self.assertFalse(verify_fingerprint(data))
        short = build(
            StunMessage(BINDING, CLASS_REQUEST, bytes(12), ((MESSAGE_INTEGRITY, b"x"),), True)
        )
        self.assertFalse(verify_message_integrity(short, b"k"))

    def test_fingerprint_must_be_last(self) -> None:
        data = build(StunMessage(BINDING, CLASS_REQUEST, bytes(12), (), True), fingerprint=True)
        self.assertTrue(verify_fingerprint(data))
        moved = build(
            StunMessage(
                BINDING, CLASS_REQUEST, bytes(12), (*parse(data).attributes, (SOFTWARE, b"x")), True
            )
        )
        self.assertFalse(verify_fingerprint(moved))

    def test_build_refuses_duplicates(self) -> None:
        msg = StunMessage(
            BINDING, CLASS_REQUEST, bytes(12), ((MESSAGE_INTEGRITY, bytes(20)),), True
        )
        with self.assertRaises(ValueError):
            build(msg, integrity_key=b"k")
        with self.assertRaises(ValueError):
            build(StunMessage(BINDING, 4, bytes(12), (), True))

    def test_malformed(self) -> None:
        good = build(StunMessage(BINDING, CLASS_REQUEST, bytes(12), ((USERNAME, b"abcde"),), True))
        cases = {
            "short": good[:19],
            "length mismatch": good[:-4],
            "trailing byte": good + b"\x00",
            "length not multiple of 4": good[:2] + struct.pack("!H", 13) + good[4:] + b"\x00",
            "leading bits": b"\x80" + good[1:],
            "attribute overrun": good[:2]
            + struct.pack("!H", 8)
            + good[4:20]
            + struct.pack("!HH", USERNAME, 5)
            + b"abcd",
            "too big": struct.pack("!HH", 1, 1500) + bytes(16) + bytes(1500),
            "empty": b"",
        }
        for name, data in cases.items():
            with self.subTest(name):
                with self.assertRaises(StunError):
                    parse(data)
        self.assertEqual(parse(good).get(USERNAME), b"abcde")

    def test_attribute_count_bound(self) -> None:
        body = struct.pack("!HH", SOFTWARE, 0) * MAX_ATTRIBUTES
        ok = struct.pack("!HH", 1, len(body)) + bytes(16) + body
        self.assertEqual(len(parse(ok).attributes), MAX_ATTRIBUTES)
        body += struct.pack("!HH", SOFTWARE, 0)
        with self.assertRaises(StunError):
            parse(struct.pack("!HH", 1, len(body)) + bytes(16) + body)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_parse_only_raises_stun_error(self, data: bytes) -> None:
        try:
            msg = parse(data)
        except StunError:
            return
        self.assertEqual(len(data), 20 + sum(4 + len(v) + (-len(v) % 4) for _, v in msg.attributes))

    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(
            st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)).filter(
                lambda a: a[0] not in (MESSAGE_INTEGRITY, FINGERPRINT)
            ),
            max_size=8,
        ),
        st.binary(min_size=12, max_size=12),
    )
    def test_build_parse_round_trip(self, attrs: list[tuple[int, bytes]], txid: bytes) -> None:
        msg = StunMessage(BINDING, CLASS_REQUEST, txid, tuple(attrs), True)
        data = build(msg, integrity_key=b"key", fingerprint=True)
        self.assertEqual(parse(data).attributes[:-2], msg.attributes)
        self.assertTrue(verify_message_integrity(data, b"key"))
        self.assertTrue(verify_fingerprint(data))

    def test_addresses(self) -> None:
        txid = os.urandom(12)
        for host, port in (("203.0.113.9", 1), ("2001:db8::7", 65535)):
            value = encode_mapped_address(host, port)
            self.assertEqual(decode_mapped_address(value), (host, port))
            xvalue = encode_xor_mapped_address(host, port, txid)
            self.assertNotEqual(xvalue, value)
            self.assertEqual(decode_xor_mapped_address(xvalue, txid), (host, port))
        self.assertEqual(
            decode_mapped_address(encode_mapped_address("::ffff:192.0.2.5", 9)), ("192.0.2.5", 9)
        )
        self.assertEqual(len(encode_mapped_address("192.0.2.5", 9)), 8)
        self.assertEqual(len(encode_mapped_address("2001:db8::1", 9)), 20)
        for bad in (b"\x00\x03\x00\x01" + bytes(4), b"\x00\x01\x00\x01" + bytes(16), b"\x00\x01"):
            with self.assertRaises(StunError):
                decode_mapped_address(bad)
        with self.assertRaises(ValueError):
            encode_mapped_address("example.com", 1)
        with self.assertRaises(ValueError):
            encode_xor_mapped_address("192.0.2.1", 1, bytes(16))

    def test_username_error_code_unknown_attributes(self) -> None:
        self.assertEqual(decode_username(encode_username("cpé")), "cpé")
        self.assertEqual(decode_username(b"cpe1    ", classic=True), "cpe1")
        self.assertEqual(decode_username(b"cpe1    "), "cpe1    ")
        with self.assertRaises(StunError):
            decode_username(b"\xff\xfe")
        with self.assertRaises(ValueError):
            encode_username("x" * 514)
        self.assertEqual(
            decode_error_code(encode_error_code(401, "Unauthorized")), (401, "Unauthorized")
        )
        self.assertEqual(encode_error_code(420, "")[2:4], b"\x04\x14")
        with self.assertRaises(ValueError):
            encode_error_code(200, "OK")
        with self.assertRaises(StunError):
            decode_error_code(b"\x00\x00\x02")
        self.assertEqual(decode_unknown_attributes(encode_unknown_attributes([1, 2, 3])), (1, 2, 3))
        self.assertEqual(
            decode_unknown_attributes(encode_unknown_attributes([1, 2, 3], classic=True)),
            (1, 2, 3, 3),
        )


# --- server -------------------------------------------------------------------------------


class FakeUDPTransport:
    """Records write(data, addr); twisted.internet.testing has no UDP transport."""

    def __init__(self, host: IPv4Address | IPv6Address | None = None) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.host = host or IPv4Address("UDP", "0.0.0.0", 3478)

    def write(self, data: bytes, addr: Any = None) -> None:
        self.written.append((data, addr))

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.host


CPE = ("198.51.100.7", 40000)
KEY = b"stun-secret-key"


def request(
    attrs: tuple[tuple[int, bytes], ...] = (),
    *,
    classic: bool = False,
    key: bytes | None = None,
    fingerprint: bool = False,
    cls: int = CLASS_REQUEST,
    method: int = BINDING,
) -> tuple[bytes, bytes]:
    txid = (b"\x00" + os.urandom(15)) if classic else os.urandom(12)
    msg = StunMessage(method, cls, txid, attrs, not classic)
    return build(msg, integrity_key=key, fingerprint=fingerprint), txid


CRB = (CONNECTION_REQUEST_BINDING, CONNECTION_REQUEST_BINDING_VALUE)


class ServerTests(SynchronousTestCase):
    def make(self, **kwargs: Any) -> tuple[StunServer, FakeUDPTransport, list[Binding], Clock]:
        """A server for the codec-level tests: unauthenticated bindings allowed, as in a
        lab, unless ``require_integrity`` is given (the secure default is tested below)."""
        kwargs.setdefault("require_integrity", False)
        clock = Clock()
        clock.advance(1_700_000_000.25)
        bindings: list[Binding] = []
        server = StunServer(clock=clock, on_binding=bindings.append, **kwargs)
        transport = FakeUDPTransport()
        server.makeConnection(transport)
        return server, transport, bindings, clock

    def only_reply(self, transport: FakeUDPTransport, addr: Any = CPE) -> StunMessage:
        self.assertEqual(len(transport.written), 1)
        data, to = transport.written[0]
        self.assertEqual(to, addr)
        transport.written.clear()
        return parse(data)

    def test_5389_request_gets_xor_and_plain_mapped_address(self) -> None:
        server, transport, bindings, _ = self.make()
        data, txid = request()
        server.datagramReceived(data, CPE)
        reply = self.only_reply(transport)
        self.assertEqual(
            (reply.method, reply.cls, reply.transaction_id), (BINDING, CLASS_SUCCESS, txid)
        )
        self.assertTrue(reply.magic_cookie)
        self.assertEqual(decode_xor_mapped_address(reply.get(XOR_MAPPED_ADDRESS) or b"", txid), CPE)
        self.assertEqual(decode_mapped_address(reply.get(MAPPED_ADDRESS) or b""), CPE)
        self.assertEqual(bindings, [])  # no CONNECTION-REQUEST-BINDING: nothing to record

    def test_classic_request_gets_mapped_address_only(self) -> None:
        server, transport, bindings, _ = self.make()
        data, txid = request((CRB, (USERNAME, b"cpe1")), classic=True)
        server.datagramReceived(data, CPE)
        raw = transport.written[0][0]
        self.assertEqual(raw[4:20], txid)  # 16-byte id echoed, no cookie
        reply = self.only_reply(transport)
        self.assertFalse(reply.magic_cookie)
        self.assertEqual(reply.cls, CLASS_SUCCESS)
        self.assertIsNone(reply.get(XOR_MAPPED_ADDRESS))
        self.assertEqual(decode_mapped_address(reply.get(MAPPED_ADDRESS) or b""), CPE)
        self.assertEqual(bindings, [Binding("cpe1", CPE[0], CPE[1], False, 1_700_000_000.25)])

    def test_tr111_attributes(self) -> None:
        """Padded classic USERNAME (icwmp pads with spaces) and BINDING-CHANGE."""
        server, transport, bindings, clock = self.make()
        data, _ = request((CRB, (BINDING_CHANGE, b""), (USERNAME, b"cpe-00D09E  ")), classic=True)
        clock.advance(5)
        server.datagramReceived(data, CPE)
        self.only_reply(transport)
        self.assertEqual(len(bindings), 1)
        self.assertEqual(bindings[0].username, "cpe-00D09E")
        self.assertTrue(bindings[0].changed)
        self.assertEqual(bindings[0].ts, 1_700_000_005.25)

    def test_binding_without_username_and_over_5389(self) -> None:
        server, transport, bindings, _ = self.make()
        data, _ = request((CRB,), fingerprint=True)
        server.datagramReceived(data, CPE)
        raw = transport.written[0][0]
        self.assertTrue(verify_fingerprint(raw))  # FINGERPRINT echoed
        self.only_reply(transport)
        self.assertEqual(bindings, [Binding(None, CPE[0], CPE[1], False, 1_700_000_000.25)])

    def test_wrong_binding_value_is_not_recorded(self) -> None:
        server, transport, bindings, _ = self.make()
        server.datagramReceived(request(((CONNECTION_REQUEST_BINDING, b"something else"),))[0], CPE)
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        self.assertEqual(bindings, [])
        # Without the trailing space (a sloppy CPE) it still counts.
        server.datagramReceived(
            request(((CONNECTION_REQUEST_BINDING, b"dslforum.org/TR-111"),), classic=True)[0], CPE
        )
        self.only_reply(transport)
        self.assertEqual(len(bindings), 1)

    def secure(
        self, keys: dict[str, list[bytes]] | None = None, **kwargs: Any
    ) -> tuple[StunServer, FakeUDPTransport, list[Binding], Clock]:
        """A server with the default require_integrity and ``keys`` as its key lookup."""
        table = {"cpe1": [KEY]} if keys is None else keys
        clock = Clock()
        clock.advance(1_700_000_000.25)
        bindings: list[Binding] = []
        server = StunServer(
            clock=clock,
            on_binding=bindings.append,
            keys=lambda username: succeed(table.get(username, [])),
            **kwargs,
        )
        transport = FakeUDPTransport()
        server.makeConnection(transport)
        return server, transport, bindings, clock

    def assert_401(self, transport: FakeUDPTransport) -> None:
        reply = self.only_reply(transport)
        self.assertEqual(reply.cls, CLASS_ERROR)
        code, reason = decode_error_code(reply.get(ERROR_CODE) or b"")
        self.assertEqual(code, 401)
        if not reply.magic_cookie:
            self.assertEqual(len(reason.encode()) % 4, 0)  # RFC 3489 phrase length

    def test_spoofed_binding_without_integrity_is_ignored_by_default(self) -> None:
        """The issue's attack: one UDP datagram with USERNAME=<device id> and
        CONNECTION-REQUEST-BINDING, from the attacker's address, moved the binding."""
        clock = Clock()
        bindings: list[Binding] = []
        server = StunServer(clock=clock, on_binding=bindings.append)  # no keys, defaults
        transport = FakeUDPTransport()
        server.makeConnection(transport)
        with capturedLogs() as events:
            for attrs, classic in (
                ((CRB, (USERNAME, b"cpe1")), True),
                ((CRB, (USERNAME, b"cpe1")), False),
                ((CRB,), True),
            ):
                server.datagramReceived(request(attrs, classic=classic)[0], CPE)
                self.assert_401(transport)  # an Annex G CPE retries with integrity
        self.assertEqual(bindings, [])
        self.assertEqual(server.refused, {"unauthenticated": 3})
        self.assertEqual(
            sum(
                "Unauthenticated connection request binding" in str(e["log_format"]) for e in events
            ),
            3,
        )

    def test_spoofed_binding_ignored_with_keys_too(self) -> None:
        server, transport, bindings, _ = self.secure()
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), classic=True)[0], CPE)
        self.assert_401(transport)
        self.assertEqual(bindings, [])

    def test_address_discovery_needs_no_integrity(self) -> None:
        server, transport, bindings, _ = self.secure()
        for attrs in ((), ((USERNAME, b"cpe1"),)):
            data, txid = request(attrs)
            server.datagramReceived(data, CPE)
            reply = self.only_reply(transport)
            self.assertEqual((reply.cls, reply.transaction_id), (CLASS_SUCCESS, txid))
            self.assertEqual(
                decode_xor_mapped_address(reply.get(XOR_MAPPED_ADDRESS) or b"", txid), CPE
            )
        self.assertEqual(bindings, [])
        self.assertEqual(server.refused, {})

    def test_lab_may_allow_unauthenticated_bindings(self) -> None:
        server, transport, bindings, _ = self.make(require_integrity=False)
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), classic=True)[0], CPE)
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        self.assertEqual([(b.username, b.authenticated) for b in bindings], [("cpe1", False)])

    def test_integrity_ok_classic(self) -> None:
        server, transport, bindings, _ = self.secure()
        data, txid = request((CRB, (USERNAME, b"cpe1")), classic=True, key=KEY)
        server.datagramReceived(data, CPE)
        raw = transport.written[0][0]
        reply = self.only_reply(transport)
        self.assertEqual(reply.cls, CLASS_SUCCESS)
        self.assertEqual(reply.transaction_id, txid)
        self.assertTrue(verify_message_integrity(raw, KEY))  # the response is signed too
        self.assertEqual(bindings, [Binding("cpe1", CPE[0], CPE[1], False, 1_700_000_000.25, True)])

    def test_integrity_ok_5389(self) -> None:
        server, transport, bindings, _ = self.secure()
        data, _ = request((CRB, (USERNAME, b"cpe1")), key=KEY, fingerprint=True)
        server.datagramReceived(data, CPE)
        raw = transport.written[0][0]
        self.assertTrue(verify_message_integrity(raw, KEY))
        self.assertTrue(verify_fingerprint(raw))
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        self.assertEqual([b.authenticated for b in bindings], [True])

    def test_any_of_the_keys_verifies(self) -> None:
        """During a password change the current and the pending password are both valid."""
        server, transport, bindings, _ = self.secure({"cpe1": [b"old", KEY]})
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), key=KEY)[0], CPE)
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        self.assertEqual(len(bindings), 1)

    def test_integrity_bad_or_unknown_user(self) -> None:
        server, transport, bindings, _ = self.secure()
        cases = [
            request((CRB, (USERNAME, b"cpe1")), classic=True, key=b"wrong")[0],
            request((CRB, (USERNAME, b"cpe1")), key=b"wrong")[0],
            request((CRB, (USERNAME, b"cpe2")), classic=True, key=KEY)[0],
            request((CRB,), classic=True, key=KEY)[0],
            flip(request((CRB, (USERNAME, b"cpe1")), classic=True, key=KEY)[0], -1),
        ]
        with capturedLogs() as events:
            for data in cases:
                server.datagramReceived(data, CPE)
                self.assert_401(transport)
        self.assertEqual(bindings, [])
        self.assertEqual(server.refused, {"bad_integrity": 3, "unknown_user": 2})
        self.assertTrue(events)
        for event in events:  # the key never reaches a log event
            self.assertNotIn(KEY.decode(), repr(event))

    def test_key_lookup_is_asynchronous(self) -> None:
        pending: list[Deferred[list[bytes]]] = []

        def keys(username: str) -> Deferred[list[bytes]]:
            pending.append(Deferred())
            return pending[-1]

        server, transport, bindings, _ = self.make(keys=keys)
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), key=KEY)[0], CPE)
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), key=KEY)[0], CPE)
        self.assertEqual((transport.written, bindings), ([], []))
        pending[0].callback([KEY])
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        self.assertEqual(len(bindings), 1)
        # A failed lookup (Redis down) answers nothing and records nothing.
        pending[1].errback(RuntimeError("redis down"))
        self.assertEqual((transport.written, len(bindings)), ([], 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(server.refused, {"lookup_failed": 1})

    def test_keys_from_the_credential_store(self) -> None:
        from cwmpgw.store.memory import MemoryConnReqCredentialStore

        store = MemoryConnReqCredentialStore()
        store.stun["cpe1"] = KEY.decode()
        keys = password_keys(store.stun_passwords)
        self.assertEqual(self.successResultOf(keys("cpe1")), [KEY])
        self.assertEqual(self.successResultOf(keys("cpe2")), [])
        server, transport, bindings, _ = self.make(keys=keys, require_integrity=True)
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), classic=True, key=KEY)[0], CPE)
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        self.assertEqual([b.authenticated for b in bindings], [True])

    def test_key_lookups_in_flight_are_bounded(self) -> None:
        server, transport, _, _ = self.make(
            keys=lambda username: Deferred(), max_lookups=2, max_per_second_per_source=100
        )
        for _ in range(3):
            server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), key=KEY)[0], CPE)
        self.assertEqual(server.refused, {"overload": 1})
        self.assertEqual(transport.written, [])

    def test_metrics_count_bindings(self) -> None:
        from cwmpgw.metrics import Metrics

        metrics = Metrics()
        server, _, _, _ = self.secure(metrics=metrics)
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), key=KEY)[0], CPE)
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")))[0], CPE)
        server.datagramReceived(request((CRB, (USERNAME, b"cpe1")), key=b"bad")[0], CPE)
        text = metrics.render().decode()
        for outcome in ("recorded", "unauthenticated", "bad_integrity"):
            self.assertIn(f'cwmpgw_stun_bindings_total{{outcome="{outcome}"}} 1.0', text)

    def test_attributes_after_integrity_are_ignored(self) -> None:
        """An attacker can append to a captured request; what follows MI is not trusted."""
        server, transport, bindings, _ = self.secure()
        signed = request(((USERNAME, b"cpe1"),), classic=True, key=KEY)[0]
        extra = (
            struct.pack("!HH", CONNECTION_REQUEST_BINDING, 20) + CONNECTION_REQUEST_BINDING_VALUE
        )
        tampered = (
            signed[:2] + struct.pack("!H", len(signed) - 20 + len(extra)) + signed[4:] + extra
        )
        server.datagramReceived(tampered, CPE)
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        self.assertEqual(bindings, [])

    def test_garbage_and_non_requests_are_dropped(self) -> None:
        server, transport, bindings, _ = self.make()
        success = build(StunMessage(BINDING, CLASS_SUCCESS, bytes(12), (CRB,), True))
        bad_fp = bytearray(request((CRB,), fingerprint=True)[0])
        bad_fp[-1] ^= 0xFF
        for data in (
            b"",
            b"GET / HTTP/1.1\r\n\r\n",
            os.urandom(7),
            RFC5769_REQUEST[:-1],
            success,
            request((CRB,), cls=CLASS_INDICATION)[0],
            request((CRB,), method=0x002)[0],
            bytes(bad_fp),
        ):
            server.datagramReceived(data, CPE)
        self.assertEqual(transport.written, [])
        self.assertEqual(bindings, [])

    def test_unknown_required_attributes_get_420(self) -> None:
        server, transport, bindings, _ = self.make()
        attrs = (CRB, (RESPONSE_ADDRESS, encode_mapped_address("192.0.2.66", 9)), (0x7777, b""))
        server.datagramReceived(request(attrs)[0], CPE)
        reply = self.only_reply(transport)  # answered to the source, never to RESPONSE-ADDRESS
        self.assertEqual(decode_error_code(reply.get(ERROR_CODE) or b"")[0], 420)
        self.assertEqual(
            decode_unknown_attributes(reply.get(UNKNOWN_ATTRIBUTES) or b""), (2, 0x7777)
        )
        self.assertEqual(bindings, [])
        # CHANGE-REQUEST with no flag set is harmless; asking for a change is not possible here.
        server.datagramReceived(request(((CHANGE_REQUEST, bytes(4)),), classic=True)[0], CPE)
        self.assertEqual(self.only_reply(transport).cls, CLASS_SUCCESS)
        server.datagramReceived(
            request(((CHANGE_REQUEST, b"\x00\x00\x00\x06"),), classic=True)[0], CPE
        )
        reply = self.only_reply(transport)
        self.assertEqual(decode_error_code(reply.get(ERROR_CODE) or b"")[0], 420)
        # Classic: an even count (one repeated).
        self.assertEqual(decode_unknown_attributes(reply.get(UNKNOWN_ATTRIBUTES) or b""), (3, 3))

    def test_rate_limit(self) -> None:
        server, transport, _, clock = self.make(max_per_second_per_source=3)
        for _ in range(5):
            server.datagramReceived(request()[0], CPE)
        self.assertEqual(len(transport.written), 3)
        server.datagramReceived(request()[0], ("198.51.100.8", 40000))  # another source
        self.assertEqual(len(transport.written), 4)
        server.datagramReceived(request()[0], ("198.51.100.7", 40001))  # same IP, other port
        self.assertEqual(len(transport.written), 4)
        clock.advance(1)
        server.datagramReceived(request()[0], CPE)
        self.assertEqual(len(transport.written), 5)

    def test_ipv6_and_v4_mapped_sources(self) -> None:
        server, transport, bindings, _ = self.make()
        source6 = ("2001:db8::42", 50000, 0, 0)
        data, txid = request((CRB,))
        server.datagramReceived(data, source6)
        reply = self.only_reply(transport, addr=source6)
        self.assertEqual(
            decode_xor_mapped_address(reply.get(XOR_MAPPED_ADDRESS) or b"", txid),
            ("2001:db8::42", 50000),
        )
        mapped = ("::ffff:198.51.100.7", 40000, 0, 0)
        server.datagramReceived(request((CRB,), classic=True)[0], mapped)
        reply = self.only_reply(transport, addr=mapped)
        self.assertEqual(decode_mapped_address(reply.get(MAPPED_ADDRESS) or b""), CPE)
        self.assertEqual([(b.host, b.port) for b in bindings], [source6[:2], CPE])

    def test_on_binding_failure_is_logged_and_reply_still_sent(self) -> None:
        clock = Clock()

        def boom(_: Binding) -> None:
            raise RuntimeError("store down")

        server = StunServer(clock=clock, on_binding=boom, require_integrity=False)
        transport = FakeUDPTransport()
        server.makeConnection(transport)
        server.datagramReceived(request((CRB,))[0], CPE)
        self.assertEqual(len(transport.written), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_send_uses_the_stun_socket(self) -> None:
        server, transport, _, _ = self.make()
        server.send(b"hello", ("192.0.2.1", 7547))
        self.assertEqual(transport.written, [(b"hello", ("192.0.2.1", 7547))])
        server6 = StunServer(clock=Clock(), on_binding=lambda b: None)
        with self.assertRaises(RuntimeError):
            server6.send(b"x", ("192.0.2.1", 1))
        transport6 = FakeUDPTransport(IPv6Address("UDP", "::", 3478))
        server6.makeConnection(transport6)
        server6.send(b"x", ("192.0.2.1", 1))
        server6.send(b"y", ("2001:db8::1", 2))
        self.assertEqual(
            transport6.written, [(b"x", ("::ffff:192.0.2.1", 1)), (b"y", ("2001:db8::1", 2))]
        )

    def test_constructor_validates(self) -> None:
        with self.assertRaises(ValueError):
            StunServer(clock=Clock(), on_binding=lambda b: None, max_per_second_per_source=0)
        with self.assertRaises(ValueError):
            StunServer(clock=Clock(), on_binding=lambda b: None, max_lookups=0)


# --- over real loopback sockets -------------------------------------------------------------


class _Client(DatagramProtocol):
    def __init__(self) -> None:
        self.received: Deferred[tuple[bytes, Any]] = Deferred()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if not self.received.called:
            self.received.callback((datagram, addr))


class LoopbackTests(TestCase):
    async def test_binding_over_udp(self) -> None:
        """Over real sockets: unsigned and wrongly signed bindings get 401 and change
        nothing; the correctly signed one is recorded."""
        bindings: list[Binding] = []
        server = StunServer(
            clock=reactor,
            on_binding=bindings.append,
            keys=lambda username: succeed([KEY] if username == "cpe1" else []),
        )
        server_port = reactor.listenUDP(0, server, interface="127.0.0.1")
        self.addCleanup(server_port.stopListening)
        to = ("127.0.0.1", server_port.getHost().port)
        attrs = (CRB, (USERNAME, b"cpe1"))

        for key, expected in ((None, CLASS_ERROR), (b"wrong", CLASS_ERROR), (KEY, CLASS_SUCCESS)):
            client = _Client()
            client_port = reactor.listenUDP(0, client, interface="127.0.0.1")
            self.addCleanup(client_port.stopListening)
            client_addr = ("127.0.0.1", client_port.getHost().port)
            data, txid = request(attrs, classic=True, key=key)
            client_port.write(data, to)
            reply_bytes, source = await client.received.addTimeout(10, reactor)
            self.assertEqual(source, to)
            reply = parse(reply_bytes)
            self.assertEqual((reply.cls, reply.transaction_id), (expected, txid))

        self.assertEqual(decode_mapped_address(reply.get(MAPPED_ADDRESS) or b""), client_addr)
        self.assertEqual(
            [(b.username, b.host, b.port, b.authenticated) for b in bindings],
            [("cpe1", *client_addr, True)],
        )
