"""cwmpgw.waiters: the one implementation of the whenX Deferred lists."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.waiters import Waiters


class WaitersTests(SynchronousTestCase):
    def test_fire_reaches_every_waiter_once(self) -> None:
        waiters: Waiters[str] = Waiters()
        a, b = waiters.wait(), waiters.wait()
        waiters.fire("up")
        self.assertEqual((self.successResultOf(a), self.successResultOf(b)), ("up", "up"))
        self.assertFalse(waiters)
        waiters.fire("again")  # nobody waits: nothing happens

    def test_a_cancelled_waiter_leaves_the_others_waiting(self) -> None:
        waiters: Waiters[None] = Waiters()
        gone, kept = waiters.wait(), waiters.wait()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual(len(waiters), 1)
        waiters.fire(None)
        self.assertIsNone(self.successResultOf(kept))

    def test_a_callback_that_waits_again_waits_for_the_next_time(self) -> None:
        waiters: Waiters[int] = Waiters()
        seen: list[int] = []
        again: list[Deferred[int]] = []

        def wait_again(value: int) -> None:
            seen.append(value)
            again.append(waiters.wait())

        waiters.wait().addCallback(wait_again)
        waiters.fire(1)
        self.assertEqual((seen, again[0].called), ([1], False))
        waiters.fire(2)
        self.assertEqual(self.successResultOf(again[0]), 2)

    def test_fail_errbacks_every_waiter(self) -> None:
        waiters: Waiters[None] = Waiters()
        d = waiters.wait()
        waiters.fail(RuntimeError("stopped"))
        self.assertEqual(str(self.failureResultOf(d, RuntimeError).value), "stopped")
