"""The reads of a wake-up in one script (RedisConnreqState.wake_state), on a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from cwmpgw.connreq.state import WAKE_FIELDS, RedisConnreqState, WakeState
from cwmpgw.cwmp.messages import DeviceId, EventStruct, ParameterValue
from cwmpgw.store.interfaces import ConnReqCredential, InformRecord
from cwmpgw.store.secretbox import SecretBox
from tests.support.redis_server import connect, unique_prefix

DEVICE_ID = "9CA2F4-EC220_G5_V3-22275K2000315"
CR_URL = "http://192.0.2.1:7547/cr"
UDP_ADDRESS = "Device.ManagementServer.UDPConnectionRequestAddress"


def inform(*parameters: ParameterValue) -> InformRecord:
    return InformRecord(
        device_id=DEVICE_ID,
        device=DeviceId("TP-Link", "9CA2F4", "EC220_G5_V3", "22275K2000315"),
        ts=1000.0,
        source="192.0.2.1",
        cwmp_version="1.4",
        namespace="urn:dslforum-org:cwmp-1-2",
        events=(EventStruct("1 BOOT", ""),),
        parameters=(
            ParameterValue("Device.ManagementServer.ConnectionRequestURL", CR_URL),
            ParameterValue("Device.DeviceInfo.UpTime", "42", "xsd:unsignedInt"),
            *parameters,
        ),
    )


@pytest.mark.usefixtures("redis_for_class")
class WakeStateTests(TestCase):
    redis_server: Any

    async def setUp(self) -> None:  # type: ignore[override]
        from cwmpgw.store.redis import RedisConnReqCredentialStore, RedisDeviceStore

        self.redis = await connect(self, self.redis_server)
        self.prefix = unique_prefix()
        self.devices = RedisDeviceStore(self.redis, self.prefix)
        self.crcredentials = RedisConnReqCredentialStore(
            self.redis, self.prefix, SecretBox(b"k" * 32)
        )
        self.state = RedisConnreqState(self.redis, self.prefix)
        self.credential = ConnReqCredential("cr-user", "cr-password")

    async def wake_state(self, interval: float = 0.0) -> WakeState:
        return await self.state.wake_state(
            DEVICE_ID,
            credentials=self.crcredentials,
            interval=interval,
            udp=True,
            binding_by_reported_name=False,
        )

    async def claimed(self) -> bool:
        return bool(await self.redis.exists(f"{self.prefix}connreq:recent:{DEVICE_ID}"))

    async def test_the_device_has_every_field_a_wake_up_reads(self) -> None:
        """The script reads the fields a wake-up uses, not the whole hash: the same text as
        the full record has for them (what the memory stores' path gives the waker), and
        the wake-up parameters the device has."""
        await self.devices.record_inform(inform(ParameterValue(UDP_ADDRESS, "192.0.2.1:5060")))
        await self.devices.change_tags(DEVICE_ID, ["lab"], [])  # read by nobody here
        await self.crcredentials.set(DEVICE_ID, self.credential)
        state = await self.wake_state(interval=30.0)
        full = await self.devices.get_device(DEVICE_ID)
        assert full is not None
        self.assertEqual(
            state.device,
            {
                "oui": "9CA2F4",
                "product_class": "EC220_G5_V3",
                "serial_number": "22275K2000315",
                "manufacturer": "TP-Link",
                "connection_request_url": CR_URL,
                "last_source": "192.0.2.1",
                "parameters": {UDP_ADDRESS: {"value": "192.0.2.1:5060", "type": "xsd:string"}},
            },
        )
        self.assertEqual(
            {name: full[name] for name in WAKE_FIELDS},
            {name: state.device[name] for name in WAKE_FIELDS},
        )
        self.assertEqual(
            (state.credential, state.binding, state.claimed), (self.credential, None, True)
        )
        self.assertTrue(await self.claimed())

    async def test_a_device_with_no_hash_is_unknown(self) -> None:
        """No device hash, even with a credential and parameters left behind: unknown,
        and nothing claimed."""
        await self.crcredentials.set(DEVICE_ID, self.credential)
        await self.redis.hset(f"{self.prefix}device:{DEVICE_ID}:params", UDP_ADDRESS, '["a", "b"]')
        self.assertEqual(await self.wake_state(interval=30.0), WakeState(None, None, None, None))
        self.assertFalse(await self.claimed())

    async def test_fields_missing_from_the_hash_read_as_empty(self) -> None:
        """A hash written by hand or by an older version, with none of the fields: a known
        device, every field "" (as the full record gives them); with nothing to send to,
        nothing is claimed."""
        await self.redis.hset(f"{self.prefix}device:{DEVICE_ID}", "id", DEVICE_ID)
        await self.crcredentials.set(DEVICE_ID, self.credential)
        state = await self.wake_state(interval=30.0)
        self.assertEqual(state.device, {**dict.fromkeys(WAKE_FIELDS, ""), "parameters": {}})
        self.assertEqual((state.credential, state.claimed), (self.credential, None))
        self.assertFalse(await self.claimed())
