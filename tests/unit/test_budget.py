"""The per-address budget of unauthenticated body bytes (cwmpgw/web/budget.py), on a Clock,
and in the ACS endpoint in memory; tests/integration/test_open_internet.py runs it over real TLS."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.web.budget import SourceBudget, source_key
from tests.support import cpe_envelopes as cpe
from tests.support.memhttp import MemoryAcs, digest_post

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
USER, PASSWORD = "budget-cpe", "budget-pw"
KiB = 1024


class SourceBudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.budget = SourceBudget(self.clock, rate=1000, burst=4000, max_sources=8)

    def test_burst_then_rate(self) -> None:
        for _ in range(4):
            self.assertIsNone(self.budget.charge("192.0.2.1", 1000))
        self.assertEqual(self.budget.charge("192.0.2.1", 1000), 1.0)  # one second away
        self.clock.advance(0.5)
        self.assertEqual(self.budget.charge("192.0.2.1", 1000), 0.5)  # a refusal costs nothing
        self.clock.advance(0.5)
        self.assertIsNone(self.budget.charge("192.0.2.1", 1000))
        self.clock.advance(100)
        for _ in range(4):  # refilled to the burst, never beyond
            self.assertIsNone(self.budget.charge("192.0.2.1", 1000))
        self.assertIsNotNone(self.budget.charge("192.0.2.1", 1))

    def test_addresses_have_their_own_buckets(self) -> None:
        self.assertIsNone(self.budget.charge("192.0.2.1", 4000))
        self.assertIsNotNone(self.budget.charge("192.0.2.1", 1))
        self.assertIsNone(self.budget.charge("192.0.2.2", 4000))

    def test_ipv6_is_charged_per_64(self) -> None:
        self.assertEqual(source_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(source_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(source_key("192.0.2.7"), "192.0.2.7")
        self.assertIsNone(self.budget.charge("2001:db8:1:2::1", 4000))
        self.assertIsNotNone(self.budget.charge("2001:db8:1:2:ffff::9", 1))  # same subscriber
        self.assertIsNone(self.budget.charge("2001:db8:1:3::1", 4000))

    def test_a_body_larger_than_the_burst_costs_the_burst(self) -> None:
        self.assertIsNone(self.budget.charge("192.0.2.1", 1_000_000))
        self.assertEqual(self.budget.charge("192.0.2.1", 1_000_000), 4.0)

    def test_memory_is_bounded(self) -> None:
        # Refilled buckets are dropped as new addresses come...
        for i in range(100):
            self.assertIsNone(self.budget.charge(f"10.0.0.{i}", 100))
            self.clock.advance(1)
        self.assertLessEqual(len(self.budget), 2)
        # ...and past the cap the least recently charged goes, busy or not.
        for i in range(100):
            self.budget.charge(f"10.0.1.{i}", 4000)
        self.assertLessEqual(len(self.budget), 8)
        self.assertIsNotNone(self.budget.charge("10.0.1.99", 1))  # the newest is still held

    def test_invalid_settings(self) -> None:
        with self.assertRaises(ValueError):
            SourceBudget(self.clock, rate=0)
        with self.assertRaises(ValueError):
            SourceBudget(self.clock, burst=0)


class EndpointBudgetTests(SynchronousTestCase):
    """The ACS charges unauthenticated bodies before parsing them, never a session's."""

    def setUp(self) -> None:
        self.clock = Clock()
        inform = len(cpe.inform())
        # Room for exactly two unauthenticated Informs, refilled in 10 s.
        self.budget = SourceBudget(self.clock, rate=inform / 5, burst=2 * inform)
        self.acs = MemoryAcs(clock=self.clock, budget=self.budget)
        self.acs.add_device(DEVICE_ID, USER, PASSWORD)

    def test_over_budget_is_503_unparsed_and_closes(self) -> None:
        conn = self.acs.connect(peer="198.51.100.7")
        self.assertEqual(digest_post(conn, cpe.inform(), USER, PASSWORD).status, 200)
        # The session's own POSTs are never charged.
        for _ in range(5):
            self.assertEqual(conn.post(cpe.get_rpc_methods()).status, 200)
        self.assertEqual(conn.post(b"").status, 204)
        other = self.acs.connect(peer="198.51.100.7")
        refused = other.post(cpe.inform())
        self.assertEqual(refused.status, 503)
        self.assertEqual(refused.header("retry-after"), "5")
        self.assertEqual(refused.header("connection"), "close")
        self.assertTrue(other.closing)
        # Nothing was parsed: no session, no event, and not even a challenge.
        self.assertIsNone(refused.header("www-authenticate"))
        # Another address is not affected; this one is served again once refilled.
        self.assertEqual(self.acs.connect(peer="198.51.100.8").post(cpe.inform()).status, 401)
        self.clock.advance(5)
        self.assertEqual(self.acs.connect(peer="198.51.100.7").post(cpe.inform()).status, 401)

    def test_an_empty_post_costs_nothing(self) -> None:
        conn = self.acs.connect(peer="198.51.100.9")
        for _ in range(5):
            self.assertEqual(conn.post(b"").status, 400)  # no session, but not over budget
