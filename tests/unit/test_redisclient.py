"""The lean txredisapi protocol, without sockets: what it writes for a command, what a
reply becomes, and that everything it does not take goes through txredisapi unchanged."""

from __future__ import annotations

from typing import Any

import txredisapi
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.redisclient import LeanRedisProtocol, encode_command

_ARGS = st.lists(
    st.one_of(
        st.text(),
        st.binary(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
    min_size=1,
    max_size=20,
)


def connected(**options: Any) -> tuple[LeanRedisProtocol, StringTransport]:
    protocol = LeanRedisProtocol(convertNumbers=False, **options)
    transport = StringTransport()
    protocol.transport = transport
    protocol.connected = 1
    return protocol, transport


def results(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


class EncodeTests(SynchronousTestCase):
    @given(_ARGS)
    def test_the_bytes_are_txredisapis(self, args: list[Any]) -> None:
        reference = txredisapi.HiredisProtocol(convertNumbers=False)
        self.assertEqual(encode_command(tuple(args)), reference._build_command(*args))

    def test_what_was_decoded_with_surrogateescape_goes_back_unchanged(self) -> None:
        raw = b"\xff\xfeok"
        text = raw.decode("utf-8", "surrogateescape")
        self.assertEqual(
            encode_command(("SET", "k", text)),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n" + raw + b"\r\n",
        )

    def test_a_lone_surrogate_is_refused_as_txredisapi_does(self) -> None:
        error = self.assertRaises(
            txredisapi.InvalidData, encode_command, ("SET", "k", 'secret="s3cr3t\ud800"')
        )
        self.assertNotIn("s3cr3t", str(error))  # errors are logged: never the value


class LeanPathTests(SynchronousTestCase):
    def test_a_command_is_written_and_its_reply_decoded(self) -> None:
        protocol, transport = connected()
        got = results(protocol.execute_command("HGETALL", "device:1"))
        self.assertEqual(transport.value(), encode_command(("HGETALL", "device:1")))
        self.assertEqual(got, [])
        protocol.dataReceived(b"*4\r\n$3\r\noui\r\n$6\r\n00D09E\r\n$5\r\ncount\r\n$2\r\n12\r\n")
        # Text, numbers included (convertNumbers is off), decoded by hiredis.
        self.assertEqual(got, [["oui", "00D09E", "count", "12"]])

    def test_replies_arrive_in_order_and_an_error_fails_its_own_command(self) -> None:
        protocol, _ = connected()
        first = results(protocol.execute_command("GET", "a"))
        second = results(protocol.execute_command("INCR", "b"))
        third = results(protocol.execute_command("GET", "c"))
        protocol.dataReceived(b"$1\r\nx\r\n-WRONGTYPE not an integer\r\n$-1\r\n")
        self.assertEqual(first, ["x"])
        self.assertTrue(second[0].check(txredisapi.ResponseError))
        self.assertIn("WRONGTYPE", second[0].getErrorMessage())
        self.assertEqual(third, [None])

    def test_bytes_that_are_not_utf8_come_back_as_text_that_round_trips(self) -> None:
        protocol, _ = connected()
        got = results(protocol.execute_command("GET", "k"))
        protocol.dataReceived(b"$3\r\n\xffab\r\n")
        self.assertEqual(got[0].encode("utf-8", "surrogateescape"), b"\xffab")

    def test_a_script_is_sent_once_then_by_its_hash(self) -> None:
        protocol, transport = connected()
        script = "return KEYS[1]"
        first = results(protocol.eval(script, ["k"], ["a"]))
        self.assertTrue(transport.value().startswith(b"*5\r\n$4\r\nEVAL\r\n"))
        protocol.dataReceived(b"$1\r\nk\r\n")
        self.assertEqual(first, ["k"])
        transport.clear()
        second = results(protocol.eval(script, ["k"], ["a"]))
        self.assertTrue(transport.value().startswith(b"*5\r\n$7\r\nEVALSHA\r\n$40\r\n"))
        protocol.dataReceived(b"$1\r\nk\r\n")
        self.assertEqual(second, ["k"])

    def test_a_script_redis_forgot_is_sent_again_in_full(self) -> None:
        protocol, transport = connected()
        script = "return 1"
        protocol.eval(script)
        protocol.dataReceived(b":1\r\n")
        transport.clear()
        got = results(protocol.eval(script))
        protocol.dataReceived(b"-NOSCRIPT No matching script.\r\n")
        self.assertIn(b"$4\r\nEVAL\r\n$8\r\nreturn 1\r\n", transport.value())
        protocol.dataReceived(b":1\r\n")
        self.assertEqual(got, [1])


class TxredisapiPathTests(SynchronousTestCase):
    """What the lean path does not take goes through txredisapi's own."""

    def test_a_post_processed_command_is_post_processed(self) -> None:
        protocol, _ = connected()
        got = results(protocol.exists("k"))  # txredisapi turns the 1 into True
        protocol.dataReceived(b":1\r\n")
        self.assertEqual(got, [True])

    def test_a_reply_timeout_still_applies(self) -> None:
        from twisted.internet.task import Clock

        protocol, transport = connected(replyTimeout=5)
        clock = Clock()
        protocol.callLater = clock.callLater
        got = results(protocol.execute_command("GET", "k"))
        clock.advance(5)
        self.assertTrue(got[0].check(txredisapi.TimeoutError))
        self.assertTrue(transport.disconnecting)

    def test_a_pool_that_wants_bytes_gets_bytes(self) -> None:
        protocol = LeanRedisProtocol(charset=None, convertNumbers=False)
        protocol.transport = StringTransport()
        protocol.connected = 1
        got = results(protocol.execute_command("GET", "k"))
        protocol.dataReceived(b"$2\r\nok\r\n")
        self.assertEqual(got, [b"ok"])

    def test_a_pipeline_is_buffered_until_it_is_executed(self) -> None:
        protocol, transport = connected()
        protocol.pipelining = True
        protocol.execute_command("GET", "k")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(protocol.pipelined_commands, [encode_command(("GET", "k"))])
