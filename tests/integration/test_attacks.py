"""Issue 7: the attack and fault suite, one class per kind of attack.

Each class says what it adds to the coverage listed in docs/reliability.md ("Hostile,
broken or too many clients"). In-memory classes drive the real Site, channel, resource
and engine over StringTransports on a Clock (tests/support/memhttp.py); the ``…GatewayTests``
classes run the whole gateway on 127.0.0.1 over real TLS sockets and a real Redis.

Nothing here asserts a duration. Memory is bounded with the process's peak RSS (reset
through /proc/self/clear_refs where the kernel allows it) and generous margins, file
descriptors are counted in /proc/self/fd, and "nothing was sent" is checked with canary
sockets that must see no connection or datagram.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import hmac
import inspect
import json
import os
import random
import re
import select
import socket
import ssl
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.acs import auth as auth_module
from cwmpgw.cwmp import soap
from cwmpgw.cwmp.messages import DeviceId
from cwmpgw.tasks.memory import MemoryTaskService
from cwmpgw.tasks.runner import TaskRunner
from cwmpgw.web import digest as digest_module
from tests.support import cpe_client, digest_client
from tests.support import cpe_envelopes as cpe
from tests.support.attackkit import GatewayBase, RawCpe, _read_response, _serial
from tests.support.fuzz import mutate_bytes
from tests.support.memhttp import Connection, MemoryAcs, Response, digest_post, parse_responses

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = DEVICE_ID, "s3cret-Pa55word"
OTHER = DeviceId("Acme", "00259E", "EG8145V5", "48575443A94196A5")
OTHER_ID = "00259E-EG8145V5-48575443A94196A5"
OTHER_PASSWORD = "other-pa55word"
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# Measuring without timing: peak memory, file descriptors, canaries


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _rss()


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Yields a list that holds, on exit, how far the peak RSS rose above the start.

    The peak is reset first (``5`` into /proc/self/clear_refs) so a transient blow-up
    that was freed again still counts; where that is not allowed, the RSS at exit is
    used (weaker: it misses freed peaks).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        measure = _peak_rss
    except OSError:
        measure = _rss
    start = _rss()
    out: list[int] = []
    yield out
    out.append(max(0, measure() - start))


@contextmanager
def traced_peak() -> Iterator[list[int]]:
    """Yields a list that holds, on exit, the peak of Python allocations inside the block."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    out: list[int] = []
    try:
        yield out
        out.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        if not was_tracing:
            tracemalloc.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class TcpCanary:
    """A listening socket on 127.0.0.1 that nothing may connect to."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0

    def connections(self) -> int:
        """How many connections ever reached it (accepting, and closing, what is queued)."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.accepted
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()


class UdpCanary:
    """A UDP socket on 127.0.0.1 that must receive nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def datagrams(self) -> int:
        count = 0
        while True:
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                return count
            count += 1

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------------------
# Hostile XML


def _split_decl(body: bytes) -> tuple[bytes, bytes]:
    decl, rest = body.split(b"?>", 1)
    return decl + b"?>", rest


def _with_doctype(doctype: str, *, serial: str = "&xxe;") -> bytes:
    inform = cpe.inform().replace(
        b"<SerialNumber>22275K2000315<", f"<SerialNumber>{serial}<".encode()
    )
    decl, rest = _split_decl(inform)
    return decl + doctype.encode() + rest


# A sender that proves nothing is challenged unread: the parser's attackers send a
# credential, any credential (it names a device, so the body is read before it is checked).
CLAIM = {
    "Authorization": 'Digest username="attacker", realm="cwmpgw", nonce="n", uri="/", response="0"'
}


def hostile_xml(canary_url: str, max_body: int = 262_144) -> dict[str, tuple[bytes, set[int]]]:
    """Each hostile body and the statuses an unauthenticated POST of it may get.

    400: refused by the parser or its limits; 413: over the body cap; 200: a CWMP fault
    (8003) for a well-formed Inform with an invalid field; 401: a well-formed Inform whose
    oddity is harmless (attributes are ignored), challenged like any other.
    """
    lol = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    big = "x" * 50_000
    quadratic = _with_doctype(
        f'<!DOCTYPE e [<!ENTITY a "{big}">]>', serial="&a;" * ((max_body - 60_000) // 3)
    )
    inform = cpe.inform()
    attributes = " ".join(f'a{i}=""' for i in range(20_000))
    many_attributes = inform.replace(b"<cwmp:Inform>", f"<cwmp:Inform {attributes}>".encode())
    depth = (max_body - len(inform)) // 8
    deep = inform.replace(b"<DeviceId>", b"<DeviceId>" + b"<a>" * depth + b"</a>" * depth)
    retry_digits = re.sub(
        rb"<RetryCount>0</RetryCount>",
        b"<RetryCount>" + b"9" * 200_000 + b"</RetryCount>",
        inform,
    )
    timeout_digits = inform.replace(
        b"<soap-env:Header>",
        b"<soap-env:Header><cwmp:SessionTimeout>" + b"7" * 100_000 + b"</cwmp:SessionTimeout>",
    )
    xinclude = inform.replace(
        b"<DeviceId>",
        f'<DeviceId><xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{canary_url}"'
        f' parse="text"/>'.encode(),
    )
    schema_location = inform.replace(
        b"<cwmp:Inform>",
        f'<cwmp:Inform xmlns:x="{canary_url}" xsi:schemaLocation="{canary_url} {canary_url}">'.encode(),
    )
    cases: dict[str, tuple[bytes, set[int]]] = {
        "xxe_general": (
            _with_doctype(f'<!DOCTYPE e [<!ENTITY xxe SYSTEM "{canary_url}">]>'),
            {400},
        ),
        "xxe_parameter": (
            _with_doctype(f'<!DOCTYPE e [<!ENTITY % p SYSTEM "{canary_url}"> %p;]>'),
            {400},
        ),
        "xxe_external_dtd": (_with_doctype(f'<!DOCTYPE e SYSTEM "{canary_url}">'), {400}),
        "xxe_public_dtd": (_with_doctype(f'<!DOCTYPE e PUBLIC "-//x//y" "{canary_url}">'), {400}),
        "xinclude": (xinclude, {401}),
        "schema_location": (schema_location, {401}),
        "billion_laughs": (_with_doctype(f"<!DOCTYPE e [{lol}]>", serial="&lol9;"), {400}),
        "quadratic_blowup": (quadratic, {400}),
        "deep_nesting": (deep, {400}),  # past libxml2's own limit (256) too
        "nesting_past_our_limit": (
            inform.replace(b"<DeviceId>", b"<DeviceId>" + b"<a>" * 40 + b"</a>" * 40),
            {400},
        ),
        "huge_text_over_the_cap": (
            inform.replace(b"22275K2000315", b"S" * (max_body + 1)),
            {413},
        ),
        "huge_text_in_a_name": (inform.replace(b"22275K2000315", b"S" * 200_000), {401}),
        "huge_integer": (retry_digits, {200}),
        "huge_header_integer": (timeout_digits, {401}),
        "many_attributes": (many_attributes, {401}),
        "duplicate_attributes": (
            inform.replace(b"<cwmp:Inform>", b'<cwmp:Inform a="1" a="2">'),
            {400},
        ),
        "many_attributes_over_the_cap": (
            inform.replace(
                b"<cwmp:Inform>",
                ("<cwmp:Inform " + " ".join(f'b{i}=""' for i in range(60_000)) + ">").encode(),
            ),
            {413},
        ),
    }
    for name, (body, statuses) in cases.items():
        if 413 not in statuses:
            assert len(body) <= max_body, (name, len(body))
    return cases


class XmlAttackTests(SynchronousTestCase):
    """Item 1 through the endpoint in memory (test_soap.py covers the bare parser).

    Adds: every hostile shape through the whole HTTP stack, with its exact answer, no
    event and no device record, a bounded peak RSS, a canary that sees no connection,
    and a live session of a good device that is not disturbed; the huge-integer case
    found a bug (int() of a 200,000-digit number raised ValueError: HTTP 500).
    """

    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        self.canary = TcpCanary()
        self.addCleanup(self.canary.close)

    def test_each_hostile_body_gets_its_answer_and_nothing_else(self) -> None:
        good = self.acs.connect(peer="192.0.2.20")
        self.assertEqual(digest_post(good, cpe.inform(), USER, PASSWORD).status, 200)
        events = len(self.acs.bus.events)
        cases = hostile_xml(f"http://127.0.0.1:{self.canary.port}/x")
        answers = {}
        with peak_rss_growth() as growth:
            for name, (body, _) in cases.items():
                response = self.acs.connect(peer="198.51.100.66").post(body, CLAIM)
                self.assertNotIn(b"Traceback", response.body)
                answers[name] = response
        for name, (_, statuses) in cases.items():
            self.assertIn(answers[name].status, statuses, (name, answers[name].body[:200]))
        self.assertIn(b"<FaultCode>8003</FaultCode>", answers["huge_integer"].body)
        self.assertEqual(answers["xxe_general"].body, b"DTD not allowed\n")
        self.assertEqual(answers["nesting_past_our_limit"].body, b"XML nested too deeply\n")
        self.assertIn(
            answers["deep_nesting"].body, (b"XML nested too deeply\n", b"malformed XML\n")
        )
        # The billion laughs expand to 3 GB, the quadratic blow-up to 2 GB: never done.
        self.assertLess(growth[0], 64 * MiB)
        self.assertEqual(self.canary.connections(), 0)
        # Nothing was stored or published but the failed checks of the well-formed ones;
        # the good device's session goes on.
        published = self.acs.bus.events[events:]
        self.assertEqual({e.type for e in published}, {"auth.failed"})
        self.assertEqual(len(published), sum(1 for _, st in cases.values() if st == {401}))
        self.assertEqual(list(self.acs.devices.devices), [DEVICE_ID])
        self.assertEqual(good.post(b"").status, 204)
        self.assertEqual(self.acs.bus.events[-1].data["outcome"], "completed")

    def test_huge_integers_are_a_fault_not_an_error(self) -> None:
        """Regression: int() of more than 4300 digits raises ValueError in CPython."""
        conn = self.acs.connect()
        for field in ("MaxEnvelopes", "RetryCount"):
            body = re.sub(
                f"<{field}>[0-9]+</{field}>".encode(),
                f"<{field}>{'1' * 5000}</{field}>".encode(),
                cpe.inform(),
            )
            response = conn.post(body, CLAIM)
            self.assertEqual(response.status, 200)
            self.assertIn(b"<FaultCode>8003</FaultCode>", response.body)
            self.assertIn(f"{field} is not an unsigned integer".encode(), response.body)
        # Leading zeros are not digits of value; 20 digits are an unsignedLong.
        inform = soap.parse_envelope(
            cpe.inform().replace(b"<RetryCount>0<", b"<RetryCount>" + b"0" * 5000 + b"7<")
        ).message
        self.assertEqual(getattr(inform, "retry_count", None), 7)
        timeout = cpe.inform(session_timeout=60).replace(b">60<", b">" + b"9" * 5000 + b"<")
        self.assertIsNone(soap.parse_envelope(timeout).session_timeout)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_limits_hold_inside_an_authenticated_session(self) -> None:
        """Inside a session the parser's refusals are answered and the session survives."""
        conn = self.acs.connect()
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        refused = 0
        for name, (body, statuses) in hostile_xml(f"http://127.0.0.1:{self.canary.port}/").items():
            if statuses == {400}:
                self.assertEqual(conn.post(body).status, 400, name)
                refused += 1
        self.assertGreaterEqual(refused, 8)
        self.assertEqual(conn.post(b"").status, 204)
        self.assertEqual(self.acs.bus.events[-1].data["outcome"], "completed")
        self.assertEqual(self.canary.connections(), 0)


