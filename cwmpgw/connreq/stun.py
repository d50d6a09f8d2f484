"""STUN for TR-069 Annex G (ex-TR-111 part 2): a sans-IO codec and a Binding server.

CPEs behind NAT keep a binding open with Binding Requests carrying
CONNECTION-REQUEST-BINDING; the source address of those requests is where UDP
connection requests must go, and they must be sent from this server's socket
(``StunServer.send``) so that address/port-restricted NATs let them in.

Annex G CPEs speak classic STUN (RFC 3489: no magic cookie, 16-byte transaction
id, MESSAGE-INTEGRITY over the message zero-padded to 64 bytes); other clients
speak RFC 5389.  Both are parsed and answered in their own dialect.  The server
only answers the sender of a request, never a RESPONSE-ADDRESS, and drops what
it cannot parse, so it cannot be used to reflect traffic at someone else.

A binding is only as good as the proof that the device sent it: the source address of a
UDP datagram is trivially spoofed.  By default only a CONNECTION-REQUEST-BINDING whose
MESSAGE-INTEGRITY verifies under the device's STUN password (TR-069 Annex G,
``ManagementServer.STUNPassword``, set by the gateway) is reported.

Who may be contacted afterwards is not decided here, and a binding never widens it
(``cwmpgw.connreq.guard``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

__all__ = [
    "ALTERNATE_SERVER",
    "BINDING",
    "BINDING_CHANGE",
    "CHANGE_REQUEST",
    "CLASS_ERROR",
    "CLASS_INDICATION",
    "CLASS_REQUEST",
    "CLASS_SUCCESS",
    "CONNECTION_REQUEST_BINDING",
    "CONNECTION_REQUEST_BINDING_VALUE",
    "ERROR_CODE",
    "FINGERPRINT",
    "MAGIC_COOKIE",
    "MAPPED_ADDRESS",
    "MAX_ATTRIBUTES",
    "MAX_MESSAGE_SIZE",
    "MESSAGE_INTEGRITY",
    "NONCE",
    "REALM",
    "RESPONSE_ADDRESS",
    "SOFTWARE",
    "UNKNOWN_ATTRIBUTES",
    "USERNAME",
    "XOR_MAPPED_ADDRESS",
    "Binding",
    "StunError",
    "StunMessage",
    "StunServer",
    "build",
    "compute_fingerprint",
    "compute_message_integrity",
    "decode_error_code",
    "decode_mapped_address",
    "decode_unknown_attributes",
    "decode_username",
    "decode_xor_mapped_address",
    "encode_error_code",
    "encode_mapped_address",
    "encode_unknown_attributes",
    "encode_username",
    "encode_xor_mapped_address",
    "find_attribute",
    "parse",
    "password_keys",
    "verify_fingerprint",
    "verify_message_integrity",
]

# Methods and classes (RFC 5389 §6; classic RFC 3489 types map onto the same bits).
BINDING = 0x001
CLASS_REQUEST = 0
CLASS_INDICATION = 1
CLASS_SUCCESS = 2
CLASS_ERROR = 3

# Attribute types.
MAPPED_ADDRESS = 0x0001
RESPONSE_ADDRESS = 0x0002  # RFC 3489 only; never honoured (it would make us a reflector)
CHANGE_REQUEST = 0x0003  # RFC 3489 / RFC 5780
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
XOR_MAPPED_ADDRESS = 0x0020
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
# TR-069 Annex G (TR-111) attributes, both comprehension-optional.
CONNECTION_REQUEST_BINDING = 0xC001
CONNECTION_REQUEST_BINDING_VALUE = b"dslforum.org/TR-111 "
BINDING_CHANGE = 0xC002

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
_FINGERPRINT_XOR = 0x5354554E

MAX_MESSAGE_SIZE = 1500
# A real Binding Request carries a handful; this bounds the work spent on hostile input.
MAX_ATTRIBUTES = 64
_MAX_USERNAME_BYTES = 513  # RFC 5389 §15.3

_HEADER = struct.Struct("!HH")
_ATTR_HEADER = struct.Struct("!HH")
_HEADER_SIZE = 20
_HMAC_SIZE = 20
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02


class StunError(ValueError):
    """The bytes are not a well-formed STUN message (or attribute value)."""


@dataclass(frozen=True)
class StunMessage:
    """One STUN message; ``attributes`` keep wire order, values without padding.

    ``transaction_id`` is 12 bytes for RFC 5389 (``magic_cookie=True``) and 16 bytes
    for classic RFC 3489 messages, where the cookie's place is part of the id.
    """

    method: int
    cls: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...]
    magic_cookie: bool

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of that type (RFC 5389 §15: later ones are ignored)."""
        return find_attribute(self.attributes, attr_type)


