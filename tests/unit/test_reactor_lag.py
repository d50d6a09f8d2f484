"""The event loop's stall meter (cwmpgw/app/metrics.py ReactorLag), on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.app.metrics import ReactorLag
from cwmpgw.metrics import Metrics


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class ReactorLagTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.lag = ReactorLag(self.clock, self.metrics, interval=0.02, window=10)
        self.lag.startService()
        self.addCleanup(self.lag.stopService)

    def test_on_time_timers_are_no_lag(self) -> None:
        self.clock.pump([0.02] * 100)
        self.assertEqual(_sample(self.metrics, "cwmpgw_reactor_lag_seconds_count"), 100)
        self.assertEqual(_sample(self.metrics, "cwmpgw_reactor_lag_max_seconds"), 0.0)

    def test_a_stall_is_measured_and_kept_for_a_window(self) -> None:
        self.clock.pump([0.02] * 10)
        self.clock.advance(0.52)  # the loop was held half a second past the timer
        self.assertAlmostEqual(_sample(self.metrics, "cwmpgw_reactor_lag_max_seconds"), 0.5)
        self.assertEqual(_sample(self.metrics, "cwmpgw_reactor_lag_seconds_bucket", le="0.25"), 10)
        self.assertEqual(_sample(self.metrics, "cwmpgw_reactor_lag_seconds_bucket", le="0.5"), 11)
        self.clock.pump([0.02] * 600)  # 12 s: still within the previous window
        self.assertAlmostEqual(_sample(self.metrics, "cwmpgw_reactor_lag_max_seconds"), 0.5)
        self.clock.pump([0.02] * 500)  # 22 s: forgotten
        self.assertEqual(_sample(self.metrics, "cwmpgw_reactor_lag_max_seconds"), 0.0)

    def test_stopping_cancels_the_timer(self) -> None:
        self.lag.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
