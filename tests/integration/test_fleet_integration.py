"""The fleet end to end: a real gateway, a real Redis, a few hundred simulated CPEs.

Tag and query through the API and the command stream; a bulk task over a selector that
survives a gateway restart mid-fan-out and ends with exact counts; a bulk cancelled.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any
from urllib.parse import quote

import pytest
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from cwmpgw.sim import Fleet, Storm, credential_templates
from tests.support.gateway import nbi_call
from tests.support.loadkit import acs_url, give_credentials, start_gateway, stream_events, until
from tests.support.redis_server import unique_prefix

DEVICES = 300
FLEET = {"fleet": {"bulk_tick": 0.1, "bulk_rate": 300.0}}


@pytest.mark.usefixtures("redis_for_class")
class FleetIntegrationTests(TestCase):
    redis_server: Any
    timeout = 300

    def setUp(self) -> None:
        import redis

        self.dir = tempfile.mkdtemp()
        self.prefix = unique_prefix()
        self.client = redis.Redis(
            host=self.redis_server.host, port=self.redis_server.port, decode_responses=True
        )
        self.addCleanup(self.client.close)

    async def api(self, service: Any, method: str, path: str, body: Any = None) -> Any:
        port = service.nbi_port.getHost().port
        return await deferToThread(nbi_call, port, method, path, body)

    async def fleet(self, service: Any, *, bootstrap: bool) -> Fleet:
        fleet = Fleet(
            reactor,
            acs_url(service),
            devices=DEVICES,
            credentials=credential_templates("{device_id}", "pw-{serial}-fleet"),
            cafile=os.path.join(self.dir, "tls", "acs-cert.pem"),
            concurrency=50,
            bootstrap=bootstrap,
            seed=3,
        )
        await give_credentials(service, fleet)
        await fleet.start()
        self.addCleanup(fleet.stop)
        return fleet

    async def everyone_informs(self, fleet: Fleet) -> None:
        before = {d.device_id: d.sessions for d in fleet.devices}
        run = defer.Deferred.fromCoroutine(
            fleet.run_sessions(arrival=Storm(window=2.0, interval=3600))
        )
        await until(
            reactor,
            lambda: all(d.sessions > before[d.device_id] for d in fleet.devices),
            "every device to complete a session",
            bound=120,
        )
        fleet.interrupt()
        await run

    async def all_pages(self, service: Any, query: str) -> list[str]:
        ids: list[str] = []
        cursor = ""
        while True:
            status, page = await self.api(
                service, "GET", f"/devices?{query}&limit=37&cursor={quote(cursor, safe='')}"
            )
            self.assertEqual(status, 200, page)
            ids += [d["id"] for d in page["devices"]]
            cursor = page["next_cursor"]
            if not cursor:
                return ids

    async def test_tags_queries_and_a_bulk_task_across_a_restart(self) -> None:
        # Slow fan-out (20 devices/s) so that the restart lands in the middle of it.
        slow = {"fleet": {"bulk_tick": 0.1, "bulk_rate": 20.0}}
        service = await start_gateway(
            self, reactor, self.dir, self.redis_server.url, self.prefix, **slow
        )
        fleet = await self.fleet(service, bootstrap=True)
        await self.everyone_informs(fleet)
        ids = sorted(d.device_id for d in fleet.devices)
        self.assertEqual(await self.all_pages(service, "online=true"), ids)

        # Tag 100 devices through the API, 20 more through the command stream.
        pilot = ids[::3]
        for device_id in pilot:
            status, body = await self.api(
                service, "POST", f"/devices/{quote(device_id, safe='')}/tags", {"add": ["pilot"]}
            )
            self.assertEqual((status, body["tags"]), (200, ["pilot"]))
        north = ids[1::15]
        for device_id in north:
            self.client.xadd(
                self.prefix + "commands",
                {"tags": json.dumps({"device_id": device_id, "add": ["north"]})},
            )
        await until(
            reactor,
            lambda: (
                sum(e["type"] == "tags.changed" for e in stream_events(self.client, self.prefix))
                == len(north)
            ),
            "the command stream's tags",
        )
        self.assertEqual(await self.all_pages(service, "tags=pilot"), pilot)
        self.assertEqual(await self.all_pages(service, "tags=north&not_tags=pilot"), north)
        _, counts = await self.api(service, "GET", "/tags")
        self.assertEqual(counts["tags"], {"north": len(north), "pilot": len(pilot)})
        oui = fleet.devices[0].identity.oui
        self.assertEqual(await self.all_pages(service, f"oui={oui}&tags=pilot&online=true"), pilot)

        # A bulk over the selector; the gateway restarts while it fans out.
        body = {
            "selector": {"tags": ["pilot"]},
            "task": {
                "type": "GetParameterValues",
                "args": {"parameter_names": ["Device.DeviceInfo.SoftwareVersion"]},
            },
            "idempotency_key": "campaign-1",
        }
        status, bulk = await self.api(service, "POST", "/bulk", body)
        self.assertEqual((status, bulk["status"]), (202, "running"))
        bulk_id = bulk["id"]
        status, again = await self.api(service, "POST", "/bulk", body)
        self.assertEqual((status, again["id"]), (200, bulk_id))

        def queued() -> int:
            return int(self.client.hget(f"{self.prefix}bulk:{bulk_id}", "queued") or 0)

        await until(reactor, lambda: queued() >= 20, "the fan-out to be under way")
        await service.stopService()
        self.assertLess(queued(), len(pilot))
        service = await start_gateway(
            self, reactor, self.dir, self.redis_server.url, self.prefix, **slow
        )
        await until(reactor, lambda: queued() == len(pilot), "the fan-out to finish", bound=60)
        _, bulk = await self.api(service, "GET", f"/bulk/{bulk_id}")
        self.assertTrue(bulk["fanned_out"])
        self.assertEqual(bulk["counts"]["pending"], len(pilot))
        # Exactly one task per device: the page redone after the restart queued nothing twice.
        for device_id in pilot:
            _, tasks = await self.api(service, "GET", f"/devices/{quote(device_id, safe='')}/tasks")
            self.assertEqual(len([t for t in tasks["tasks"] if t["bulk"] == bulk_id]), 1)

        # The devices come back to the new gateway and run their tasks.
        await fleet.stop()
        fleet = await self.fleet(service, bootstrap=False)
        await self.everyone_informs(fleet)

        async def complete() -> bool:
            _, b = await self.api(service, "GET", f"/bulk/{bulk_id}")
            return bool(b["status"] == "complete")

        for _ in range(200):
            if await complete():
                break
            await defer.Deferred.fromCoroutine(_sleep(0.1))
        _, bulk = await self.api(service, "GET", f"/bulk/{bulk_id}")
        self.assertEqual(bulk["status"], "complete")
        self.assertEqual(
            bulk["counts"],
            {
                "matched": len(pilot),
                "queued": len(pilot),
                "pending": 0,
                "done": len(pilot),
                "failed": 0,
                "expired": 0,
                "cancelled": 0,
                "skipped": 0,
            },
        )
        progress = [
            e["data"]
            for e in stream_events(self.client, self.prefix)
            if e["type"] == "bulk.progress"
        ]
        self.assertEqual(progress[-1]["status"], "complete")
        self.assertEqual(progress[-1]["counts"]["done"], len(pilot))

        # A second bulk, by id list, cancelled before the devices come back.
        body = {"device_ids": [*ids[:50], "nobody-X-1"], "task": {"type": "Reboot"}}
        status, bulk = await self.api(service, "POST", "/bulk", body)
        self.assertEqual(status, 202)
        second = bulk["id"]
        await until(
            reactor,
            lambda: self.client.hget(f"{self.prefix}bulk:{second}", "fanned") == "1",
            "the second fan-out",
        )
        status, bulk = await self.api(service, "DELETE", f"/bulk/{second}")
        self.assertIn(status, (200, 202))
        for _ in range(100):
            _, bulk = await self.api(service, "GET", f"/bulk/{second}")
            if bulk["status"] == "cancelled":
                break
            await defer.Deferred.fromCoroutine(_sleep(0.1))
        self.assertEqual(bulk["status"], "cancelled")
        self.assertEqual(
            (bulk["counts"]["queued"], bulk["counts"]["cancelled"], bulk["counts"]["skipped"]),
            (50, 50, 1),
        )


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)
