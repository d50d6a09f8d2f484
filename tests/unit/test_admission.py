"""Admission control: new sessions shed early with a jittered Retry-After, priority first."""

from __future__ import annotations

import random

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.acs.admission import AdmissionControl
from cwmpgw.acs.resource import AcsChannel
from tests.support import cpe_envelopes as cpe
from tests.support.memhttp import MemoryAcs, assert_refused, digest_post

PERIODIC = ["2 PERIODIC"]
BOOTSTRAP = ["0 BOOTSTRAP", "1 BOOT"]


def control(clock: Clock, **kw: object) -> AdmissionControl:
    options = {"max_new_per_second": 4.0, "max_sessions": 100, "rng": random.Random(1)}
    options.update(kw)
    return AdmissionControl(clock, **options)  # type: ignore[arg-type]


class BucketTests(SynchronousTestCase):
    def test_periodic_sessions_leave_the_reserve_to_priority_ones(self) -> None:
        clock = Clock()
        ac = control(clock)  # 4 per second, a quarter (1) reserved
        admitted = [ac.admit(PERIODIC, 0) is None for _ in range(5)]
        self.assertEqual(admitted, [True, True, True, False, False])
        self.assertIsNone(ac.admit(BOOTSTRAP, 0))  # the reserve
        self.assertIsNotNone(ac.admit(["6 CONNECTION REQUEST"], 0))  # now empty for all
        self.assertEqual(ac.rejected, 3)

    def test_refills_with_time(self) -> None:
        clock = Clock()
        ac = control(clock)
        while ac.admit(PERIODIC, 0) is None:
            pass
        clock.advance(0.5)  # two tokens back
        self.assertIsNone(ac.admit(PERIODIC, 0))
        self.assertIsNone(ac.admit(PERIODIC, 0))
        self.assertIsNotNone(ac.admit(PERIODIC, 0))

    def test_retry_after_is_jittered_in_the_window(self) -> None:
        ac = control(Clock(), max_new_per_second=1.0, retry_after=(30.0, 120.0))
        ac.admit(BOOTSTRAP, 0)
        waits = {ac.admit(PERIODIC, 0) for _ in range(50)}
        self.assertGreater(len(waits), 10)
        self.assertTrue(all(w is not None and 30 <= w <= 120 for w in waits))

    def test_shed_cpes_are_scheduled_back_at_the_admitted_rate(self) -> None:
        clock = Clock()
        ac = control(clock, max_new_per_second=4.0, retry_after=(5.0, 60.0))
        while ac.admit(PERIODIC, 0) is None:
            pass
        waits = [ac.admit(PERIODIC, 0) for _ in range(12)]
        assert all(w is not None for w in waits)
        # One slot every 1/4 s (the admitted rate), from 5 s on, plus under a second of jitter.
        self.assertTrue(all(5 <= w <= 6 for w in waits[:3]), waits)  # type: ignore[operator]
        self.assertTrue(all(7 <= w <= 9 for w in waits[-3:]), waits)  # type: ignore[operator]
        self.assertLess(max(waits[:4]), min(waits[-4:]))  # type: ignore[type-var]
        # The window's maximum caps a backlog longer than the window.
        many = [ac.admit(PERIODIC, 0) for _ in range(400)]
        self.assertEqual(max(many), 60)  # type: ignore[type-var]

    def test_open_sessions_cap_with_priority_reserve(self) -> None:
        ac = control(Clock(), max_new_per_second=1000.0, max_sessions=8)
        self.assertIsNone(ac.admit(PERIODIC, 5))
        self.assertIsNotNone(ac.admit(PERIODIC, 6))  # 8 - 2 reserved
        self.assertIsNone(ac.admit(BOOTSTRAP, 7))
        self.assertIsNotNone(ac.admit(BOOTSTRAP, 8))


class EndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.acs = MemoryAcs(
            clock=self.clock, admission=control(self.clock, max_new_per_second=2.0)
        )
        self.acs.add_device("9CA2F4-EC220_G5_V3-22275K2000315", "u", "p")

    def test_excess_informs_get_503_before_any_credential_work(self) -> None:
        lookups: list[str] = []
        real_get = self.acs.credentials.get
        self.acs.credentials.get = lambda username: (lookups.append(username), real_get(username))[
            1
        ]  # type: ignore[method-assign]
        inform = cpe.inform(events=(("2 PERIODIC", ""),))
        first = digest_post(self.acs.connect(), inform, "u", "p")
        self.assertEqual(first.status, 200)
        shed = digest_post(self.acs.connect(), inform, "u", "p")
        self.assertEqual(shed.status, 503)
        self.assertTrue(30 <= int(shed.header("retry-after") or 0) <= 120)
        self.assertEqual(shed.header("connection"), "close")
        self.assertEqual(lookups, ["u"])  # the shed Inform never reached the store
        # A BOOTSTRAP still gets in.
        boot = digest_post(self.acs.connect(), cpe.inform(events=(("0 BOOTSTRAP", ""),)), "u", "p")
        self.assertEqual(boot.status, 200)

    def test_connection_cap_refuses_before_tls(self) -> None:
        self.acs.site.max_connections = 2
        first, second = self.acs.connect(), self.acs.connect()
        assert_refused(self, self.acs.site, IPv4Address("TCP", "192.0.2.9", 1))
        first.protocol.connectionLost(None)  # type: ignore[arg-type]
        self.assertIsInstance(
            self.acs.site.buildProtocol(IPv4Address("TCP", "192.0.2.9", 1)), AcsChannel
        )
        del second
