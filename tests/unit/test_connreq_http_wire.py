"""HttpConnectionRequester's own HTTP/1.1 client, byte by byte, on an in-memory reactor.

test_connreq_http.py runs it against Twisted's web server on loopback; here the answers
are written by hand, to cover what that server never sends: interim 1xx answers, folded
headers, bare LF line ends, chunked bodies, and malformed or oversized answers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.connreq.http import HttpAttempt, HttpConnectionRequester

URL = "http://192.0.2.10:7547/cr/k3y?x=1"
CHALLENGE = b'WWW-Authenticate: Digest realm="cpe", qop="auth", nonce="n0nce", opaque="op"\r\n'


class Wire(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.requester = HttpConnectionRequester(self.reactor, max_body=64)
        self.results: list[HttpAttempt] = []

    def start(self, url: str = URL) -> None:
        self.requester.request(url, "user", "pw").addCallback(self.results.append)

    def connect(self, index: int) -> tuple[Any, StringTransport]:
        """Accept the index-th connection the client asked for."""
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        # No timer of Twisted's per connection: the client's shared one (connect_timeout).
        self.assertEqual((host, port, timeout, bind), ("192.0.2.10", 7547, None, None))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def challenge(self, answer: bytes = b"HTTP/1.1 401 Unauthorized\r\n" + CHALLENGE) -> None:
        protocol, transport = self.connect(0)
        protocol.dataReceived(answer + b"Content-Length: 0\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))

    def result(self) -> HttpAttempt:
        self.assertEqual(len(self.results), 1)
        return self.results[0]

    def test_the_requests_on_the_wire(self) -> None:
        self.start()
        protocol, transport = self.connect(0)
        self.assertEqual(
            transport.value(),
            b"GET /cr/k3y?x=1 HTTP/1.1\r\nHost: 192.0.2.10:7547\r\n"
            b"User-Agent: cwmpgw\r\nConnection: close\r\n\r\n",
        )
        protocol.dataReceived(b"HTTP/1.1 401 Unauthorized\r\n" + CHALLENGE + b"\r\n")
        self.assertEqual(self.reactor.tcpClients[1:], [])  # the 401's body is not read yet
        protocol.connectionLost(Failure(ConnectionDone()))  # ends with the connection
        protocol, transport = self.connect(1)
        sent = transport.value()
        self.assertTrue(sent.startswith(b"GET /cr/k3y?x=1 HTTP/1.1\r\nHost: 192.0.2.10:7547\r\n"))
        self.assertIn(b'\r\nAuthorization: Digest username="user", realm="cpe", ', sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n"))
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.result(), HttpAttempt("ok", 204, "HTTP 204 (authenticated)"))
        self.assertTrue(transport.disconnecting)

    def test_interim_answers_folded_headers_and_bare_line_feeds(self) -> None:
        self.start()
        self.challenge(
            b"HTTP/1.1 100 Continue\r\nX-Any: 1\r\n\r\n"
            b'HTTP/1.0 401 \nWWW-Authenticate: Digest realm="cpe",\n\t qop="auth",\n'
            b' nonce="n0nce"\n'
        )
        protocol, transport = self.connect(1)
        self.assertIn(b'nonce="n0nce"', transport.value())
        protocol.dataReceived(b"HTTP/1.1 200 OK\n\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.result().outcome, "ok")

    def test_chunked_body_is_read_to_its_end(self) -> None:
        self.start()
        self.challenge()
        protocol, transport = self.connect(1)
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n"
        )
        self.assertEqual(self.results, [])
        protocol.dataReceived(b"0\r\nTrailer: x\r\n")
        self.assertEqual(self.results, [])
        protocol.dataReceived(b"\r\n")
        self.assertEqual(self.result().outcome, "ok")
        self.assertTrue(transport.disconnecting)

    def test_content_length_body_is_read_to_its_end(self) -> None:
        self.start()
        self.challenge()
        protocol, _ = self.connect(1)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        self.assertEqual(self.results, [])
        protocol.dataReceived(b"67890")
        self.assertEqual(self.result().outcome, "ok")

    def test_a_body_past_the_bound_is_cut(self) -> None:
        self.start()
        self.challenge()
        protocol, transport = self.connect(1)
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\nContent-Length: 1000\r\n\r\n")
        self.assertEqual(self.result().outcome, "ok")  # 204 has no body, whatever it says
        self.results.clear()
        self.start()
        protocol, transport = self.connect(2)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 65)  # read to the close
        self.assertEqual(
            self.result(), HttpAttempt("ok", 200, "HTTP 200 (no authentication asked)")
        )
        self.assertTrue(transport.disconnected)  # aborted, not closed politely

    def test_malformed_answers(self) -> None:
        for answer, detail in [
            (b"HTTP/2 200 OK\r\n\r\n", "malformed HTTP status line"),
            (b"ICY 200 OK\r\n\r\n", "malformed HTTP status line"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "malformed HTTP status line"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed HTTP header"),
            (b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "malformed HTTP header"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "invalid Content-Length",
            ),
            (b"HTTP/1.1 401 X\r\n" + b"X-Pad: " + b"a" * 70000, "HTTP response headers too long"),
        ]:
            self.results.clear()
            self.reactor.tcpClients.clear()
            self.start()
            protocol, transport = self.connect(0)
            protocol.dataReceived(answer)
            self.assertEqual(self.result(), HttpAttempt("error", None, detail), answer[:40])
            self.assertTrue(transport.disconnected)

    def test_connection_ends_before_the_headers(self) -> None:
        for received, detail in [
            (b"", "connection closed before a response"),
            (b"HTTP/1.1 200 OK\r\nContent-", "connection lost during the response"),
        ]:
            self.results.clear()
            self.reactor.tcpClients.clear()
            self.start()
            protocol, _ = self.connect(0)
            if received:
                protocol.dataReceived(received)
            protocol.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(self.result(), HttpAttempt("error", None, detail))

    def test_final_status_then_the_connection_ends(self) -> None:
        self.start()
        protocol, _ = self.connect(0)
        protocol.dataReceived(b"HTTP/1.1 503 Busy\r\nContent-Length: 100\r\n\r\npartial")
        self.assertEqual(self.results, [])
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.result().outcome, "busy")

    def test_connection_refused(self) -> None:
        self.start()
        _, _, factory, _, _ = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(self.result(), HttpAttempt("unreachable", None, "connection refused"))

    def test_timeout_while_connecting_stops_connecting(self) -> None:
        self.start()
        self.reactor.advance(1.9)
        self.assertEqual(self.results, [])
        self.reactor.advance(0.1)  # connect_timeout
        self.assertEqual(self.result(), HttpAttempt("unreachable", None, "connect timed out"))
        self.assertEqual(self.reactor.connectors[0].stoppedConnecting, True)
        # The shared total timer still comes at 5 s (for nothing), and is not armed again.
        self.reactor.advance(3.0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_connected_in_time_then_the_total_timeout(self) -> None:
        self.start()
        self.reactor.advance(1.5)
        _, transport = self.connect(0)  # connected: its connect timeout is off
        self.reactor.advance(1.0)
        self.assertEqual(self.results, [])
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(2.5)  # total_timeout (5 s) since the start
        self.assertEqual(
            self.result(), HttpAttempt("timeout", None, "no complete answer within 5 s")
        )
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_many_requests_share_one_timer_each(self) -> None:
        for _ in range(20):
            self.start()
        # One connect timer and one total timer for all twenty requests.
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)
        self.reactor.advance(5.0)
        self.assertEqual(len(self.results), 20)
        self.assertEqual({r.outcome for r in self.results}, {"unreachable"})
