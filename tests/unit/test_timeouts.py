"""cwmpgw.web.timeouts.FixedTimeouts: each timeout comes at its own deadline, on one
reactor timer at a time."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.web.timeouts import FixedTimeouts


class FixedTimeoutsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.timeouts = FixedTimeouts(self.clock, 10)
        self.fired: list[tuple[str, float]] = []

    def start(self, name: str) -> int:
        return self.timeouts.start(lambda: self.fired.append((name, self.clock.seconds())))

    def test_each_at_its_own_deadline_on_one_timer(self) -> None:
        self.start("a")
        self.clock.advance(3)
        self.start("b")
        self.clock.advance(3)
        self.start("c")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4)
        self.assertEqual(self.fired, [("a", 10)])
        self.clock.advance(3)
        self.assertEqual(self.fired, [("a", 10), ("b", 13)])
        self.clock.advance(3)
        self.assertEqual(self.fired, [("a", 10), ("b", 13), ("c", 16)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.timeouts), 0)

    def test_cancelled_never_comes(self) -> None:
        a = self.start("a")
        self.clock.advance(5)
        self.start("b")
        self.timeouts.cancel(a)
        self.clock.advance(5)  # the timer comes for a, for nothing, and waits for b
        self.assertEqual(self.fired, [])
        self.clock.advance(5)
        self.assertEqual(self.fired, [("b", 15)])

    def test_cancel_is_idempotent(self) -> None:
        a = self.start("a")
        self.timeouts.cancel(a)
        self.timeouts.cancel(a)
        self.clock.advance(10)
        self.assertEqual((self.fired, self.clock.getDelayedCalls()), ([], []))

    def test_one_that_comes_may_cancel_another(self) -> None:
        tokens: list[int] = []
        self.timeouts.start(lambda: self.timeouts.cancel(tokens[0]))
        tokens.append(self.start("b"))  # the same deadline: cancelled by the first
        self.clock.advance(10)
        self.assertEqual(self.fired, [])

    def test_stop_forgets_everything(self) -> None:
        self.start("a")
        self.timeouts.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.fired, [])

    def test_a_length_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            FixedTimeouts(self.clock, 0)
