"""cwmpgw.timeouts.FixedTimeouts: each timeout comes at its own deadline, on one reactor
timer at a time."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.timeouts import FixedTimeouts


class FixedTimeoutsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[tuple[str, float]] = []
        self.timeouts: FixedTimeouts[str] = FixedTimeouts(
            self.clock, 10, lambda key: self.fired.append((key, self.clock.seconds()))
        )

    def test_each_at_its_own_deadline_on_one_timer(self) -> None:
        self.timeouts.start("a")
        self.clock.advance(3)
        self.timeouts.start("b")
        self.clock.advance(3)
        self.timeouts.start("c")
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
        self.timeouts.start("a")
        self.clock.advance(5)
        self.timeouts.start("b")
        self.assertTrue(self.timeouts.cancel("a"))
        self.clock.advance(5)  # the timer comes for a, for nothing, and waits for b
        self.assertEqual(self.fired, [])
        self.clock.advance(5)
        self.assertEqual(self.fired, [("b", 15)])

    def test_cancel_says_whether_it_was_still_waiting(self) -> None:
        self.timeouts.start("a")
        self.assertTrue(self.timeouts.cancel("a"))
        self.assertFalse(self.timeouts.cancel("a"))
        self.timeouts.start("b")
        self.clock.advance(10)
        self.assertFalse(self.timeouts.cancel("b"))  # its timeout came: an owner's "timed out"
        self.assertEqual(self.fired, [("b", 10)])

    def test_one_that_comes_may_cancel_another(self) -> None:
        fired: list[str] = []

        def on_timeout(key: str) -> None:
            fired.append(key)
            timeouts.cancel("b")

        timeouts: FixedTimeouts[str] = FixedTimeouts(self.clock, 10, on_timeout)
        timeouts.start("a")
        timeouts.start("b")  # the same deadline: cancelled by the first's owner
        self.clock.advance(10)
        self.assertEqual(fired, ["a"])

    def test_disarm_leaves_no_timer_only_when_nothing_waits(self) -> None:
        self.timeouts.start("a")
        self.timeouts.disarm()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # a still waits
        self.timeouts.cancel("a")
        self.timeouts.disarm()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_forgets_everything(self) -> None:
        self.timeouts.start("a")
        self.timeouts.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.fired, [])

    def test_a_length_must_be_positive(self) -> None:
        with self.assertRaises(ValueError):
            FixedTimeouts(self.clock, 0, lambda key: None)