# ---------------------------------------------------------------------------------------
# Oversized and compressed bodies


def _head(headers: dict[str, str]) -> bytes:
    hdrs = {"Host": "acs.test"} | headers
    return (
        "POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    ).encode()


def _gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzipped (about 1000:1), built without holding them in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    block = bytes(MiB)
    parts = [compressor.compress(block) for _ in range(size // MiB)]
    return b"".join(parts) + compressor.flush()


class BodyAttackTests(SynchronousTestCase):
    """Item 2 in memory (test_acs_limits.py::BodyLimitTests covers one oversized body of
    each kind). Adds: absurd Content-Length values, a 32 MiB chunked stream cut while it
    is read with a bounded peak of Python allocations, and compressed bodies: refused
    with 415 and never decompressed (the gateway accepts no Content-Encoding)."""

    max_body = 262_144

    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)

    def assertRefused(self, conn: Connection, data: bytes, status: int) -> Response:
        (response,) = parse_responses(data)
        self.assertEqual(response.status, status, data[:300])
        self.assertTrue(conn.closing)
        self.assertEqual(self.acs.bus.events, [])
        return response

    def buffered(self, conn: Connection) -> int:
        """How many body bytes the request holds (what Twisted buffered for it)."""
        if not conn.protocol.requests:
            return 0
        content = conn.protocol.requests[0].content
        if content is None:  # refused before a body buffer was even made
            return 0
        content.seek(0, 2)
        return int(content.tell())

    def test_absurd_content_lengths(self) -> None:
        for length in (str(self.max_body + 1), "10" + "0" * 12, "9" * 40):
            conn = self.acs.connect()
            data = conn.send(_head({"Content-Length": length}) + b"<x/>" * 100)
            self.assertRefused(conn, data, 413)
            self.assertEqual(self.buffered(conn), 0)  # refused before any of the body
        for length in ("-1", "1e9", "0x10", "12, 13"):
            conn = self.acs.connect()
            self.assertRefused(conn, conn.send(_head({"Content-Length": length})), 400)

    def test_chunked_stream_is_cut_while_it_is_read(self) -> None:
        conn = self.acs.connect()
        chunk = b"%x\r\n" % (64 * 1024) + b"<" * (64 * 1024) + b"\r\n"
        answered_after = None
        with traced_peak() as peak:
            conn.send(_head({"Transfer-Encoding": "chunked"}))
            for i in range(512):  # 32 MiB
                if conn.send(chunk) and answered_after is None:
                    answered_after = (i + 1) * 64 * 1024
        self.assertEqual(answered_after, self.max_body + 64 * 1024)  # the chunk that broke it
        self.assertTrue(conn.closing)
        self.assertLessEqual(self.buffered(conn), self.max_body)
        self.assertLess(peak[0], 4 * MiB)
        self.assertEqual(self.acs.bus.events, [])

    def test_compressed_bodies_are_refused_not_decompressed(self) -> None:
        bomb = _gzip_bomb(64 * MiB)
        self.assertLess(len(bomb), 128 * 1024)  # fits the body cap: only decoding would hurt

        def never(*args: object, **kwargs: object) -> Any:
            raise AssertionError("a request body was decompressed")

        self.patch(zlib, "decompressobj", never)
        self.patch(zlib, "decompress", never)
        self.patch(gzip, "decompress", never)
        self.patch(gzip, "GzipFile", never)
        for encoding in ("gzip", "deflate", "br", "x-gzip", "GZIP", "identity, gzip"):
            conn = self.acs.connect()
            with traced_peak() as peak:
                response = conn.post(bomb, {"Content-Encoding": encoding})
            self.assertEqual(response.status, 415, encoding)
            self.assertEqual(response.body, b"Content-Encoding not supported\n")
            self.assertEqual(response.header("accept-encoding"), "identity")
            self.assertLess(peak[0], 2 * MiB)
        # Undeclared, it is just bytes that are not XML (read once a credential is offered).
        self.assertEqual(self.acs.connect().post(bomb).status, 401)
        self.assertEqual(self.acs.connect().post(bomb, CLAIM).status, 400)
        # Content-Encoding: identity is no encoding at all.
        conn = self.acs.connect()
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        self.assertEqual(conn.post(b"", {"Content-Encoding": "identity"}).status, 204)
        # A compressed transfer coding is refused by the channel, which then closes.
        for coding in ("gzip", "gzip, chunked", "deflate, chunked"):
            conn = self.acs.connect()
            data = conn.send(
                _head({"Transfer-Encoding": coding})
                + b"%x\r\n" % len(bomb)
                + bomb
                + b"\r\n0\r\n\r\n"
            )
            self.assertEqual(parse_responses(data)[0].status, 400, coding)
            self.assertTrue(conn.closing)
        self.assertEqual(self.acs.devices.devices.keys(), {DEVICE_ID})


# ---------------------------------------------------------------------------------------
# Fuzzing the endpoint


_ODD_TEXT = st.one_of(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Cn"]), max_size=12
    ),
    st.sampled_from(
        ["", "-1", "+0", "0x10", "1e3", "99999999999999999999999", " 7 ", "true", "\u00e9"]
    ),
)
_NAMES = [
    "Inform",
    "DeviceId",
    "OUI",
    "SerialNumber",
    "Event",
    "EventStruct",
    "EventCode",
    "ParameterList",
    "ParameterValueStruct",
    "Name",
    "Value",
    "Status",
    "FaultCode",
    "Fault",
    "detail",
    "ID",
    "Body",
    "Header",
    "InstanceNumber",
    "ParameterKey",
    "x",
]


def _mutate_tree(draw: st.DrawFn, data: bytes) -> bytes:
    root = etree.fromstring(data)
    for _ in range(draw(st.integers(1, 4))):
        el = draw(st.sampled_from(list(root.iter())))
        op = draw(st.sampled_from(["remove", "rename", "text", "attr", "duplicate", "empty"]))
        parent = el.getparent()
        if op == "remove" and parent is not None:
            parent.remove(el)
        elif op == "rename":
            ns = draw(
                st.sampled_from(["", soap.SOAP_ENV, soap.CWMP_1_2, "urn:dslforum-org:cwmp-9-9"])
            )
            local = draw(st.sampled_from(_NAMES))
            el.tag = f"{{{ns}}}{local}" if ns else local
        elif op == "text":
            el.text = draw(_ODD_TEXT)
        elif op == "attr":
            el.set(f"{{{soap.XSI}}}type", draw(st.sampled_from(["", ":", "a:b:c", "xsd:int", "x"])))
        elif op == "duplicate" and parent is not None:
            parent.append(etree.fromstring(etree.tostring(el)))
        elif op == "empty":
            for child in list(el):
                el.remove(child)
    return bytes(etree.tostring(root))


_ODD_VALUES = [
    "",
    "-1",
    "+0",
    "0x10",
    "1e3",
    "99999999999999999999999",
    " 7 ",
    "true",
    "\u00e9",
    "x",
]


def _mutate_with(rng: Any, data: bytes) -> bytes:
    """The same mutations as ``_mutated``, driven by a Random (for seeds only known late)."""
    if rng.random() < 0.5:
        out = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at, size = rng.randint(0, len(out)), rng.randint(1, 40)
            op = rng.choice(["delete", "insert", "replace", "duplicate"])
            if op == "delete":
                del out[at : at + size]
            elif op == "insert":
                out[at:at] = rng.randbytes(size)
            elif op == "replace" and at < len(out):
                out[at] = rng.randint(0, 255)
            else:
                out[at:at] = out[at : at + size]
        return bytes(out)
    root = etree.fromstring(data)
    for _ in range(rng.randint(1, 4)):
        el = rng.choice(list(root.iter()))
        op = rng.choice(["remove", "rename", "text", "attr", "duplicate", "empty"])
        parent = el.getparent()
        if op == "remove" and parent is not None:
            parent.remove(el)
        elif op == "rename":
            ns = rng.choice(["", soap.SOAP_ENV, soap.CWMP_1_2, "urn:dslforum-org:cwmp-9-9"])
            local = rng.choice(_NAMES)
            el.tag = f"{{{ns}}}{local}" if ns else local
        elif op == "text":
            el.text = rng.choice(_ODD_VALUES)
        elif op == "attr":
            el.set(f"{{{soap.XSI}}}type", rng.choice(["", ":", "a:b:c", "xsd:int", "x"]))
        elif op == "duplicate" and parent is not None:
            parent.append(etree.fromstring(etree.tostring(el)))
        elif op == "empty":
            for child in list(el):
                el.remove(child)
    return bytes(etree.tostring(root))


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    seed = draw(st.sampled_from(seeds))
    if draw(st.booleans()):
        return _mutate_tree(draw, seed)
    return mutate_bytes(draw, seed)


_INFORM_SEEDS = [
    cpe.inform(),
    cpe.inform(namespace=soap.CWMP_1_0),
    cpe.inform(session_timeout=60, supported_versions="1.0,1.4"),
    cpe.inform(events=(("0 BOOTSTRAP", ""), ("1 BOOT", ""), ("M Reboot", "k"))),
]
T = TypeVar("T")

# The CPE's own requests after an Inform: reports of finished work.
_REPORT_SEEDS = [
    cpe.transfer_complete(),
    cpe.autonomous_transfer_complete(),
    cpe.du_state_change_complete([{}, {"state": "Failed", "fault_code": 9018}]),
    cpe.du_state_change_complete([{"operation": "Uninstall"}], autonomous=True),
]
# (task type, arguments) and the CPE's valid answer to the ACS's request, by method.
_TASKS = [
    ("GetParameterValues", {"parameter_names": ["Device.DeviceInfo."]}),
    ("SetParameterValues", {"parameters": [{"name": "Device.X.Y", "value": "1"}]}),
    ("AddObject", {"object_name": "Device.X.", "parameter_key": "k"}),
    ("DeleteObject", {"object_name": "Device.X.1.", "parameter_key": "k"}),
    ("GetParameterNames", {"parameter_path": "Device.", "next_level": True}),
    ("Reboot", {"command_key": "r"}),
    ("GetRPCMethods", {}),
]
_ANSWERS: dict[str, Callable[[str], bytes]] = {
    "GetParameterValues": lambda i: cpe.rpc_response("GetParameterValues", i),
    "SetParameterValues": lambda i: cpe.rpc_response(
        "SetParameterValues", i, fields=[("Status", "0")]
    ),
    "AddObject": lambda i: cpe.rpc_response(
        "AddObject", i, fields=[("InstanceNumber", "3"), ("Status", "0")]
    ),
    "DeleteObject": lambda i: cpe.rpc_response("DeleteObject", i, fields=[("Status", "0")]),
    "GetParameterNames": lambda i: cpe.rpc_response("GetParameterNames", i),
    "Reboot": lambda i: cpe.rpc_response("Reboot", i),
    "GetRPCMethods": lambda i: cpe.rpc_response("GetRPCMethods", i),
}
_FUZZ = settings(
    max_examples=350,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
# Every answer the endpoint may give a CPE's POST; never 500.
_STATUSES = {200, 204, 400, 401, 403, 413, 415}  # 415: an encoding no CPE uses


def _acs_request(body: bytes) -> tuple[str, str]:
    """(method, cwmp:ID) of a request the ACS sent."""
    root = etree.fromstring(body)
    ids = [e.text for e in root.iter() if isinstance(e.tag, str) and e.tag.endswith("}ID")]
    (rpc,) = [
        e
        for e in root.iter()
        if e.getparent() is not None and e.getparent().tag == f"{{{soap.SOAP_ENV}}}Body"
    ]
    return etree.QName(rpc).localname, str(ids[0])


class CharsetAttackTests(SynchronousTestCase):
    """Issue 12: the charset a body is decoded with is named by its sender, before any
    authentication or admission control, and some codecs Python knows are quadratic (a
    256 KiB POST with ``charset=punycode`` held the reactor for seconds). Only UTF-8,
    US-ASCII and ISO-8859-1 are decoded; everything else is 415, and never decoded."""

    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        self.decoded = 0

        def decode(data: bytes, errors: str = "strict") -> tuple[str, int]:
            self.decoded += 1
            return "", len(data)

        def search(name: str) -> codecs.CodecInfo | None:
            if name != "x_attack_canary":
                return None
            return codecs.CodecInfo(lambda s, e="strict": (b"", len(s)), decode, name=name)

        codecs.register(search)
        self.addCleanup(codecs.unregister, search)

    def test_slow_charsets_are_415_and_never_decoded(self) -> None:
        inform = cpe.inform().split(b"?>", 1)[1].lstrip()  # so that the charset applies
        slow = b"<" + b"x" * (self.acs.resource.max_body_bytes - 1)  # punycode: seconds
        for charset, body in (
            ("x-attack-canary", inform),
            ("punycode", slow),
            ('"punycode"', inform),
            ("utf-7", inform),
            ("unicode_escape", slow),
            ("utf-16", inform),
        ):
            conn = self.acs.connect(peer="198.51.100.7")
            response = conn.post(body, {"Content-Type": f"text/xml; charset={charset}"} | CLAIM)
            self.assertEqual(
                (response.status, response.body),
                (415, b"character encoding not supported\n"),
                charset,
            )
        self.assertEqual(self.decoded, 0)
        self.assertEqual(self.acs.bus.events, [])
        self.assertEqual(self.acs.devices.devices, {})
        # What CPEs send still works: ISO-8859-1 without a declaration, and US-ASCII.
        for charset in ("ISO-8859-1", "us-ascii"):
            conn = self.acs.connect()
            headers = {"Content-Type": f"text/xml; charset={charset}"}
            first = conn.post(inform, headers)
            self.assertEqual(first.status, 401)
            challenge = digest_client.pick(first.headers["www-authenticate"])
            headers["Authorization"] = digest_client.authorization(challenge, USER, PASSWORD)
            self.assertEqual(conn.post(inform, headers).status, 200, charset)
            self.assertEqual(conn.post(b"").status, 204)


class FuzzTests(SynchronousTestCase):
    """Item 3: thousands of mutated Informs and RPC responses through the whole endpoint
    (test_soap.py::PropertyTests fuzzes only the parser). Each gets one of the answers a
    CPE may get — never a 500, never a logged error — and is answered at once, within
    the same Clock step (nothing is left to a timer or a thread, and the count of pending
    delayed calls never grows), while a good device's session, opened before each batch
    and finished after it, always succeeds."""

    batch = 3  # mutated bodies per Hypothesis example: 3 x 350 = 1050 per test

    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.tasks = MemoryTaskService(events=self.acs.bus, clock=self.acs.clock)
        self.acs.engine._requests = TaskRunner(self.tasks, self.acs.devices)
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        self.acs.add_device(OTHER_ID, OTHER_ID, OTHER_PASSWORD)
        self.tasks.add_device(DEVICE_ID)
        self.fuzzed = 0
        self.fresh_challenge()

    def fresh_challenge(self) -> None:
        conn = self.acs.connect()
        self.challenge = digest_client.pick(conn.post(cpe.inform()).headers["www-authenticate"])
        conn.close()
        self.nc = 0

    def authorization(self) -> dict[str, str]:
        self.nc += 1
        return {
            "Authorization": digest_client.authorization(self.challenge, USER, PASSWORD, nc=self.nc)
        }

    def assertNoErrors(self) -> None:
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [], [e.getTraceback()[-800:] for e in errors])

    def assertAnswered(self, response: Response) -> None:
        self.assertIn(response.status, _STATUSES, response.body[:300])
        self.assertNotIn(b"Traceback", response.body)

    def good_session(self) -> Connection:
        conn = self.acs.connect(peer="192.0.2.20")
        self.assertEqual(
            digest_post(conn, cpe.inform(device=OTHER), OTHER_ID, OTHER_PASSWORD).status, 200
        )
        return conn

    def post_at_once(
        self, conn: Connection, body: bytes, headers: dict[str, str] | None = None
    ) -> Response:
        """POST and check it was answered now: no Clock step, no new pending timer."""
        pending = len(self.acs.clock.getDelayedCalls())
        now = self.acs.clock.seconds()
        response = conn.post(body, headers)  # asserts exactly one complete answer
        self.assertAnswered(response)
        self.assertEqual(self.acs.clock.seconds(), now)
        # At most the session timer of a session this very request opened.
        self.assertLessEqual(len(self.acs.clock.getDelayedCalls()), pending + 1)
        return response

    def fuzz(self, items: Sequence[T], one: Callable[[Connection, T], None]) -> None:
        """``one`` for each item on a connection of its own, between the start and the end
        of a good device's session, which must still succeed; no error logged."""
        good = self.good_session()
        for item in items:
            self.fuzzed += 1
            conn = self.acs.connect(peer="198.51.100.66")
            one(conn, item)
            conn.close()
        self.assertEqual(good.post(b"").status, 204)
        good.close()
        self.assertNoErrors()

    def until_the_session_ends(self, conn: Connection, response: Response) -> None:
        """Empty POSTs until the session is over, whatever the request before did."""
        for _ in range(10):
            if response.status != 200:
                return
            response = self.post_at_once(conn, b"")
            self.assertIn(response.status, {200, 204, 400})

    def finish(self) -> None:
        """After the fuzzing: every session ends, no task is left running."""
        self.assertGreaterEqual(self.fuzzed, 900)  # the fuzzer really ran
        self.acs.clock.advance(31)
        self.assertEqual(len(self.acs.engine.registry), 0)
        self.assertEqual(self.acs.site.open_connections, set())
        tasks = self.successResultOf(self.tasks.list_for_device(DEVICE_ID))
        self.assertEqual([t.status for t in tasks if t.status == "running"], [])
        self.assertNoErrors()

    @_FUZZ
    @given(st.lists(_mutated(_INFORM_SEEDS), min_size=batch, max_size=batch))
    def _mutated_informs(self, bodies: list[bytes]) -> None:
        def one(conn: Connection, body: bytes) -> None:
            response = self.post_at_once(conn, body, self.authorization())
            if response.status == 200 and b"InformResponse" in response.body:
                self.assertEqual(self.post_at_once(conn, b"").status, 204)

        self.fuzz(bodies, one)

    def test_mutated_informs(self) -> None:
        self._mutated_informs()
        self.finish()

    @_FUZZ
    @given(
        st.lists(
            st.tuples(st.sampled_from(_TASKS), st.booleans(), st.integers(0, 2**32)),
            min_size=batch,
            max_size=batch,
        )
    )
    def _mutated_rpc_responses(
        self, batch: list[tuple[tuple[str, dict[str, Any]], bool, int]]
    ) -> None:
        def one(conn: Connection, item: tuple[tuple[str, dict[str, Any]], bool, int]) -> None:
            task, as_fault, seed_number = item
            rng = random.Random(seed_number)  # a seed known only once the ACS has asked
            self.assertEqual(conn.post(cpe.inform(), self.authorization()).status, 200)
            self.successResultOf(self.tasks.submit(DEVICE_ID, task[0], task[1]))
            request = conn.post(b"")
            self.assertEqual(request.status, 200, request.body)
            method, request_id = _acs_request(request.body)
            if as_fault:
                seed = cpe.cpe_fault(request_id, 9002, "Internal error")
            else:
                seed = _ANSWERS[method](request_id)
            self.until_the_session_ends(conn, self.post_at_once(conn, _mutate_with(rng, seed)))

        self.fuzz(batch, one)

    def test_mutated_rpc_responses(self) -> None:
        self._mutated_rpc_responses()
        self.finish()

    @_FUZZ
    @given(st.lists(_mutated(_REPORT_SEEDS), min_size=batch, max_size=batch))
    def _mutated_reports(self, bodies: list[bytes]) -> None:
        def one(conn: Connection, body: bytes) -> None:
            self.assertEqual(conn.post(cpe.inform(), self.authorization()).status, 200)
            self.until_the_session_ends(conn, self.post_at_once(conn, body))

        self.fuzz(bodies, one)

    def test_mutated_completion_reports(self) -> None:
        """TransferComplete and (Autonomous)DUStateChangeComplete, mutated, in sessions."""
        self._mutated_reports()
        self.finish()

    def test_huge_number_in_an_rpc_response(self) -> None:
        acs = MemoryAcs()
        tasks = MemoryTaskService(events=acs.bus, clock=acs.clock)
        acs.engine._requests = TaskRunner(tasks, acs.devices)
        acs.add_device(DEVICE_ID, USER, PASSWORD)
        tasks.add_device(DEVICE_ID)
        conn = acs.connect()
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        self.successResultOf(tasks.submit(DEVICE_ID, "AddObject", {"object_name": "Device.X."}))
        _, request_id = _acs_request(conn.post(b"").body)
        body = cpe.rpc_response(
            "AddObject", request_id, fields=[("InstanceNumber", "9" * 5000), ("Status", "0")]
        )
        response = conn.post(body)
        self.flushLoggedErrors()
        self.assertIn(response.status, {200, 204})
        (stored,) = self.successResultOf(tasks.list_for_device(DEVICE_ID))
        self.assertEqual(stored.status, "failed")


# ---------------------------------------------------------------------------------------
# Digest


class DigestAttackTests(SynchronousTestCase):
    """Item 4 through the endpoint (test_digest.py covers the factory alone; test_acs_http.py
    a replay on another connection). Adds: each attack's exact HTTP answer, whether it is
    an ``auth.failed`` (counted) or only a stale-nonce invitation, and that the right
    credential still works after it; and constant-time comparisons, by a spy on
    hmac.compare_digest and by inspecting the code."""

    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)

    def challenge(self, conn: Connection | None = None) -> dict[str, str]:
        response = (conn or self.acs.connect()).post(cpe.inform())
        self.assertEqual(response.status, 401)
        return digest_client.pick(response.headers["www-authenticate"])

    def failures(self) -> list[str]:
        return [e.data["reason"] for e in self.acs.bus.events if e.type == "auth.failed"]

    def attempt(self, header: str, *, uri: str = "/") -> Response:
        return self.acs.connect().post(cpe.inform(), {"Authorization": header}, path=uri)

    def assertRefused(self, response: Response, reason: str) -> None:
        self.assertEqual(response.status, 401, response.body)
        self.assertTrue(response.headers["www-authenticate"])
        self.assertNotIn("stale=true", " ".join(response.headers["www-authenticate"]))
        self.assertIn(reason, self.failures()[-1])

    def assertStale(self, response: Response) -> None:
        """Refused with a fresh nonce, not counted: only a right response gets this."""
        failures = len(self.failures())
        self.assertEqual(response.status, 401, response.body)
        values = response.headers["www-authenticate"]
        self.assertTrue(values and all(v.endswith("stale=true") for v in values), values)
        self.assertEqual(len(self.failures()), failures)

    def test_each_attack_gets_its_answer(self) -> None:
        c = self.challenge()
        good = digest_client.authorization(c, USER, PASSWORD, nc=1)
        self.assertEqual(self.attempt(good).status, 200)
        # The same header again, on a new connection: a replay. Refused; the response
        # is right, so stale=true (nothing the replayer did not know) and not counted.
        self.assertStale(self.attempt(good))
        # A new response (new cnonce) with a nonce count that did not increase: the
        # same (a CPE re-using the previous session's nonce with nc=1 looks like this).
        for nc in (1, 1, 0x00000001):
            self.assertStale(self.attempt(digest_client.authorization(c, USER, PASSWORD, nc=nc)))
        # A wrong password under that nonce count is a failure like any other.
        self.assertRefused(
            self.attempt(digest_client.authorization(c, USER, "guess", nc=1)), "wrong password"
        )
        self.assertEqual(
            self.attempt(digest_client.authorization(c, USER, PASSWORD, nc=2)).status, 200
        )
        # Another realm (the response computed for it, so only the realm is wrong).
        other_realm = dict(c, realm="other-realm")
        self.assertRefused(
            self.attempt(digest_client.authorization(other_realm, USER, PASSWORD, nc=3)), "realm"
        )
        # The digest-uri of another resource.
        self.assertRefused(
            self.attempt(digest_client.authorization(c, USER, PASSWORD, nc=4, uri="/other")), "uri"
        )
        # No qop (RFC 2069): refused, whatever the response.
        no_qop = re.sub(
            r", qop=auth|, nc=[0-9a-f]+|, cnonce=\"[0-9a-f]+\"",
            "",
            digest_client.authorization(c, USER, PASSWORD, nc=5),
        )
        self.assertNotIn("qop", no_qop)
        self.assertRefused(self.attempt(no_qop), "qop")
        # None of it opened a session or stored anything; the device still gets in.
        self.assertEqual([e.type for e in self.acs.bus.events].count("inform"), 2)
        self.assertEqual(
            self.attempt(digest_client.authorization(c, USER, PASSWORD, nc=6)).status, 200
        )
        self.assertEqual(len(self.failures()), 4)

    def test_stale_nonce_is_an_invitation_and_the_retry_succeeds(self) -> None:
        c = self.challenge()
        self.acs.clock.advance(301)  # past auth.nonce_lifetime
        conn = self.acs.connect()
        stale = conn.post(
            cpe.inform(), {"Authorization": digest_client.authorization(c, USER, PASSWORD)}
        )
        self.assertEqual(stale.status, 401)
        challenges = stale.headers["www-authenticate"]
        self.assertEqual(len(challenges), 2)
        self.assertTrue(all(v.endswith("stale=true") for v in challenges), challenges)
        self.assertEqual(self.failures(), [])  # not a failure: nothing counted, no event
        self.assertFalse(conn.closing)
        fresh = digest_client.pick(challenges)
        self.assertNotEqual(fresh["nonce"], c["nonce"])
        retry = conn.post(
            cpe.inform(), {"Authorization": digest_client.authorization(fresh, USER, PASSWORD)}
        )
        self.assertEqual(retry.status, 200)
        self.assertEqual(conn.post(b"").status, 204)
        # A stale nonce with a wrong password is a failure: stale=true needs the right
        # response, so an old nonce is no way to guess without being counted.
        self.acs.clock.advance(301)
        wrong = self.attempt(digest_client.authorization(fresh, USER, "guess", nc=2))
        self.assertRefused(wrong, "wrong password")
        self.assertEqual(len(self.failures()), 1)

    def test_comparisons_are_constant_time(self) -> None:
        calls: list[tuple[bytes | str, bytes | str]] = []
        real = hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            calls.append((a, b))
            return real(a, b)

        self.patch(hmac, "compare_digest", spy)
        c = self.challenge()
        good = digest_client.authorization(c, USER, PASSWORD)
        forged = digest_client.authorization(c, USER, "guess", nc=2)
        self.assertEqual(self.attempt(good).status, 200)
        self.assertEqual(self.attempt(forged).status, 401)

        def response_of(header: str) -> bytes:
            match = re.search(r'response="([0-9a-f]+)"', header)
            assert match is not None
            return match.group(1).encode()

        compared = {x if isinstance(x, bytes) else x.encode() for pair in calls for x in pair}
        # The Digest responses, good and forged, and the opaque went through compare_digest.
        self.assertIn(response_of(good), compared)
        self.assertIn(response_of(forged), compared)
        self.assertIn(c["opaque"].encode(), compared)
        # So did the nonce's MAC (16 raw bytes from the nonce itself).
        raw = __import__("base64").urlsafe_b64decode(c["nonce"])
        self.assertIn(raw[-16:], compared)
        # Basic passwords and the bootstrap username compare through _same.
        calls.clear()
        self.assertTrue(auth_module._same("a", "a"))
        self.assertEqual(calls, [(b"a", b"a")])

    def test_no_equality_on_secrets_in_the_code(self) -> None:
        """Inspection: no ==/!= where a digest, MAC, opaque, HA1 or password is compared."""
        secret = re.compile(r"response|digest|mac|opaque|ha1|password|expected|stored", re.I)
        offenders = []
        for module in (digest_module, auth_module):
            tree = ast.parse(inspect.getsource(module))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Compare):
                    continue
                if not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                    continue
                for side in (node.left, *node.comparators):
                    if isinstance(side, ast.Constant):
                        continue  # a literal (a scheme name) is no secret
                    if isinstance(side, ast.Call) and getattr(side.func, "id", "") == "len":
                        continue  # a length is public
                    text = ast.unparse(side)
                    if secret.search(text):
                        offenders.append(f"{module.__name__}:{node.lineno}: {ast.unparse(node)}")
        self.assertEqual(offenders, [])
        # And the two places that must compare in constant time do.
        self.assertIn(
            "hmac.compare_digest", inspect.getsource(digest_module.DigestCredentials.checkHash)
        )
        self.assertIn("hmac.compare_digest", inspect.getsource(auth_module._same))


