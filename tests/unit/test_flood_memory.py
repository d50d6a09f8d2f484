"""Memory of a connection flood given back once it drains (cwmpgw/web/trim.py)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cwmpgw.web.trim import FloodMemory, malloc_trim


class FloodMemoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.trims: list[float] = []
        self.now = 0.0
        self.memory = FloodMemory(lambda: self.trims.append(self.now), threshold=100)

    def walk(self, *counts: int) -> None:
        for count in counts:
            self.memory.note(count, self.now)
            self.now += 1

    def test_trims_once_a_flood_has_drained(self) -> None:
        self.walk(*range(0, 1000, 10))  # a flood of 1000 connections
        self.assertEqual(self.trims, [])
        self.walk(800, 500, 300)  # draining
        self.assertEqual(self.trims, [])
        self.walk(240)  # within a quarter of the rise: gone
        self.assertEqual(len(self.trims), 1)
        self.walk(230, 10, 0)  # no new flood since: no new trim
        self.assertEqual(len(self.trims), 1)

    def test_ordinary_traffic_never_trims(self) -> None:
        for _ in range(1000):
            self.walk(40, 90, 10, 60)
        self.assertEqual(self.trims, [])

    def test_at_most_once_per_interval(self) -> None:
        for _ in range(5):
            self.walk(500, 0)  # floods two seconds apart
        self.assertEqual(len(self.trims), 1)
        self.now += 30
        self.walk(500, 0)
        self.assertEqual(len(self.trims), 2)

    def test_malloc_trim_is_harmless(self) -> None:
        malloc_trim()  # glibc: returns free pages; elsewhere: nothing
