"""Issue 7: the attack and fault suite, one class per kind of attack.

Each class says what it adds to the coverage listed in docs/reliability.md ("Hostile,
broken or too many clients"). In-memory classes drive the real Site, channel, resource
and engine over StringTransports on a Clock (tests/memhttp.py); the ``…GatewayTests``
classes run the whole gateway on 127.0.0.1 over real TLS sockets and a real Redis.

Nothing here asserts a duration. Memory is bounded with the process's peak RSS (reset
through /proc/self/clear_refs where the kernel allows it) and generous margins, file
descriptors are counted in /proc/self/fd, and "nothing was sent" is checked with canary
sockets that must see no connection or datagram.
"""

from __future__ import annotations

import os
import re
import socket
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import soap
from cwmpgw.cwmp.messages import DeviceId
from tests import cpe_envelopes as cpe
from tests.memhttp import MemoryAcs, digest_post

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
                response = self.acs.connect(peer="198.51.100.66").post(body)
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
        # Nothing was stored or published; the good device's session goes on.
        self.assertEqual(len(self.acs.bus.events), events)
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
            response = conn.post(body)
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