# ---------------------------------------------------------------------------------------
# The whole gateway on 127.0.0.1: real TLS, real Redis


class XmlAttackGatewayTests(GatewayBase):
    """Item 1 over the real endpoint: the hostile bodies over TLS, from two attacking
    threads, while six good devices run their sessions; the canary sees no connection;
    the peak RSS stays far below any expansion."""

    async def test_hostile_xml_while_good_sessions_run(self) -> None:
        await self.start()
        good = [await self.add_device(_serial(i), f"good-{i}", f"pw-{i}") for i in range(6)]
        canary = TcpCanary()
        self.addCleanup(canary.close)
        cases = hostile_xml(f"http://127.0.0.1:{canary.port}/x")
        self.assertEqual(
            [e.status for e in await self.session("good-0", "pw-0", serial=_serial(0))], [200, 204]
        )

        def attack() -> dict[str, int]:
            out = {}
            for name, (body, statuses) in cases.items():
                # Over the cap the body is not even sent: the 413 comes after the head.
                out[name] = self.exchange(body, CLAIM, send_body=statuses != {413}).status
            return out

        with peak_rss_growth() as growth:
            results = await gatherResults(
                [deferToThread(attack), deferToThread(attack)]
                + [self.session(f"good-{i}", f"pw-{i}", serial=_serial(i)) for i in range(6)]
            )
        for answers in results[:2]:
            for name, (_, statuses) in cases.items():
                self.assertIn(answers[name], statuses, name)
        for exchanges in results[2:]:
            self.assertEqual([e.status for e in exchanges], [200, 204])
        self.assertLess(growth[0], 96 * MiB)
        self.assertEqual(canary.connections(), 0)
        informs = [
            json.loads(f[b"event"])
            for _, f in self.redis.xrange(self.prefix + "events")
            if json.loads(f[b"event"])["type"] == "inform"
        ]
        self.assertEqual(sorted({e["device"]["id"] for e in informs}), sorted(good))


