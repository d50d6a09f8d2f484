"""Profiles and the data-model check against the real gateway: TLS, Redis, the API, the
command stream and a simulated CPE (cwmpgw.sim) that factory-resets when told to."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any
from urllib.parse import quote

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.service import GatewayService
from cwmpgw.sim.datamodel import load_csv
from cwmpgw.sim.device import Behaviour, credential_templates
from cwmpgw.sim.fleet import Fleet, Rate
from tests.support.gateway import (
    acs_url,
    cafile,
    import_into,
    nbi_call,
    start_gateway,
)
from tests.support.paths import DATA
from tests.support.redis_server import unique_prefix

EC220 = str(DATA / "device-9CA2F4-EC220_G5_V3-22275K2000315.csv")
SSID = "Device.WiFi.SSID.1.SSID"
NTP = "Device.Time.NTPServer1"


@pytest.mark.usefixtures("redis_for_class")
class ProfileTests(TestCase):
    redis_server: Any
    timeout = 120

    async def setup_gateway(self) -> GatewayService:
        import redis

        self.dir = tempfile.mkdtemp(prefix="cwmpgw-profiles-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.prefix = unique_prefix()
        service = await start_gateway(
            self,
            self.dir,
            self.redis_server.url,
            self.prefix,
            nbi={"port": 0, "auth": "none"},
            fleet={"profile_cache": 0},
            provision={"credentials": True, "periodic_inform": True},
        )
        self.service = service
        self.redis = redis.Redis(
            self.redis_server.host, self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.redis.close)
        return service

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        port = self.service.nbi_port.getHost().port  # type: ignore[union-attr]
        return await deferToThread(nbi_call, port, method, path, body)

    async def start_fleet(self) -> Fleet:
        fleet = Fleet(
            reactor,
            acs_url(self.service),
            devices=1,
            credentials=credential_templates("{device_id}", "profile-password-1"),
            cafile=cafile(self.dir),
            arrival=Rate(None),
            concurrency=1,
            seed=1,
            template=load_csv(EC220),
            behaviour=Behaviour(reboot_delay=0.05),
        )
        await fleet.start()
        self.addCleanup(fleet.stop)
        await import_into(
            self, fleet.credentials_csv(), self.dir, self.redis_server.url, self.prefix
        )
        return fleet

    def events(self, type_: str) -> list[dict[str, Any]]:
        out = [json.loads(f["event"]) for _, f in self.redis.xrange(self.prefix + "events")]
        return [e for e in out if e["type"] == type_]

    async def test_a_profile_is_applied_again_after_a_factory_reset(self) -> None:
        await self.setup_gateway()
        status, profile = await self.api(
            "PUT",
            "/profiles/home-wifi",
            {
                "selector": {"oui": "9CA2F4"},
                "when": "bootstrap",
                "parameters": [
                    {"name": "WiFi.SSID.1.SSID", "value": "fleet-ssid"},
                    {"name": "Time.NTPServer1", "value": "ntp.example.net"},
                ],
            },
        )
        self.assertEqual(status, 201, profile)
        fleet = await self.start_fleet()
        device = fleet.devices[0]

        # First contact (0 BOOTSTRAP): the provisioner's presets, then the profile.
        first = await fleet.inform(device, "0 BOOTSTRAP")
        self.assertTrue(first.ok)
        self.assertEqual(first.faults, ())
        self.assertEqual(device.model.value(SSID), "fleet-ssid")
        self.assertEqual(device.model.value(NTP), "ntp.example.net")
        (applied,) = self.events("profile.applied")
        self.assertEqual(applied["device"]["id"], device.device_id)
        self.assertEqual(
            {k: applied["data"][k] for k in ("profile", "version", "status")},
            {"profile": "home-wifi", "version": profile["version"], "status": 0},
        )
        self.assertEqual(
            applied["data"]["parameters"],
            [{"name": SSID, "value": "fleet-ssid"}, {"name": NTP, "value": "ntp.example.net"}],
        )
        known = self.redis.hgetall(f"{self.prefix}device:{device.device_id}:profiles")
        self.assertEqual(known, {"home-wifi": str(profile["version"])})

        # A periodic session: a bootstrap profile is not sent again.
        periodic = await fleet.inform(device)
        self.assertTrue(periodic.ok)
        self.assertEqual(len(self.events("profile.applied")), 1)

        # The operator changes the SSID, then the device is factory-reset: back to the
        # model's defaults, then 0 BOOTSTRAP, and the profile is applied again.
        await self.service.tasks.submit(  # type: ignore[union-attr]
            device.device_id,
            "SetParameterValues",
            {"parameters": [{"name": SSID, "value": "drifted"}]},
        )
        await self.service.tasks.submit(device.device_id, "FactoryReset", {})  # type: ignore[union-attr]
        reset_session = await fleet.inform(device)
        self.assertTrue(reset_session.ok)
        self.assertEqual(device.model.value(SSID), "TP-Link_0CE8")  # reset to the model's
        after = await fleet.next_session(device)
        self.assertTrue(after.ok)
        self.assertIn("0 BOOTSTRAP", after.events)
        self.assertEqual(device.model.value(SSID), "fleet-ssid")
        self.assertEqual(device.model.value(NTP), "ntp.example.net")
        self.assertEqual(len(self.events("profile.applied")), 2)
        self.assertEqual(self.events("profile.failed"), [])

    async def test_a_once_profile_follows_its_versions_and_a_refusal_is_reported(self) -> None:
        await self.setup_gateway()
        fleet = await self.start_fleet()
        device = fleet.devices[0]
        self.assertTrue((await fleet.inform(device, "0 BOOTSTRAP")).ok)
        # Through the command stream; a vendor parameter the device lacks passes the
        # data-model check unchecked, and the CPE's fault is a profile.failed.
        entry = {
            "name": "vendor",
            "when": "once",
            "parameters": [{"name": "Device.X_ACME_Missing", "value": "1"}],
        }
        self.redis.xadd(self.prefix + "commands", {"profile": json.dumps(entry)})
        for _ in range(100):
            if self.events("profile.changed"):
                break
            await deferLater(reactor, 0.05, lambda: None)
        (changed,) = self.events("profile.changed")
        self.assertEqual(
            {k: changed["data"][k] for k in ("name", "deleted", "created")},
            {"name": "vendor", "deleted": False, "created": True},
        )
        self.assertTrue((await fleet.inform(device)).ok)
        (failed,) = self.events("profile.failed")
        self.assertEqual(
            (failed["data"]["reason"], failed["data"]["fault"]["code"]), ("fault", 9003)
        )
        self.assertTrue((await fleet.inform(device)).ok)  # not sent again
        self.assertEqual(len(self.events("profile.failed")), 1)

        status, _ = await self.api(
            "PUT",
            "/profiles/vendor",
            {"when": "once", "parameters": [{"name": SSID, "value": "v2"}]},
        )
        self.assertEqual(status, 200)
        self.assertTrue((await fleet.inform(device)).ok)  # the new version, once
        self.assertTrue((await fleet.inform(device)).ok)
        self.assertEqual(len(self.events("profile.applied")), 1)
        self.assertEqual(device.model.value(SSID), "v2")

    async def test_the_data_model_refuses_a_bad_set_parameter_values(self) -> None:
        await self.setup_gateway()
        fleet = await self.start_fleet()
        device = fleet.devices[0]
        self.assertTrue((await fleet.inform(device, "0 BOOTSTRAP")).ok)
        url = f"/devices/{quote(device.device_id, safe='')}/tasks"

        def spv(name: str, value: Any, **more: Any) -> dict[str, Any]:
            return {
                "type": "SetParameterValues",
                "args": {"parameters": [{"name": name, "value": value, **more}]},
            }

        refusals = {
            "Device.DeviceInfo.SoftwareVersion": (
                spv("Device.DeviceInfo.SoftwareVersion", "9"),
                "read-only",
            ),
            "unknown": (
                spv("Device.ManagementServer.PeriodicInformIntervall", "60"),
                "has no PeriodicInformIntervall",
            ),
            "type": (
                spv("Device.ManagementServer.PeriodicInformInterval", "60", type="xsd:string"),
                "is xsd:unsignedInt, not xsd:string",
            ),
            "range": (spv("Device.ManagementServer.PeriodicInformInterval", 0), "out of range"),
            "size": (spv(SSID, "x" * 33), "more than the maximum 32"),
            "instance": (spv("Device.WiFi.SSID.first.SSID", "x"), "not an instance number"),
        }
        for what, (body, reason) in refusals.items():
            status, answer = await self.api("POST", url, body)
            self.assertEqual(status, 422, (what, answer))
            self.assertEqual(answer["error"]["code"], "data_model")
            self.assertTrue(answer["error"]["message"].startswith("args.parameters[0]: "), answer)
            self.assertIn(reason, answer["error"]["message"])
        # Nothing was queued, and the command stream refuses the same way.
        status, tasks = await self.api("GET", url)
        self.assertEqual((status, tasks), (200, {"tasks": []}))
        self.redis.xadd(
            self.prefix + "commands",
            {"task": json.dumps({"device_id": device.device_id, **refusals["unknown"][0]})},
        )
        for _ in range(100):
            if self.events("command.rejected"):
                break
            await deferLater(reactor, 0.05, lambda: None)
        (rejected,) = self.events("command.rejected")
        self.assertIn("has no PeriodicInformIntervall", rejected["data"]["reason"])

        # A good one is typed by the model and applied.
        status, task = await self.api(
            "POST", url, spv("Device.ManagementServer.PeriodicInformInterval", 600)
        )
        self.assertEqual(status, 201, task)
        self.assertEqual(task["args"]["parameters"][0]["type"], "xsd:unsignedInt")
        self.assertTrue((await fleet.inform(device)).ok)
        done = await self.service.tasks.get(task["id"])  # type: ignore[union-attr]
        self.assertEqual(done.status, "done")
        param = device.model.param("Device.ManagementServer.PeriodicInformInterval")
        assert param is not None
        self.assertEqual((param.value, param.type), ("600", "xsd:unsignedInt"))

    async def test_an_object_is_created_once_and_again_after_a_factory_reset(self) -> None:
        await self.setup_gateway()
        table = "Device.NAT.PortMapping."
        status, profile = await self.api(
            "PUT",
            "/profiles/web-mapping",
            {
                "selector": {"oui": "9CA2F4"},
                "when": "every",
                "objects": [
                    {
                        "path": "NAT.PortMapping.",
                        "match": {"ExternalPort": 8080, "Protocol": "TCP"},
                        "values": {"InternalPort": 80, "InternalClient": "192.168.1.10"},
                    }
                ],
            },
        )
        self.assertEqual(status, 201, profile)
        self.assertEqual(profile["parameters"], [])
        self.assertEqual(
            profile["objects"][0]["match"][0],
            {"name": "ExternalPort", "value": "8080", "type": "xsd:unsignedInt"},
        )
        fleet = await self.start_fleet()
        device = fleet.devices[0]
        model = device.model

        def mapping() -> dict[str, str]:
            return {
                leaf.rsplit(".", 1)[1]: model.value(leaf)
                for leaf in model.leaves(table)
                if leaf.rsplit(".", 1)[1] in ("ExternalPort", "Protocol", "InternalPort")
            }

        # The table is empty: GetParameterValues, AddObject, SetParameterValues.
        first = await fleet.inform(device, "0 BOOTSTRAP")
        self.assertTrue(first.ok)
        self.assertEqual(first.faults, ())
        self.assertEqual(model.instances(table), [1])
        self.assertEqual(
            mapping(), {"ExternalPort": "8080", "Protocol": "TCP", "InternalPort": "80"}
        )
        self.assertEqual(model.value(table + "1.InternalClient"), "192.168.1.10")
        (applied,) = self.events("profile.applied")
        self.assertEqual(
            applied["data"]["objects"], [{"path": table, "instance": 1, "created": True}]
        )
        self.assertEqual(len(applied["data"]["parameters"]), 4)

        # The next session finds it: nothing is added, nothing is set.
        again = await fleet.inform(device)
        self.assertTrue(again.ok)
        self.assertEqual(model.instances(table), [1])
        second = self.events("profile.applied")[1]
        self.assertEqual(
            second["data"]["objects"], [{"path": table, "instance": 1, "created": False}]
        )
        self.assertEqual(second["data"]["parameters"], [])

        # A factory reset empties the table; the bootstrap session creates it again.
        await self.service.tasks.submit(device.device_id, "FactoryReset", {})  # type: ignore[union-attr]
        self.assertTrue((await fleet.inform(device)).ok)
        self.assertEqual(model.instances(table), [])
        after = await fleet.next_session(device)
        self.assertTrue(after.ok)
        self.assertIn("0 BOOTSTRAP", after.events)
        self.assertEqual(model.instances(table), [1])
        self.assertEqual(
            mapping(), {"ExternalPort": "8080", "Protocol": "TCP", "InternalPort": "80"}
        )
        created = [e["data"]["objects"][0]["created"] for e in self.events("profile.applied")]
        self.assertEqual(created.count(True), 2)
        self.assertEqual(self.events("profile.failed"), [])
