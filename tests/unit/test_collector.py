"""The young-generation threshold: raised while a gateway runs, put back by the last one."""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.collector import CollectorThreshold
from cwmpgw.config import parse_config


class CollectorThresholdTests(SynchronousTestCase):
    def setUp(self) -> None:
        before = gc.get_threshold()
        gc.set_threshold(700, 11, 12)
        self.addCleanup(gc.set_threshold, *before)

    def test_raised_while_running_and_put_back(self) -> None:
        service = CollectorThreshold(10_000)
        service.startService()
        self.assertEqual(gc.get_threshold(), (10_000, 11, 12))
        service.stopService()
        self.assertEqual(gc.get_threshold(), (700, 11, 12))

    def test_the_last_gateway_of_a_process_puts_back_what_the_first_found(self) -> None:
        first, second = CollectorThreshold(10_000), CollectorThreshold(20_000)
        first.startService()
        second.startService()
        self.assertEqual(gc.get_threshold(), (20_000, 11, 12))
        second.stopService()
        self.assertEqual(gc.get_threshold(), (10_000, 11, 12))  # the first still runs
        first.stopService()
        self.assertEqual(gc.get_threshold(), (700, 11, 12))

    def test_stopping_twice_changes_nothing_more(self) -> None:
        service, other = CollectorThreshold(5_000), CollectorThreshold(8_000)
        other.startService()
        service.startService()
        service.stopService()
        service.stopService()
        self.assertEqual(gc.get_threshold(), (8_000, 11, 12))
        other.stopService()
        self.assertEqual(gc.get_threshold(), (700, 11, 12))

    def test_configured_per_gateway(self) -> None:
        self.assertEqual(parse_config({}).gateway.gc_threshold, 10_000)
        self.assertEqual(parse_config({"gateway": {"gc_threshold": 0}}).gateway.gc_threshold, 0)