class BodyAttackGatewayTests(GatewayBase):
    """Item 2 over TLS: a 100 MiB body announced by Content-Length is refused after the
    head; a chunked one is cut while it streams, before much more than the cap has been
    sent; a gzip bomb is 415; the peak RSS stays bounded and a good session works."""

    async def test_oversized_and_compressed_bodies(self) -> None:
        await self.start()
        await self.add_device(_serial("B"), "body-cpe", "body-pw")
        cap = self.service.config.acs.max_body_bytes

        def stream(chunked: bool) -> tuple[int, int | None]:
            """Send up to 100 MiB; (bytes sent when the server answered or cut, status)."""
            sock = self.tls()
            framing = (
                {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(100 * MiB)}
            )
            sock.sendall(
                (
                    "POST / HTTP/1.1\r\nHost: x\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in framing.items())
                    + "\r\n"
                ).encode()
            )
            piece = b"<" * (64 * 1024)
            if chunked:
                piece = b"%x\r\n" % len(piece) + piece + b"\r\n"
            sent, early = 0, b""
            try:
                while sent < 100 * MiB and not early:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:  # the answer, or only a TLS 1.3 session ticket
                        sock.setblocking(False)
                        try:
                            early = sock.recv(65536) or b"closed"
                        except ssl.SSLWantReadError:
                            pass
                        sock.setblocking(True)
                        continue
                    sock.sendall(piece)
                    sent += len(piece)
                if early == b"closed":
                    return sent, None
                return sent, _read_response(sock, early).status
            except (ConnectionError, ssl.SSLError, OSError):
                return sent, None  # cut (reset) before its answer could be read
            finally:
                sock.close()

        with peak_rss_growth() as growth:
            by_length = await deferToThread(stream, False)
            by_chunks = await deferToThread(stream, True)
            bomb = _gzip_bomb(64 * MiB)
            gzipped = await deferToThread(self.exchange, bomb, {"Content-Encoding": "gzip"})
        # Announced too large: answered before a byte of the body (or cut at once).
        self.assertIn(by_length[1], (413, None))
        self.assertLess(by_length[0], 24 * MiB)  # kernel socket buffers: a few MiB each way
        # Chunked: cut once the cap is passed, socket buffers aside; never 100 MiB.
        self.assertIn(by_chunks[1], (413, None))
        self.assertGreater(by_chunks[0], cap)
        self.assertLess(by_chunks[0], cap + 24 * MiB)
        self.assertEqual(gzipped.status, 415)
        self.assertLess(growth[0], 64 * MiB)
        exchanges = await self.session("body-cpe", "body-pw", serial=_serial("B"))
        self.assertEqual([e.status for e in exchanges], [200, 204])


