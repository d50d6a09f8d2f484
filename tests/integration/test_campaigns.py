"""Firmware campaigns end to end: the real gateway (TLS, Redis, file server) and a fleet
of simulated CPEs that really download the image, reboot into it and report it.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from cwmpgw.files.campaigns import parse_spec
from cwmpgw.files.model import FileInfo
from cwmpgw.service import GatewayService
from cwmpgw.sim.device import Behaviour
from cwmpgw.sim.fleet import Fleet, credential_templates
from tests.support.fleetkit import FleetGatewayBase
from tests.support.nodes import free_port

CONNREQ = {
    "per_destination": 1000,
    "rate": 100000.0,
    "max_concurrent": 1000,
    "allowed_networks": ["127.0.0.0/8"],
    "min_interval": 0.0,
    "retries": 0,
    "session_wait": 10.0,
}
FAST = {"campaign_tick": 0.1}


def firmware(version: str | None, size: int = 65536) -> bytes:
    head = f"CWMPGW-SIM-FIRMWARE {version}\n".encode() if version else b"garbage\n"
    return head + os.urandom(size - len(head))


@pytest.mark.usefixtures("redis_for_class")
class CampaignTests(TestCase):
    redis_server: Any
    timeout = 300
    start_gateway = FleetGatewayBase.start_gateway
    start_fleet = FleetGatewayBase.start_fleet
    import_fleet = FleetGatewayBase.import_fleet
    events = FleetGatewayBase.events

    async def add_file(self, service: GatewayService, data: bytes, version: str) -> FileInfo:
        assert service.files is not None
        body = service.files.store.incoming()
        body.write(data)
        return await service.files.store.add(
            body, name="fw.bin", file_type="1 Firmware Upgrade Image", software_version=version
        )

    async def fleet_of(self, n: int, **behaviour: Any) -> Fleet:
        fleet = await self.start_fleet(
            devices=n,
            concurrency=100,
            credentials=credential_templates("{device_id}", "{serial}-campaign"),
            behaviour=Behaviour(reboot_delay=0.05, transfer_time=0.05, fetch=True, **behaviour),
        )
        await self.import_fleet(fleet)
        stats = await fleet.run_sessions(count=n)
        self.assertEqual(stats.completed, n)
        return fleet

    async def until(self, service: GatewayService, campaign_id: str, *statuses: str) -> Any:
        assert service.campaigns is not None
        for _ in range(1200):
            view = await service.campaigns.get(campaign_id)
            if view is not None and view["status"] in statuses:
                return view
            await deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"campaign still {view and view['status']}: {view}")

    def downloads_per_device(self) -> Counter[str]:
        return Counter(
            e["device"]["id"] for e in self.events("task.queued") if e["data"]["type"] == "Download"
        )

    async def test_a_thousand_devices_in_three_waves(self) -> None:
        service = await self.start_gateway(connreq=CONNREQ, files=FAST)
        fleet = await self.fleet_of(1000)
        info = await self.add_file(service, firmware("2.0"), "2.0")
        ids = [d.device_id for d in fleet.devices]
        assert service.campaigns is not None
        spec = parse_spec(
            {"file": info.id, "devices": ids, "waves": ["1%", "10%", "100%"], "max_in_flight": 200}
        )
        created = await service.campaigns.create(spec, info)
        self.assertEqual([w["size"] for w in created["wave_progress"]], [10, 90, 900])
        view = await self.until(service, created["id"], "completed", "stopped")
        self.assertEqual(view["status"], "completed", view)
        self.assertEqual(
            view["counts"],
            {
                "pending": 0,
                "queued": 0,
                "transferred": 0,
                "upgraded": 1000,
                "failed": 0,
                "skipped": 0,
            },
        )
        self.assertEqual(len(self.events("campaign.wave")), 2)
        self.assertEqual(len(self.events("campaign.completed")), 1)
        upgraded = [e for e in self.events("campaign.device") if e["data"]["s"] == "upgraded"]
        self.assertEqual(len(upgraded), 1000)
        self.assertEqual(set(self.downloads_per_device().values()), {1})
        self.assertEqual(fleet.stats.transfers["download ok"], 1000)
        self.assertEqual(fleet.stats.bytes_downloaded, 1000 * len(firmware("2.0")))
        versions = {d.model.value("Device.DeviceInfo.SoftwareVersion") for d in fleet.devices}
        self.assertEqual(versions, {"2.0"})
        # Done again: every device is on 2.0 already, so a second campaign skips them all.
        again = await service.campaigns.create(spec, info)
        view = await self.until(service, again["id"], "completed")
        self.assertEqual(view["counts"]["skipped"], 1000)

    async def test_a_bad_image_stops_at_the_first_wave(self) -> None:
        service = await self.start_gateway(connreq=CONNREQ, files=FAST)
        fleet = await self.fleet_of(200)
        info = await self.add_file(service, firmware(None), "2.0")
        assert service.campaigns is not None
        spec = parse_spec(
            {
                "file": info.id,
                "devices": [d.device_id for d in fleet.devices],
                "waves": ["5%", "50%", "100%"],
                "stop_rule": {"failed_percent": 5},
            }
        )
        created = await service.campaigns.create(spec, info)
        view = await self.until(service, created["id"], "stopped")
        # Let anything still in flight end: nothing beyond the first wave is touched.
        for _ in range(100):
            view = await service.campaigns.get(created["id"])
            if view["counts"]["queued"] + view["counts"]["transferred"] == 0:
                break
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(view["wave"], 0)
        self.assertEqual(view["counts"]["upgraded"], 0)
        self.assertEqual(view["counts"]["pending"], 190)
        self.assertEqual(view["dispatched"], 10)
        self.assertIn("stop rule", view["reason"])
        self.assertEqual(fleet.stats.transfers["download 9018"], view["counts"]["failed"])
        self.assertEqual(len(self.events("campaign.stopped")), 1)
        self.assertLessEqual(len(self.downloads_per_device()), 10)

    async def test_pause_resume_and_abort(self) -> None:
        service = await self.start_gateway(connreq=CONNREQ, files=FAST)
        fleet = await self.fleet_of(20)
        info = await self.add_file(service, firmware("3.0"), "3.0")
        campaigns = service.campaigns
        assert campaigns is not None
        spec = parse_spec({"file": info.id, "devices": [d.device_id for d in fleet.devices]})
        created = await campaigns.create(spec, info)
        paused = await campaigns.control(created["id"], "pause")
        self.assertEqual(paused["status"], "paused")
        await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual((await campaigns.get(created["id"]))["counts"]["pending"], 20)
        await campaigns.control(created["id"], "resume")
        view = await self.until(service, created["id"], "completed")
        self.assertEqual(view["counts"]["upgraded"], 20)
        from cwmpgw.files.campaigns import CampaignConflict

        with self.assertRaises(CampaignConflict):
            await campaigns.control(created["id"], "abort")
        self.assertIsNone(await campaigns.control("c-none", "pause"))

    async def test_a_restart_mid_campaign_loses_and_repeats_nothing(self) -> None:
        ports = {"acs": free_port(), "files": free_port()}
        sections: dict[str, Any] = {
            "connreq": CONNREQ,
            "files": {**FAST, "port": ports["files"]},
            "acs": {"port": ports["acs"]},
        }
        service = await self.start_gateway(**sections)
        fleet = await self.fleet_of(300)
        info = await self.add_file(service, firmware("2.1"), "2.1")
        assert service.campaigns is not None
        spec = parse_spec(
            {
                "file": info.id,
                "devices": [d.device_id for d in fleet.devices],
                "waves": ["10%", "100%"],
                "max_in_flight": 30,
            }
        )
        created = await service.campaigns.create(spec, info)
        for _ in range(600):
            view = await service.campaigns.get(created["id"])
            if view["counts"]["upgraded"] >= 60:
                break
            await deferLater(reactor, 0.05, lambda: None)
        await service.stopService()
        from tests.support.gateway import start_gateway

        again = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            gateway={"node": "sim-node"},
            provision={"credentials": True, "periodic_inform": True},
            **sections,
        )
        view = await self.until(again, created["id"], "completed", "stopped")
        self.assertEqual(view["status"], "completed", view)
        self.assertEqual(view["counts"]["upgraded"], 300, view)
        self.assertEqual(set(self.downloads_per_device().values()), {1})
        self.assertEqual(len(self.downloads_per_device()), 300)
        self.assertEqual(fleet.stats.transfers["download ok"], 300)