def find_attribute(attributes: Iterable[tuple[int, bytes]], attr_type: int) -> bytes | None:
    for atype, value in attributes:
        if atype == attr_type:
            return value
    return None


def _encode_type(method: int, cls: int) -> int:
    if not 0 <= method <= 0xFFF:
        raise ValueError(f"STUN method out of range: {method:#x}")
    if not 0 <= cls <= 3:
        raise ValueError(f"STUN class out of range: {cls}")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def _decode_type(msg_type: int) -> tuple[int, int]:
    method = (msg_type & 0x000F) | ((msg_type >> 1) & 0x0070) | ((msg_type >> 2) & 0x0F80)
    cls = ((msg_type >> 4) & 1) | ((msg_type >> 7) & 2)
    return method, cls


def _is_classic(data: bytes) -> bool:
    return data[4:8] != _COOKIE_BYTES


def _walk(data: bytes) -> list[tuple[int, int, int]]:
    """Check the framing and return (type, value start, value end) for every attribute.

    Padding bytes are skipped whatever their value (RFC 5389 §15 says receivers ignore
    them; RFC 5769's own vectors pad with spaces).
    """
    size = len(data)
    if size < _HEADER_SIZE:
        raise StunError("shorter than a STUN header")
    if size > MAX_MESSAGE_SIZE:
        raise StunError("larger than the STUN size limit")
    msg_type, length = _HEADER.unpack_from(data)
    if msg_type & 0xC000:
        raise StunError("the two leading bits of a STUN message are not zero")
    if length % 4:
        raise StunError("STUN message length is not a multiple of 4")
    if _HEADER_SIZE + length != size:
        raise StunError("STUN message length does not match the datagram")
    entries: list[tuple[int, int, int]] = []
    offset = _HEADER_SIZE
    while offset < size:
        if len(entries) >= MAX_ATTRIBUTES:
            raise StunError("too many STUN attributes")
        if offset + _ATTR_HEADER.size > size:
            raise StunError("truncated STUN attribute header")
        atype, alen = _ATTR_HEADER.unpack_from(data, offset)
        start = offset + _ATTR_HEADER.size
        end = start + alen
        padded = end + (-alen % 4)
        if padded > size:
            raise StunError("STUN attribute runs past the end of the message")
        entries.append((atype, start, end))
        offset = padded
    return entries


def parse(data: bytes) -> StunMessage:
    """Decode one datagram; raises StunError on anything malformed."""
    entries = _walk(data)
    msg_type = _HEADER.unpack_from(data)[0]
    method, cls = _decode_type(msg_type)
    cookie = not _is_classic(data)
    transaction_id = bytes(data[8:20] if cookie else data[4:20])
    attributes = tuple((atype, bytes(data[start:end])) for atype, start, end in entries)
    return StunMessage(method, cls, transaction_id, attributes, cookie)


def _with_length(prefix: bytes, total_attr_length: int) -> bytearray:
    """The prefix with its header length rewritten, as MESSAGE-INTEGRITY/FINGERPRINT need."""
    if len(prefix) < _HEADER_SIZE:
        raise StunError("shorter than a STUN header")
    out = bytearray(prefix)
    struct.pack_into("!H", out, 2, total_attr_length)
    return out


def compute_message_integrity(prefix: bytes, key: bytes, *, classic: bool | None = None) -> bytes:
    """HMAC-SHA1 for a MESSAGE-INTEGRITY placed right after ``prefix``.

    ``prefix`` is the message (header included) up to the attribute; its header length
    is set to end just after the MESSAGE-INTEGRITY attribute (RFC 5389 §15.4).  Classic
    messages are zero-padded to a multiple of 64 bytes first (RFC 3489 §11.2.8); by default
    the dialect is read from the prefix.
    """
    text = _with_length(prefix, len(prefix) - _HEADER_SIZE + _ATTR_HEADER.size + _HMAC_SIZE)
    if classic is None:
        classic = _is_classic(prefix)
    if classic:
        text += bytes(-len(text) % 64)
    return hmac.new(key, bytes(text), hashlib.sha1).digest()


