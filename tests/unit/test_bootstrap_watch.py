"""The bootstrap credential after a confirmed change, on the injected clock (no I/O)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.acs.bootstrap import BootstrapPolicy, BootstrapVerdict, BootstrapWatch
from cwmpgw.store.memory import MemoryCredentialStore


class BootstrapWatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryCredentialStore()
        self.store.set_pending("dev-1", "dev-1", {"MD5": "aa"})
        self.store.confirm_pending("dev-1", 100.0)

    def verdict(self, watch: BootstrapWatch, device_id: str = "dev-1") -> BootstrapVerdict:
        result = self.successResultOf(Deferred.fromCoroutine(watch.session(device_id)))
        assert isinstance(result, BootstrapVerdict)
        return result

    def test_refused_once_the_grace_has_passed(self) -> None:
        watch = BootstrapWatch(self.store, self.clock, BootstrapPolicy(2, True, 50.0))
        self.clock.advance(149.0)
        first = self.verdict(watch)
        self.assertEqual((first.refused, first.use and first.use.report), (False, False))
        self.clock.advance(1.0)
        second = self.verdict(watch)
        self.assertEqual((second.refused, second.use and second.use.report), (True, True))
        # A device with no confirmed change of its own is never concerned.
        self.assertEqual(self.verdict(watch, "dev-2"), BootstrapVerdict(None, False))

    def test_accepted_for_ever_by_default(self) -> None:
        watch = BootstrapWatch(self.store, self.clock, BootstrapPolicy())
        self.clock.advance(10 * 365 * 86400.0)
        verdicts = [self.verdict(watch) for _ in range(4)]
        self.assertEqual([v.refused for v in verdicts], [False] * 4)
        self.assertEqual([v.use.report for v in verdicts if v.use], [False, False, True, False])
