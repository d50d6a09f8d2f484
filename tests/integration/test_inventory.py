"""The inventory: selectors parsed and checked; the Redis query (indexes kept by the
store's scripts) against the reference evaluation, page by page, while devices inform."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
from cwmpgw.fleet.inventory import MemoryInventory
from cwmpgw.fleet.selector import Selector, SelectorError, parse_query, parse_selector
from cwmpgw.store.interfaces import InformRecord
from cwmpgw.store.memory import MemoryDeviceStore
from tests.support.redis_server import connect, unique_prefix

NOW = 1_750_000_000.0
WINDOW = 600.0
OUIS = ("9CA2F4", "202BC1", "00259E")
CLASSES = ("EC220", "BM632w", "HG8245")
VERSIONS = ("1.0.4", "1.0.5", "2.0.0")
TAGS = ("pilot", "north", "south", "vip", "lab")


def make_record(i: int, rng: random.Random, ts: float | None = None) -> InformRecord:
    oui, pc = rng.choice(OUIS), rng.choice(CLASSES)
    serial = f"SN{i:05d}"
    device = DeviceId("Vendor", oui, pc, serial)
    source = rng.choice(("203.0.113.", "198.51.100.", "192.0.2.")) + str(rng.randrange(1, 255))
    if rng.random() < 0.1:
        source = f"2001:db8:{rng.randrange(4):x}::{i:x}"
    params = (
        ParameterValue("Device.DeviceInfo.SoftwareVersion", rng.choice(VERSIONS)),
        ParameterValue("Device.DeviceInfo.HardwareVersion", rng.choice(("v1", "v2"))),
        ParameterValue("Device.DeviceInfo.ProvisioningCode", rng.choice(("A", "B"))),
    )
    return InformRecord(
        device_id=f"{oui}-{pc}-{serial}",
        device=device,
        ts=ts if ts is not None else NOW - rng.choice((10, 100, 1000, 10_000, 1_000_000)),
        source=source,
        cwmp_version="1.0",
        namespace="urn:dslforum-org:cwmp-1-0",
        events=(EventStruct("2 PERIODIC", ""),),
        parameters=params,
    )


def random_selector(rng: random.Random) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if rng.random() < 0.4:
        sel["oui"] = rng.choice(OUIS) if rng.random() < 0.5 else rng.sample(OUIS, 2)
    if rng.random() < 0.3:
        sel["product_class"] = rng.choice(CLASSES)
    if rng.random() < 0.3:
        sel["software_version"] = rng.sample(VERSIONS, rng.randrange(1, 3))
    if rng.random() < 0.2:
        sel["hardware_version"] = "v2"
    if rng.random() < 0.4:
        sel["tags"] = rng.sample(TAGS, rng.randrange(1, 3))
    if rng.random() < 0.2:
        sel["not_tags"] = rng.sample(TAGS, 1)
    if rng.random() < 0.2:
        sel["source"] = rng.choice(("203.0.113.0/24", "198.51.100.0/25", "2001:db8:1::/48"))
    if rng.random() < 0.2:
        sel["online"] = rng.random() < 0.5
    if rng.random() < 0.15:
        sel["informed_within"] = 5000
    if rng.random() < 0.15:
        sel["not_informed_within"] = 500
    if rng.random() < 0.15:
        sel["parameters"] = {"Device.DeviceInfo.ProvisioningCode": "A"}
    if rng.random() < 0.1:
        sel["id_prefix"] = rng.choice(OUIS) + "-"
    return sel


class SelectorTests(SynchronousTestCase):
    def test_canonical_form(self) -> None:
        s = parse_selector(
            {"oui": "9CA2F4", "tags": ["b", "a", "a"], "source": "203.0.113.7/24", "online": True}
        )
        self.assertEqual(
            s.to_dict(),
            {"oui": ["9CA2F4"], "tags": ["a", "b"], "source": "203.0.113.0/24", "online": True},
        )
        self.assertEqual(parse_selector(s.to_dict()), s)
        self.assertTrue(parse_selector({}).empty)

    def test_errors_name_the_term(self) -> None:
        for bad, path in [
            ({"colour": "red"}, "selector.colour"),
            ({"tags": ["ok", "not ok"]}, "selector.tags[1]"),
            ({"source": "nowhere"}, "selector.source"),
            ({"informed_within": -1}, "selector.informed_within"),
            ({"parameters": {"X.Y": "1"}}, "selector.parameters.X.Y"),
            ({"oui": []}, "selector.oui"),
            ({"online": "maybe"}, "selector.online"),
        ]:
            with self.assertRaises(SelectorError) as e:
                parse_selector(bad)
            self.assertEqual(e.exception.path, path, bad)

    def test_query_string(self) -> None:
        s = parse_query(
            {"oui": "A,B", "tags": "x", "parameter": "Device.X.Y=1=2", "online": "false"}
        )
        self.assertEqual(s.oui, ("A", "B"))
        self.assertEqual(s.tags, ("x",))
        self.assertEqual(s.parameters, (("Device.X.Y", "1=2"),))
        self.assertIs(s.online, False)

    def test_window(self) -> None:
        s = Selector(informed_within=100, not_informed_within=10)
        w = s.window(1000.0, 60.0)
        self.assertEqual((w.low, w.high), (900.0, 990.0))
        self.assertEqual(Selector(online=True).window(1000, 60).low, 940)


class InventoryContract:
    """The Redis inventory must answer as the reference does, page after page."""

    inventory: Any
    devices: Any
    clock: Clock

    async def fill(self, count: int, seed: int = 7) -> list[InformRecord]:
        rng = random.Random(seed)
        records = [make_record(i, rng) for i in range(count)]
        for r in records:
            await self.devices.record_inform(r)
            tags = rng.sample(TAGS, rng.randrange(0, 3))
            if tags:
                await self.devices.change_tags(r.device_id, tags, [])
        return records

    async def all_pages(self, selector: Selector, limit: int) -> list[str]:
        ids: list[str] = []
        cursor = ""
        for _ in range(10_000):
            page, cursor = await self.inventory.query(selector, cursor=cursor, limit=limit)
            ids += [d["id"] for d in page]
            if not cursor:
                return ids
        raise AssertionError("the cursor never ended")

    async def test_random_selectors_match_the_reference(self) -> None:
        await self.fill(300)
        reference = MemoryInventory(self.reference, clock=self.clock, online_window=WINDOW)
        rng = random.Random(11)
        for _ in range(60):
            sel = parse_selector(random_selector(rng))
            expected, cursor = await reference.query(sel, limit=10_000)
            assert cursor == ""
            want = [d["id"] for d in expected]
            got = await self.all_pages(sel, rng.choice((1, 7, 50, 1000)))
            self.assertEqual(got, want, sel.to_dict())  # type: ignore[attr-defined]

    async def test_paging_survives_devices_informing(self) -> None:
        records = await self.fill(200)
        sel = parse_selector({})
        seen: list[str] = []
        cursor = ""
        rng = random.Random(3)
        while True:
            page, cursor = await self.inventory.query(sel, cursor=cursor, limit=13)
            seen += [d["id"] for d in page]
            for r in rng.sample(records, 20):  # they inform between pages
                self.clock.advance(1)
                await self.devices.record_inform(replace(r, ts=self.clock.seconds()))
            if not cursor:
                break
        self.assertEqual(seen, sorted(r.device_id for r in records))  # type: ignore[attr-defined]

    async def test_indexes_follow_changes_and_deletes(self) -> None:
        rng = random.Random(5)
        r = make_record(1, rng)
        await self.devices.record_inform(r)
        await self.devices.change_tags(r.device_id, ["pilot"], [])
        by_tag = parse_selector({"tags": ["pilot"]})
        by_oui = parse_selector({"oui": r.device.oui})
        self.assertEqual(len((await self.inventory.query(by_tag))[0]), 1)  # type: ignore[attr-defined]
        await self.devices.change_tags(r.device_id, [], ["pilot"])
        self.assertEqual((await self.inventory.query(by_tag))[0], [])  # type: ignore[attr-defined]
        await self.devices.change_tags(r.device_id, ["pilot"], [])
        self.assertEqual(await self.inventory.tag_counts(), {"pilot": 1})  # type: ignore[attr-defined]
        await self.devices.delete_device(r.device_id)
        self.assertEqual((await self.inventory.query(by_tag))[0], [])  # type: ignore[attr-defined]
        self.assertEqual((await self.inventory.query(by_oui))[0], [])  # type: ignore[attr-defined]
        self.assertEqual(await self.inventory.tag_counts(), {})  # type: ignore[attr-defined]


class MemoryInventoryTests(InventoryContract, TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.devices = self.reference = MemoryDeviceStore()
        self.inventory = MemoryInventory(self.devices, clock=self.clock, online_window=WINDOW)


class _Mirror:
    """Writes go to Redis and to the reference store alike."""

    def __init__(self, *stores: Any) -> None:
        self._stores = stores

    async def record_inform(self, record: InformRecord) -> None:
        for s in self._stores:
            await s.record_inform(record)

    async def change_tags(self, device_id: str, add: list[str], remove: list[str]) -> None:
        for s in self._stores:
            await s.change_tags(device_id, add, remove)

    async def delete_device(self, device_id: str) -> None:
        for s in self._stores:
            await s.delete_device(device_id)


@pytest.mark.usefixtures("redis_for_class")
class RedisInventoryTests(InventoryContract, TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        from cwmpgw.fleet.inventory import RedisInventory
        from cwmpgw.store.redis import RedisDeviceStore

        self.clock = Clock()
        self.clock.advance(NOW)
        redis = await connect(self, self.redis_server)
        prefix = unique_prefix()
        self.reference = MemoryDeviceStore()
        self.devices = _Mirror(RedisDeviceStore(redis, prefix), self.reference)
        # A small budget: pages come back short with a cursor, and must still add up.
        self.inventory = RedisInventory(
            redis, prefix, clock=self.clock, online_window=WINDOW, budget=40
        )
