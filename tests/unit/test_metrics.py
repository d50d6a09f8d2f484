"""The metrics' labelled children, made once and counted as prometheus_client counts them."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.metrics import Metrics


class LabelledChildrenTests(SynchronousTestCase):
    def test_one_child_per_label_set_and_every_count_rendered(self) -> None:
        metrics = Metrics()
        first = metrics.rpcs.labels("Inform", "cpe")
        self.assertIs(metrics.rpcs.labels("Inform", "cpe"), first)
        self.assertIsNot(metrics.rpcs.labels("Inform", "ok"), first)
        for _ in range(3):
            metrics.rpcs.labels("Inform", "cpe").inc()
        metrics.events.labels("inform").inc()
        text = metrics.render().decode()
        self.assertIn('cwmpgw_rpcs_total{method="Inform",result="cpe"} 3.0', text)
        self.assertIn('cwmpgw_rpcs_total{method="Inform",result="ok"} 0.0', text)
        self.assertIn('cwmpgw_events_published_total{type="inform"} 1.0', text)

    def test_each_gateway_keeps_its_own_counts(self) -> None:
        one, other = Metrics(), Metrics()
        one.sessions.labels("completed").inc()
        self.assertIn('cwmpgw_sessions_total{outcome="completed"} 1.0', one.render().decode())
        self.assertNotIn('outcome="completed"', other.render().decode())
