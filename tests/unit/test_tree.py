"""cwmpgw.app.tree: children start one after another, each once the one before is up, and
stop in reverse, each awaited; a failed start is reported, a stop during the start is not."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.app.tree import FunctionPart, OrderedTree, Part


class Slow(Part):
    """A part whose start and stop finish only when the test says so."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.starting: Deferred[None] = Deferred()
        self.stopping: Deferred[None] = Deferred()

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        await self.starting
        self.log.append(f"up {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        await self.stopping
        self.log.append(f"down {self.name}")


class OrderedTreeTests(SynchronousTestCase):
    def test_each_child_starts_once_the_one_before_is_up_and_stops_in_reverse(self) -> None:
        log: list[str] = []
        a, b = Slow("a", log), Slow("b", log)
        plain = Service()
        made: list[str] = []

        def make_b() -> Part:
            made.append("b")  # built only once a is up: it may use what a made
            return b

        tree = OrderedTree([lambda: a, lambda: None, make_b, lambda: plain])
        tree.startService()
        started = tree.whenStarted()
        self.assertEqual((log, made), (["start a"], []))
        a.starting.callback(None)
        self.assertEqual((log, made), (["start a", "up a", "start b"], ["b"]))
        self.assertNoResult(started)
        b.starting.callback(None)
        self.successResultOf(started)
        self.assertTrue(plain.running)

        log.clear()
        stopped = tree.stopService()
        self.assertFalse(plain.running)
        self.assertEqual(log, ["stop b"])  # a is not stopped before b is down
        b.stopping.callback(None)
        self.assertEqual(log, ["stop b", "down b", "stop a"])
        a.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(list(tree), [])

    def test_a_failed_start_is_reported_to_waiters_and_logged(self) -> None:
        async def boom() -> None:
            raise RuntimeError("no redis")

        later: list[str] = []
        tree = OrderedTree([lambda: FunctionPart("redis", boom), lambda: later.append("x")])
        waiting = tree.whenStarted()
        with capturedLogs() as events:
            tree.startService()
        self.failureResultOf(waiting, RuntimeError)
        self.assertEqual(later, [])  # nothing after the failed part was built
        self.assertEqual([e.get("log_format") for e in events], ["could not start"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_stop_during_the_start_is_not_a_failure(self) -> None:
        log: list[str] = []
        a = Slow("a", log)
        tree = OrderedTree([lambda: a])
        with capturedLogs() as events:
            tree.startService()
            stopped = tree.stopService()
            a.stopping.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(log, ["start a", "stop a", "down a"])
        self.assertEqual([e for e in events if e.get("log_failure")], [])