class CharsetAttackGatewayTests(GatewayBase):
    """Issue 12 over TLS: a 256 KiB POST with a charset Python decodes in quadratic time
    is 415 from the real gateway, and a good session runs while such POSTs keep coming."""

    async def test_slow_charset_is_415(self) -> None:
        await self.start()
        await self.add_device(_serial("C"), "charset-cpe", "charset-pw")
        cap = self.service.config.acs.max_body_bytes
        slow = b"<" + b"x" * (cap - 1)

        def attack() -> list[int]:
            return [
                self.exchange(slow, {"Content-Type": f"text/xml; charset={charset}"} | CLAIM).status
                for charset in ("punycode", "PUNYCODE", "unicode_escape", "utf-7", "hz")
            ]

        results = await gatherResults(
            [deferToThread(attack), self.session("charset-cpe", "charset-pw", serial=_serial("C"))]
        )
        self.assertEqual(results[0], [415] * 5)
        self.assertEqual([e.status for e in results[1]], [200, 204])
        refused = await deferToThread(
            self.exchange, slow, {"Content-Type": "text/xml; charset=punycode"} | CLAIM
        )
        self.assertEqual(refused.body, b"character encoding not supported\n")


class IdentityAttackGatewayTests(GatewayBase):
    """Item 5 over TLS with Redis (test_acs_http.py covers the in-memory 403s). Adds: every
    way in to another device's session — its DeviceId with my credentials, its cookie on
    my authenticated connection (without and with my credentials), its cookie with no or
    wrong credentials, its replayed Authorization — refused, with the victim's Redis state
    byte-identical (DUMP of every key of the device) and its session still completing;
    and two concurrent Informs of one device: one session survives, the other is refused."""

    def victim_state(self, device_id: str, username: str) -> dict[bytes, Any]:
        state: dict[bytes, Any] = {}
        for key in self.redis.scan_iter(match=self.prefix.encode() + b"*", count=1000):
            text = key.decode()
            if "authfail:" in text or "authblock:" in text:
                continue  # the failure counters of the attacks themselves
            if device_id in text or text.endswith(":" + username):
                state[key] = self.redis.dump(key)
        state[b"cred-by-device"] = self.redis.hget(self.prefix + "cred-by-device", device_id)
        state[b"devices"] = self.redis.zscore(self.prefix + "devices", device_id)
        return state

    async def test_no_way_into_another_devices_session(self) -> None:
        await self.start()
        victim_id = await self.add_device("VICTIM1", "victim", "victim-pw")
        await self.add_device("ATTACKER1", "attacker", "attacker-pw")
        first = await self.session("victim", "victim-pw", serial="VICTIM1", transfer_complete=True)
        self.assertEqual([e.status for e in first], [200, 200, 204])

        def attacks() -> dict[str, list[int]]:
            victim = RawCpe(self, "VICTIM1")
            self.assertEqual(victim.login("victim", "victim-pw").status, 200)
            stolen_cookie, stolen_auth = victim.cookie, victim.last_authorization
            before = self.victim_state(victim_id, "victim")
            out: dict[str, list[int]] = {}

            # My credentials, the victim's DeviceId.
            claim = RawCpe(self, "VICTIM1")
            out["claim"] = [claim.login("attacker", "attacker-pw").status]
            claim.close()
            # The victim's cookie on my own authenticated connection.
            mine = RawCpe(self, "ATTACKER1")
            self.assertEqual(mine.login("attacker", "attacker-pw").status, 200)
            mine.cookie = stolen_cookie
            out["cookie_on_mine"] = [mine.post(b"").status]
            out["cookie_on_mine"].append(
                mine.post(b"", user="attacker", password="attacker-pw").status
            )
            mine.close()
            # The victim's cookie with no credentials, wrong ones, a replayed header.
            bare = RawCpe(self, "VICTIM1")
            bare.cookie = stolen_cookie
            transfer = cpe_client.TRANSFER_COMPLETE.replace("fw-42", "forged").encode()
            out["cookie_alone"] = [bare.post(b"").status, bare.post(transfer).status]
            out["cookie_alone"].append(bare.post(transfer, user="victim", password="guess").status)
            bare.close()
            replay = RawCpe(self, "VICTIM1")
            replay.cookie = stolen_cookie
            out["replayed_authorization"] = [replay.post(b"", raw_auth=stolen_auth).status]
            replay.close()

            out["state_unchanged"] = [int(self.victim_state(victim_id, "victim") == before)]
            out["victim_finishes"] = [victim.post(b"").status]
            victim.close()
            return out

        out = await deferToThread(attacks)
        self.assertEqual(
            out,
            {
                "claim": [403],
                "cookie_on_mine": [401, 403],
                "cookie_alone": [401, 401, 401],
                "replayed_authorization": [401],
                "state_unchanged": [1],
                "victim_finishes": [204],
            },
        )
        await self.service.engine.flush()  # the background events (session.closed) are out
        events = [json.loads(f[b"event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        transfers = [e["data"]["command_key"] for e in events if e["type"] == "transfer.complete"]
        self.assertEqual(transfers, ["fw-42"])  # the forged report never got in
        victim_closed = [
            e["data"]["outcome"]
            for e in events
            if e["type"] == "session.closed" and e["device"]["id"] == victim_id
        ]
        self.assertEqual(victim_closed, ["completed", "completed"])
        refused = [e["data"]["reason"] for e in events if e["type"] == "auth.failed"]
        self.assertEqual(refused.count("credentials belong to another device"), 2)

    async def test_two_concurrent_informs_of_one_device(self) -> None:
        await self.start()
        await self.add_device("TWIN1", "twin", "twin-pw")
        barrier = threading.Barrier(2, timeout=20)

        def twin() -> list[int]:
            cpe_ = RawCpe(self, "TWIN1")
            try:
                first = cpe_.post(cpe_.inform())
                barrier.wait()  # both challenged: the two Informs go in together
                inform = cpe_.post(cpe_.inform(), user="twin", password="twin-pw")
                barrier.wait()  # both answered before either goes on
                return [first.status, inform.status, cpe_.post(b"").status]
            finally:
                cpe_.close()

        results = await gatherResults([deferToThread(twin), deferToThread(twin)])
        self.assertEqual(sorted(r[:2] for r in results), [[401, 200], [401, 200]])
        # One session survives; the other was superseded and its next POST refused.
        self.assertEqual(sorted(r[2] for r in results), [204, 400])
        await self.service.engine.flush()  # the background events (session.closed) are out
        events = [json.loads(f[b"event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        closed = [e["data"]["outcome"] for e in events if e["type"] == "session.closed"]
        self.assertEqual(len(closed), 2)
        self.assertIn("superseded", closed)
        # The later Inform's session is the one that goes on, whatever order the writes
        # answered in: test_session_lock.py::ConcurrentInformsTests, deterministically.
        self.assertEqual(len(self.service.engine.registry), 0)


# ---------------------------------------------------------------------------------------
# Slow clients


class SlowClientGatewayTests(GatewayBase):
    """Item 6 over real sockets (test_acs_limits.py covers one slowloris and one slow body in
    memory, test_security_integration.py one stalled handshake). Adds: a crowd at once —
    slowloris heads, slow bodies, stalled TLS handshakes, silent connections — each closed
    by the server (counted in its log: a read deadline or a first-byte deadline per
    connection), good sessions started during the attack all complete, and the open file
    descriptors and the site's connection count come back to where they were."""

    slowloris, slow_bodies, stalled, silent = 30, 5, 15, 10

    async def test_a_crowd_of_slow_clients(self) -> None:
        # Deadlines short enough for a quick test, long enough that a good CPE on a busy
        # machine is never the one cut.
        await self.start(acs={"read_timeout": 4, "first_byte_timeout": 3})
        for i in range(4):
            await self.add_device(_serial(f"S{i}"), f"slow-{i}", f"pw-{i}")
        warm = await self.session("slow-0", "pw-0", serial=_serial("S0"))
        self.assertEqual([e.status for e in warm], [200, 204])
        await deferLater(reactor, 0.2, lambda: None)  # the warm-up connection is gone
        baseline = open_fds()
        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            fmt = event.get("log_format") or ""
            if "not complete within" in fmt:
                logged.append("read_timeout")
            elif "sent no request within" in fmt:
                logged.append("first_byte_timeout")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        started = threading.Event()

        def attack() -> dict[str, int]:
            """Open the crowd, trickle, and wait until the server has closed every socket."""
            socks: dict[socket.socket, str] = {}
            for _ in range(self.slowloris):
                s = self.tls()
                s.sendall(b"POST / HTTP/1.1\r\n")
                socks[s] = "slowloris"
            for _ in range(self.slow_bodies):
                s = self.tls()
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
                socks[s] = "slow_body"
            for _ in range(self.stalled):
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello, cut
                socks[s] = "stalled"
            for _ in range(self.silent):
                socks[socket.create_connection(("127.0.0.1", self.port), timeout=10)] = "silent"
            started.set()
            closed_by_server: dict[str, int] = {}
            deadline = 160  # rounds of 0.25 s: a bound on the test, not an assertion
            while socks and deadline:
                deadline -= 1
                for s, kind in list(socks.items()):
                    if kind in ("slowloris", "slow_body"):
                        try:
                            s.sendall(b"X-a: b\r\n"[:1] if kind == "slowloris" else b"x")
                        except (OSError, ssl.SSLError):
                            pass  # already cut: the read below sees it
                readable, _, _ = select.select(list(socks), [], [], 0.25)
                for s in readable:
                    try:
                        if isinstance(s, ssl.SSLSocket):
                            s.setblocking(False)
                        data = s.recv(4096)
                    except ssl.SSLWantReadError:
                        continue  # a session ticket, not the end
                    except (OSError, ssl.SSLError):
                        data = b""
                    if not data:
                        kind = socks.pop(s)
                        closed_by_server[kind] = closed_by_server.get(kind, 0) + 1
                        s.close()
            for s in socks:
                s.close()
            return closed_by_server

        attack_done = deferToThread(attack)
        while not started.is_set():
            await deferLater(reactor, 0.05, lambda: None)
        good = await gatherResults(
            [self.session(f"slow-{i}", f"pw-{i}", serial=_serial(f"S{i}")) for i in range(4)]
        )
        for exchanges in good:
            self.assertEqual([e.status for e in exchanges], [200, 204])
        closed = await attack_done
        self.assertEqual(
            closed,
            {
                "slowloris": self.slowloris,
                "slow_body": self.slow_bodies,
                "stalled": self.stalled,
                "silent": self.silent,
            },
        )
        self.assertEqual(logged.count("read_timeout"), self.slowloris + self.slow_bodies)
        self.assertEqual(logged.count("first_byte_timeout"), self.stalled + self.silent)
        for _ in range(50):  # the server side of the last closes may still be in flight
            if open_fds() <= baseline and not self.service.acs_site.open_connections:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertLessEqual(open_fds(), baseline)
        self.assertEqual(self.service.acs_site.open_connections, set())
        self.assertEqual(self.service.acs_site._per_source, {})


# ---------------------------------------------------------------------------------------
# Connection-request guard


class ConnreqGuardGatewayTests(GatewayBase):
    """Item 11 against the whole gateway (test_connreq_guard.py checks the guard's table;
    test_connreq_integration.py one loopback URL). Adds: URLs a CPE may report that point
    at loopback in several spellings, at 0.0.0.0, at link-local and cloud-metadata
    addresses, at the gateway's own NBI port, or at a name — each refused with no
    ``connreq.sent``, a canary listener that sees no connection and an NBI that sees none;
    and a CPE address the operator allowed that answers with a redirect to an internal
    address: the redirect is not followed (the canary sees nothing)."""

    async def boot_with(self, cr_url: str) -> None:
        exchanges = await self.session("guard-cpe", "guard-pw", serial="GUARD1", cr_url=cr_url)
        self.assertEqual([e.status for e in exchanges], [200, 204])

    def event_types(self) -> list[str]:
        return [
            json.loads(f[b"event"])["type"] for _, f in self.redis.xrange(self.prefix + "events")
        ]

    async def start_guarded(self, **connreq: Any) -> str:
        from cwmpgw.store.interfaces import ConnReqCredential

        # sent_events: every attempt is announced, so "no connreq.sent" below means
        # nothing was attempted (the default publishes only each wake-up's result).
        settings = {
            "stun": False,
            "min_interval": 0.0,
            "retries": 0,
            "session_wait": 1.0,
            "sent_events": True,
        }
        await self.start(connreq=settings | connreq)
        device_id = await self.add_device("GUARD1", "guard-cpe", "guard-pw")
        await self.service.connreq_credentials.set(device_id, ConnReqCredential("cr", "cr-pw"))
        return device_id

    async def test_internal_targets_are_refused_and_nothing_is_sent(self) -> None:
        device_id = await self.start_guarded()
        canary = TcpCanary()
        self.addCleanup(canary.close)
        assert self.service.nbi_port is not None
        nbi_port = self.service.nbi_port.getHost().port
        nbi_connections: list[object] = []
        factory: Any = self.service.nbi_port.factory  # type: ignore[attr-defined]
        real_build = factory.buildProtocol

        def counting_build(addr: Any) -> Any:
            nbi_connections.append(addr)
            return real_build(addr)

        factory.buildProtocol = counting_build
        self.addCleanup(setattr, factory, "buildProtocol", real_build)
        c = canary.port
        targets = {
            f"http://127.0.0.1:{c}/cr": "loopback address not allowed",
            f"http://127.9.9.9:{c}/cr": "loopback address not allowed",
            f"http://[::ffff:127.0.0.1]:{c}/cr": "loopback address not allowed",
            f"http://[::1]:{c}/cr": "loopback address not allowed",
            f"http://0.0.0.0:{c}/cr": "unspecified address not allowed",
            f"http://127.1:{c}/cr": "hostname not allowed",
            f"http://localhost:{c}/cr": "hostname not allowed",
            f"http://user@127.0.0.1:{c}/cr": "userinfo not allowed",
            f"http://127.0.0.1:{nbi_port}/devices": "loopback address not allowed",
            "http://169.254.169.254/latest/meta-data/": "link-local address not allowed",
            f"http://[fe80::1]:{c}/cr": "link-local address not allowed",
            f"http://224.0.0.1:{c}/cr": "multicast address not allowed",
        }
        for url, reason in targets.items():
            await self.boot_with(url)
            result = await self.service.connreq.wake(device_id)
            self.assertEqual((result.outcome, result.detail), ("refused", reason), url)
        self.assertEqual(canary.connections(), 0)
        self.assertEqual(nbi_connections, [])
        types = self.event_types()
        self.assertEqual(types.count("connreq.refused"), len(targets))
        self.assertNotIn("connreq.sent", types)

    async def test_a_redirect_to_an_internal_address_is_not_followed(self) -> None:
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        canary = TcpCanary()
        self.addCleanup(canary.close)
        hits: list[str] = []

        class Redirecting(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                code = int(request.path.rsplit(b"/", 1)[-1])
                hits.append(request.path.decode())
                request.setResponseCode(code)
                request.setHeader(b"location", f"http://127.0.0.1:{canary.port}/internal".encode())
                return b""

        listener = reactor.listenTCP(0, Site(Redirecting()), interface="127.0.0.2")
        self.addCleanup(listener.stopListening)
        # The operator allowed the CPE's network (here 127.0.0.2 only), not the rest.
        device_id = await self.start_guarded(allowed_networks=["127.0.0.2/32"])
        port = listener.getHost().port
        for code in (301, 302, 303, 307, 308):
            await self.boot_with(f"http://127.0.0.2:{port}/cr/{code}")
            result = await self.service.connreq.wake(device_id)
            self.assertNotEqual(result.outcome, "ok", code)
        self.assertEqual(hits, [f"/cr/{code}" for code in (301, 302, 303, 307, 308)])
        self.assertEqual(canary.connections(), 0)


class UdpGuardTests(TestCase):
    """Item 11, UDP: a CPE's UDPConnectionRequestAddress that is loopback, link-local or a
    third party (not its source address or STUN binding) gets no datagram — the real UDP
    requester on a real socket, a canary that receives nothing — while an allowed address
    does (the control that shows the canary would see one)."""

    async def wake(self, address: str, *, allowed: tuple[str, ...] = ()) -> tuple[Any, int, int]:
        import ipaddress
        from dataclasses import replace

        from twisted.internet.protocol import DatagramProtocol

        from cwmpgw.bus.memory import MemoryEventBus
        from cwmpgw.config import default_config
        from cwmpgw.connreq.guard import GuardPolicy
        from cwmpgw.connreq.state import MemoryConnreqState
        from cwmpgw.connreq.udp import UdpConnectionRequester
        from cwmpgw.connreq.waker import ConnectionRequestService
        from cwmpgw.cwmp.messages import EventStruct, ParameterValue
        from cwmpgw.store.interfaces import ConnReqCredential, InformRecord
        from cwmpgw.store.memory import MemoryConnReqCredentialStore, MemoryDeviceStore

        canary = UdpCanary()
        self.addCleanup(canary.close)
        port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sent: list[tuple[str, int]] = []

        def send(data: bytes, target: tuple[str, int]) -> None:
            sent.append(target)
            port.write(data, target)

        devices, credentials = MemoryDeviceStore(), MemoryConnReqCredentialStore()
        devices.record_inform(
            InformRecord(
                OTHER_ID,
                OTHER,
                reactor.seconds(),
                "198.51.100.7",  # where the CPE connects from
                "1.4",
                soap.CWMP_1_2,
                (EventStruct("1 BOOT"),),
                (
                    ParameterValue(
                        "Device.ManagementServer.UDPConnectionRequestAddress",
                        address.replace("CANARY", str(canary.port)),
                    ),
                ),
            )
        )
        credentials.set(OTHER_ID, ConnReqCredential("cr", "cr-pw"))
        state = MemoryConnreqState(reactor)
        service = ConnectionRequestService(
            clock=reactor,
            config=replace(default_config().connreq, min_interval=0.0, session_wait=0.0),
            devices=devices,
            credentials=credentials,
            http=None,
            udp=UdpConnectionRequester(send, clock=reactor, copies=1),
            events=MemoryEventBus(),
            node="n1",
            policy=GuardPolicy(allowed_networks=tuple(ipaddress.ip_network(n) for n in allowed)),
            claim_interval=state.claim_interval,
            stun_binding=state.binding,
            session_started=None,
        )
        result = await service.wake(OTHER_ID)
        received = 0
        for _ in range(20):  # a datagram on loopback arrives within a few reactor turns
            received += canary.datagrams()
            if received:
                break
            await deferLater(reactor, 0.01, lambda: None)
        return result, len(sent), received

    async def test_udp_requests_only_where_allowed(self) -> None:
        for address, reason in (
            ("127.0.0.1:CANARY", "loopback address not allowed"),
            ("169.254.10.1:7547", "link-local address not allowed"),
            ("203.0.113.9:7547", "address does not match the device's source address"),
            ("[::1]:CANARY", "loopback address not allowed"),
            ("0.0.0.0:CANARY", "unspecified address not allowed"),
        ):
            result, sent, received = await self.wake(address)
            self.assertEqual((result.outcome, result.detail), ("refused", reason), address)
            self.assertEqual((sent, received), (0, 0), address)
        # The control: the operator allowed 127.0.0.1, so the canary gets the datagram.
        result, sent, received = await self.wake("127.0.0.1:CANARY", allowed=("127.0.0.1/32",))
        self.assertEqual((result.outcome, sent, received), ("ok", 1, 1))
