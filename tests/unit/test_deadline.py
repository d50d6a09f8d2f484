"""cwmpgw.web.site.Deadline: comes due when armed for, whatever moved it, with as few
reactor timers as the moves allow."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.web.site import Deadline


class DeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[float] = []
        self.deadline = Deadline(self.clock, lambda: self.fired.append(self.clock.seconds()))

    def test_comes_due_when_armed_for(self) -> None:
        self.deadline.arm(10)
        self.clock.advance(9.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [10])
        self.assertFalse(self.deadline.armed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_moved_later_without_a_new_timer(self) -> None:
        self.deadline.arm(10)
        (call,) = self.clock.getDelayedCalls()
        self.clock.advance(5)
        self.deadline.arm(10)  # due at 15 now
        self.assertEqual(self.clock.getDelayedCalls(), [call])
        self.clock.advance(5)  # the timer comes at 10, early: it waits for the rest
        self.assertEqual(self.fired, [])
        self.clock.advance(4.9)
        self.assertEqual(self.fired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.fired, [15])

    def test_moved_sooner_with_a_new_timer(self) -> None:
        self.deadline.arm(30)
        (first,) = self.clock.getDelayedCalls()
        self.deadline.arm(10)
        self.assertFalse(first.active())
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [10])
        self.clock.advance(10)
        self.assertEqual(self.fired, [10])

    def test_disarmed_comes_to_nothing(self) -> None:
        self.deadline.arm(10)
        self.deadline.disarm()
        self.assertFalse(self.deadline.armed)
        self.clock.advance(20)
        self.assertEqual(self.fired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rearmed_after_disarm_keeps_one_timer(self) -> None:
        # A request read in full (disarmed), then the next one's first byte (armed again).
        for _ in range(5):
            self.deadline.arm(10)
            self.clock.advance(1)
            self.deadline.disarm()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.deadline.arm(10)
        self.clock.advance(10)
        self.assertEqual(self.fired, [15])

    def test_stopped_leaves_no_timer(self) -> None:
        self.deadline.arm(10)
        self.deadline.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.fired, [])

    def test_armed_again_from_its_own_callback(self) -> None:
        # How the ACS grants a slow upload more time (read_time_left).
        grants = [5.0]

        def timed_out() -> None:
            if grants:
                self.deadline.arm(grants.pop())
            else:
                self.fired.append(self.clock.seconds())

        deadline = self.deadline = Deadline(self.clock, timed_out)
        deadline.arm(10)
        self.clock.advance(10)
        self.assertTrue(deadline.armed)
        self.clock.advance(5)
        self.assertEqual(self.fired, [15])
