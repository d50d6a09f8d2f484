"""One contract for the device and credential stores, run on memory and on a real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
from cwmpgw.store.interfaces import ICredentialStore, IDeviceStore, InformRecord
from cwmpgw.store.memory import MemoryCredentialStore, MemoryDeviceStore
from tests.redis_server import unique_prefix

DEVICE = DeviceId("TP-Link", "9CA2F4", "EC220_G5_V3", "22275K2000315")
DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"


def record(ts: float = 1000.0, params: tuple[ParameterValue, ...] = (), **kw: Any) -> InformRecord:
    base = {
        "device_id": DEVICE_ID,
        "device": DEVICE,
        "ts": ts,
        "source": "192.0.2.1",
        "cwmp_version": "1.4",
        "namespace": "urn:dslforum-org:cwmp-1-2",
        "events": (EventStruct("1 BOOT", ""),),
        "parameters": params
        or (
            ParameterValue(
                "Device.ManagementServer.ConnectionRequestURL", "http://192.0.2.1:7547/cr"
            ),
            ParameterValue("Device.DeviceInfo.UpTime", "42", "xsd:unsignedInt"),
        ),
    }
    base.update(kw)
    return InformRecord(**base)  # type: ignore[arg-type]


class StoreContract:
    """Mixed into a trial TestCase whose setUp sets self.devices and self.credentials."""

    devices: IDeviceStore
    credentials: ICredentialStore

    async def test_first_inform_creates_device(self) -> None:
        self.assertTrue(await self.devices.record_inform(record(ts=1000.0)))  # type: ignore[attr-defined]
        self.assertFalse(await self.devices.record_inform(record(ts=2000.0, source="192.0.2.2")))  # type: ignore[attr-defined]
        dev = await self.devices.get_device(DEVICE_ID)
        assert dev is not None
        self.assertEqual(dev["first_seen"], "1000.0")  # type: ignore[attr-defined]
        self.assertEqual(dev["last_inform"], "2000.0")  # type: ignore[attr-defined]
        self.assertEqual(dev["last_source"], "192.0.2.2")  # type: ignore[attr-defined]
        self.assertEqual(dev["inform_count"], "2")  # type: ignore[attr-defined]
        self.assertEqual(dev["connection_request_url"], "http://192.0.2.1:7547/cr")  # type: ignore[attr-defined]
        self.assertEqual(json.loads(dev["last_events"]), [["1 BOOT", ""]])  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            dev["parameters"]["Device.DeviceInfo.UpTime"],
            {"value": "42", "type": "xsd:unsignedInt"},
        )

    async def test_parameters_accumulate_and_update(self) -> None:
        await self.devices.record_inform(record())
        await self.devices.record_inform(
            record(params=(ParameterValue("Device.DeviceInfo.UpTime", "43", "xsd:unsignedInt"),))
        )
        dev = await self.devices.get_device(DEVICE_ID)
        assert dev is not None
        self.assertEqual(dev["parameters"]["Device.DeviceInfo.UpTime"]["value"], "43")  # type: ignore[attr-defined]
        self.assertIn("Device.ManagementServer.ConnectionRequestURL", dev["parameters"])  # type: ignore[attr-defined]

    async def test_many_parameters(self) -> None:
        params = tuple(ParameterValue(f"Device.X.{i}", str(i)) for i in range(1500))
        await self.devices.record_inform(record(params=params))
        dev = await self.devices.get_device(DEVICE_ID)
        assert dev is not None
        self.assertEqual(len(dev["parameters"]), 1500)  # type: ignore[attr-defined]

    async def test_unknown_device(self) -> None:
        self.assertIsNone(await self.devices.get_device("nope"))  # type: ignore[attr-defined]

    async def test_transfer_recorded_once(self) -> None:
        self.assertTrue(await self.devices.record_transfer(DEVICE_ID, "tc:k", {"a": 1}))  # type: ignore[attr-defined]
        self.assertFalse(await self.devices.record_transfer(DEVICE_ID, "tc:k", {"a": 1}))  # type: ignore[attr-defined]
        self.assertTrue(await self.devices.record_transfer(DEVICE_ID, "tc:other", {"a": 2}))  # type: ignore[attr-defined]

    async def test_credentials(self) -> None:
        self.assertIsNone(await self.credentials.get("u1"))  # type: ignore[attr-defined]
        await self.credentials.set("dev-1", "u1", {"MD5": "aa", "SHA-256": "bb"})
        got = await self.credentials.get("u1")
        assert got is not None
        self.assertEqual((got.device_id, got.ha1), ("dev-1", {"MD5": "aa", "SHA-256": "bb"}))  # type: ignore[attr-defined]
        self.assertEqual(await self.credentials.username_for("dev-1"), "u1")  # type: ignore[attr-defined]
        self.assertNotIn("aa", repr(got))  # type: ignore[attr-defined]

    async def test_new_username_replaces_old(self) -> None:
        await self.credentials.set("dev-1", "u1", {"MD5": "aa"})
        await self.credentials.set("dev-1", "u2", {"MD5": "cc"})
        self.assertIsNone(await self.credentials.get("u1"))  # type: ignore[attr-defined]
        self.assertEqual(await self.credentials.username_for("dev-1"), "u2")  # type: ignore[attr-defined]
        got = await self.credentials.get("u2")
        assert got is not None
        self.assertEqual(got.ha1, {"MD5": "cc"})  # type: ignore[attr-defined]

    async def test_username_of_another_device_refused(self) -> None:
        await self.credentials.set("dev-1", "u1", {"MD5": "aa"})
        with self.assertRaises(ValueError):  # type: ignore[attr-defined]
            await self.credentials.set("dev-2", "u1", {"MD5": "bb"})
        got = await self.credentials.get("u1")
        assert got is not None
        self.assertEqual(got.device_id, "dev-1")  # type: ignore[attr-defined]
        self.assertIsNone(await self.credentials.username_for("dev-2"))  # type: ignore[attr-defined]

    async def test_delete(self) -> None:
        await self.credentials.set("dev-1", "u1", {"MD5": "aa"})
        self.assertTrue(await self.credentials.delete("dev-1"))  # type: ignore[attr-defined]
        self.assertFalse(await self.credentials.delete("dev-1"))  # type: ignore[attr-defined]
        self.assertIsNone(await self.credentials.get("u1"))  # type: ignore[attr-defined]


class MemoryStoreTests(StoreContract, TestCase):
    def setUp(self) -> None:
        self.devices = MemoryDeviceStore()
        self.credentials = MemoryCredentialStore()


@pytest.mark.usefixtures("redis_for_class")
class RedisStoreTests(StoreContract, TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        import txredisapi

        from cwmpgw.store.redis import RedisCredentialStore, RedisDeviceStore

        self.redis = await txredisapi.Connection(
            self.redis_server.host, self.redis_server.port, convertNumbers=False
        )
        self.addCleanup(self.redis.disconnect)
        prefix = unique_prefix()
        self.devices = RedisDeviceStore(self.redis, prefix)
        self.credentials = RedisCredentialStore(self.redis, prefix)
