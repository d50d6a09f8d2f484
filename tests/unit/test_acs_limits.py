"""The ACS endpoint under attack, in memory: auth blocks and per-connection limits."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.acs.resource import AcsChannel
from cwmpgw.acs.throttle import Block, MemoryAuthThrottle
from cwmpgw.bus.events import format_ts
from cwmpgw.store.interfaces import StoredCredential
from tests.support import cpe_envelopes as cpe
from tests.support import digest_client
from tests.support.memhttp import (
    Connection,
    MemoryAcs,
    Response,
    assert_refused,
    digest_post,
    parse_responses,
)

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = DEVICE_ID, "s3cret-Pa55word"
ATTACKER = "198.51.100.66"
GOOD = "192.0.2.10"


def head(path: str = "/", headers: dict[str, str] | None = None) -> bytes:
    hdrs = {"Host": "acs.test"} | (headers or {})
    return (
        f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    ).encode()


class ThrottledBase(SynchronousTestCase):
    per_source = 3
    per_device = 100

    def setUp(self) -> None:
        clock = Clock()
        self.throttle = MemoryAuthThrottle(
            clock=clock,
            max_failures_per_source=self.per_source,
            max_failures_per_device=self.per_device,
        )
        self.acs = MemoryAcs(clock=clock, throttle=self.throttle)
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)
        self.store_calls = 0
        real_get = self.acs.credentials.get

        def counting_get(username: str) -> Deferred[StoredCredential | None]:
            self.store_calls += 1
            return real_get(username)

        self.acs.credentials.get = counting_get  # type: ignore[method-assign]

    def attempt(self, peer: str, password: str = "wrong-guess") -> Response:
        return digest_post(self.acs.connect(peer=peer), cpe.inform(), USER, password)

    def blocked_events(self) -> list[Any]:
        return [e for e in self.acs.bus.events if e.type == "auth.blocked"]

    def assert429(self, response: Response, retry_after: str = "900") -> None:
        self.assertEqual(response.status, 429, response.body)
        self.assertEqual(response.header("retry-after"), retry_after)
        self.assertEqual(response.header("connection"), "close")
        self.assertEqual(response.header("content-type"), "text/plain; charset=utf-8")
        self.assertIn(b"too many failed authentications", response.body)


class SourceBlockTests(ThrottledBase):
    def test_blocked_source_refuses_only_failing_attempts(self) -> None:
        self.assertEqual(self.attempt(ATTACKER).status, 401)
        self.assertEqual(self.attempt(ATTACKER).status, 401)
        # The third failure starts the block and is itself answered 429.
        self.assert429(self.attempt(ATTACKER))
        # No credentials at all: the challenge, as ever (it costs no credential work).
        calls = self.store_calls
        conn = self.acs.connect(peer=ATTACKER)
        self.assertEqual(conn.post(cpe.inform()).status, 401)
        self.assertEqual(self.store_calls, calls)
        # A failing attempt is checked (one lookup), counted and answered 429, closing.
        self.acs.clock.advance(100)
        conn = self.acs.connect(peer=ATTACKER)
        self.assert429(digest_post(conn, cpe.inform(), USER, "guess-4"), "800")
        self.assertTrue(conn.closing)
        self.assertEqual(self.store_calls, calls + 1)
        # A header that fails before any lookup (not our nonce) is 429 too.
        auth = 'Digest username="x", realm="cwmpgw", nonce="n", uri="/", response="0"'
        self.assert429(
            self.acs.connect(peer=ATTACKER).post(cpe.inform(), {"Authorization": auth}), "800"
        )
        self.assertEqual(self.store_calls, calls + 1)
        # The right credential from the blocked address gets in...
        conn = self.acs.connect(peer=ATTACKER)
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        self.assertEqual(conn.post(b"").status, 204)
        # ...and lifts nothing for the others behind that address.
        self.assert429(self.attempt(ATTACKER), "800")
        self.assertEqual(self.throttle._counts[("source", ATTACKER)][1], 6)
        # Other addresses are not affected.
        self.assertEqual(self.attempt(GOOD).status, 401)

    def test_auth_blocked_event_once_per_block(self) -> None:
        for _ in range(3):
            self.attempt(ATTACKER)
        for _ in range(3):
            self.acs.connect(peer=ATTACKER).post(cpe.inform())
        (event,) = self.blocked_events()
        self.assertEqual(
            event.data,
            {
                "kind": "source",
                "key": ATTACKER,
                "until": format_ts(self.acs.clock.seconds() + 900),
                "failures": 3,
            },
        )
        self.assertIsNone(event.device)
        self.assertEqual([e.type for e in self.acs.bus.events].count("auth.failed"), 3)
        # After the block the address is heard again, and a new block is a new event.
        self.acs.clock.advance(900)
        self.assertEqual(self.acs.connect(peer=ATTACKER).post(cpe.inform()).status, 401)
        for _ in range(3):
            self.attempt(ATTACKER)
        self.assertEqual(len(self.blocked_events()), 2)

    def test_plain_challenges_and_stale_nonces_are_not_failures(self) -> None:
        for _ in range(10):
            self.assertEqual(self.acs.connect(peer=ATTACKER).post(cpe.inform()).status, 401)
        self.assertEqual(self.blocked_events(), [])
        self.assertEqual(self.attempt(ATTACKER, PASSWORD).status, 200)

    def test_authenticated_connection_not_checked_again(self) -> None:
        conn = self.acs.connect(peer=ATTACKER)
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        for _ in range(3):
            self.attempt(ATTACKER)
        # The session that authenticated before the block runs to its end.
        self.assertEqual(conn.post(b"").status, 204)
        self.assert429(self.attempt(ATTACKER))

    def test_second_failure_on_a_connection_closes_it(self) -> None:
        conn = self.acs.connect(peer=GOOD)
        self.assertEqual(digest_post(conn, cpe.inform(), USER, "bad-1").status, 401)
        self.assertFalse(conn.closing)
        response = digest_post(conn, cpe.inform(), USER, "bad-2", nc=2)
        self.assertEqual(response.header("connection"), "close")
        self.assertTrue(conn.closing)


class DeviceBlockTests(ThrottledBase):
    per_source = 100
    per_device = 3

    def test_right_password_accepted_while_attacker_blocked_device(self) -> None:
        for _ in range(2):
            self.assertEqual(self.attempt(ATTACKER).status, 401)
        self.assert429(self.attempt(ATTACKER))
        (event,) = self.blocked_events()
        self.assertEqual((event.data["kind"], event.data["key"]), ("device", DEVICE_ID))
        self.assertEqual(event.device["id"] if event.device else None, DEVICE_ID)
        # The real device, from its own address, with its password: accepted.
        conn = self.acs.connect(peer=GOOD)
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        self.assertEqual(conn.post(b"").status, 204)
        # A wrong password for the blocked device is 429, from any address.
        self.assert429(self.attempt(GOOD))
        self.assert429(self.attempt(ATTACKER))
        # Still exactly one event for the one block.
        self.assertEqual(len(self.blocked_events()), 1)

    def test_right_password_accepted_while_attacker_source_also_blocked(self) -> None:
        self.throttle = MemoryAuthThrottle(
            clock=self.acs.clock, max_failures_per_source=3, max_failures_per_device=3
        )
        self.acs.resource._gate._throttle = self.throttle
        for _ in range(3):
            self.attempt(ATTACKER)
        self.assertEqual(
            sorted(e.data["kind"] for e in self.blocked_events()), ["device", "source"]
        )
        # Both blocks refuse only failing attempts: the right password gets in from the
        # blocked address too, with one credential lookup.
        challenge = digest_client.pick(
            self.acs.connect(peer=GOOD).post(cpe.inform()).headers["www-authenticate"]
        )
        auth = digest_client.authorization(challenge, USER, PASSWORD)
        calls = self.store_calls
        conn = self.acs.connect(peer=ATTACKER)
        self.assertEqual(conn.post(cpe.inform(), {"Authorization": auth}).status, 200)
        self.assertEqual(self.store_calls, calls + 1)
        self.assertEqual(conn.post(b"").status, 204)
        self.assertEqual(self.attempt(GOOD, PASSWORD).status, 200)
        self.assert429(self.attempt(ATTACKER))

    def test_success_clears_the_device_count(self) -> None:
        self.attempt(GOOD)
        self.attempt(GOOD)
        self.assertEqual(self.attempt(GOOD, PASSWORD).status, 200)
        self.assertEqual(self.attempt(GOOD).status, 401)  # counting starts again
        self.assertEqual(self.blocked_events(), [])


class BrokenThrottle:
    def blocked(self, source: str, claimed: object) -> Deferred[float | None]:
        return fail(ConnectionError("redis down"))

    def failed(self, source: str, claimed: object) -> Deferred[list[Block]]:
        return fail(ConnectionError("redis down"))

    def succeeded(self, source: str, claimed: object) -> Deferred[None]:
        return fail(ConnectionError("redis down"))


class BrokenThrottleTests(SynchronousTestCase):
    def test_authentication_still_decides(self) -> None:
        acs = MemoryAcs(throttle=BrokenThrottle())  # type: ignore[arg-type]
        acs.add_device(DEVICE_ID, USER, PASSWORD)
        self.assertEqual(digest_post(acs.connect(), cpe.inform(), USER, "nope").status, 401)
        self.assertEqual(digest_post(acs.connect(), cpe.inform(), USER, PASSWORD).status, 200)
        # Counting the failure and clearing the count: both logged, neither decisive.
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 2)


class LimitsBase(SynchronousTestCase):
    site_options: dict[str, Any] = {}
    max_body_bytes = 262_144

    def setUp(self) -> None:
        self.acs = MemoryAcs(site_options=self.site_options, max_body_bytes=self.max_body_bytes)
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)

    def responses(self, data: bytes) -> list[Response]:
        return parse_responses(data)

    def assertRefused(self, conn: Connection, data: bytes, status: int) -> None:
        (response,) = self.responses(data)
        self.assertEqual(response.status, status, data)
        self.assertEqual(response.header("connection"), "close")
        self.assertTrue(conn.closing)
        self.assertEqual(self.acs.bus.events, [])
        self.assertFalse(conn.protocol._read.armed)


class RequestsPerConnectionTests(LimitsBase):
    site_options = {"max_requests_per_connection": 3}

    def test_connection_closed_after_max_requests(self) -> None:
        conn = self.acs.connect()
        inform = digest_post(conn, cpe.inform(), USER, PASSWORD)  # requests 1 and 2
        self.assertEqual(inform.status, 200)
        self.assertIsNone(inform.header("connection"))
        self.assertFalse(conn.closing)
        done = conn.post(b"")
        self.assertEqual(done.status, 204)
        self.assertEqual(done.header("connection"), "close")
        self.assertTrue(conn.closing)


class HeadLimitTests(LimitsBase):
    site_options = {"max_request_line": 100, "max_header_bytes": 1024, "max_headers": 10}

    def test_long_request_line_is_414(self) -> None:
        conn = self.acs.connect()
        self.assertRefused(conn, conn.send(head("/" + "a" * 200)), 414)

    def test_request_line_without_end_is_414(self) -> None:
        conn = self.acs.connect()
        self.assertRefused(conn, conn.send(b"POST /" + b"a" * 2000), 414)

    def test_headers_too_large_is_431(self) -> None:
        conn = self.acs.connect()
        headers = {f"X-Pad-{i}": "v" * 200 for i in range(6)}
        self.assertRefused(conn, conn.send(head(headers=headers)), 431)

    def test_one_endless_header_is_431(self) -> None:
        conn = self.acs.connect()
        self.assertRefused(conn, conn.send(head()[:-2] + b"X-Long: " + b"v" * 2000), 431)

    def test_too_many_headers_is_431(self) -> None:
        conn = self.acs.connect()
        headers = {f"X-{i}": "1" for i in range(11)}
        self.assertRefused(conn, conn.send(head(headers=headers)), 431)

    def test_malformed_header_is_400_and_closed(self) -> None:
        conn = self.acs.connect()
        self.assertRefused(conn, conn.send(b"POST / HTTP/1.1\r\nno colon here\r\n\r\n"), 400)

    def test_data_after_refusal_ignored(self) -> None:
        conn = self.acs.connect()
        conn.send(head("/" + "a" * 200))
        self.assertEqual(conn.send(head() + b"\r\n"), b"")

    def test_within_limits_works(self) -> None:
        response = digest_post(self.acs.connect(), cpe.inform(), USER, PASSWORD)
        self.assertEqual(response.status, 200)


class ReadDeadlineTests(LimitsBase):
    # Twisted's own idle timer (10 s here) restarts on every byte; the deadline does not.
    site_options = {"timeout": 10, "read_timeout": 30}

    def trickle(self, conn: Connection, data: bytes, seconds: int) -> None:
        for i in range(seconds):
            conn.send(data[i : i + 1])
            self.acs.clock.advance(1)

    def test_slowloris_headers_cut_at_read_timeout(self) -> None:
        conn = self.acs.connect(peer=ATTACKER)
        data = head(headers={"X-Slow": "z" * 100})
        with capturedLogs() as events:
            self.trickle(conn, data, 29)
            self.assertFalse(conn.closing)
            self.trickle(conn, data[29:], 1)
        self.assertTrue(conn.closing)
        self.assertTrue(conn.transport.disconnected)  # aborted, not a polite close
        (event,) = [e for e in events if "read_timeout" in e]
        self.assertEqual((event["peer"], event["read_timeout"]), (ATTACKER, 30))

    def test_slow_body_cut_at_read_timeout(self) -> None:
        conn = self.acs.connect()
        conn.send(head(headers={"Content-Length": "1000"}))
        self.trickle(conn, b"x" * 1000, 29)
        self.assertFalse(conn.closing)
        self.trickle(conn, b"x" * 1000, 1)
        self.assertTrue(conn.transport.disconnected)
        self.assertEqual(conn.send(b"x" * 1000), b"")  # nothing reaches the resource
        self.assertEqual(self.acs.bus.events, [])

    def test_deadline_per_request_on_a_kept_alive_connection(self) -> None:
        conn = self.acs.connect()
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        self.acs.clock.advance(9)
        self.assertEqual(conn.post(b"").status, 204)
        self.acs.clock.advance(9)  # idle between requests: no deadline is running
        self.assertFalse(conn.closing)
        self.assertFalse(conn.protocol._read.armed)
        # A new request starts a new deadline.
        conn.send(b"POST / HTTP/1.1\r\n")
        self.assertTrue(conn.protocol._read.armed)

    def test_idle_connection_closed_by_idle_timeout(self) -> None:
        conn = self.acs.connect()
        self.acs.clock.advance(10)
        self.assertTrue(conn.closing)

    def test_lost_connection_cancels_deadline(self) -> None:
        conn = self.acs.connect()
        conn.send(b"POST / HT")
        channel = conn.protocol
        self.assertTrue(channel._read.armed)
        conn.close()
        self.assertFalse(channel._read.armed)
        # No timer is left to keep the channel alive until it would have come.
        deadlines = (channel._read, channel._idle)
        left = [
            c
            for c in self.acs.clock.getDelayedCalls()
            if getattr(c.func, "__self__", None) in deadlines
        ]
        self.assertEqual(left, [])


class IdleTimeTests(LimitsBase):
    # A connection idles 10 s between requests; one carrying a session, 30 s.
    site_options = {"timeout": 30, "idle_timeout": 10}

    def test_the_idle_time_shrinks_back_when_the_session_ends(self) -> None:
        conn = self.acs.connect()
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        self.acs.clock.advance(15)  # within the session's idle time, past the connection's
        self.assertFalse(conn.closing)
        self.assertEqual(conn.post(b"").status, 204)  # the session ends
        self.acs.clock.advance(9)
        self.assertFalse(conn.closing)
        self.acs.clock.advance(1)  # the connection's own idle time again (10 s)
        self.assertTrue(conn.closing)


class BodyLimitTests(LimitsBase):
    max_body_bytes = 1500

    def test_oversized_content_length_refused_before_the_body(self) -> None:
        conn = self.acs.connect()
        data = conn.send(
            head(headers={"Content-Length": "5000", "Expect": "100-continue"}) + b"x" * 100
        )
        self.assertNotIn(b"100 Continue", data)
        self.assertRefused(conn, data, 413)
        self.assertEqual(conn.send(b"x" * 4900), b"")

    def test_oversized_chunked_body_aborted(self) -> None:
        conn = self.acs.connect()
        first = conn.send(head(headers={"Transfer-Encoding": "chunked"}) + b"400\r\n" + b"x" * 1024)
        self.assertEqual(first, b"")
        self.assertFalse(conn.closing)
        data = conn.send(b"\r\n400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n")
        self.assertRefused(conn, data, 413)
        content = conn.protocol.requests[0].content
        content.seek(0)
        self.assertLessEqual(len(content.read()), 1500)

    def test_chunked_body_within_limit_reaches_the_resource(self) -> None:
        conn = self.acs.connect()
        body = b"<broken"
        data = conn.send(
            head(headers={"Transfer-Encoding": "chunked", "Authorization": 'Digest username="x"'})
            + b"%x\r\n" % len(body)
            + body
            + b"\r\n0\r\n\r\n"
        )
        (response,) = self.responses(data)
        self.assertEqual(response.status, 400)  # the resource read and parsed it
        self.assertTrue(response.body.strip())
        self.assertFalse(conn.closing)


class LimitValidationTests(SynchronousTestCase):
    def test_bad_limits_refused(self) -> None:
        acs = MemoryAcs()
        from cwmpgw.acs.resource import AcsSite

        with self.assertRaises(ValueError):
            AcsSite(acs.resource, reactor=acs.clock, max_headers=0)
        with self.assertRaises(ValueError):
            AcsSite(acs.resource, reactor=acs.clock, read_timeout=0)


class ConnectionStartTests(SynchronousTestCase):
    """The start of a connection is bounded too: per source, and until its first byte."""

    def setUp(self) -> None:
        self.acs = MemoryAcs()
        self.acs.add_device("9CA2F4-EC220_G5_V3-22275K2000315", "u", "p")

    def test_silent_connection_is_closed_at_first_byte_timeout(self) -> None:
        silent = self.acs.connect()
        talking = self.acs.connect()
        talking.post(b"")  # a request began: only read_timeout applies to it now
        self.acs.clock.advance(9.9)
        self.assertFalse(silent.transport.disconnecting)
        self.acs.clock.advance(0.2)
        self.assertTrue(silent.transport.disconnecting)
        self.assertFalse(talking.transport.disconnecting)

    def test_connections_per_source_address(self) -> None:
        from twisted.internet.address import IPv4Address

        site = self.acs.site
        site.max_connections_per_source = 2
        first, second = self.acs.connect(peer="198.51.100.1"), self.acs.connect(peer="198.51.100.1")
        assert_refused(self, site, IPv4Address("TCP", "198.51.100.1", 1))
        self.assertIsInstance(site.buildProtocol(IPv4Address("TCP", "198.51.100.2", 1)), AcsChannel)
        first.protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertIsInstance(site.buildProtocol(IPv4Address("TCP", "198.51.100.1", 1)), AcsChannel)
        del second