def verify_message_integrity(data: bytes, key: bytes) -> bool:
    """True if the first MESSAGE-INTEGRITY of ``data`` verifies under ``key``.

    False when there is none.  For classic messages both the RFC 3489 (64-byte padded)
    and the RFC 5389 computation are accepted, since CPE stacks differ.  Raises
    StunError if ``data`` is not a STUN message.
    """
    for atype, start, end in _walk(data):
        if atype != MESSAGE_INTEGRITY:
            continue
        if end - start != _HMAC_SIZE:
            return False
        prefix = data[: start - _ATTR_HEADER.size]
        received = data[start:end]
        if hmac.compare_digest(compute_message_integrity(prefix, key, classic=False), received):
            return True
        return _is_classic(data) and hmac.compare_digest(
            compute_message_integrity(prefix, key, classic=True), received
        )
    return False


def compute_fingerprint(prefix: bytes) -> bytes:
    """CRC-32 xor 0x5354554e for a FINGERPRINT placed right after ``prefix`` (RFC 5389 §15.5)."""
    text = _with_length(prefix, len(prefix) - _HEADER_SIZE + _ATTR_HEADER.size + 4)
    return struct.pack("!I", (zlib.crc32(bytes(text)) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF)


def verify_fingerprint(data: bytes) -> bool:
    """True if ``data`` ends with a matching FINGERPRINT; False if absent, misplaced or wrong."""
    entries = _walk(data)
    positions = [i for i, (atype, _, _) in enumerate(entries) if atype == FINGERPRINT]
    if positions != [len(entries) - 1]:
        return False
    _, start, end = entries[-1]
    if end - start != 4:
        return False
    return hmac.compare_digest(
        compute_fingerprint(data[: start - _ATTR_HEADER.size]), data[start:end]
    )


def _encode_attribute(atype: int, value: bytes) -> bytes:
    if not 0 <= atype <= 0xFFFF:
        raise ValueError(f"STUN attribute type out of range: {atype:#x}")
    if len(value) > 0xFFFF:
        raise ValueError("STUN attribute value too long")
    return _ATTR_HEADER.pack(atype, len(value)) + value + bytes(-len(value) % 4)


def _append(message: bytes, attribute: bytes) -> bytes:
    """``message`` with ``attribute`` added and its header length updated."""
    return bytes(_with_length(message, len(message) - _HEADER_SIZE + len(attribute))) + attribute


def build(
    msg: StunMessage, *, integrity_key: bytes | None = None, fingerprint: bool = False
) -> bytes:
    """Encode ``msg``, appending MESSAGE-INTEGRITY (with ``integrity_key``) and FINGERPRINT.

    Padding is zero bytes.  Classic messages get RFC 3489 integrity and cannot carry a
    FINGERPRINT, which RFC 3489 does not know.
    """
    if msg.magic_cookie:
        if len(msg.transaction_id) != 12:
            raise ValueError("an RFC 5389 transaction id is 12 bytes")
        id_field = _COOKIE_BYTES + msg.transaction_id
    else:
        if len(msg.transaction_id) != 16:
            raise ValueError("a classic RFC 3489 transaction id is 16 bytes")
        if msg.transaction_id[:4] == _COOKIE_BYTES:
            raise ValueError("a classic transaction id must not start with the magic cookie")
        if fingerprint:
            raise ValueError("FINGERPRINT does not exist in classic STUN")
        id_field = msg.transaction_id
    present = {atype for atype, _ in msg.attributes}
    if integrity_key is not None and MESSAGE_INTEGRITY in present:
        raise ValueError("the message already carries MESSAGE-INTEGRITY")
    if fingerprint and FINGERPRINT in present:
        raise ValueError("the message already carries FINGERPRINT")
    body = b"".join(_encode_attribute(atype, value) for atype, value in msg.attributes)
    out = _HEADER.pack(_encode_type(msg.method, msg.cls), len(body)) + id_field + body
    if integrity_key is not None:
        mac = compute_message_integrity(out, integrity_key)
        out = _append(out, _encode_attribute(MESSAGE_INTEGRITY, mac))
    if fingerprint:
        out = _append(out, _encode_attribute(FINGERPRINT, compute_fingerprint(out)))
    if len(out) > MAX_MESSAGE_SIZE:
        raise ValueError("STUN message larger than the size limit")
    return out


# --- attribute values -------------------------------------------------------------------


def _pack_address(host: str) -> tuple[int, bytes]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError as e:
        raise ValueError(f"not an IP address: {host!r}") from e
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    family = _FAMILY_IPV4 if address.version == 4 else _FAMILY_IPV6
    return family, address.packed


def _check_port(port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")


def encode_mapped_address(host: str, port: int) -> bytes:
    """MAPPED-ADDRESS value (IPv4 or IPv6; an IPv4-mapped IPv6 address is sent as IPv4)."""
    _check_port(port)
    family, packed = _pack_address(host)
    return struct.pack("!BBH", 0, family, port) + packed


def _unpack_address(value: bytes) -> tuple[int, int, bytes]:
    if len(value) < 4:
        raise StunError("address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    expected = {_FAMILY_IPV4: 4, _FAMILY_IPV6: 16}.get(family)
    if expected is None:
        raise StunError(f"unknown address family {family:#x}")
    if len(value) != 4 + expected:
        raise StunError("address attribute has the wrong length for its family")
    return family, port, value[4:]


def decode_mapped_address(value: bytes) -> tuple[str, int]:
    _, port, packed = _unpack_address(value)
    return str(ipaddress.ip_address(packed)), port


def _xor_key(transaction_id: bytes) -> bytes:
    if len(transaction_id) != 12:
        raise ValueError("XOR-MAPPED-ADDRESS needs an RFC 5389 (12-byte) transaction id")
    return _COOKIE_BYTES + transaction_id


def encode_xor_mapped_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 5389 §15.2)."""
    _check_port(port)
    key = _xor_key(transaction_id)
    family, packed = _pack_address(host)
    xored = bytes(a ^ b for a, b in zip(packed, key, strict=False))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xored


def decode_xor_mapped_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    key = _xor_key(transaction_id)
    _, port, xored = _unpack_address(value)
    packed = bytes(a ^ b for a, b in zip(xored, key, strict=False))
    return str(ipaddress.ip_address(packed)), port ^ (MAGIC_COOKIE >> 16)


def encode_username(username: str) -> bytes:
    value = username.encode("utf-8")
    if len(value) > _MAX_USERNAME_BYTES:
        raise ValueError("STUN USERNAME longer than 513 bytes")
    return value


def decode_username(value: bytes, *, classic: bool = False) -> str:
    """USERNAME as text.  Classic clients pad it to 4 bytes (TR-111 stacks use spaces):
    trailing spaces and NULs are stripped for them."""
    if len(value) > _MAX_USERNAME_BYTES:
        raise StunError("STUN USERNAME longer than 513 bytes")
    if classic:
        value = value.rstrip(b" \x00")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StunError("STUN USERNAME is not UTF-8") from e


def encode_error_code(code: int, reason: str) -> bytes:
    """ERROR-CODE value: class (hundreds) and number, then a UTF-8 reason phrase."""
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code out of range: {code}")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError("ERROR-CODE too short")
    _, cls, number = struct.unpack_from("!HBB", value)
    cls &= 0x07
    if not 3 <= cls <= 6 or number > 99:
        raise StunError("ERROR-CODE out of range")
    try:
        reason = value[4:].decode("utf-8")
    except UnicodeDecodeError as e:
        raise StunError("ERROR-CODE reason is not UTF-8") from e
    return cls * 100 + number, reason


def encode_unknown_attributes(types: Sequence[int], *, classic: bool = False) -> bytes:
    """UNKNOWN-ATTRIBUTES value; RFC 3489 wants an even count, so classic repeats one."""
    items = list(types)
    if classic and len(items) % 2:
        items.append(items[-1])
    return b"".join(struct.pack("!H", t) for t in items)


def decode_unknown_attributes(value: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise StunError("UNKNOWN-ATTRIBUTES length is odd")
    return tuple(t for (t,) in struct.iter_unpack("!H", value))


# --- server -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """A CPE said "reach me here": the source of a request with CONNECTION-REQUEST-BINDING.

    ``authenticated`` is True when the request carried a MESSAGE-INTEGRITY that verified
    under the key of ``username``; only a lab configuration reports the others.
    """

    username: str | None
    host: str
    port: int
    changed: bool
    ts: float
    authenticated: bool = False


# Attributes of a Binding Request the server understands (others below 0x8000 get a 420).
_UNDERSTOOD = frozenset({USERNAME, MESSAGE_INTEGRITY, FINGERPRINT, CHANGE_REQUEST})
# Source addresses tracked per rate window; past this, new sources wait for the next window
# so that spoofed floods cannot grow the table without bound.
_MAX_TRACKED_SOURCES = 65536


def _unmap(host: str) -> str:
    """The IPv4 form of an IPv4-mapped IPv6 address (a dual-stack socket's view of IPv4)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host


def _reason(text: str, classic: bool) -> str:
    """RFC 3489 wants reason phrases a multiple of 4 bytes long: pad with spaces."""
    if classic:
        text += " " * (-len(text.encode("utf-8")) % 4)
    return text


@dataclass(frozen=True)
class _Request:
    """One admitted Binding Request, as far as it is trusted (nothing after MI)."""

    msg: StunMessage
    datagram: bytes
    addr: tuple[Any, ...]
    host: str
    port: int
    peer: str
    attributes: tuple[tuple[int, bytes], ...]
    username: str | None
    binding: bool  # carries a valid CONNECTION-REQUEST-BINDING
    echo_fingerprint: bool


def password_keys(
    passwords: Callable[[str], Deferred[tuple[str, ...]]],
) -> Callable[[str], Deferred[Sequence[bytes]]]:
    """``StunServer``'s key lookup from a device's STUN passwords
    (``IConnReqCredentialStore.stun_passwords``): USERNAME is the device id, as the
    gateway sets ``STUNUsername``; the key is the password's UTF-8 (RFC 5389 §15.4
    short-term credentials; the gateway's passwords are ASCII, unchanged by SASLprep)."""

    def keys(username: str) -> Deferred[Sequence[bytes]]:
        d = passwords(username)
        return d.addCallback(lambda found: [p.encode("utf-8") for p in found])

    return keys


class StunServer(DatagramProtocol):
    """Answers Binding Requests and reports Annex G bindings through ``on_binding``.

    A request carrying MESSAGE-INTEGRITY must verify under one of the keys ``keys``
    returns for its USERNAME (looked up asynchronously: Redis), else it gets 401 and is
    otherwise ignored; a verified request gets a signed answer.  With
    ``require_integrity`` (the default) a CONNECTION-REQUEST-BINDING without
    MESSAGE-INTEGRITY is not reported and gets 401, which is what makes an Annex G CPE
    retry with integrity; plain Binding Requests (address discovery) are answered either
    way.  Each source IP may send at most ``max_per_second_per_source`` datagrams per
    second of ``clock``; the rest are dropped, as are requests past ``max_lookups`` key
    lookups in flight.  ``metrics`` (cwmpgw.metrics.Metrics) counts bindings by outcome.
    """

    noisy = False  # the part logs its own listening line

    _log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        on_binding: Callable[[Binding], None],
        keys: Callable[[str], Deferred[Sequence[bytes]]] | None = None,
        require_integrity: bool = True,
        max_per_second_per_source: int = 20,
        max_lookups: int = 1024,
        metrics: Any = None,
    ) -> None:
        if max_per_second_per_source < 1:
            raise ValueError("max_per_second_per_source must be at least 1")
        if max_lookups < 1:
            raise ValueError("max_lookups must be at least 1")
        self._clock = clock
        self._on_binding = on_binding
        self._keys = keys
        self._require_integrity = require_integrity
        self._limit = max_per_second_per_source
        self._max_lookups = max_lookups
        self._lookups = 0
        self._metrics = metrics
        self._window = -1
        self._counts: dict[str, int] = {}
        # Bindings not recorded, by reason (also in the metric); never holds a secret.
        self.refused: dict[str, int] = {}

    # -- sending -------------------------------------------------------------------------

    def _udp(self) -> IUDPTransport:
        if self.transport is None:
            raise RuntimeError("the STUN server is not listening")
        return self.transport

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send a datagram from the STUN socket (Annex G: restrictive NATs only let
        through what comes from the address the binding was made with)."""
        transport = self._udp()
        host, port = addr
        if isinstance(transport.getHost(), IPv6Address):
            try:
                if ipaddress.ip_address(host).version == 4:
                    host = f"::ffff:{host}"
            except ValueError:
                pass  # not an IP literal; the transport reports it
        transport.write(data, (host, port))

    # -- receiving -----------------------------------------------------------------------

    def _admit(self, host: str) -> bool | None:
        """True to process; False to drop; None to drop and say so (the first drop of a
        source in a window, so that a flood does not flood the log too)."""
        window = int(self._clock.seconds())
        if window != self._window:
            self._window = window
            self._counts.clear()
        count = self._counts.get(host)
        if count is None:
            if len(self._counts) >= _MAX_TRACKED_SOURCES:
                return False
            count = 0
        if count > self._limit:
            return False
        self._counts[host] = count + 1
        return True if count < self._limit else None

    def datagramReceived(self, datagram: bytes, addr: tuple[Any, ...]) -> None:
        host, port = str(addr[0]), int(addr[1])
        peer = f"{host}:{port}"
        admitted = self._admit(host)
        if not admitted:
            if admitted is None:
                self._log.info(
                    "STUN datagrams from {host} over {limit}/s: dropping for this second",
                    host=host,
                    limit=self._limit,
                )
            return
        try:
            msg = parse(datagram)
        except StunError as e:
            self._log.debug("STUN garbage from {peer} dropped: {reason}", peer=peer, reason=str(e))
            return
        if FINGERPRINT in (atype for atype, _ in msg.attributes) and not verify_fingerprint(
            datagram
        ):
            self._log.debug("STUN message from {peer} with a bad FINGERPRINT dropped", peer=peer)
            return
        if msg.method != BINDING or msg.cls != CLASS_REQUEST:
            self._log.debug(
                "STUN message from {peer} is not a Binding Request (method {method}, class {cls})",
                peer=peer,
                method=msg.method,
                cls=msg.cls,
            )
            return
        self._answer(msg, datagram, addr, host, port, peer)

    def _answer(
        self,
        msg: StunMessage,
        datagram: bytes,
        addr: tuple[Any, ...],
        host: str,
        port: int,
        peer: str,
    ) -> None:
        classic = not msg.magic_cookie
        attributes = msg.attributes
        # RFC 5389 §15.4: what follows MESSAGE-INTEGRITY is not covered by it, so ignore it.
        for i, (atype, _) in enumerate(attributes):
            if atype == MESSAGE_INTEGRITY:
                attributes = attributes[: i + 1]
                break

        username: str | None = None
        raw_username = find_attribute(attributes, USERNAME)
        if raw_username is not None:
            try:
                username = decode_username(raw_username, classic=classic) or None
            except StunError:
                self._log.debug("STUN request from {peer} has a bad USERNAME", peer=peer)
                username = None

        crb = find_attribute(attributes, CONNECTION_REQUEST_BINDING)
        if crb is not None and crb.rstrip(b" \x00") != CONNECTION_REQUEST_BINDING_VALUE.rstrip():
            self._log.info(
                "STUN request from {peer} has an unexpected CONNECTION-REQUEST-BINDING value",
                peer=peer,
            )
            crb = None
        request = _Request(
            msg,
            datagram,
            addr,
            host,
            port,
            peer,
            attributes,
            username,
            crb is not None,
            msg.magic_cookie and msg.get(FINGERPRINT) is not None,
        )

        if find_attribute(attributes, MESSAGE_INTEGRITY) is not None:
            self._authenticate(request)
        elif request.binding and self._require_integrity:
            self._refuse(request, "unauthenticated")
            self._reply_error(request, 401, "Unauthorized")
        else:
            self._finish(request, None)

    def _authenticate(self, request: _Request) -> None:
        """Look the USERNAME's keys up, then answer: signed if one verifies, else 401."""
        username, peer = request.username, request.peer
        if username is None or self._keys is None:
            self._log.debug(
                "STUN request from {peer} with MESSAGE-INTEGRITY but no known USERNAME",
                peer=peer,
            )
            self._refuse(request, "unknown_user")
            self._reply_error(request, 401, "Unauthorized")
            return
        if self._lookups >= self._max_lookups:
            self._log.debug("STUN request from {peer} dropped: too many key lookups", peer=peer)
            self._refuse(request, "overload")
            return
        self._lookups += 1

        def verify(keys: Sequence[bytes]) -> None:
            self._lookups -= 1
            for key in keys:
                if verify_message_integrity(request.datagram, key):
                    self._finish(request, key)
                    return
            if keys:
                self._log.info(
                    "STUN request from {peer}: MESSAGE-INTEGRITY does not verify for {username}",
                    peer=peer,
                    username=username,
                )
                self._refuse(request, "bad_integrity")
            else:
                self._log.info(
                    "STUN request from {peer}: no STUN password for {username}",
                    peer=peer,
                    username=username,
                )
                self._refuse(request, "unknown_user")
            self._reply_error(request, 401, "Unauthorized")

        def failed(failure: Any) -> None:
            self._lookups -= 1
            self._refuse(request, "lookup_failed")
            self._log.failure("STUN key lookup failed for {username}", failure, username=username)

        try:
            d = self._keys(username)
        except Exception:
            d = fail()
        d.addCallbacks(verify, failed).addErrback(
            lambda f: self._log.failure("STUN answer to {peer} failed", f, peer=peer)
        )

    def _refuse(self, request: _Request, reason: str) -> None:
        """Count a binding that is not recorded (nothing when there was none to record)."""
        if not request.binding:
            return
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._metrics is not None:
            self._metrics.stun_bindings.labels(reason).inc()
        if reason == "unauthenticated":
            self._log.debug(
                "Unauthenticated connection request binding from {peer} for {username} ignored",
                peer=request.peer,
                username=request.username,
            )

    def _finish(self, request: _Request, key: bytes | None) -> None:
        """Answer a request that may be answered (``key``: the one it proved it holds)."""
        msg, peer = request.msg, request.peer
        classic = not msg.magic_cookie
        unknown = self._unknown_attributes(request.attributes)
        if unknown:
            self._log.info(
                "STUN request from {peer} has unsupported attributes {types}",
                peer=peer,
                types=[f"{t:#06x}" for t in unknown],
            )
            extra = [(UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown, classic=classic))]
            self._refuse(request, "unknown_attribute")
            self._reply_error(request, 420, "Unknown Attribute", extra=extra, key=key)
            return

        mapped = _unmap(request.host)
        port = request.port
        reply: list[tuple[int, bytes]] = []
        if msg.magic_cookie:
            reply.append(
                (XOR_MAPPED_ADDRESS, encode_xor_mapped_address(mapped, port, msg.transaction_id))
            )
        reply.append((MAPPED_ADDRESS, encode_mapped_address(mapped, port)))
        response = StunMessage(
            BINDING, CLASS_SUCCESS, msg.transaction_id, tuple(reply), msg.magic_cookie
        )
        self._write(
            build(response, integrity_key=key, fingerprint=request.echo_fingerprint), request.addr
        )

        if not request.binding:
            return
        binding = Binding(
            username=request.username,
            host=mapped,
            port=port,
            changed=find_attribute(request.attributes, BINDING_CHANGE) is not None,
            ts=self._clock.seconds(),
            authenticated=key is not None,
        )
        self._log.info(
            "Connection request binding from {peer} for {username} "
            "(changed: {changed}, authenticated: {authenticated})",
            peer=peer,
            username=request.username,
            changed=binding.changed,
            authenticated=binding.authenticated,
        )
        if self._metrics is not None:
            self._metrics.stun_bindings.labels(
                "recorded" if binding.authenticated else "recorded_unauthenticated"
            ).inc()
        try:
            self._on_binding(binding)
        except Exception:
            self._log.failure("on_binding failed for {peer}", peer=peer)

    @staticmethod
    def _unknown_attributes(attributes: tuple[tuple[int, bytes], ...]) -> list[int]:
        unknown: list[int] = []
        for atype, value in attributes:
            if atype >= 0x8000 or atype in unknown:
                continue  # comprehension-optional, or already listed
            if atype == CHANGE_REQUEST:
                # Asking for another address or port needs a second address, which this
                # server does not have (RFC 5780 §6.1 answers 420); all-zero flags are fine.
                if any(value):
                    unknown.append(atype)
            elif atype not in _UNDERSTOOD:
                unknown.append(atype)
        return unknown

    def _reply_error(
        self,
        request: _Request,
        code: int,
        reason: str,
        *,
        extra: Sequence[tuple[int, bytes]] = (),
        key: bytes | None = None,
    ) -> None:
        msg = request.msg
        classic = not msg.magic_cookie
        attributes = ((ERROR_CODE, encode_error_code(code, _reason(reason, classic))), *extra)
        response = StunMessage(
            BINDING, CLASS_ERROR, msg.transaction_id, attributes, msg.magic_cookie
        )
        self._write(
            build(response, integrity_key=key, fingerprint=request.echo_fingerprint), request.addr
        )

    def _write(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self._udp().write(data, cast("tuple[str, int]", addr))
        except Exception:
            self._log.failure(
                "STUN response to {peer} could not be sent", peer=f"{addr[0]}:{addr[1]}"
            )
