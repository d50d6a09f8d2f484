"""wake(device): choosing a method, the guard, limits, retries, events — without sockets.

The HTTP and UDP senders are replaced by scripted ones (the real ones are tested over
loopback sockets in test_connreq_http.py and test_udp_connreq.py, and end to end in
test_connreq_integration.py).
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.bus.memory import MemoryEventBus
from cwmpgw.config import default_config
from cwmpgw.connreq.guard import GuardPolicy, Target
from cwmpgw.connreq.http import HttpAttempt
from cwmpgw.connreq.state import MemoryConnreqState
from cwmpgw.connreq.stun import Binding
from cwmpgw.connreq.waker import ConnectionRequestService
from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
from cwmpgw.store.interfaces import ConnReqCredential, InformRecord
from cwmpgw.store.memory import MemoryConnReqCredentialStore, MemoryDeviceStore

DEVICE = DeviceId("Acme", "00259E", "EG8145V5", "48575443A94196A5")
DEVICE_ID = "00259E-EG8145V5-48575443A94196A5"
CPE_IP = "203.0.113.7"


class ScriptedHttp:
    def __init__(self, *outcomes: str) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str, str, bool]] = []

    def request(
        self, url: str | Target, username: str, password: str, *, allow_basic: bool = False
    ) -> Deferred[HttpAttempt]:
        # The waker hands over the Target its guard parsed (the client then parses nothing).
        self.calls.append(
            (url if isinstance(url, str) else url.url, username, password, allow_basic)
        )
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        return succeed(HttpAttempt(outcome, 200 if outcome == "ok" else None, outcome))


class ScriptedUdp:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str, str]] = []

    def request(self, host: str, port: int, username: str, password: str) -> Deferred[int]:
        self.calls.append((host, port, username, password))
        return succeed(3)


class WakerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.devices = MemoryDeviceStore()
        self.credentials = MemoryConnReqCredentialStore()
        self.bus = MemoryEventBus()
        self.state = MemoryConnreqState(self.clock)
        self.http = ScriptedHttp()
        self.udp = ScriptedUdp()
        self.sessions: list[tuple[str, Deferred[bool]]] = []
        self.config = replace(default_config().connreq, rate=1000.0)
        self.policy = GuardPolicy()

    def session_started(self, device_id: str, timeout: float) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.sessions.append((device_id, d))
        return d

    def service(self, **config: Any) -> ConnectionRequestService:
        return ConnectionRequestService(
            clock=self.clock,
            config=replace(self.config, **config),
            devices=self.devices,
            credentials=self.credentials,
            http=self.http,
            udp=self.udp,
            events=self.bus,
            node="n1",
            policy=self.policy,
            claim_interval=self.state.claim_interval,
            stun_binding=self.state.binding,
            session_started=self.session_started,
        )

    def add_device(
        self,
        url: str = f"http://{CPE_IP}:7547/cr",
        source: str = CPE_IP,
        params: tuple[ParameterValue, ...] = (),
        device_id: str = DEVICE_ID,
    ) -> None:
        parameters = (ParameterValue("Device.ManagementServer.ConnectionRequestURL", url), *params)
        self.devices.record_inform(
            InformRecord(
                device_id,
                DEVICE,
                self.clock.seconds(),
                source,
                "1.4",
                "urn:dslforum-org:cwmp-1-2",
                (EventStruct("1 BOOT"),),
                parameters,
            )
        )
        self.credentials.set(device_id, ConnReqCredential("cr-user", "cr-secret"))

    def types(self) -> list[str]:
        return [e.type for e in self.bus.events]

    def test_http_ok_then_session(self) -> None:
        self.add_device()
        d = self.service().wake(DEVICE_ID)
        self.assertEqual(
            self.http.calls, [(f"http://{CPE_IP}:7547/cr", "cr-user", "cr-secret", False)]
        )
        self.assertNoResult(d)  # waiting for the session
        self.sessions[0][1].callback(True)
        result = self.successResultOf(d)
        self.assertEqual(
            (result.outcome, result.session_started, result.method), ("ok", True, "http")
        )
        # One event per wake-up by default: the result names the method, target, attempts.
        self.assertEqual(self.types(), ["connreq.succeeded"])
        data = self.bus.events[0].data
        self.assertEqual(
            (data["method"], data["target"], data["attempts"]),
            ("http", f"http://{CPE_IP}:7547/cr", 1),
        )
        self.assertNotIn("cr-secret", repr([e.to_dict() for e in self.bus.events]))

    def test_session_wait_zero_does_not_wait(self) -> None:
        self.add_device()
        result = self.successResultOf(self.service(session_wait=0.0).wake(DEVICE_ID))
        self.assertEqual((result.outcome, result.session_started), ("ok", False))
        self.assertEqual(self.sessions, [])

    def test_unknown_device_and_missing_credentials(self) -> None:
        self.assertEqual(self.successResultOf(self.service().wake("nope")).outcome, "refused")
        self.add_device()
        self.credentials.credentials.clear()
        result = self.successResultOf(self.service().wake(DEVICE_ID))
        self.assertEqual(result.outcome, "refused")
        self.assertIn("credentials", result.detail)
        self.assertEqual(self.types(), ["connreq.refused"])
        self.assertEqual(self.http.calls, [])

    def test_guard_refuses_other_address(self) -> None:
        self.add_device(url="http://198.51.100.99:7547/cr")
        result = self.successResultOf(self.service().wake(DEVICE_ID))
        self.assertEqual(result.outcome, "refused")
        self.assertEqual(self.http.calls, [])
        self.assertEqual(self.types(), ["connreq.refused"])
        self.assertEqual(self.bus.events[0].data["target"], "http://198.51.100.99:7547/cr")
        self.assertEqual(self.sessions[0][1].called, True)  # the session waiter was cancelled

    def test_guard_refuses_loopback_unless_allowed(self) -> None:
        self.add_device(url="http://127.0.0.1:7547/cr", source="127.0.0.1")
        self.assertEqual(self.successResultOf(self.service().wake(DEVICE_ID)).outcome, "refused")
        self.policy = GuardPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
        self.clock.advance(60)
        self.assertEqual(
            self.successResultOf(self.service(session_wait=0.0).wake(DEVICE_ID)).outcome, "ok"
        )

    def test_network_errors_retried_with_backoff(self) -> None:
        self.add_device()
        self.http.outcomes = ["unreachable", "timeout", "ok"]
        d = self.service(session_wait=0.0, retries=2, retry_delay=1.0).wake(DEVICE_ID)
        self.assertEqual(len(self.http.calls), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.http.calls), 2)
        self.clock.advance(1.9)
        self.assertEqual(len(self.http.calls), 2)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d).outcome, "ok")
        self.assertEqual(self.types(), ["connreq.succeeded"])
        self.assertEqual(self.bus.events[0].data["attempts"], 3)

    def test_sent_events_on_request(self) -> None:
        """``connreq.sent_events``: one ``connreq.sent`` before each attempt, as before."""
        self.add_device()
        self.http.outcomes = ["unreachable", "ok"]
        d = self.service(session_wait=0.0, retry_delay=1.0, sent_events=True).wake(DEVICE_ID)
        self.clock.advance(1.0)
        self.assertEqual(self.successResultOf(d).outcome, "ok")
        self.assertEqual(self.types(), ["connreq.sent"] * 2 + ["connreq.succeeded"])
        self.assertEqual([e.data.get("attempt") for e in self.bus.events], [1, 2, None])
        self.assertEqual(self.bus.events[-1].data["attempts"], 2)

    def test_auth_failure_is_not_retried(self) -> None:
        self.add_device()
        self.http.outcomes = ["auth_failed"]
        result = self.successResultOf(self.service().wake(DEVICE_ID))
        self.assertEqual(result.outcome, "auth_failed")
        self.assertEqual(len(self.http.calls), 1)
        self.assertEqual(self.types(), ["connreq.failed"])
        self.assertEqual(self.bus.events[0].data["attempts"], 1)

    def test_minimum_interval_per_device(self) -> None:
        self.add_device()
        service = self.service(session_wait=0.0, min_interval=10.0)
        self.assertEqual(self.successResultOf(service.wake(DEVICE_ID)).outcome, "ok")
        self.assertEqual(self.successResultOf(service.wake(DEVICE_ID)).outcome, "busy")
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(service.wake(DEVICE_ID)).outcome, "ok")
        self.assertEqual(len(self.http.calls), 2)

    def test_concurrent_wakes_of_one_device_share_one_request(self) -> None:
        self.add_device()
        service = self.service()
        first, second = service.wake(DEVICE_ID), service.wake(DEVICE_ID)
        self.assertEqual(len(self.http.calls), 1)
        self.sessions[0][1].callback(True)
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))

    def test_udp_preferred_behind_nat_and_needs_a_session(self) -> None:
        self.add_device(
            params=(ParameterValue("Device.ManagementServer.NATDetected", "true", "xsd:boolean"),)
        )
        self.state.record_binding(Binding(DEVICE_ID, CPE_IP, 40001, False, self.clock.seconds()))
        d = self.service(session_wait=30.0).wake(DEVICE_ID)
        self.assertEqual(self.udp.calls, [(CPE_IP, 40001, "cr-user", "cr-secret")])
        self.assertEqual(self.http.calls, [])
        self.sessions[0][1].callback(False)  # nothing came
        result = self.successResultOf(d)
        self.assertEqual((result.outcome, result.method), ("timeout", "udp"))
        self.assertEqual(self.types(), ["connreq.failed"])
        data = self.bus.events[0].data
        self.assertEqual((data["target"], data["attempts"]), (f"{CPE_IP}:40001", 1))

    def test_udp_address_parameter_used_when_http_fails(self) -> None:
        self.add_device(
            params=(
                ParameterValue(
                    "Device.ManagementServer.UDPConnectionRequestAddress", f"{CPE_IP}:5060"
                ),
            )
        )
        self.http.outcomes = ["auth_failed"]
        d = self.service(retries=0).wake(DEVICE_ID)
        self.clock.advance(0.01)  # past the rate limiter's spacing
        self.assertEqual(self.udp.calls[0][:2], (CPE_IP, 5060))
        self.sessions[0][1].callback(True)
        self.assertEqual(self.successResultOf(d).method, "udp")

    def test_udp_to_a_third_party_is_refused(self) -> None:
        self.add_device(
            url="",
            params=(
                ParameterValue(
                    "Device.ManagementServer.UDPConnectionRequestAddress", "198.51.100.50:5060"
                ),
            ),
        )
        result = self.successResultOf(self.service().wake(DEVICE_ID))
        self.assertEqual(result.outcome, "refused")
        self.assertEqual(self.udp.calls, [])

    def test_stun_binding_never_widens_the_guard(self) -> None:
        """A binding elsewhere than the device's last source (a spoofed one, or one made
        through another NAT) is refused like any other target, and HTTP goes on."""
        self.add_device(
            params=(ParameterValue("Device.ManagementServer.NATDetected", "true", "xsd:boolean"),)
        )
        self.state.record_binding(
            Binding(DEVICE_ID, "198.51.100.66", 40001, False, self.clock.seconds(), True)
        )
        d = self.service(prefer="udp").wake(DEVICE_ID)
        self.assertEqual(self.udp.calls, [])  # nothing went to the binding's address
        refused = [e for e in self.bus.events if e.type == "connreq.refused"]
        self.assertEqual(
            [(e.data["method"], e.data["reason"], e.data["target"]) for e in refused],
            [("udp", "address does not match the device's source address", "198.51.100.66:40001")],
        )
        self.assertEqual(self.http.calls[0][0], f"http://{CPE_IP}:7547/cr")
        self.sessions[0][1].callback(True)
        self.assertEqual(self.successResultOf(d).method, "http")
        # Inside the operator's networks the same binding is a target: the networks allow it.
        self.policy = GuardPolicy(allowed_networks=(ipaddress.ip_network("198.51.100.0/24"),))
        self.clock.advance(10)
        self.service(prefer="udp", session_wait=0).wake(DEVICE_ID)
        self.assertEqual(self.udp.calls, [("198.51.100.66", 40001, "cr-user", "cr-secret")])

    def test_binding_looked_up_by_device_id_when_integrity_is_required(self) -> None:
        """Authenticated bindings are stored under the device id; a STUNUsername the device
        reports (another device's id, say) does not pick someone else's binding."""
        other = "00259E-EG8145V5-OTHER"
        self.add_device(
            url="",
            params=(ParameterValue("Device.ManagementServer.STUNUsername", other),),
        )
        self.state.record_binding(Binding(other, CPE_IP, 40002, False, self.clock.seconds(), True))
        self.state.record_binding(
            Binding(DEVICE_ID, CPE_IP, 40001, False, self.clock.seconds(), True)
        )
        self.service(session_wait=0).wake(DEVICE_ID)
        self.assertEqual([c[:2] for c in self.udp.calls], [(CPE_IP, 40001)])
        self.clock.advance(10)
        self.service(session_wait=0, stun_require_integrity=False).wake(DEVICE_ID)  # a lab
        self.assertEqual([c[:2] for c in self.udp.calls], [(CPE_IP, 40001), (CPE_IP, 40002)])

    def test_rate_spreads_mass_wakeups(self) -> None:
        for i in range(3):
            self.add_device(device_id=f"dev-{i}")
        service = self.service(rate=1.0, session_wait=0.0)
        results = [service.wake(f"dev-{i}") for i in range(3)]
        self.assertEqual(len(self.http.calls), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.http.calls), 2)
        self.clock.advance(1)
        self.assertEqual(len(self.http.calls), 3)
        self.assertEqual([self.successResultOf(r).outcome for r in results], ["ok"] * 3)

    def test_per_destination_limit(self) -> None:
        pending: list[Deferred[HttpAttempt]] = []

        class Slow(ScriptedHttp):
            def request(
                self, url: str | Target, username: str, password: str, *, allow_basic: bool = False
            ) -> Deferred[HttpAttempt]:
                self.calls.append((str(url), username, password, allow_basic))
                d: Deferred[HttpAttempt] = Deferred()
                pending.append(d)
                return d

        self.http = Slow()
        for i in range(3):  # three devices behind one address (one NAT)
            self.add_device(device_id=f"dev-{i}")
        service = self.service(per_destination=2, session_wait=0.0)
        results = [service.wake(f"dev-{i}") for i in range(3)]
        self.clock.advance(0.01)  # past the rate limiter's spacing
        self.assertEqual(len(self.http.calls), 2)
        pending[0].callback(HttpAttempt("ok", 204, ""))
        self.assertEqual(len(self.http.calls), 3)
        for d in pending[1:]:
            d.callback(HttpAttempt("ok", 204, ""))
        self.assertEqual([self.successResultOf(r).outcome for r in results], ["ok"] * 3)
