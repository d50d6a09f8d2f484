"""The registry of live sessions: a closed connection ends or releases the sessions on it,
found by the connection, not by walking every session."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.cwmp import soap
from cwmpgw.cwmp.messages import DeviceId
from cwmpgw.cwmp.session import CwmpSession, Outcome, SessionEnded
from cwmpgw.cwmp.versions import negotiate
from cwmpgw.sessions import LiveSession, SessionRegistry
from tests.support import cpe_envelopes as cpe


def live(name: str, channel: object, *, hold_requests: bool = False) -> LiveSession:
    envelope = soap.parse_envelope(cpe.inform(request_id="inf-1"))
    machine = CwmpSession(name, envelope, negotiate(envelope), hold_requests=hold_requests)
    device = DeviceId("Example", "00D09E", "Router", name)
    return LiveSession(machine, name, device, name, "203.0.113.1", 0.0, 30.0, channel=channel)


class ConnectionLostTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ended: list[tuple[str, str]] = []

        def on_end(session: LiveSession, ended: SessionEnded) -> None:
            self.ended.append((session.device_id, ended.outcome.value))

        self.registry = SessionRegistry(Clock(), on_end)

    def test_only_the_sessions_on_the_closed_connection_are_touched(self) -> None:
        first, second = object(), object()
        a, b = live("a", first), live("b", second)
        self.registry.add(a)
        self.registry.add(b)
        self.registry.connection_lost(first)
        self.assertIsNone(a.channel)  # waits for a new connection (TR-069 §3.4.2)
        self.assertIs(b.channel, second)
        self.assertEqual(self.ended, [])

    def test_a_session_that_moved_on_is_not_released_by_its_old_connection(self) -> None:
        old, new = object(), object()
        a = live("a", old)
        self.registry.add(a)
        self.registry.attach(a, new)
        self.registry.connection_lost(old)
        self.assertIs(a.channel, new)
        self.registry.connection_lost(new)
        self.assertIsNone(a.channel)

    def test_a_session_that_may_end_quietly_ends_with_its_connection(self) -> None:
        channel = object()
        a = live("a", channel, hold_requests=True)
        self.registry.add(a)
        a.machine.receive(None)
        a.machine.finish()  # 204 sent; the CPE may still send what it held back
        self.registry.connection_lost(channel)
        self.assertEqual(self.ended, [("a", "completed")])
        self.assertEqual(len(self.registry), 0)

    def test_an_ended_session_is_forgotten_by_its_connection(self) -> None:
        channel = object()
        a = live("a", channel)
        self.registry.add(a)
        self.registry.end(a, Outcome.TIMEOUT, "no POST")
        self.assertEqual(self.ended, [("a", "timeout")])
        self.assertIsNone(a.channel)
        self.registry.connection_lost(channel)  # nothing left on it
        self.assertEqual(self.ended, [("a", "timeout")])
