"""One contract for the device and credential stores, run on memory and on a real Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
from cwmpgw.store.interfaces import (
    DEVICE_FIELDS,
    ConnReqCredential,
    IConnReqCredentialStore,
    ICredentialStore,
    IDeviceStore,
    InformRecord,
)
from cwmpgw.store.memory import (
    MemoryConnReqCredentialStore,
    MemoryCredentialStore,
    MemoryDeviceStore,
)
from cwmpgw.store.secretbox import SecretBox
from tests.support.redis_server import connect, unique_prefix

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
    crcredentials: IConnReqCredentialStore

    async def test_update_parameters(self) -> None:
        await self.devices.record_inform(record())
        await self.devices.update_parameters(
            DEVICE_ID, [("Device.WiFi.SSID.1.SSID", "home", "xsd:string")]
        )
        dev = await self.devices.get_device(DEVICE_ID)
        assert dev is not None
        self.assertEqual(  # type: ignore[attr-defined]
            dev["parameters"]["Device.WiFi.SSID.1.SSID"], {"value": "home", "type": "xsd:string"}
        )

    async def test_list_devices_by_last_inform(self) -> None:
        for i, device_id in enumerate(["a", "b", "c"]):
            await self.devices.record_inform(record(ts=100.0 + i, device_id=device_id))
        page = await self.devices.list_devices(after=None, before=None, offset=0, count=2)
        self.assertEqual([d["id"] for d in page], ["a", "b"])  # type: ignore[attr-defined]
        self.assertNotIn("parameters", page[0])  # type: ignore[attr-defined]
        rest = await self.devices.list_devices(after=None, before=None, offset=2, count=2)
        self.assertEqual([d["id"] for d in rest], ["c"])  # type: ignore[attr-defined]
        window = await self.devices.list_devices(after=101.0, before=101.5, offset=0, count=10)
        self.assertEqual([d["id"] for d in window], ["b"])  # type: ignore[attr-defined]

    async def test_delete_device(self) -> None:
        await self.devices.record_inform(record())
        await self.devices.record_transfer(DEVICE_ID, "tc:k", {})
        self.assertTrue(await self.devices.delete_device(DEVICE_ID))  # type: ignore[attr-defined]
        self.assertIsNone(await self.devices.get_device(DEVICE_ID))  # type: ignore[attr-defined]
        self.assertFalse(await self.devices.delete_device(DEVICE_ID))  # type: ignore[attr-defined]
        page = await self.devices.list_devices(after=None, before=None, offset=0, count=10)
        self.assertEqual(page, [])  # type: ignore[attr-defined]
        self.assertTrue(await self.devices.record_transfer(DEVICE_ID, "tc:k", {}))  # type: ignore[attr-defined]

    async def test_pending_credential_lifecycle(self) -> None:
        await self.credentials.set("dev-1", "old-user", {"MD5": "aa"})
        await self.credentials.set_pending("dev-1", "new-user", {"MD5": "bb"})
        # Both work until the new one is first used.
        self.assertEqual((await self.credentials.get("old-user")).ha1, {"MD5": "aa"})  # type: ignore[union-attr,attr-defined]
        pending = await self.credentials.get_pending("new-user")
        self.assertEqual((pending.device_id, pending.ha1), ("dev-1", {"MD5": "bb"}))  # type: ignore[union-attr,attr-defined]
        self.assertIsNone(await self.credentials.get("new-user"))  # type: ignore[attr-defined]
        self.assertTrue(await self.credentials.promote("new-user"))  # type: ignore[attr-defined]
        self.assertIsNone(await self.credentials.get("old-user"))  # type: ignore[attr-defined]
        self.assertEqual((await self.credentials.get("new-user")).ha1, {"MD5": "bb"})  # type: ignore[union-attr,attr-defined]
        self.assertEqual(await self.credentials.username_for("dev-1"), "new-user")  # type: ignore[attr-defined]
        self.assertIsNone(await self.credentials.get_pending("new-user"))  # type: ignore[attr-defined]
        self.assertFalse(await self.credentials.promote("new-user"))  # type: ignore[attr-defined]

    async def test_pending_with_the_same_username_replaces_on_promotion(self) -> None:
        await self.credentials.set("dev-1", "dev-1", {"MD5": "aa"})
        await self.credentials.set_pending("dev-1", "dev-1", {"MD5": "bb"})
        self.assertEqual((await self.credentials.get("dev-1")).ha1, {"MD5": "aa"})  # type: ignore[union-attr,attr-defined]
        await self.credentials.promote("dev-1")
        self.assertEqual((await self.credentials.get("dev-1")).ha1, {"MD5": "bb"})  # type: ignore[union-attr,attr-defined]

    async def test_pending_replaced_and_dropped(self) -> None:
        await self.credentials.set_pending("dev-1", "try-1", {"MD5": "aa"})
        await self.credentials.set_pending("dev-1", "try-2", {"MD5": "bb"})
        self.assertIsNone(await self.credentials.get_pending("try-1"))  # type: ignore[attr-defined]
        self.assertTrue(await self.credentials.drop_pending("dev-1"))  # type: ignore[attr-defined]
        self.assertIsNone(await self.credentials.get_pending("try-2"))  # type: ignore[attr-defined]
        self.assertIsNone(await self.credentials.username_for("dev-1"))  # type: ignore[attr-defined]
        await self.credentials.set("dev-2", "taken", {"MD5": "cc"})
        with self.assertRaises(ValueError):  # type: ignore[attr-defined]
            await self.credentials.set_pending("dev-1", "taken", {"MD5": "dd"})

    async def test_bootstrap_use_counted_between_confirmation_and_promotion(self) -> None:
        t = self  # the mixin's assertions come from the TestCase it is mixed into
        # Nothing pending: nothing to confirm, nothing counted.
        t.assertFalse(await self.credentials.confirm_pending("dev-1", 100.0))  # type: ignore[attr-defined]
        t.assertIsNone(await self.credentials.bootstrap_used("dev-1", 2))  # type: ignore[attr-defined]
        await self.credentials.set_pending("dev-1", "dev-1", {"MD5": "aa"})
        t.assertIsNone(await self.credentials.bootstrap_used("dev-1", 2))  # type: ignore[attr-defined]
        t.assertTrue(await self.credentials.confirm_pending("dev-1", 100.0))  # type: ignore[attr-defined]
        uses = [await self.credentials.bootstrap_used("dev-1", 2) for _ in range(3)]
        t.assertEqual(  # type: ignore[attr-defined]
            [(u.sessions, u.confirmed_at, u.report) for u in uses if u is not None],
            [(1, 100.0, False), (2, 100.0, True), (3, 100.0, False)],
        )
        # Never reported with 0; promotion, a new pending credential or a drop end it.
        await self.credentials.set_pending("dev-2", "dev-2", {"MD5": "bb"})
        await self.credentials.confirm_pending("dev-2", 5.0)
        use = await self.credentials.bootstrap_used("dev-2", 0)
        t.assertEqual((use.sessions, use.report), (1, False))  # type: ignore[union-attr,attr-defined]
        await self.credentials.promote("dev-1")
        t.assertIsNone(await self.credentials.bootstrap_used("dev-1", 2))  # type: ignore[attr-defined]
        await self.credentials.set_pending("dev-2", "dev-2b", {"MD5": "cc"})
        t.assertIsNone(await self.credentials.bootstrap_used("dev-2", 2))  # type: ignore[attr-defined]
        await self.credentials.confirm_pending("dev-2", 6.0)
        await self.credentials.drop_pending("dev-2")
        t.assertIsNone(await self.credentials.bootstrap_used("dev-2", 2))  # type: ignore[attr-defined]

    async def test_parameter_names_known(self) -> None:
        t = self
        ms = "Device.ManagementServer."
        await self.devices.record_inform(record())  # reports ms + ConnectionRequestURL
        names = [ms + "ConnectionRequestURL", ms + "PeriodicInformTime", ms + "STUNEnable", ms]
        t.assertEqual(  # type: ignore[attr-defined]
            await self.devices.parameter_names(DEVICE_ID, names),
            {ms + "ConnectionRequestURL": "present"},
        )
        await self.devices.note_parameter_names(
            DEVICE_ID,
            {ms: "listed", ms + "STUNEnable": "writable", ms + "ConnectionRequestURL": "read-only"},
        )
        await self.devices.note_parameter_names(DEVICE_ID, {ms + "PeriodicInformTime": "absent"})
        t.assertEqual(  # type: ignore[attr-defined]
            await self.devices.parameter_names(DEVICE_ID, names),
            {
                ms + "ConnectionRequestURL": "read-only",
                ms + "PeriodicInformTime": "absent",
                ms + "STUNEnable": "writable",
                ms: "listed",
            },
        )
        t.assertEqual(await self.devices.parameter_names(DEVICE_ID, []), {})  # type: ignore[attr-defined]
        await self.devices.delete_device(DEVICE_ID)
        t.assertEqual(await self.devices.parameter_names(DEVICE_ID, names), {})  # type: ignore[attr-defined]

    async def test_connreq_pending_promoted_on_confirmation(self) -> None:
        await self.crcredentials.set("dev-1", ConnReqCredential("cr-old", "p-old"))
        await self.crcredentials.set_pending("dev-1", ConnReqCredential("cr-new", "p-new"))
        self.assertEqual((await self.crcredentials.get("dev-1")).username, "cr-old")  # type: ignore[union-attr,attr-defined]
        self.assertTrue(await self.crcredentials.promote("dev-1"))  # type: ignore[attr-defined]
        self.assertEqual(
            await self.crcredentials.get("dev-1"), ConnReqCredential("cr-new", "p-new")
        )  # type: ignore[attr-defined]
        self.assertFalse(await self.crcredentials.promote("dev-1"))  # type: ignore[attr-defined]

    async def test_stun_password_lifecycle(self) -> None:
        store = self.crcredentials
        self.assertEqual(await store.stun_passwords("dev-1"), ())  # type: ignore[attr-defined]
        await store.set_stun_pending("dev-1", "s-1")
        self.assertEqual(await store.stun_passwords("dev-1"), ("s-1",))  # type: ignore[attr-defined]
        self.assertTrue(await store.promote_stun("dev-1"))  # type: ignore[attr-defined]
        self.assertFalse(await store.promote_stun("dev-1"))  # type: ignore[attr-defined]
        await store.set_stun_pending("dev-1", "s-2")
        # Both are accepted while the change is on its way: current first.
        self.assertEqual(await store.stun_passwords("dev-1"), ("s-1", "s-2"))  # type: ignore[attr-defined]
        self.assertTrue(await store.drop_stun_pending("dev-1"))  # type: ignore[attr-defined]
        self.assertFalse(await store.drop_stun_pending("dev-1"))  # type: ignore[attr-defined]
        self.assertEqual(await store.stun_passwords("dev-1"), ("s-1",))  # type: ignore[attr-defined]
        await store.set_stun_pending("dev-1", "s-3")
        self.assertTrue(await store.promote_stun("dev-1"))  # type: ignore[attr-defined]
        self.assertEqual(await store.stun_passwords("dev-1"), ("s-3",))  # type: ignore[attr-defined]
        self.assertEqual(await store.stun_passwords("dev-2"), ())  # type: ignore[attr-defined]
        # The connection-request credential is independent of it.
        self.assertIsNone(await store.get("dev-1"))  # type: ignore[attr-defined]
        await store.set("dev-1", ConnReqCredential("cr-user", "cr-pass"))
        self.assertEqual(await store.stun_passwords("dev-1"), ("s-3",))  # type: ignore[attr-defined]
        await store.delete("dev-1")
        self.assertEqual(await store.stun_passwords("dev-1"), ())  # type: ignore[attr-defined]

    async def test_connreq_credentials(self) -> None:
        self.assertIsNone(await self.crcredentials.get("dev-1"))  # type: ignore[attr-defined]
        await self.crcredentials.set("dev-1", ConnReqCredential("cr-user", "cr-pass", True))
        got = await self.crcredentials.get("dev-1")
        self.assertEqual(got, ConnReqCredential("cr-user", "cr-pass", True))  # type: ignore[attr-defined]
        self.assertNotIn("cr-pass", repr(got))  # type: ignore[attr-defined]
        self.assertTrue(await self.crcredentials.delete("dev-1"))  # type: ignore[attr-defined]
        self.assertIsNone(await self.crcredentials.get("dev-1"))  # type: ignore[attr-defined]

    async def test_first_inform_creates_device(self) -> None:
        self.assertTrue(await self.devices.record_inform(record(ts=1000.0)))  # type: ignore[attr-defined]
        self.assertFalse(await self.devices.record_inform(record(ts=2000.0, source="192.0.2.2")))  # type: ignore[attr-defined]
        dev = await self.devices.get_device(DEVICE_ID)
        assert dev is not None
        self.assertEqual(dev["first_seen"], 1000.0)  # type: ignore[attr-defined]
        self.assertEqual(dev["last_inform"], 2000.0)  # type: ignore[attr-defined]
        self.assertEqual(dev["last_source"], "192.0.2.2")  # type: ignore[attr-defined]
        self.assertEqual(dev["inform_count"], 2)  # type: ignore[attr-defined]
        self.assertEqual(dev["connection_request_url"], "http://192.0.2.1:7547/cr")  # type: ignore[attr-defined]
        self.assertEqual(dev["last_events"], [{"code": "1 BOOT", "command_key": ""}])  # type: ignore[attr-defined]
        self.assertEqual(  # type: ignore[attr-defined]
            dev["parameters"]["Device.DeviceInfo.UpTime"],
            {"value": "42", "type": "xsd:unsignedInt"},
        )

    async def test_the_record_is_typed_as_documented(self) -> None:
        """Every field of DEVICE_FIELDS, as its JSON type, the same from both providers."""
        events = (EventStruct("0 BOOTSTRAP", ""), EventStruct("M Reboot", "maint-42"))
        await self.devices.record_inform(record(ts=1000.25, events=events))
        await self.devices.record_inform(record(ts=1748211869.5, events=events))
        expected = {
            "id": DEVICE_ID,
            "manufacturer": "TP-Link",
            "oui": "9CA2F4",
            "product_class": "EC220_G5_V3",
            "serial_number": "22275K2000315",
            "first_seen": 1000.25,
            "last_inform": 1748211869.5,
            "inform_count": 2,
            "last_source": "192.0.2.1",
            "cwmp_version": "1.4",
            "cwmp_namespace": "urn:dslforum-org:cwmp-1-2",
            "connection_request_url": "http://192.0.2.1:7547/cr",
            "software_version": "",
            "hardware_version": "",
            "tags": [],
            "last_events": [
                {"code": "0 BOOTSTRAP", "command_key": ""},
                {"code": "M Reboot", "command_key": "maint-42"},
            ],
        }
        self.assertEqual(set(expected), set(DEVICE_FIELDS))  # type: ignore[attr-defined]
        json_types = {"string": str, "number": float, "integer": int, "array": list}
        for named in (None, ()):
            dev = await self.devices.get_device(DEVICE_ID, named)
            assert dev is not None
            params = dev.pop("parameters")
            self.assertEqual(dev, expected)  # type: ignore[attr-defined]
            self.assertEqual(len(params), 0 if named == () else 2)  # type: ignore[attr-defined]
            for name, schema in DEVICE_FIELDS.items():
                self.assertIs(type(dev[name]), json_types[schema["type"]], name)  # type: ignore[attr-defined]
        (listed,) = await self.devices.list_devices(after=None, before=None, offset=0, count=5)
        self.assertEqual(listed, expected)  # type: ignore[attr-defined]

    async def test_tags_are_added_and_removed(self) -> None:
        self.assertIsNone(await self.devices.change_tags(DEVICE_ID, ["a"], []))  # type: ignore[attr-defined]
        await self.devices.record_inform(record())
        tags = await self.devices.change_tags(DEVICE_ID, ["pilot", "north", "pilot"], [])
        self.assertEqual(tags, ["north", "pilot"])  # type: ignore[attr-defined]
        tags = await self.devices.change_tags(DEVICE_ID, ["vip"], ["north", "absent"])
        self.assertEqual(tags, ["pilot", "vip"])  # type: ignore[attr-defined]
        dev = await self.devices.get_device(DEVICE_ID, ())
        assert dev is not None
        self.assertEqual(dev["tags"], ["pilot", "vip"])  # type: ignore[attr-defined]
        with self.assertRaises(ValueError):  # type: ignore[attr-defined]
            await self.devices.change_tags(DEVICE_ID, [f"t{i}" for i in range(70)], [])
        dev = await self.devices.get_device(DEVICE_ID, ())
        assert dev is not None
        self.assertEqual(dev["tags"], ["pilot", "vip"])  # type: ignore[attr-defined]

    async def test_versions_come_from_the_inform(self) -> None:
        sw = ParameterValue("Device.DeviceInfo.SoftwareVersion", "1.0.4", "xsd:string")
        hw = ParameterValue("Device.DeviceInfo.HardwareVersion", "v3", "xsd:string")
        await self.devices.record_inform(record(params=(sw, hw)))
        # An Inform without them keeps what the last one said.
        await self.devices.record_inform(record())
        dev = await self.devices.get_device(DEVICE_ID, ())
        assert dev is not None
        self.assertEqual(  # type: ignore[attr-defined]
            (dev["software_version"], dev["hardware_version"]), ("1.0.4", "v3")
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
        self.assertIsNone(await self.devices.get_device("nope", ["Device.X.1"]))  # type: ignore[attr-defined]

    async def test_named_parameters_only(self) -> None:
        params = tuple(ParameterValue(f"Device.X.{i}", str(i)) for i in range(1500))
        await self.devices.record_inform(record(params=params))
        dev = await self.devices.get_device(DEVICE_ID, ["Device.X.7", "Device.Y.missing"])
        assert dev is not None
        self.assertEqual(dev["parameters"], {"Device.X.7": {"value": "7", "type": "xsd:string"}})  # type: ignore[attr-defined]
        self.assertEqual(dev["id"], DEVICE_ID)  # type: ignore[attr-defined]
        bare = await self.devices.get_device(DEVICE_ID, ())
        assert bare is not None
        self.assertEqual((bare["parameters"], bare["oui"]), ({}, DEVICE.oui))  # type: ignore[attr-defined]

    async def test_transfer_recorded_once(self) -> None:
        self.assertTrue(await self.devices.record_transfer(DEVICE_ID, "tc:k", {"a": 1}))  # type: ignore[attr-defined]
        self.assertFalse(await self.devices.record_transfer(DEVICE_ID, "tc:k", {"a": 1}))  # type: ignore[attr-defined]
        self.assertTrue(await self.devices.record_transfer(DEVICE_ID, "tc:other", {"a": 2}))  # type: ignore[attr-defined]
        await self.devices.delete_device(DEVICE_ID)
        self.assertTrue(await self.devices.record_transfer(DEVICE_ID, "tc:k", {"a": 1}))  # type: ignore[attr-defined]

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
        self.crcredentials = MemoryConnReqCredentialStore()

    async def test_a_session_inform_is_left_to_the_engine_to_publish(self) -> None:
        from cwmpgw.bus.events import Event

        event = Event("inform", 1000.0, "n1", {})
        write = self.devices.record_session_inform
        self.assertEqual(await write(record(), None, None, event, 0), (True, None))
        self.assertEqual(await write(record(ts=1001.0), None, None, event, 1), (False, None))


@pytest.mark.usefixtures("redis_for_class")
class RedisStoreTests(StoreContract, TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        from cwmpgw.store.redis import (
            RedisConnReqCredentialStore,
            RedisCredentialStore,
            RedisDeviceStore,
        )

        self.redis = await connect(self, self.redis_server)
        prefix = unique_prefix()
        self.devices = RedisDeviceStore(self.redis, prefix)
        self.credentials = RedisCredentialStore(self.redis, prefix)
        self.prefix = prefix
        self.crcredentials = RedisConnReqCredentialStore(self.redis, prefix, SecretBox(b"k" * 32))

    async def test_inform_takes_the_session_lock_in_the_same_step(self) -> None:
        from cwmpgw.store.sessionlock import RedisSessionLock

        lock = RedisSessionLock(self.redis, self.prefix)
        self.assertTrue(self.devices.takes_session)
        await self.devices.record_inform(record(session_owner="n1:s1", session_ttl=60))
        self.assertTrue(await lock.owns(DEVICE_ID, "n1:s1"))
        ttl_ms = await self.redis.execute_command(
            "PTTL", self.prefix + "session-owner:" + DEVICE_ID
        )
        self.assertTrue(59_000 < int(ttl_ms) <= 60_000, ttl_ms)
        await self.devices.record_inform(record(ts=1001.0))  # no owner: the lock is left alone
        self.assertTrue(await lock.owns(DEVICE_ID, "n1:s1"))
        device = await self.devices.get_device(DEVICE_ID)
        self.assertEqual(device["inform_count"], 2)
        self.assertEqual(  # the parameters still come after the owner's arguments
            device["parameters"]["Device.ManagementServer.ConnectionRequestURL"]["value"],
            "http://192.0.2.1:7547/cr",
        )

    async def stream(self) -> list[tuple[str, str]]:
        entries = await self.redis.execute_command("XRANGE", self.prefix + "events", "-", "+")
        return [(fields[1], fields[3]) for _, fields in entries]

    async def test_inform_is_stored_with_the_device_write_once_per_inform(self) -> None:
        """The inform event goes with the device write. A CPE whose answer was lost repeats
        the Inform (RetryCount > 0, the same events): while the session it opened has not
        gone on (the task store's first read of the session), it is not announced again;
        anything else is: another Inform's events, no retry, a session that went on."""
        from cwmpgw.bus.events import Event, device_ref
        from cwmpgw.tasks.redis import RedisTaskService

        def inform(n: int) -> Event:
            return Event("inform", 1000.0 + n, "n1", {"n": n}, device_ref(DEVICE_ID))

        def informs() -> list[int]:
            return [json.loads(text)["data"]["n"] for kind, text in stored if kind == "inform"]

        boot = record(session_owner="n1:s1", session_ttl=60)
        write = self.devices.record_session_inform
        self.assertEqual(await write(boot, None, None, inform(1), 0), (True, True))
        self.assertEqual(await write(boot, None, None, inform(2), 1), (False, False))
        self.assertEqual(await write(boot, None, None, inform(3), 2), (False, False))
        self.assertEqual(await write(boot, None, None, inform(4), 0), (False, True))  # no retry
        other = record(events=(EventStruct("1 BOOT", ""), EventStruct("4 VALUE CHANGE", "")))
        self.assertEqual(await write(other, None, None, inform(5), 1), (False, True))
        tasks = RedisTaskService(self.redis, self.prefix, events=None, clock=None, node="n1")  # type: ignore[arg-type]
        self.assertIsNone(await tasks.next_for_device(DEVICE_ID, "n1:s1"))  # it went on
        self.assertEqual(await write(other, None, None, inform(6), 1), (False, True))
        stored = await self.stream()
        self.assertEqual(informs(), [1, 4, 5, 6])
        device = await self.devices.get_device(DEVICE_ID)
        self.assertEqual(device["inform_count"], 6)  # every one of them is recorded
        self.assertNotIn("pending_inform", device)  # the marker is not part of the record

    async def test_device_registered_is_stored_with_the_device_write(self) -> None:
        """Due once, on first contact: written by the script that creates the device, so a
        gateway dying between the two cannot lose it (the CPE's retry is not new)."""
        from cwmpgw.bus.events import Event, device_ref

        def registered(first_contact: bool) -> Event:
            data = {"first_contact": first_contact, "bootstrap": not first_contact}
            return Event("device.registered", 1000.0, "n1", data, device_ref(DEVICE_ID))

        self.assertTrue(self.devices.stores_events)
        first, again, bootstrap = registered(True), registered(True), registered(False)
        self.assertTrue(await self.devices.record_inform(record(), first, None))
        self.assertFalse(await self.devices.record_inform(record(ts=1001.0), again, None))
        self.assertFalse(await self.devices.record_inform(record(ts=1002.0), again, bootstrap))
        self.assertEqual(
            await self.stream(),
            [("device.registered", first.to_json()), ("device.registered", bootstrap.to_json())],
        )
        device = await self.devices.get_device(DEVICE_ID)
        self.assertEqual(int(device["inform_count"]), 3)
        self.assertEqual(  # the parameters still come after the events' arguments
            device["parameters"]["Device.DeviceInfo.UpTime"]["value"], "42"
        )

    async def test_completion_report_event_is_stored_with_the_first_report_only(self) -> None:
        from cwmpgw.bus.events import Event, device_ref

        def report() -> Event:
            return Event("transfer.complete", 1000.0, "n1", {"a": 1}, device_ref(DEVICE_ID))

        first = report()
        self.assertTrue(await self.devices.record_transfer(DEVICE_ID, "tc:k", {"a": 1}, first))
        self.assertFalse(await self.devices.record_transfer(DEVICE_ID, "tc:k", {"a": 1}, report()))
        self.assertEqual(await self.stream(), [("transfer.complete", first.to_json())])

    async def test_connreq_password_encrypted_at_rest(self) -> None:
        await self.crcredentials.set("dev-1", ConnReqCredential("cr-user", "cr-pass"))
        raw = await self.redis.hgetall(self.prefix + "crcred:dev-1")
        self.assertNotIn("cr-pass", json.dumps(raw))
        # A ciphertext moved to another device's record does not decrypt.
        await self.redis.hset(self.prefix + "crcred:dev-2", "password", raw["password"])
        from cwmpgw.store.secretbox import SecretBoxError

        with self.assertRaises(SecretBoxError):
            await self.crcredentials.get("dev-2")

    async def test_a_damaged_record_reads_with_zero_values(self) -> None:
        """A hash from an older version, or edited by hand, still reads in its types."""
        key = self.prefix + "device:" + DEVICE_ID
        await self.redis.execute_command(
            "HSET", key, "id", DEVICE_ID, "last_inform", "soon", "last_events", "{"
        )
        device = await self.devices.get_device(DEVICE_ID)
        self.assertEqual(
            {k: device[k] for k in ("last_inform", "first_seen", "inform_count", "last_events")},
            {"last_inform": 0.0, "first_seen": 0.0, "inform_count": 0, "last_events": []},
        )
        self.assertEqual((device["oui"], device["parameters"]), ("", {}))

    async def test_stun_password_encrypted_at_rest(self) -> None:
        await self.crcredentials.set("dev-1", ConnReqCredential("cr-user", "cr-pass"))
        await self.crcredentials.set_stun_pending("dev-1", "stun-secret")
        await self.crcredentials.promote_stun("dev-1")
        raw = await self.redis.hgetall(self.prefix + "crcred:dev-1")
        self.assertNotIn("stun-secret", json.dumps(raw))
        from cwmpgw.store.secretbox import SecretBoxError

        # Neither another device's record nor the CR password's field takes the ciphertext.
        await self.redis.hset(self.prefix + "crcred:dev-2", "stun_password", raw["stun_password"])
        with self.assertRaises(SecretBoxError):
            await self.crcredentials.stun_passwords("dev-2")
        await self.redis.hset(self.prefix + "crcred:dev-1", "password", raw["stun_password"])
        with self.assertRaises(SecretBoxError):
            await self.crcredentials.get("dev-1")
